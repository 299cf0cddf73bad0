"""mrcore.masks: Cartesian line masks, Poisson-disc masks, helpers."""

import numpy as np
import pytest

from mrcore.masks import (
    MASK_KINDS,
    EquispacedMask,
    PoissonDiscMask,
    RandomMask,
    acceleration_of,
    infer_mask,
    make_mask,
)

SHAPES = [(256, 256), (255, 257), (320, 288)]
ACCELERATIONS = [4, 6, 8, 10]
CF = 0.08


def _centre(n, count):
    start = n // 2 - count // 2
    return slice(start, start + count)


def _lines(mask, axis):
    """Per-line sampling (bool [n]) of a line mask, asserting each line is all-0 or all-1."""
    m = mask if axis == -2 else mask.T
    assert np.all((m == 0) | (m == 1))
    assert np.all(m == m[:, :1]), "a line mask must be constant along the read-out axis"
    return m[:, 0] == 1


def test_mask_kinds():
    assert MASK_KINDS == ("equispaced", "random", "poisson")


@pytest.mark.parametrize("kind", ["equispaced", "random"])
@pytest.mark.parametrize("shape", SHAPES + [(33, 47)])
@pytest.mark.parametrize("acceleration", ACCELERATIONS)
@pytest.mark.parametrize("axis", [-2, -1])
def test_line_masks(kind, shape, acceleration, axis):
    mask = make_mask(kind, shape, acceleration, CF, seed=3, axis=axis)
    assert mask.dtype == np.float32 and mask.shape == shape
    n = shape[axis]
    lines = _lines(mask, axis)
    assert lines.sum() == round(n / acceleration)
    if n > 100:  # small matrices cannot hit 5 % (rounding to whole lines)
        assert abs(acceleration_of(mask) - acceleration) <= 0.05 * acceleration
    count = max(1, round(n * CF))
    assert lines[_centre(n, count)].all()
    assert lines[n // 2]


@pytest.mark.parametrize("n", [255, 257, 33])
def test_centre_block_symmetric_about_dc_for_odd_sizes(n):
    # centre_fraction chosen so that the block has an odd number of lines: symmetric about n // 2
    count = 2 * round(n * 0.04) + 1
    mask = RandomMask(2.0, count / n)((n, 16), seed=0)
    lines = _lines(mask, -2)
    assert lines[n // 2 - count // 2: n // 2 + count // 2 + 1].all()
    mask = EquispacedMask(2.5, 0.1, axis=-1)((16, n), seed=1)
    assert _lines(mask, -1)[n // 2]


@pytest.mark.parametrize("kind", ["equispaced", "random"])
def test_float_acceleration(kind):
    mask = make_mask(kind, (200, 64), 2.5, 0.1, seed=0)
    assert _lines(mask, -2).sum() == 80
    mask = make_mask(kind, (200, 64), 3.3, 0.1, seed=0)
    assert _lines(mask, -2).sum() == round(200 / 3.3)


def test_equispaced_is_equispaced():
    mask = EquispacedMask(4, CF)((256, 32), seed=0)
    lines = np.flatnonzero(_lines(mask, -2))
    centre = set(range(*_centre(256, round(256 * CF)).indices(256)))
    outside = np.array([i for i in lines if i not in centre])
    gaps = np.diff(outside[outside < min(centre)])
    assert gaps.max() - gaps.min() <= 1  # equispaced up to rounding


def test_axis_minus_one_samples_columns():
    mask = make_mask("random", (40, 320), 4, CF, seed=0, axis=-1)
    assert np.all(mask == mask[:1, :])  # every row identical: whole columns
    assert mask[:, 160].all() and mask.sum() == 40 * 80
    rows = make_mask("random", (320, 40), 4, CF, seed=0, axis=-2)
    assert np.all(rows == rows[:, :1])


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_determinism_per_seed(kind):
    shape = (64, 72)
    a = make_mask(kind, shape, 4, 0.1, seed=5)
    np.testing.assert_array_equal(a, make_mask(kind, shape, 4, 0.1, seed=5))
    masks = {make_mask(kind, shape, 4, 0.1, seed=s).tobytes() for s in range(6)}
    assert len(masks) > 1
    if kind != "equispaced":  # equispaced masks differ only by their offset
        assert len(masks) == 6


def test_seed_none_draws_fresh_masks():
    masks = {RandomMask(4, CF)((128, 8)).tobytes() for _ in range(4)}
    assert len(masks) > 1


def test_classes_equal_make_mask():
    np.testing.assert_array_equal(EquispacedMask(6, CF, axis=-1)((64, 96), seed=2),
                                  make_mask("equispaced", (64, 96), 6, CF, seed=2, axis=-1))
    np.testing.assert_array_equal(RandomMask(6, CF)((96, 64), seed=2), make_mask("random", (96, 64), 6, CF, seed=2))
    np.testing.assert_array_equal(PoissonDiscMask(4, calib=(5, 6))((64, 80), seed=2),
                                  make_mask("poisson", (64, 80), 4, CF, seed=2))


# --- Poisson disc ----------------------------------------------------------------------------------
def _check_poisson(mask, shape, acceleration, calib):
    assert mask.dtype == np.float32 and mask.shape == shape
    assert np.all((mask == 0) | (mask == 1))
    assert abs(acceleration_of(mask) - acceleration) <= 0.05 * acceleration
    assert mask[_centre(shape[0], calib[0]), _centre(shape[1], calib[1])].all()
    # genuinely 2-D: neither rows nor columns are whole lines
    assert not np.all(mask == mask[:, :1]) and not np.all(mask == mask[:1, :])
    # variable density: the centre (beyond the calibration box) is denser than the periphery
    ny, nx = shape
    y, x = np.mgrid[:ny, :nx]
    r = np.hypot((y - ny // 2) / ny, (x - nx // 2) / nx)
    inner = (r < 0.2) & (r > 0.5 * max(calib[0] / ny, calib[1] / nx) + 0.02)
    assert mask[inner].mean() > 1.5 * mask[(r > 0.3) & (r < 0.45)].mean()


# each large shape and each acceleration once (sigpy's Poisson-disc takes ~1-2 s per large mask)
@pytest.mark.parametrize("shape,acceleration", [((256, 256), 8), ((255, 257), 4), ((320, 288), 10),
                                                ((192, 160), 6)])
def test_poisson_large(shape, acceleration):
    _check_poisson(PoissonDiscMask(acceleration)(shape, seed=0), shape, acceleration, (20, 20))


@pytest.mark.parametrize("shape", [(64, 64), (65, 79), (80, 47)])
@pytest.mark.parametrize("acceleration", ACCELERATIONS + [2.5])
def test_poisson_small(shape, acceleration):
    calib = (6, 7)
    _check_poisson(PoissonDiscMask(acceleration, calib)(shape, seed=1), shape, acceleration, calib)


def test_poisson_make_mask_calibration_from_center_fraction():
    mask = make_mask("poisson", (100, 75), 5, 0.1, seed=0)
    _check_poisson(mask, (100, 75), 5, (10, 8))


# --- helpers ------------------------------------------------------------------------------------
def test_acceleration_of():
    mask = np.zeros((4, 6), np.float32)
    mask[1] = 1
    assert acceleration_of(mask) == 4.0
    mask[2, :3] = 1
    assert acceleration_of(mask) == pytest.approx(24 / 9)
    with pytest.raises(ValueError, match="samples nothing"):
        acceleration_of(np.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"mask must be \[ky, kx\]"):
        acceleration_of(np.ones((2, 4, 4)))


def test_infer_mask():
    rng = np.random.default_rng(0)
    mask = make_mask("random", (32, 24), 4, 0.1, seed=0)
    k = (rng.standard_normal((3, 32, 24)) + 1j * rng.standard_normal((3, 32, 24))).astype(np.complex64) * mask
    inferred = infer_mask(k)
    assert inferred.dtype == np.float32
    np.testing.assert_array_equal(inferred, mask)
    # a sample counts when any coil has it
    k2 = np.zeros((2, 4, 4), np.complex64)
    k2[1, 2, 3] = 1j
    expected = np.zeros((4, 4), np.float32)
    expected[2, 3] = 1
    np.testing.assert_array_equal(infer_mask(k2), expected)
    np.testing.assert_array_equal(infer_mask(k2[1]), expected)
    with pytest.raises(ValueError, match="kspace must be complex64"):
        infer_mask(np.abs(k))


# --- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize("acceleration", [1, 1.0, 0.5, -4, float("nan"), float("inf"), "4", None, True])
@pytest.mark.parametrize("kind", MASK_KINDS)
def test_bad_acceleration(kind, acceleration):
    with pytest.raises(ValueError, match="acceleration must be"):
        make_mask(kind, (64, 64), acceleration)


@pytest.mark.parametrize("center_fraction", [0, 1, -0.1, 1.5, float("nan"), None])
@pytest.mark.parametrize("kind", MASK_KINDS)
def test_bad_center_fraction(kind, center_fraction):
    with pytest.raises(ValueError, match="center_fraction must be in"):
        make_mask(kind, (64, 64), 4, center_fraction)


def test_impossible_acceleration():
    with pytest.raises(ValueError, match="centre block alone has 16 lines"):
        make_mask("equispaced", (32, 32), 4, 0.5)  # 16 centre lines > 8
    with pytest.raises(ValueError, match="fewer than 1 line"):
        make_mask("random", (4, 64), 10, 0.1)
    with pytest.raises(ValueError, match="impossible"):
        make_mask("random", (64, 5), 8, 0.1, axis=-1)
    with pytest.raises(ValueError, match="calibration box"):
        PoissonDiscMask(8, calib=(20, 20))((48, 48), seed=0)
    with pytest.raises(ValueError, match="calib"):
        PoissonDiscMask(4, calib=(20, 20))((16, 64), seed=0)
    with pytest.raises(ValueError, match="acceleration must be >= 2"):
        PoissonDiscMask(1.5)


@pytest.mark.parametrize("shape", [(0, 5), (5,), (5, 5, 5), (5.0, 5), (-1, 4), "ab", 7, (True, 4)])
def test_bad_shape(shape):
    with pytest.raises(ValueError, match="shape must be 2 positive ints"):
        make_mask("random", shape, 4)


def test_other_errors():
    with pytest.raises(ValueError, match="unknown mask kind 'radial'"):
        make_mask("radial", (64, 64), 4)
    with pytest.raises(ValueError, match="axis must be"):
        make_mask("equispaced", (64, 64), 4, axis=2)
    with pytest.raises(ValueError, match="seed must be"):
        make_mask("random", (64, 64), 4, seed=-1)
    with pytest.raises(ValueError, match="calib must be"):
        PoissonDiscMask(4, calib=(3,))
