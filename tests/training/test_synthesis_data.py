"""Synthesis data scenarios and bad input: partitions, paired/unpaired records, misalignment, config errors."""

from __future__ import annotations

import numpy as np
import pytest

from mrcore.config import ConfigError
from mrcore.intensity import foreground_mask, robust_scale
from training.federation.registry import family_from_config
from training.federation.runconfig import load_run_config
from training.synthesis.config import AugmentConfig
from training.synthesis.data import (
    ContrastPairs,
    choose_paired,
    partition_counts,
    partition_fractions,
    random_affine,
)

SITES8 = [f"hospital-{c}" for c in "abcdefgh"]


def small_family(tmp_path, *extra):
    cfg = load_run_config(None, [
        "family=synthesis", f"run_dir={tmp_path / 'run'}", f"data.source.cache_dir={tmp_path / 'cache'}",
        "data.source.matrix=[24, 24]", "data.source.subjects_per_site=4", "data.source.slices_per_subject=3",
        "data.train_sites=[hospital-a, hospital-b]", "data.train_slices_total=6", "data.max_eval_slices=3",
        "model.chans=4", "model.num_res_blocks=1", "model.disc_chans=4", "objective.batch_size=2", *extra,
    ])
    return family_from_config(cfg)


@pytest.mark.parametrize("n", [2, 4, 8])
def test_partitions_give_the_stated_proportions(n):
    assert partition_fractions("average", n) == pytest.approx([1 / n] * n)
    grad = partition_fractions("gradual", n)
    assert sum(grad) == pytest.approx(1) and all(a > b for a, b in zip(grad, grad[1:]))
    ext = partition_fractions("extreme", n)
    assert ext[0] == pytest.approx(0.7) and sum(ext) == pytest.approx(1)
    assert ext[1:] == pytest.approx([0.3 / (n - 1)] * (n - 1))
    for scheme in ("average", "gradual", "extreme"):
        counts = partition_counts(1000, partition_fractions(scheme, n))
        assert sum(counts) == 1000
        assert np.allclose(np.array(counts) / 1000, partition_fractions(scheme, n), atol=1e-3)


def test_seed_partitions_for_four_sites():
    assert partition_fractions("gradual", 4) == pytest.approx([0.4, 0.3, 0.2, 0.1])
    assert partition_fractions("extreme", 4) == pytest.approx([0.7, 0.1, 0.1, 0.1])
    assert partition_counts(400, partition_fractions("gradual", 4)) == (160, 120, 80, 40)
    assert partition_counts(400, partition_fractions("extreme", 4)) == (280, 40, 40, 40)
    with pytest.raises(ValueError, match="unknown data.partition 'skewed'"):
        partition_fractions("skewed", 4)


@pytest.mark.parametrize("scheme", ["average", "gradual", "extreme"])
def test_family_sites_get_their_share_over_8_sites(tmp_path, scheme):
    fam = small_family(tmp_path, f"data.train_sites=[{', '.join(SITES8)}]", "data.source.subjects_per_site=24",
                       "data.source.slices_per_subject=20", "data.train_slices_total=400", f"data.partition={scheme}")
    counts = fam.site_counts
    assert list(counts) == SITES8 and sum(counts.values()) == 400
    np.testing.assert_allclose(np.array(list(counts.values())) / 400, partition_fractions(scheme, 8), atol=1 / 400)  # within one slice


def test_paired_ratio_and_unpaired_partners(tmp_path):
    mask = choose_paired(10, 0.3, seed=1)
    assert mask.sum() == 3
    rng = np.random.default_rng(0)
    a = rng.random((8, 16, 16)).astype(np.float32)
    ds = ContrastPairs(a, 2 * a, choose_paired(8, 0.5, 0), np.zeros(8), AugmentConfig(misalign=False), seed=0)
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            if ds.paired[i]:
                assert item["paired"] == 1 and np.allclose(item["b"], ds.b[i])
            else:
                assert item["paired"] == 0 and ds.partner[i] != i and not ds.paired[ds.partner[i]]
        assert sorted(ds.partner[~ds.paired]) == sorted(np.flatnonzero(~ds.paired))  # a permutation
    a_all = ds.a.numpy()
    np.testing.assert_allclose(np.median(a_all[foreground_mask(a_all)]), 1.0, rtol=1e-4)  # the volume's foreground median


def test_normalisation_is_per_subject_volume_and_patches_crop_pairs_alike():
    rng = np.random.default_rng(1)
    a = rng.random((6, 40, 40)).astype(np.float32) + 0.5
    a[3:] = a[:3] * 100.0  # subject 1: the same anatomy at another scanner scale
    subjects = np.array([0, 0, 0, 1, 1, 1])
    ds = ContrastPairs(a, 3 * a, np.ones(6, bool), subjects, AugmentConfig(misalign=False, patch_size=16), seed=0)
    for s in (0, 1):
        vol = ds.a[subjects == s, 0].numpy()
        assert robust_scale(vol) == pytest.approx(1.0, rel=1e-4)
    np.testing.assert_allclose(ds.a[:3, 0].numpy(), a[:3] / robust_scale(a[:3]), rtol=1e-5)
    np.testing.assert_allclose(ds.a[3:, 0].numpy(), ds.a[:3, 0].numpy(), rtol=1e-4)  # the scanner scale is gone
    item = ds[4]
    assert item["a"].shape == item["b"].shape == (1, 16, 16)
    # paired: the same position in both contrasts (b = 3a in raw units, both normalised per subject -> equal)
    np.testing.assert_allclose(item["a"].numpy(), item["b"].numpy(), rtol=1e-5)
    whole = ContrastPairs(a, 3 * a, np.ones(6, bool), subjects, AugmentConfig(misalign=False), seed=0)
    assert whole[4]["a"].shape == (1, 40, 40)
    with pytest.raises(ConfigError, match="patch_size"):
        AugmentConfig(patch_size=8)


def test_pd_to_t2w_and_t1w_to_flair_are_trainable_from_the_config(tmp_path):
    for direction in ("PD->T2w", "T1w->FLAIR"):
        fam = small_family(tmp_path / direction.replace(">", ""), f"synthesis.direction={direction}")
        assert fam.contrasts == tuple(direction.split("->"))


def test_misalignment_rotates_shifts_and_scales():
    img = np.zeros((32, 32), np.float32)
    img[8:24, 12:20] = 1
    cfg = AugmentConfig(rotation_deg=20, translation=0.1, scale=(0.8, 1.2))
    warped = [random_affine(img, np.random.default_rng(s), cfg) for s in range(4)]
    assert all(w.shape == img.shape and w.dtype == np.float32 for w in warped)
    assert all(np.abs(w - img).mean() > 0.01 for w in warped)
    np.testing.assert_allclose(random_affine(img, np.random.default_rng(0), AugmentConfig(rotation_deg=0, translation=0, scale=(1, 1))),
                               img, atol=1e-5)


def test_site_datasets_follow_the_config(tmp_path):
    fam = small_family(tmp_path, "data.site_paired_ratio={hospital-b: 0.0}")
    a, b = fam.dataset("hospital-a", "train"), fam.dataset("hospital-b", "train")
    assert len(a) == len(b) == 3
    assert a.num_paired == 2 and b.num_paired == 0
    assert len(fam.dataset("hospital-a", "val")) == 3 and len(fam.dataset("*", "heldout")) == 6


@pytest.mark.parametrize("extra,match", [
    (["synthesis.direction=T1w->T3w"], "unknown contrast 'T3w'"),
    (["synthesis.direction=T1w"], "must look like 'T1w->T2w'"),
    (["synthesis.direction=PD->PD"], "source and target contrast are both 'PD'"),
    (["data.site_contrasts={hospital-b: [T1w, PD]}"], "site 'hospital-b' has 0 slices of it"),
    (["synthesis.direction=T1w->FLAIR", "data.site_contrasts={hospital-a: [T1w, T2w], hospital-b: [T1w, T2w]}"],
     "needs contrast 'FLAIR'"),
    (["data.partition=skewed"], "data.partition' must be one of 'average', 'gradual', 'extreme'"),
    (["data.paired_ratio=1.5"], r"data.paired_ratio must be a number in \[0, 1\]"),
    (["privacy.noise_multiplier=0"], "noise_multiplier must be a number > 0"),
    (["privacy.max_grad_norm=-1"], "max_grad_norm"),
    (["privacy.delta=2"], r"delta must be in \(0, 1\)"),
    (["objective.micro_batch_size=-1"], r"objective.micro_batch_size must be >= 0 \(0: the whole batch at once\), got -1"),
    (["data.train_slices_total=100"], "50 training slices but its training subjects have only 3"),
    (["data.train_sites=[hospital-a, hospital-b, hospital-c, hospital-d, hospital-e, hospital-f]",
      "data.partition=extreme", "data.train_slices_total=6", "data.source.subjects_per_site=6"], "0 training slices"),
])
def test_bad_input_is_refused_with_a_clear_message(tmp_path, extra, match):
    with pytest.raises((ConfigError, ValueError), match=match):
        fam = small_family(tmp_path, *extra)
        fam.source  # noqa: B018  (opens the source: contrast checks)
        fam.site_counts  # noqa: B018  (counts the sites' slices: size checks)


def test_export_direction_must_be_trained(tmp_path):
    fam = small_family(tmp_path)
    arrays = fam.initial_arrays()
    assert fam.generator_for_export(arrays, "T1w->T2w").generator is not None
    assert fam.generator_for_export(arrays, "T2w->T1w").generator is not None
    with pytest.raises(ValueError, match="not 'T1w->PD'"):
        fam.generator_for_export(arrays, "T1w->PD")
