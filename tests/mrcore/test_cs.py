"""mrcore.cs: the L1-wavelet compressed-sensing baseline."""

import numpy as np
import pytest

from mrcore.coils import simulate_coil_maps
from mrcore.cs import l1_wavelet_recon
from mrcore.masks import make_mask
from mrcore.metrics import psnr
from mrcore.sense import sense_forward, zero_filled
from tests.mrcore.objects import smooth_object

N, COILS = 128, 8



@pytest.fixture(scope="module")
def scan():
    obj = smooth_object()
    maps = simulate_coil_maps((N, N), COILS, seed=0)
    return sense_forward(obj, maps), maps, np.abs(obj).astype(np.float32)


def test_beats_zero_filled_with_given_maps(scan):
    kspace, maps, target = scan
    mask = make_mask("equispaced", (N, N), 4, 0.08, seed=0)
    recon = l1_wavelet_recon(kspace * mask, mask, maps=maps)
    assert recon.shape == (N, N) and recon.dtype == np.complex64
    zf = psnr(target, zero_filled(kspace, mask))
    cs = psnr(target, np.abs(recon))
    assert cs > zf + 3, (cs, zf)


def test_beats_zero_filled_with_espirit_maps_and_inferred_mask(scan):
    kspace, _, target = scan
    mask = make_mask("equispaced", (N, N), 4, 0.125, seed=0)  # a 16-line centre for ESPIRiT
    measured = kspace * mask
    recon = l1_wavelet_recon(measured, mask)  # maps=None: ESPIRiT
    zf = psnr(target, zero_filled(kspace, mask))
    cs = psnr(target, np.abs(recon))
    assert cs > zf + 1.5, (cs, zf)
    # mask=None infers the mask from the non-zero samples; the recon is deterministic
    np.testing.assert_array_equal(l1_wavelet_recon(measured, None), recon)


def test_samples_outside_mask_are_ignored(scan):
    kspace, maps, _ = scan
    mask = make_mask("random", (N, N), 4, 0.08, seed=1)
    a = l1_wavelet_recon(kspace, mask, maps=maps, max_iter=5)
    b = l1_wavelet_recon(kspace * mask, mask, maps=maps, max_iter=5)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_validation(scan):
    kspace, maps, _ = scan
    mask = make_mask("equispaced", (N, N), 4, 0.08, seed=0)
    with pytest.raises(ValueError, match="kspace must be complex64"):
        l1_wavelet_recon(np.abs(kspace), mask, maps)
    with pytest.raises(ValueError, match="mask must have shape"):
        l1_wavelet_recon(kspace, mask[:, :10], maps)
    with pytest.raises(ValueError, match="maps must have shape"):
        l1_wavelet_recon(kspace, mask, maps[:4])
    with pytest.raises(ValueError, match="lamda must be"):
        l1_wavelet_recon(kspace, mask, maps, lamda=0)
    with pytest.raises(ValueError, match="max_iter must be"):
        l1_wavelet_recon(kspace, mask, maps, max_iter=0)
    with pytest.raises(ValueError, match="mask must be >= 0"):
        l1_wavelet_recon(kspace, -mask, maps)
    with pytest.raises(ValueError, match="ESPIRiT needs"):
        l1_wavelet_recon(kspace * mask, mask)  # a 10-line centre is too small to estimate maps
