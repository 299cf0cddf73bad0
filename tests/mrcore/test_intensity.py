"""The robust series normalisation shared by synthesis training and serving (mrcore.intensity)."""

from __future__ import annotations

import numpy as np
import pytest

from mrcore.intensity import MIN_FOREGROUND_VOXELS, NormalisationError, foreground_mask, normalise_series, robust_scale


def _head(scale: float, shape=(6, 64, 80), skull: bool = True, seed: int = 0) -> np.ndarray:
    """A noisy 'head': tissue at 1 (+-10 %), a bright rim (fat) at 3, background noise at 0.01, times ``scale``."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    r = np.hypot((y - shape[1] / 2) / (shape[1] * 0.4), (x - shape[2] / 2) / (shape[2] * 0.4))
    v = np.abs(rng.normal(0, 0.01, shape))
    v[r < 1.0] = 1.0 + 0.1 * rng.standard_normal(int((r < 1.0).sum()))
    if skull:
        v[(r >= 0.9) & (r < 1.0)] = 3.0
    return (v * scale).astype(np.float32)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 4095.0, 6.5e4])
def test_scale_invariant_and_near_one_on_tissue(scale):
    x = _head(scale)
    norm, s = normalise_series(x)
    assert s == pytest.approx(robust_scale(x))
    np.testing.assert_allclose(norm, _head(1.0) / robust_scale(_head(1.0)), rtol=1e-4, atol=1e-6)
    assert float(np.median(norm[foreground_mask(norm)])) == pytest.approx(1.0, rel=1e-4)
    assert 0.9 < robust_scale(_head(1.0)) < 1.15  # tissue, not the bright rim or the background


def test_background_and_field_of_view_do_not_matter():
    small = _head(1.0, (4, 64, 64))
    padded = np.zeros((4, 200, 200), np.float32)
    padded[:, 60:124, 60:124] = small
    assert robust_scale(padded) == pytest.approx(robust_scale(small), rel=0.02)
    assert robust_scale(_head(1.0, skull=False)) == pytest.approx(robust_scale(_head(1.0)), rel=0.1)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((2, 32, 32), np.float32), "foreground voxels"),
    (np.full((1, 6, 6), 5.0, np.float32), "foreground voxels"),
    (np.array([[[1.0, np.nan]]], np.float32), "NaN"),
    (np.ones((2, 32, 32), np.complex64), "real"),
])
def test_refusals(bad, match):
    with pytest.raises(NormalisationError, match=match):
        robust_scale(bad)
    assert issubclass(NormalisationError, ValueError) and MIN_FOREGROUND_VOXELS >= 64
