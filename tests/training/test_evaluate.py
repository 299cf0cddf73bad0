"""Reconstruction evaluation: baselines and trained models on held-out and validation data."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from training.cli import app
from training.federation.records import save_arrays
from training.federation.registry import family_from_config
from training.federation.runconfig import load_run_config
from training.recon.evaluate import evaluate_split

pytestmark = pytest.mark.slow


def tiny(tmp_path) -> list[str]:
    return [
        "family=recon", f"run_dir={tmp_path / 'run'}", f"data.source.cache_dir={tmp_path / 'cache'}",
        "data.source.matrix=[64, 64]", "data.source.subjects_per_site=3", "data.source.slices_per_subject=2",
        "data.train_sites=[hospital-a, hospital-b]", "data.heldout_site=hospital-c", "data.num_coils=4",
        "data.val_subjects=1", "mask.center_fraction=0.25", "mask.acceleration=3", "model.chans=8", "model.num_cascades=1",
        "model.sens_chans=4",
    ]


def test_baselines_and_model_metrics(tmp_path):
    cfg = load_run_config(None, tiny(tmp_path))
    family = family_from_config(cfg)
    res = evaluate_split(family, "hospital-c", "heldout", generator=family.generator_from(family.initial_arrays()),
                         cs_lambda=0.002, progress=False)
    assert set(res) == {"zero-filled", "model", "cs"}
    for m in res.values():
        assert np.isfinite(m["psnr"]) and 0 < m["ssim"] <= 1 and m["nmse"] > 0
    # CS uses the coils' redundancy; it must beat zero-filled here
    assert res["cs"]["psnr"] > res["zero-filled"]["psnr"]


def test_evaluate_command_writes_table(tmp_path):
    cfg = load_run_config(None, tiny(tmp_path))
    family = family_from_config(cfg)
    run = tmp_path / "run"
    save_arrays(family.initial_arrays(), run / "checkpoints" / "round_001.npz")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "table.md"
    res = CliRunner().invoke(app, ["evaluate-recon", "-c", str(cfg_file), "-m", f"init={run}", "--out", str(out), "--no-cs"])
    assert res.exit_code == 0, res.output
    text = out.read_text()
    assert "Scenario 1: unseen site | hospital-c | init |" in text
    assert text.count("Scenario 2: own site") == 4  # 2 sites x (zero-filled, init)
    bad = CliRunner().invoke(app, ["evaluate-recon", "-c", str(cfg_file), "-m", f"x={tmp_path / 'nope'}", "--no-cs"])
    assert bad.exit_code != 0 and "no checkpoint" in bad.output
