"""Run-directory bookkeeping of the coordinator: checkpoints, resumption guard, metrics files."""

import numpy as np
import pytest
import yaml

from training.federation.coordinator import RunMismatch, check_same_run, latest_checkpoint
from training.federation.records import load_arrays, save_arrays


def test_latest_checkpoint_and_atomic_save(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for r in (1, 2, 10):
        save_arrays({"w": np.full(3, r, np.float32)}, tmp_path / "checkpoints" / f"round_{r:03d}.npz")
    rnd, path = latest_checkpoint(tmp_path)
    assert rnd == 10 and load_arrays(path)["w"][0] == 10
    assert not list((tmp_path / "checkpoints").glob("*.tmp*"))


def test_resume_refuses_a_changed_configuration(tmp_path):
    cfg = {"family": "recon", "seed": 0, "mask": {"acceleration": 4.0}, "federation": {"rounds": 5, "resume": True}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    check_same_run(tmp_path, cfg)  # no checkpoint yet: nothing to protect
    save_arrays({"w": np.zeros(1, np.float32)}, tmp_path / "checkpoints" / "round_001.npz")
    check_same_run(tmp_path, {**cfg, "federation": {"rounds": 9, "resume": True}})  # more rounds: fine
    with pytest.raises(RunMismatch, match="changed: mask"):
        check_same_run(tmp_path, {**cfg, "mask": {"acceleration": 8.0}})


def test_resume_accepts_a_run_saved_before_a_key_was_added(tmp_path):
    """A run saved before the schema gained a key (here ``mrcm``) is the same run when the new key keeps
    its default; setting that key to something else is a change."""
    from training.federation.runconfig import load_run_config

    cfg = load_run_config(None, ["family=recon", f"run_dir={tmp_path}"])
    old = {k: v for k, v in cfg.items() if k != "mrcm"}  # what a run written before FL-MRCM saved
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    save_arrays({"w": np.zeros(1, np.float32)}, tmp_path / "checkpoints" / "round_001.npz")
    check_same_run(tmp_path, cfg)
    changed = load_run_config(None, ["family=recon", f"run_dir={tmp_path}", "mrcm.enabled=true",
                                     "data.heldout_adapt_subjects=2"])
    with pytest.raises(RunMismatch, match="changed: data, mrcm"):
        check_same_run(tmp_path, changed)
