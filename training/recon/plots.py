"""Before/after images of reconstruction: zero-filled, network, reference and their error maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.plots import plot_image_grid


def plot_samples(zero_filled: np.ndarray, output: np.ndarray, target: np.ndarray, out: Path, title: str = "") -> Path:
    """Grid of ``[N, H, W]`` magnitudes: zero-filled, network output, reference, error maps."""
    return plot_image_grid({"zero-filled": zero_filled, "network": output, "reference": target}, "reference", out, title)
