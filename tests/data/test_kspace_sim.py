"""Image-to-k-space simulation: smooth phase, coil encoding with noise, resolution truncation."""

from __future__ import annotations

import numpy as np
import pytest

from mrcore.coils import simulate_coil_maps
from mrcore.data.kspace_sim import simulate_kspace, smooth_phase, truncate_resolution
from mrcore.fft import fft2c, ifft2c


def _disk(n: int = 64) -> np.ndarray:
    y, x = np.mgrid[:n, :n] - n / 2
    return (np.hypot(y, x) < n / 3).astype(np.float32)


def test_smooth_phase():
    p = smooth_phase((40, 50), seed=3, order=2, max_rad=1.5)
    assert p.shape == (40, 50) and p.dtype == np.float32
    assert np.abs(p).max() == pytest.approx(1.5, rel=1e-6)
    np.testing.assert_array_equal(p, smooth_phase((40, 50), seed=3, order=2, max_rad=1.5))
    assert not np.array_equal(p, smooth_phase((40, 50), seed=4, order=2, max_rad=1.5))
    np.testing.assert_array_equal(smooth_phase((8, 8), seed=[1, 2, 3]), smooth_phase((8, 8), seed=[1, 2, 3]))
    const = smooth_phase((8, 8), seed=0, order=0, max_rad=0.5)
    assert np.ptp(const) == 0 and abs(const[0, 0]) == pytest.approx(0.5)
    assert np.abs(np.diff(p, axis=1)).max() < 0.5  # smooth
    with pytest.raises(ValueError, match="order"):
        smooth_phase((8, 8), seed=0, order=-1)
    with pytest.raises(ValueError, match="shape"):
        smooth_phase((8,), seed=0)


def test_simulate_kspace_noise_free_and_noisy():
    img = _disk() * np.exp(1j * smooth_phase((64, 64), 0)).astype(np.complex64)
    maps = simulate_coil_maps((64, 64), 4, seed=1)
    k0 = simulate_kspace(img, maps, 0.0, np.random.default_rng(0))
    assert k0.shape == (4, 64, 64) and k0.dtype == np.complex64
    np.testing.assert_allclose(k0, fft2c(maps * img), atol=1e-5)
    # RSS of the coil images is the object magnitude (sum_c |S_c|^2 == 1)
    np.testing.assert_allclose(np.sqrt((np.abs(ifft2c(k0)) ** 2).sum(0)), np.abs(img), atol=1e-5)
    sigma = 0.05
    k = simulate_kspace(img, maps, sigma, np.random.default_rng(0))
    noise = k - k0
    assert noise.real.std() == pytest.approx(sigma, rel=0.03) and noise.imag.std() == pytest.approx(sigma, rel=0.03)
    # orthonormal FFT: the same sigma in the image domain
    assert ifft2c(noise).real.std() == pytest.approx(sigma, rel=0.03)
    np.testing.assert_array_equal(k, simulate_kspace(img, maps, sigma, np.random.default_rng(0)))
    # a real magnitude image is accepted (readers of magnitude-only data)
    assert simulate_kspace(_disk(), maps, 0.0, np.random.default_rng(0)).dtype == np.complex64


@pytest.mark.parametrize(
    "args, field",
    [
        ((np.zeros((4, 64, 64)), "maps"), "image"),
        ((None, "maps"), "image"),
        ((_disk(), np.abs(simulate_coil_maps((64, 64), 2))), "maps"),
        ((_disk(), simulate_coil_maps((32, 32), 2)), "maps"),
    ],
)
def test_simulate_kspace_validation(args, field):
    image, maps = args
    if isinstance(maps, str):
        maps = simulate_coil_maps((64, 64), 2)
    with pytest.raises(ValueError, match=field):
        simulate_kspace(image, maps, 0.01, np.random.default_rng(0))


def test_simulate_kspace_validation_sigma_and_rng():
    maps = simulate_coil_maps((64, 64), 2)
    with pytest.raises(ValueError, match="noise_sigma"):
        simulate_kspace(_disk(), maps, -1.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="rng"):
        simulate_kspace(_disk(), maps, 0.1, 0)


@pytest.mark.parametrize("n", [64, 63])
def test_truncate_resolution(n):
    img = np.random.default_rng(0).standard_normal((2, n, n)).astype(np.float32)
    out = truncate_resolution(img, 0.5)
    assert out.shape == img.shape and out.dtype == np.float32
    spec = fft2c(out)
    f = np.abs(np.arange(n) - n // 2)
    outside = (f[:, None] > n / 4) | (f[None, :] > n / 4)
    assert np.abs(spec[..., outside]).max() < 1e-4  # nothing beyond the central half
    inside = ~outside
    np.testing.assert_allclose(spec[..., inside], fft2c(img)[..., inside], atol=1e-4)
    # complex input: same result as the centred-FFT definition; real input stays real
    z = img[0] + 1j * img[1]
    zc = truncate_resolution(z, 0.5)
    assert zc.dtype == np.complex64
    np.testing.assert_allclose(zc, ifft2c(np.where(inside, fft2c(z), 0)), atol=1e-5)
    np.testing.assert_allclose(zc.real, out[0], atol=1e-5)
    np.testing.assert_array_equal(truncate_resolution(img, 1.0), img)


def test_truncate_resolution_validation():
    with pytest.raises(ValueError, match="fraction"):
        truncate_resolution(_disk(), 0.0)
    with pytest.raises(ValueError, match="fraction"):
        truncate_resolution(_disk(), 1.5)
    with pytest.raises(ValueError, match="image"):
        truncate_resolution(np.zeros(5), 0.5)
