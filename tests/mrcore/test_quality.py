"""mrcore.quality: the held-out split and the k-space self-validation measure."""

import numpy as np
import pytest

from mrcore.coils import simulate_coil_maps
from mrcore.fft import fft2c
from mrcore.masks import make_mask
from mrcore.quality import (
    QualityInputError,
    SliceEstimate,
    check_fraction,
    holdout_split,
    is_flagged,
    line_axis,
    signal_energy,
    slice_quality,
)
from tests.mrcore.objects import smooth_object

N = 128


def _case(noise: float = 0.0, seed: int = 0):
    x = smooth_object(N) * np.exp(1j * np.linspace(0, 1.5, N))[None, :].astype(np.complex64)
    maps = simulate_coil_maps((N, N), 8, seed=3)
    k = fft2c(maps * x[None])
    if noise:
        rng = np.random.default_rng(seed)
        k = k + noise * np.abs(x).max() * (rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape))
    rss = np.sqrt((np.abs(maps) ** 2).sum(0))
    return k.astype(np.complex64), (x * rss).astype(np.complex64)


@pytest.mark.parametrize("axis", [-2, -1])
def test_split_is_seeded_disjoint_and_outside_the_calibration_lines(axis):
    mask = make_mask("equispaced", (N, N), 4, 0.08, seed=1, axis=axis)
    a = holdout_split(mask, 0.1, seed=7, slice_index=3)
    b = holdout_split(mask, 0.1, seed=7, slice_index=3)
    c = holdout_split(mask, 0.1, seed=7, slice_index=4)
    assert a.available and a.axis == axis
    np.testing.assert_array_equal(a.held, b.held)
    assert not np.array_equal(a.held, c.held)
    np.testing.assert_array_equal(a.seen + a.held, mask)
    assert not (a.seen * a.held).any()
    profile = a.held[:, 0] if axis == -2 else a.held[0, :]
    lines = np.flatnonzero(profile)
    assert len(lines) == round(0.1 * int((mask[:, 0] if axis == -2 else mask[0]).sum()))
    centre = N // 2
    assert all(abs(int(i) - centre) > a.calibration // 2 - 1 for i in lines)
    assert a.calibration == round(N * 0.08)


def test_split_of_a_2d_mask_holds_out_samples_outside_the_centre_block():
    mask = make_mask("poisson", (N, N), 4, 0.08, seed=2)
    s = holdout_split(mask, 0.05)
    assert s.axis is None and s.available and s.calibration >= 4
    c0 = N // 2 - s.calibration // 2
    assert not s.held[c0:c0 + s.calibration, c0:c0 + s.calibration].any()
    np.testing.assert_array_equal(s.seen + s.held, mask)


def test_unavailable_without_lines_outside_the_calibration_region():
    mask = np.zeros((N, N), np.float32)
    mask[N // 2 - 10:N // 2 + 10] = 1
    s = holdout_split(mask)
    assert not s.available and "outside the calibration region" in s.reason
    k, _ = _case()
    est = slice_quality(k * mask, np.ones((N, N), np.complex64), s)
    assert est.holdout_nmse is None and est.dc_residual is not None and est.est_nmse is None
    assert est.error_ratio is None and not is_flagged(est)


def test_a_fraction_leaving_too_few_lines_names_the_key():
    mask = np.zeros((N, N), np.float32)
    mask[N // 2 - 10:N // 2 + 10] = 1
    mask[[3, 100]] = 1
    with pytest.raises(QualityInputError, match="holdout_fraction") as info:
        holdout_split(mask, 0.5)
    assert info.value.key == "holdout_fraction"
    for bad in (0.0, 0.9, float("nan"), True, "0.1"):
        with pytest.raises(QualityInputError, match="holdout_fraction"):
            check_fraction(bad)


def test_line_axis():
    assert line_axis(make_mask("random", (32, 40), 4, 0.1, seed=0, axis=-1)) == -1
    assert line_axis(make_mask("random", (32, 40), 4, 0.1, seed=0, axis=-2)) == -2
    assert line_axis(make_mask("poisson", (64, 64), 3, 0.1, seed=0)) is None


def test_the_true_image_predicts_held_out_lines_and_wrong_images_do_not():
    k, truth = _case()
    mask = make_mask("equispaced", (N, N), 4, 0.08, seed=1)
    split = holdout_split(mask, 0.1)
    acquired = k * mask
    good, dc_good = _pair(slice_quality(acquired, truth, split))
    # the model's own phase convention is not an error
    rotated, _ = _pair(slice_quality(acquired, truth * np.exp(1j * 0.7).astype(np.complex64), split))
    # zero-filled (SENSE adjoint of the seen lines, i.e. no prediction of the held-out lines)
    from mrcore.fft import ifft2c
    zf = np.sqrt((np.abs(ifft2c(acquired * split.seen)) ** 2).sum(0)).astype(np.complex64)
    zero, _ = _pair(slice_quality(acquired, zf, split))
    double, dc_double = _pair(slice_quality(acquired, 2 * truth, split))
    blurred = fft2c(truth) * np.exp(-((np.arange(N) - N // 2) / 12.0) ** 2)[:, None]
    blur, _ = _pair(slice_quality(acquired, ifft2c(blurred).astype(np.complex64), split))
    assert good < 0.05 and dc_good < 0.05          # the floor of the calibration-band coil maps
    assert rotated == pytest.approx(good, rel=1e-3, abs=1e-6)
    assert zero > 0.7                               # aliased, not predicted (predicting 0 gives 1)
    assert double > 0.5 and dc_double > 0.5        # a wrong intensity scale is an error
    assert good < blur < zero


def test_noise_sets_the_raw_floor_and_denoising_removes_it():
    k, truth = _case(noise=0.01)
    mask = make_mask("equispaced", (N, N), 4, 0.08, seed=1)
    split = holdout_split(mask, 0.1)
    raw = slice_quality(k * mask, truth, split, denoise=False).holdout_nmse
    clean = slice_quality(_case()[0] * mask, truth, split, denoise=False).holdout_nmse
    denoised = slice_quality(k * mask, truth, split).holdout_nmse
    assert clean < raw < 1
    assert denoised < raw and denoised < 0.05


def _pair(est: SliceEstimate) -> tuple:
    return est.holdout_nmse, est.dc_residual


def test_flag_rule():
    assert SliceEstimate(0.5, 0.01, 0.03, 0.02).error_ratio == pytest.approx(1.5)
    assert is_flagged(SliceEstimate(0.5, 0.01, 0.03, 0.02), 1.4)             # 1.5x zero-filled's estimate
    assert not is_flagged(SliceEstimate(0.5, 0.01, 0.02, 0.02), 1.4)
    assert not is_flagged(SliceEstimate(0.5, 0.01, 0.03, 0.02), None)       # the ratio rule switched off
    assert is_flagged(SliceEstimate(0.9, 0.0), None, 0.8) and is_flagged(SliceEstimate(0.1, 0.2), None, 0.8, 0.1)
    assert not is_flagged(SliceEstimate(0.5, 0.05), None, 0.8, 0.1) and not is_flagged(SliceEstimate(None, None))


def _profile_case(axis: int):
    """A smooth image's 8-coil k-space and a 4x equispaced line mask along ``axis``."""
    k, truth = _case()
    mask = make_mask("equispaced", (N, N), 4, 0.08, seed=1, axis=axis)
    return k, truth, mask


@pytest.mark.parametrize("axis", [-2, -1])
def test_missing_energy_is_estimated_from_the_acquired_profile(axis):
    k, _, mask = _profile_case(axis)
    acquired, missing = signal_energy(k * mask, mask, axis)
    energy = (np.abs(k) ** 2).sum(axis=0)
    true_acquired, true_missing = float(energy[mask != 0].sum()), float(energy[mask == 0].sum())
    assert acquired == pytest.approx(true_acquired, rel=1e-5)
    assert 0.5 < missing / true_missing < 2.0          # an interpolation, not a measurement
    # a 2-D (Poisson) mask: per-radius profile
    m2 = make_mask("poisson", (N, N), 3, 0.08, seed=2)
    acquired2, missing2 = signal_energy(k * m2, m2, None)
    assert acquired2 == pytest.approx(float(energy[m2 != 0].sum()), rel=1e-5)
    assert 0.5 < missing2 / float(energy[m2 == 0].sum()) < 2.0


def test_est_nmse_ranks_reconstructions_and_zero_filled_is_its_own_reference():
    k, truth, mask = _profile_case(-2)
    split = holdout_split(mask, 0.1)
    acquired = k * mask
    from mrcore.fft import ifft2c
    zf = np.sqrt((np.abs(ifft2c(acquired * split.seen)) ** 2).sum(0)).astype(np.complex64)
    blurred = ifft2c(fft2c(truth) * np.exp(-((np.arange(N) - N // 2) / 12.0) ** 2)[:, None]).astype(np.complex64)
    good, blur, zero = (slice_quality(acquired, x, split) for x in (truth, blurred, zf))
    assert good.est_nmse < blur.est_nmse < zero.est_nmse
    assert good.est_nmse_zero_filled == pytest.approx(zero.est_nmse_zero_filled)
    assert zero.error_ratio > 1.0      # the aliased zero-filled image predicts no lines: no better than zero-filled
    assert good.error_ratio < blur.error_ratio < zero.error_ratio and not is_flagged(good, 1.4) and is_flagged(SliceEstimate(
        zero.holdout_nmse, zero.dc_residual, 2 * zero.est_nmse, zero.est_nmse_zero_filled))
