"""mrcore.sense: the SENSE operator, its adjoint and the simple reconstructions."""

import numpy as np
import pytest
import sigpy.mri

from mrcore.fft import fft2c, ifft2c
from mrcore.sense import coil_combine, rss, sense_adjoint, sense_forward, zero_filled

COILS, NY, NX = 4, 17, 23


def _cplx(shape, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def _maps(seed=1, shape=(COILS, NY, NX)):
    s = _cplx(shape, seed)
    return (s / np.sqrt(np.sum(np.abs(s) ** 2, axis=0))).astype(np.complex64)


def _mask(seed=2, shape=(NY, NX)):
    return (np.random.default_rng(seed).random(shape) < 0.4).astype(np.float32)


def _inner(a, b):
    return np.vdot(a.astype(np.complex128), b.astype(np.complex128))


@pytest.mark.parametrize("use_mask", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_adjointness(use_mask, seed):
    x = _cplx((NY, NX), 10 + seed)
    y = _cplx((COILS, NY, NX), 20 + seed)
    maps = _cplx((COILS, NY, NX), 30 + seed)  # not normalised: adjointness holds for any maps
    mask = _mask(seed) if use_mask else None
    lhs = _inner(sense_forward(x, maps, mask), y)
    rhs = _inner(x, sense_adjoint(y, maps, mask))
    assert abs(lhs - rhs) <= 1e-5 * abs(lhs)


def test_mask_is_applied():
    x, maps, mask = _cplx((NY, NX), 0), _maps(), _mask()
    k = sense_forward(x, maps, mask)
    assert np.all(k[:, mask == 0] == 0)
    np.testing.assert_allclose(k, mask * sense_forward(x, maps), atol=1e-6)


@pytest.mark.parametrize("use_mask", [False, True])
def test_equals_sigpy_sense(use_mask):
    x, maps = _cplx((NY, NX), 3), _maps(4)
    mask = _mask(5) if use_mask else None
    A = sigpy.mri.linop.Sense(maps, weights=mask)
    y = _cplx((COILS, NY, NX), 6)
    np.testing.assert_allclose(sense_forward(x, maps, mask), A(x), atol=1e-5)
    np.testing.assert_allclose(sense_adjoint(y, maps, mask), A.H(y), atol=1e-5)


def test_output_dtypes():
    x, maps = _cplx((NY, NX), 0).astype(np.complex128), _maps().astype(np.complex128)
    assert sense_forward(x, maps).dtype == np.complex64
    assert sense_adjoint(sense_forward(x, maps), maps).dtype == np.complex64
    assert zero_filled(sense_forward(x, maps)).dtype == np.float32
    assert coil_combine(sense_forward(x, maps), maps).dtype == np.complex64


def test_zero_filled_fully_sampled_equals_magnitude():
    image = _cplx((NY, NX), 7)
    maps = _maps(8)
    k = sense_forward(image, maps)
    np.testing.assert_allclose(zero_filled(k), np.abs(image), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(zero_filled(k, np.ones((NY, NX), np.float32)), np.abs(image), rtol=1e-5, atol=1e-6)


def test_zero_filled_masked_and_single_coil():
    k = _cplx((COILS, NY, NX), 9)
    mask = _mask(10)
    expected = np.sqrt(np.sum(np.abs(ifft2c(k * mask)) ** 2, axis=0))
    np.testing.assert_allclose(zero_filled(k, mask), expected, rtol=1e-5)
    np.testing.assert_allclose(zero_filled(k[0], mask), np.abs(ifft2c(k[0] * mask)), rtol=1e-5)


def test_coil_combine_recovers_image():
    image = _cplx((NY, NX), 11)
    maps = _maps(12)
    k = fft2c(maps * image)
    np.testing.assert_allclose(coil_combine(k, maps), image, atol=1e-5)
    # least-squares weighting: not fooled by un-normalised maps
    np.testing.assert_allclose(coil_combine(fft2c(3 * maps * image), 3 * maps), image, atol=1e-5)
    # zero where all maps vanish
    cropped = maps.copy()
    cropped[:, :3] = 0
    assert np.all(coil_combine(k, cropped)[:3] == 0)


def test_rss_values():
    images = np.zeros((2, 3, 4), np.complex64)
    images[0] = 3
    images[1] = 4j
    np.testing.assert_allclose(rss(images), np.full((3, 4), 5.0))
    assert rss(images).dtype == np.float32
    np.testing.assert_allclose(rss(np.abs(images)), np.full((3, 4), 5.0))
    stacked = np.stack([images, 2 * images])  # [slices, coils, y, x]
    np.testing.assert_allclose(rss(stacked, axis=1), np.stack([np.full((3, 4), 5.0), np.full((3, 4), 10.0)]))


# --- validation ---------------------------------------------------------------------------------
def test_rejects_real_kspace():
    with pytest.raises(ValueError, match="kspace must be complex64"):
        sense_adjoint(np.ones((COILS, NY, NX), np.float32), _maps())
    with pytest.raises(ValueError, match="kspace must be complex64"):
        zero_filled(np.ones((COILS, NY, NX), np.float32))


def test_rejects_wrong_rank():
    with pytest.raises(ValueError, match="kspace must be"):
        sense_adjoint(_cplx((NY, NX), 0), _maps())
    with pytest.raises(ValueError, match="kspace must be"):
        zero_filled(_cplx((2, COILS, NY, NX), 0))
    with pytest.raises(ValueError, match="image must be"):
        sense_forward(_cplx((1, NY, NX), 0), _maps())
    with pytest.raises(ValueError, match="coil_images must be"):
        rss(np.ones((NY, NX)))


def test_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="mask must have shape"):
        sense_forward(_cplx((NY, NX), 0), _maps(), np.ones((NY, 1), np.float32))  # no broadcasting
    with pytest.raises(ValueError, match="mask must have shape"):
        zero_filled(_cplx((COILS, NY, NX), 0), np.ones((NX, NY), np.float32))
    with pytest.raises(ValueError, match="maps must have shape"):
        sense_adjoint(_cplx((COILS, NY, NX), 0), _maps(shape=(COILS + 1, NY, NX)))
    with pytest.raises(ValueError, match="maps must have shape"):
        sense_forward(_cplx((NY, NX + 1), 0), _maps())


def test_rejects_nan_and_bad_types():
    k = _cplx((COILS, NY, NX), 0)
    k[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="kspace contains 1 NaN"):
        zero_filled(k)
    maps = _maps()
    maps[1, 2, 3] = np.inf
    with pytest.raises(ValueError, match="maps contains"):
        sense_forward(_cplx((NY, NX), 0), maps)
    mask = _mask()
    mask[0, 0] = np.nan
    with pytest.raises(ValueError, match="mask contains"):
        sense_adjoint(_cplx((COILS, NY, NX), 0), _maps(), mask)
    with pytest.raises(ValueError, match="mask must be real"):
        sense_adjoint(_cplx((COILS, NY, NX), 0), _maps(), _cplx((NY, NX), 0))
    with pytest.raises(ValueError, match="image must be complex64"):
        sense_forward(np.ones((NY, NX), np.float32), _maps())
    with pytest.raises(ValueError, match="maps is required"):
        coil_combine(_cplx((COILS, NY, NX), 0), None)
