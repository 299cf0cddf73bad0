"""mrcore.metrics: fastMRI's NMSE / PSNR / SSIM definitions, and MAE."""

import numpy as np
import pytest
from scipy.ndimage import uniform_filter
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from mrcore.metrics import mae, nmse, psnr, ssim


def _pair(shape=(48, 40), seed=0):
    rng = np.random.default_rng(seed)
    gt = rng.random(shape) * np.linspace(0.5, 2.0, shape[-1])
    pred = gt + 0.05 * rng.standard_normal(shape)
    return gt.astype(np.float32), pred.astype(np.float32)


def _ssim_written_out(x, y, data_range):
    """SSIM (Wang et al. 2004) as fastMRI computes it through scikit-image: 7x7 uniform window, sample covariance."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    win, k1, k2 = 7, 0.01, 0.03
    cov_norm = win**2 / (win**2 - 1)
    ux, uy = uniform_filter(x, win), uniform_filter(y, win)
    vx = cov_norm * (uniform_filter(x * x, win) - ux * ux)
    vy = cov_norm * (uniform_filter(y * y, win) - uy * uy)
    vxy = cov_norm * (uniform_filter(x * y, win) - ux * uy)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    pad = win // 2
    return s[pad:-pad, pad:-pad].mean()


def test_nmse_hand_computed():
    gt = np.array([[1.0, 2.0], [3.0, 4.0]])
    pred = np.array([[1.0, 2.0], [3.0, 5.0]])
    assert nmse(gt, pred) == pytest.approx(1 / 30)  # ||(0,0,0,1)||^2 / (1 + 4 + 9 + 16)
    assert nmse(gt, gt) == 0.0


def test_mae_hand_computed():
    gt = np.array([[1.0, 2.0], [3.0, 4.0]])
    pred = np.array([[0.0, 2.0], [3.5, 5.0]])
    assert mae(gt, pred) == pytest.approx((1 + 0 + 0.5 + 1) / 4)


def test_psnr_equals_skimage_and_formula():
    gt, pred = _pair()
    expected = peak_signal_noise_ratio(gt.astype(np.float64), pred.astype(np.float64), data_range=gt.max())
    assert psnr(gt, pred) == pytest.approx(expected, rel=1e-12)
    mse = np.mean((gt.astype(np.float64) - pred) ** 2)
    assert psnr(gt, pred) == pytest.approx(20 * np.log10(float(gt.max())) - 10 * np.log10(mse), rel=1e-9)
    assert psnr(gt, pred, maxval=1.0) == pytest.approx(-10 * np.log10(mse), rel=1e-9)
    assert psnr(gt, gt) == float("inf")


def test_nmse_formula():
    gt, pred = _pair(seed=1)
    g, p = gt.astype(np.float64), pred.astype(np.float64)
    assert nmse(gt, pred) == pytest.approx(np.sum((g - p) ** 2) / np.sum(g**2), rel=1e-12)


def test_ssim_equals_skimage_and_formula():
    gt, pred = _pair(seed=2)
    value = ssim(gt, pred)
    g, p = gt.astype(np.float64), pred.astype(np.float64)
    assert value == pytest.approx(structural_similarity(g, p, data_range=g.max()), rel=1e-12)
    assert value == pytest.approx(_ssim_written_out(g, p, g.max()), rel=1e-9)
    assert ssim(gt, gt) == pytest.approx(1.0)
    assert 0 < value < 1


def test_volume_ssim_is_mean_of_slices_with_volume_max():
    gt, pred = _pair((3, 32, 36), seed=3)
    gt[0] *= 0.2  # slices with different maxima: per-slice max would give another value
    pred[0] *= 0.2
    vmax = gt.max()
    expected = np.mean([_ssim_written_out(gt[i], pred[i], vmax) for i in range(3)])
    assert ssim(gt, pred) == pytest.approx(expected, rel=1e-9)
    per_slice_max = np.mean([_ssim_written_out(gt[i], pred[i], gt[i].max()) for i in range(3)])
    assert abs(ssim(gt, pred) - per_slice_max) > 1e-3
    # fastMRI's evaluate.ssim, written out
    fastmri = sum(structural_similarity(gt[i].astype(np.float64), pred[i].astype(np.float64), data_range=vmax)
                  for i in range(3)) / 3
    assert ssim(gt, pred) == pytest.approx(fastmri, rel=1e-9)


def test_volume_psnr_uses_volume():
    gt, pred = _pair((2, 16, 16), seed=4)
    mse = np.mean((gt.astype(np.float64) - pred) ** 2)
    assert psnr(gt, pred) == pytest.approx(20 * np.log10(float(gt.max())) - 10 * np.log10(mse), rel=1e-9)


@pytest.mark.parametrize("metric", [nmse, psnr, ssim, mae])
def test_rejects_bad_inputs(metric):
    gt, pred = _pair((16, 16))
    with pytest.raises(ValueError, match="pred must be real"):
        metric(gt, pred.astype(np.complex64))
    with pytest.raises(ValueError, match="gt must be real"):
        metric(gt + 1j, pred)
    with pytest.raises(ValueError, match="pred must have shape"):
        metric(gt, pred[:, :15])
    with pytest.raises(ValueError, match="gt must be"):
        metric(gt[0], pred[0])
    bad = pred.copy()
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="pred contains 1 NaN"):
        metric(gt, bad)


def test_rejects_degenerate():
    with pytest.raises(ValueError, match="NMSE is undefined"):
        nmse(np.zeros((8, 8)), np.ones((8, 8)))
    with pytest.raises(ValueError, match="maxval must be"):
        psnr(np.zeros((8, 8)), np.ones((8, 8)))
    with pytest.raises(ValueError, match="maxval must be"):
        ssim(*_pair((8, 8)), maxval=-1.0)
    with pytest.raises(ValueError, match="at least 7x7"):
        ssim(*_pair((6, 16)))
