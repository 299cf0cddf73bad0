"""The reconstruction family without federation: data splits, pooled ('Mix') training, site state."""

from __future__ import annotations

import numpy as np
import torch

from training.federation.registry import family_from_config
from training.federation.runconfig import load_run_config


def family(tmp_path, *extra):
    cfg = load_run_config(None, [
        "family=recon", f"run_dir={tmp_path / 'run'}", f"data.source.cache_dir={tmp_path / 'cache'}",
        "data.source.matrix=[40, 40]", "data.source.subjects_per_site=3", "data.source.slices_per_subject=2",
        "data.train_sites=[hospital-a, hospital-b]", "data.heldout_site=null", "data.num_coils=4",
        "data.val_subjects=1", "model.chans=8", "model.num_cascades=1", "model.sens_chans=4",
        "objective.batch_size=2", *extra,
    ])
    return family_from_config(cfg)


def test_subject_split_is_disjoint(tmp_path):
    fam = family(tmp_path)
    src = fam.source
    for site in fam.train_sites:
        train, val = fam.dataset(site, "train"), fam.dataset(site, "val")
        assert len(train) == 4 and len(val) == 2
    from training.recon.data import split_by_subject

    sp = split_by_subject(src, "hospital-a", 1)
    assert {src.subject("hospital-a", i) for i in sp.train}.isdisjoint({src.subject("hospital-a", i) for i in sp.val})


def test_pooled_site_holds_every_training_site(tmp_path):
    fam = family(tmp_path, "data.pooled=true")
    assert fam.train_sites == ("pooled",)
    pooled = fam.dataset("pooled", "train")
    parts = [fam.dataset(s, "train") for s in ("hospital-a", "hospital-b")]
    assert len(pooled) == sum(len(p) for p in parts)
    torch.testing.assert_close(pooled.target[len(parts[0]):], parts[1].target)
    assert len(set(pooled.subject.tolist())) == 4
    update = fam.train_site("pooled", fam.initial_arrays(), 1, tmp_path / "state")
    assert update.num_examples == 8


def test_critic_state_persists_between_rounds(tmp_path):
    fam = family(tmp_path, "objective.kind=unpaired")
    init = fam.initial_arrays()
    state = tmp_path / "state"
    u1 = fam.train_site("hospital-a", init, 1, state)
    saved = torch.load(state / "state_round_001.pt", weights_only=True)
    assert "critic" in saved and saved["step"] == 1  # 2 input slices / batch 2 (the other half are labels)
    fam.train_site("hospital-a", u1.arrays, 2, state)
    again = torch.load(state / "state_round_002.pt", weights_only=True)
    assert again["step"] == 2
    moved = [not torch.equal(saved["critic"][k], again["critic"][k]) for k in saved["critic"]]
    assert any(moved), "round 2 must continue training the critic saved after round 1"
    assert set(u1.arrays) == set(init) and not any("critic" in k for k in u1.arrays)
    assert np.isfinite(u1.metrics["loss"])
