"""mrcore.data.randomize: the ranges of the randomised reconstruction data, and their validation."""

import numpy as np
import pytest

from mrcore.config import ConfigError, build
from mrcore.data.randomize import Geometry, RandomizationConfig, draw_example, draw_geometry
from mrcore.fft import ifft2c


def _geometry(**kw) -> Geometry:
    base = {"shape": (64, 48), "coils": 4, "mask_kind": "equispaced", "axis": -1, "oversampled": False,
            "acceleration": 4.0, "center_fraction": 0.08}
    return Geometry(**{**base, **kw})


def test_examples_are_deterministic_per_seed_and_differ_between_seeds():
    cfg = RandomizationConfig(sources={"natural": 1.0, "body": 1.0})
    a, b = draw_example(cfg, _geometry(), (3, 1)), draw_example(cfg, _geometry(), (3, 1))
    c = draw_example(cfg, _geometry(), (3, 2))
    assert np.array_equal(a.kspace, b.kspace) and np.array_equal(a.mask, b.mask)
    assert not np.array_equal(a.kspace, c.kspace)


@pytest.mark.parametrize("source", ["phantom", "natural", "body"])
def test_every_source_gives_consistent_kspace_mask_and_target(source):
    cfg = RandomizationConfig(sources={source: 1.0})
    g = _geometry(shape=(57, 80), coils=3, axis=-2)
    ex = draw_example(cfg, g, 11)
    assert ex.source == source
    assert ex.kspace.shape == (3, 57, 80) and ex.kspace.dtype == np.complex64
    assert ex.mask.shape == (57, 80) and set(np.unique(ex.mask)) == {0.0, 1.0}
    assert np.allclose(ex.mask, ex.mask[:, :1])  # axis -2: whole rows sampled
    rss = np.sqrt((np.abs(ifft2c(ex.kspace)) ** 2).sum(axis=0))
    assert np.allclose(ex.target, rss, rtol=1e-4, atol=1e-6)  # target = RSS of the fully sampled coils
    assert np.isfinite(ex.kspace).all() and ex.target.max() > 0


def test_geometry_draws_stay_in_the_configured_ranges():
    cfg = RandomizationConfig(matrix=(96, 400), coils=(1, 32), acceleration=(2.0, 10.0), center_fraction=(0.04, 0.16),
                              max_pixels=400 * 800)
    draws = [draw_geometry(cfg, np.random.default_rng(i)) for i in range(300)]
    for g in draws:
        long_axis = 1 if g.axis == -2 else 0  # read-out oversampling doubles the read-out axis
        assert 96 <= min(g.shape) and max(g.shape) <= 800
        assert 1 <= g.coils <= 32 and 2.0 <= g.acceleration <= 10.0
        assert g.center_fraction * g.acceleration <= 0.8 + 1e-9  # the centre never exceeds the lines left
        if not g.oversampled:
            assert g.shape[long_axis] <= 400
    assert {g.axis for g in draws} == {-2, -1}
    assert {g.mask_kind for g in draws} == {"equispaced", "random", "poisson"}
    assert any(g.oversampled for g in draws) and any(g.coils == 1 for g in draws) and any(g.coils >= 24 for g in draws)
    assert any(s % 2 for g in draws for s in g.shape)  # odd sizes drawn


def test_crops_bound_the_pixels():
    cfg = RandomizationConfig(max_pixels=96 * 96)
    for i in range(50):
        g = draw_geometry(cfg, np.random.default_rng(i))
        assert g.shape[0] * g.shape[1] <= 96 * 96 or min(g.shape) == 48


@pytest.mark.parametrize(("data", "key"), [
    ({"acceleration": [2, 10], "center_fraction": [0.1, 0.16]}, "acceleration"),
    ({"matrix": [400, 96]}, "matrix"),
    ({"mask_kinds": {"spiral": 1.0}}, "spiral"),
    ({"natural_images": ["camera", "lena"]}, "lena"),
    ({"sources": {"phantom": 1, "mri": 1}}, "mri"),
    ({"coils": [0, 8]}, "coils"),
    ({"snr_db": [30]}, "snr_db"),
])
def test_contradictions_and_unknown_names_are_config_errors_naming_the_key(data, key):
    with pytest.raises(ConfigError, match=key):
        build(RandomizationConfig, data, "data.randomize.")
