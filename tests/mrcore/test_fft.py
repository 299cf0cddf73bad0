"""mrcore.fft: centred orthonormal FFT over the last two axes."""

import numpy as np
import pytest
import sigpy

from mrcore.fft import fft2c, ifft2c

SHAPES = [(8, 8), (7, 9), (33, 47), (3, 255, 257), (2, 4, 16, 15)]


def _random(shape, dtype=np.complex64, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)


@pytest.mark.parametrize("shape", SHAPES)
def test_parseval(shape):
    x = _random(shape, np.complex128)
    k = fft2c(x)
    # per 2-D slice, not just in total
    np.testing.assert_allclose(np.linalg.norm(k, axis=(-2, -1)), np.linalg.norm(x, axis=(-2, -1)), rtol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(ifft2c(x), axis=(-2, -1)), np.linalg.norm(x, axis=(-2, -1)), rtol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_inverse(shape):
    x = _random(shape)
    np.testing.assert_allclose(ifft2c(fft2c(x)), x, atol=1e-5)
    np.testing.assert_allclose(fft2c(ifft2c(x)), x, atol=1e-5)


@pytest.mark.parametrize("shape", [(8, 8), (7, 9), (16, 15), (33, 47), (1, 5)])
def test_dc_at_n_over_2(shape):
    ny, nx = shape
    k = fft2c(np.full(shape, 2.0 + 0j))
    expected = np.zeros(shape, complex)
    expected[ny // 2, nx // 2] = 2.0 * np.sqrt(ny * nx)
    np.testing.assert_allclose(k, expected, atol=1e-12)
    # and the image centre is the origin: a delta there has flat, real k-space
    delta = np.zeros(shape, complex)
    delta[ny // 2, nx // 2] = 1
    np.testing.assert_allclose(fft2c(delta), np.full(shape, 1 / np.sqrt(ny * nx)), atol=1e-12)
    np.testing.assert_allclose(ifft2c(expected), np.full(shape, 2.0), atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_equals_sigpy(shape):
    x = _random(shape, np.complex128, seed=1)
    np.testing.assert_allclose(fft2c(x), sigpy.fft(x, axes=(-2, -1), center=True, norm="ortho"), atol=1e-10)
    np.testing.assert_allclose(ifft2c(x), sigpy.ifft(x, axes=(-2, -1), center=True, norm="ortho"), atol=1e-10)


def test_dtypes():
    assert fft2c(_random((4, 5))).dtype == np.complex64
    assert fft2c(np.ones((4, 5), np.float32)).dtype == np.complex64
    assert fft2c(np.ones((4, 5))).dtype == np.complex128
    assert ifft2c(_random((4, 5), np.complex128)).dtype == np.complex128
