"""mrcore.coils: simulated birdcage maps and ESPIRiT estimation."""

import numpy as np
import pytest

from mrcore.coils import estimate_coil_maps, simulate_coil_maps
from mrcore.fft import fft2c
from tests.mrcore.objects import smooth_object

N, COILS = 128, 8



@pytest.mark.parametrize("shape,coils", [((128, 128), 8), ((40, 57), 4), ((33, 47), 1)])
def test_simulated_maps_normalised(shape, coils):
    maps = simulate_coil_maps(shape, coils, seed=3)
    assert maps.shape == (coils,) + shape and maps.dtype == np.complex64
    np.testing.assert_allclose(np.sum(np.abs(maps) ** 2, axis=0), 1.0, atol=1e-5)


def test_simulated_maps_are_birdcage_with_seeded_smooth_phase():
    a = simulate_coil_maps((64, 64), 8, seed=0)
    np.testing.assert_array_equal(a, simulate_coil_maps((64, 64), 8, seed=0))
    b = simulate_coil_maps((64, 64), 8, seed=1)
    np.testing.assert_allclose(np.abs(a), np.abs(b), atol=1e-6)  # the seed changes only the phase
    assert np.abs(a - b).max() > 0.1
    # coils differ spatially (birdcage): each is strongest at a different place
    peaks = {np.unravel_index(np.argmax(np.abs(m)), m.shape) for m in a}
    assert len(peaks) == 8
    # smooth phase inside the head (the inscribed disc; the coils sit near the FOV corners):
    # neighbouring pixels differ by a small angle
    step = np.angle(a[:, 1:, :] * np.conj(a[:, :-1, :]))
    yy, xx = np.mgrid[-1:1:63j, -1:1:64j]
    assert np.abs(step[:, np.hypot(yy, xx) < 0.95]).max() < 0.5
    # phase_order 0: only a constant phase per coil on top of the birdcage
    c = simulate_coil_maps((64, 64), 8, seed=0, phase_order=0)
    d = simulate_coil_maps((64, 64), 8, seed=5, phase_order=0)
    ratio = c * np.conj(d)
    np.testing.assert_allclose(np.abs(np.angle(ratio / ratio[:, :1, :1])), 0, atol=1e-4)


def test_espirit_reproduces_coil_images():
    obj = smooth_object()
    maps = simulate_coil_maps((N, N), COILS, seed=0)
    coil_images = maps * obj
    est = estimate_coil_maps(fft2c(coil_images))
    assert est.shape == maps.shape and est.dtype == np.complex64
    inside = np.abs(obj) > 0.1
    projected = est * np.sum(np.conj(est) * coil_images, axis=0)
    error = np.linalg.norm((projected - coil_images)[:, inside]) / np.linalg.norm(coil_images[:, inside])
    assert error < 0.05
    # ESPIRiT maps are unit-norm where they are not cropped, and cover the object
    norm = np.sum(np.abs(est) ** 2, axis=0)
    assert np.all((np.abs(norm - 1) < 1e-3) | (norm == 0))
    assert np.all(norm[np.abs(obj) > 0.3] > 0.5)


def test_estimate_validation():
    k = fft2c(simulate_coil_maps((32, 32), 2) * smooth_object(32))
    with pytest.raises(ValueError, match="kspace must be complex64"):
        estimate_coil_maps(np.abs(k))
    with pytest.raises(ValueError, match="kspace must be"):
        estimate_coil_maps(k[0])
    with pytest.raises(ValueError, match="calib_width must be <= min"):
        estimate_coil_maps(k, calib_width=40)
    with pytest.raises(ValueError, match="calib_width must be an int >= 7"):
        estimate_coil_maps(k, calib_width=6)
    with pytest.raises(ValueError, match="threshold must be"):
        estimate_coil_maps(k, threshold=0)
    with pytest.raises(ValueError, match="crop must be"):
        estimate_coil_maps(k, crop=1.0)
    with pytest.raises(ValueError, match="max_iter must be"):
        estimate_coil_maps(k, max_iter=0)
    k[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="kspace contains"):
        estimate_coil_maps(k)


def test_simulate_validation():
    with pytest.raises(ValueError, match="shape must be"):
        simulate_coil_maps((32,), 4)
    with pytest.raises(ValueError, match="num_coils must be"):
        simulate_coil_maps((32, 32), 0)
    with pytest.raises(ValueError, match="relative_radius must be"):
        simulate_coil_maps((32, 32), 4, relative_radius=-1)
    with pytest.raises(ValueError, match="phase_order must be"):
        simulate_coil_maps((32, 32), 4, phase_order=-1)
    with pytest.raises(ValueError, match="seed must be"):
        simulate_coil_maps((32, 32), 4, seed=1.5)


def test_compress_coils_keeps_the_dominant_subspace_and_exact_data_consistency():
    from mrcore.coils import compress_coils
    from mrcore.fft import fft2c

    rng = np.random.default_rng(0)
    maps = simulate_coil_maps((40, 36), 12, seed=1)
    image = rng.random((40, 36)) * np.exp(1j * rng.random((40, 36)))
    kspace = fft2c(maps * image).astype(np.complex64)
    mask = np.zeros((40, 36), np.float32)
    mask[::3] = 1
    mask[16:24] = 1
    out = compress_coils(kspace * mask, 6, mask)
    assert out.shape == (6, 40, 36) and out.dtype == np.complex64
    # a unitary projection onto the dominant coil subspace: it keeps exactly the energy of the 6 largest
    # singular values of the [coils, samples] matrix, the most any 6 coil combinations can keep
    acquired = (kspace * mask)[:, mask != 0]
    singular = np.linalg.svd(acquired, compute_uv=False)
    kept = (np.abs(out) ** 2).sum() / (np.abs(acquired) ** 2).sum()
    assert kept == pytest.approx((singular[:6] ** 2).sum() / (singular**2).sum(), rel=1e-4)
    assert np.all(out[:, mask == 0] == 0)  # unsampled samples stay unsampled
    # few coils pass through untouched
    assert np.array_equal(compress_coils(kspace[:4], 6), kspace[:4])
    with pytest.raises(ValueError, match="num_virtual"):
        compress_coils(kspace, 0)
    with pytest.raises(ValueError, match="mask"):
        compress_coils(kspace, 4, mask[:10])
