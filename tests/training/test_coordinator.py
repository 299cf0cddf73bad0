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
