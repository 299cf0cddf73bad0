"""Robust intensity normalisation of a magnitude series, defined once for training and serving.

Scanners write magnitude images at arbitrary scales (receiver gain, vendor scaling, 12- or 16-bit
ranges, skull stripping or not). Synthesis works in *normalised units*: the whole series (volume) is
divided by the **median of its foreground voxels**, where the foreground is every voxel above
:data:`FOREGROUND_FRACTION` of the series' :data:`REFERENCE_PERCENTILE`-th percentile. In normalised units
the typical tissue of a series sits near 1, whatever the scanner, the field of view or the number of
background voxels; the median ignores the few bright voxels (fat, vessels, CSF on T2w) and the noise floor.

The training data (:mod:`training.synthesis.data`, per subject volume) and the served path
(:meth:`serving.client.TritonClient.synthesize`, per uploaded series) call these same functions, so a
model sees the same statistics in both.

Pure numpy, no I/O.
"""

from __future__ import annotations

import numpy as np

__all__ = ["FOREGROUND_FRACTION", "MIN_FOREGROUND_VOXELS", "REFERENCE_PERCENTILE", "NormalisationError",
           "foreground_mask", "normalise_series", "robust_scale"]

#: Percentile of the whole series that stands for its bright end (robust to a few hot voxels).
REFERENCE_PERCENTILE = 99.5
#: Foreground: voxels above this fraction of the reference percentile.
FOREGROUND_FRACTION = 0.1
#: Fewer foreground voxels than this: the series is too small (or too empty) to normalise.
MIN_FOREGROUND_VOXELS = 64


class NormalisationError(ValueError):
    """The series cannot be normalised (empty, constant, non-finite or too little foreground)."""


def foreground_mask(volume: np.ndarray) -> np.ndarray:
    """bool mask of the voxels above ``FOREGROUND_FRACTION * percentile(volume, REFERENCE_PERCENTILE)``.

    Parameters
    ----------
    volume : real array of any shape (a series ``[slices, rows, cols]``, a slice, ...), magnitudes >= 0.
    """
    v = np.asarray(volume, dtype=np.float32)
    if v.size == 0:
        return np.zeros(v.shape, dtype=bool)
    ref = float(np.percentile(v, REFERENCE_PERCENTILE))
    return v > FOREGROUND_FRACTION * ref


def robust_scale(volume: np.ndarray) -> float:
    """The series' intensity scale: the median of its foreground voxels (:func:`foreground_mask`).

    Raises
    ------
    NormalisationError
        The series holds non-finite values, is complex, has no positive reference level, or has fewer
        than :data:`MIN_FOREGROUND_VOXELS` foreground voxels.
    """
    v = np.asarray(volume)
    if np.iscomplexobj(v) or not np.issubdtype(v.dtype, np.number):
        raise NormalisationError(f"a magnitude series must be real, got {v.dtype}")
    v = v.astype(np.float32, copy=False)
    if not np.isfinite(v).all():
        raise NormalisationError("the series holds NaN or Inf values")
    fg = foreground_mask(v)
    count = int(fg.sum())
    if count < MIN_FOREGROUND_VOXELS:
        raise NormalisationError(
            f"the series has {count} foreground voxels (above {FOREGROUND_FRACTION:g} x its "
            f"{REFERENCE_PERCENTILE:g}th percentile); at least {MIN_FOREGROUND_VOXELS} are needed to normalise it")
    scale = float(np.median(v[fg]))
    if not scale > 0:
        raise NormalisationError("the series' foreground median is not positive")
    return scale


def normalise_series(volume: np.ndarray) -> tuple[np.ndarray, float]:
    """``(volume / robust_scale(volume), scale)`` as float32 (see :func:`robust_scale` for the errors)."""
    scale = robust_scale(volume)
    return (np.asarray(volume, dtype=np.float32) / np.float32(scale)).astype(np.float32), scale
