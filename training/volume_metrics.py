"""Image-quality metrics per subject volume (fastMRI convention), shared by both model families."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mrcore.metrics import mae, nmse, psnr, ssim

METRICS = {"psnr": psnr, "ssim": ssim, "nmse": nmse, "mae": mae}


def volume_metrics(pred: np.ndarray, target: np.ndarray, subjects: np.ndarray,
                   names: Sequence[str] = ("psnr", "ssim", "nmse")) -> dict[str, float]:
    """Metrics of ``pred`` against ``target`` (float [N, H, W]) per subject volume, averaged over subjects.

    ``subjects``: int [N], the subject of each slice. PSNR and SSIM use the volume maximum of ``target`` as
    data range (fastMRI); MAE is in the units of the images.
    """
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r}; expected one of {', '.join(METRICS)}")
    rows = []
    for s in np.unique(subjects):
        sel = subjects == s
        rows.append([METRICS[n](target[sel], pred[sel]) for n in names])
    arr = np.asarray(rows, dtype=np.float64)
    return {n: float(arr[:, j].mean()) for j, n in enumerate(names)}
