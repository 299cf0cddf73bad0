"""The synthesis input check (mrcore.synthesis_input) on the project's own data: the embedded phantom at its four
contrasts, nilearn's MNI152 T1 template, scikit-image's bundled images, random body shapes, noise and a bottle."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from mrcore.data.phantom import PhantomConfig, generate_subject, subject_protocol
from mrcore.data.randomize import RandomizationConfig, _draw_image, natural_image
from mrcore.intensity import NormalisationError, normalise_series
from mrcore.synthesis_input import (
    CONTRASTS,
    SynthesisInputError,
    check_synthesis_input,
    input_features,
    looks_like,
)


@functools.lru_cache(maxsize=1)
def _subject() -> dict[str, np.ndarray]:
    config = PhantomConfig(seed=1, sites=("hospital-b",), subjects_per_site=1, slices_per_subject=24,
                           matrix=(128, 128), cache_dir=None)
    volume = generate_subject(config, "hospital-b", 0)[10:14]  # [4 central slices, contrast, y, x]
    contrasts = subject_protocol(config, "hospital-b", 0).contrasts
    return {c: np.abs(volume[:, i]) for i, c in enumerate(contrasts)}


def phantom_series(contrast: str) -> np.ndarray:
    """float32 [4, 128, 128]: four central slices of a phantom subject (with skull; magnitude with 2 % complex
    Gaussian noise, i.e. Rician), at an arbitrary scale."""
    clean = _subject()[contrast]
    rng = np.random.default_rng(0)
    sigma = 0.02 * float(np.percentile(clean, 99))
    noisy = np.abs(clean + rng.normal(0, sigma, clean.shape) + 1j * rng.normal(0, sigma, clean.shape))
    return (1234.5 * noisy).astype(np.float32)


def check(volume: np.ndarray, expected: str = "T1w"):
    return check_synthesis_input(normalise_series(volume)[0], expected)


def codes(result) -> list[str]:
    return [f.code for f in result.findings]


@pytest.mark.parametrize("contrast", CONTRASTS)
def test_phantom_brain_answers_without_warning_on_its_own_route(contrast):
    result = check(phantom_series(contrast), contrast)
    assert result.looks_like == contrast
    assert result.findings == () and result.refusal is None
    assert result.raise_if_refused() is result


@pytest.mark.parametrize("contrast", ["T2w", "FLAIR"])
def test_t2w_or_flair_sent_as_t1w_warns_naming_both_contrasts(contrast):
    result = check(phantom_series(contrast), "T1w")
    assert codes(result) == ["contrast_mismatch"] and result.refusal is None
    message = result.warnings[0].message
    assert f"looks {contrast}" in message and "not T1w" in message


def test_t1w_sent_as_t2w_warns():
    result = check(phantom_series("T1w"), "T2w")
    assert codes(result) == ["contrast_mismatch"] and "looks T1w, not T2w" in result.warnings[0].message


def test_the_mni152_t1_template_passes_as_t1w():
    nilearn_datasets = pytest.importorskip("nilearn.datasets")
    template = nilearn_datasets.load_mni152_template().get_fdata().astype(np.float32)  # [x, y, z], 1 mm
    axial = np.transpose(template, (2, 1, 0))[60:140:8]                                 # [z, y, x]
    result = check(axial, "T1w")
    assert result.looks_like == "T1w" and result.findings == ()
    assert result.features.symmetry > 0.95
    t2 = check(axial, "T2w")
    assert codes(t2) == ["contrast_mismatch"]


@pytest.mark.parametrize("name", ["grass", "brick", "coins", "text", "moon"])
def test_natural_images_are_refused_as_no_head(name):
    image = natural_image(name)
    result = check(np.stack([image, image]))
    assert result.refusal is not None and result.refusal.code == "no_head" and result.looks_like is None
    with pytest.raises(SynthesisInputError, match="no head in the source series") as info:
        result.raise_if_refused()
    assert info.value.finding.code == "no_head"


def test_noise_and_a_uniform_bottle_are_refused_with_their_reason():
    rng = np.random.default_rng(0)
    noise = check(np.abs(rng.normal(size=(4, 96, 96))).astype(np.float32))
    assert noise.refusal is not None and "fills" in noise.refusal.message
    y, x = np.mgrid[-1:1:96j, -1:1:96j]
    bottle = np.stack([(x ** 2 + y ** 2 < 0.5) * 700.0 + rng.normal(0, 5, (96, 96)) for _ in range(4)])
    refused = check(np.abs(bottle).astype(np.float32)).refusal
    assert refused is not None and "no tissue contrast" in refused.message


def test_a_small_object_is_refused():
    vol = np.zeros((3, 128, 128), np.float32)
    vol[:, 60:68, 60:68] = 100.0 + np.arange(64, dtype=np.float32).reshape(8, 8)
    refused = check(vol).refusal
    assert refused is not None and "covers" in refused.message


def test_random_body_shapes_are_mostly_not_brain_like():
    cfg = RandomizationConfig()
    warned = 0
    for seed in range(100, 108):
        rng = np.random.default_rng(seed)
        body = np.stack([_draw_image(cfg, "body", (128, 128), rng) for _ in range(3)]).astype(np.float32)
        result = check(body)
        assert result.refusal is None  # an object with tissue contrast: answered, with warnings
        warned += bool(result.warnings)
    assert warned >= 6  # docs/synthesis_input.md: 7 of 8 of these get a warning


def test_too_small_to_normalise_stays_a_normalisation_error():
    vol = np.zeros((2, 32, 32), np.float32)
    vol[0, 5, 5] = 1.0
    with pytest.raises(NormalisationError, match="foreground voxels"):
        normalise_series(vol)


def test_features_are_scale_invariant_and_validated():
    a = input_features(normalise_series(phantom_series("T2w"))[0])
    b = input_features(normalise_series(phantom_series("T2w") * 1e-3)[0])
    assert a.public() == b.public()
    assert looks_like(a) == "T2w"
    with pytest.raises(ValueError, match="expected must be one of"):
        check_synthesis_input(np.ones((1, 32, 32), np.float32), "T3w")
    with pytest.raises(ValueError, match=r"\[slices, rows, cols\]"):
        input_features(np.ones((2, 2, 2, 2), np.float32))
