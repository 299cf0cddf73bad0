"""Image-quality metrics with fastMRI's definitions (``fastmri/evaluate.py``), computed with scikit-image.

Inputs are real magnitude images of equal shape, ``[y, x]`` or a volume ``[slices, y, x]``; complex
input, NaN/Inf and mismatched shapes are refused. Results are Python floats.
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from mrcore.validate import as_array, check_finite, check_ndim, check_real, check_shape

_LAYOUT = "[y, x] or [slices, y, x]"


def _pair(gt, pred) -> tuple[np.ndarray, np.ndarray]:
    g = as_array("gt", gt)
    p = as_array("pred", pred)
    check_real("gt", g, _LAYOUT)
    check_real("pred", p, _LAYOUT)
    check_ndim("gt", g, (2, 3), _LAYOUT)
    check_shape("pred", p, g.shape, "(the shape of gt)")
    check_finite("gt", g)
    check_finite("pred", p)
    return g.astype(np.float64), p.astype(np.float64)


def _data_range(g: np.ndarray, maxval) -> float:
    value = g.max() if maxval is None else maxval
    if isinstance(value, (bool, str)) or np.ndim(value) != 0 or not np.isfinite(value) or not value > 0:
        raise ValueError(f"maxval must be a finite number > 0 (default gt.max()), got {value!r}")
    return float(value)


def nmse(gt: np.ndarray, pred: np.ndarray) -> float:
    """Normalised mean squared error ``||gt - pred||^2 / ||gt||^2``."""
    g, p = _pair(gt, pred)
    denominator = np.linalg.norm(g) ** 2
    if denominator == 0:
        raise ValueError("gt is all zeros: NMSE is undefined")
    return float(np.linalg.norm(g - p) ** 2 / denominator)


def psnr(gt: np.ndarray, pred: np.ndarray, maxval: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB with data range ``maxval`` (default ``gt.max()``); ``inf`` if equal."""
    g, p = _pair(gt, pred)
    data_range = _data_range(g, maxval)
    if np.array_equal(g, p):
        return float("inf")
    return float(peak_signal_noise_ratio(g, p, data_range=data_range))


def ssim(gt: np.ndarray, pred: np.ndarray, maxval: float | None = None) -> float:
    """Structural similarity (scikit-image defaults: 7x7 uniform window), averaged over slices.

    For a volume ``[slices, y, x]`` the data range is the volume maximum ``gt.max()`` for every slice,
    as in fastMRI; images must be at least 7x7.
    """
    g, p = _pair(gt, pred)
    if min(g.shape[-2:]) < 7:
        raise ValueError(f"gt must be at least 7x7 for SSIM, got {tuple(g.shape)}")
    data_range = _data_range(g, maxval)
    if g.ndim == 2:
        g, p = g[None], p[None]
    values = [structural_similarity(a, b, data_range=data_range) for a, b in zip(g, p)]
    return float(np.mean(values))


def mae(gt: np.ndarray, pred: np.ndarray) -> float:
    """Mean absolute error ``mean(|gt - pred|)``."""
    g, p = _pair(gt, pred)
    return float(np.mean(np.abs(g - p)))
