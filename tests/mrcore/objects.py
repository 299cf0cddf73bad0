"""Synthetic test objects shared by the MRI-core tests."""

import numpy as np


def smooth_object(n: int = 128) -> np.ndarray:
    """Soft-edged ellipse with a smooth texture and a darker inner ellipse: complex64 [n, n]."""
    y, x = np.mgrid[:n, :n]
    yy, xx = (y - n // 2) / (0.38 * n), (x - n // 2) / (0.30 * n)
    body = 1 / (1 + np.exp((np.hypot(yy, xx) - 1) / 0.05)) * (1 + 0.3 * np.cos(3 * xx) * np.sin(2 * yy))
    inner = np.hypot((y - n // 2 + 10) / (0.10 * n), (x - n // 2) / (0.08 * n)) < 1
    return (body - 0.5 * inner).astype(np.complex64)
