"""The command-line entry points: --help everywhere, the data commands on a tiny phantom, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from training.cli import app as train_app
from training.data_cli import app as data_app

runner = CliRunner()


def tiny(tmp_path) -> list[str]:
    return ["--set", "matrix=[48, 48]", "--set", "subjects_per_site=1", "--set", "slices_per_subject=2",
            "--set", f"cache_dir={tmp_path}", "--set", "sites=[hospital-a, hospital-b]"]


@pytest.mark.parametrize("module", ["training.data_cli", "training.cli"])
def test_help_runs_as_a_program(module):
    res = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Usage" in res.stdout


def test_info_generate_and_preview(tmp_path):
    res = runner.invoke(data_app, ["generate", *tiny(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "2 sites, 4 slices" in res.output
    res = runner.invoke(data_app, ["info", *tiny(tmp_path)])
    assert "hospital-a: 2 slices, 1 subjects, contrasts T1w, T2w, PD, FLAIR" in res.output
    out = tmp_path / "p.png"
    res = runner.invoke(data_app, ["preview", "--out", str(out), *tiny(tmp_path)])
    assert res.exit_code == 0, res.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "kind=dicom"], "'kind' must be one of"),
        (["--set", "sites=[hospital-z]"], "hospital-z"),
        (["--set", "matrixx=[1, 2]"], "unknown config key 'matrixx'"),
        (["--set", "kind=nifti"], "needs 'root'"),
    ],
)
def test_data_cli_rejects_bad_config(tmp_path, args, message):
    res = runner.invoke(data_app, ["info", "--set", f"cache_dir={tmp_path}", *args])
    assert res.exit_code != 0
    assert message in res.output or message in str(res.exception)


@pytest.mark.parametrize(
    "override, message",
    [
        ("federation.roundz=3", "unknown config key 'federation.roundz'"),
        ("mask.acceleration=0.5", "mask.acceleration must be > 1"),
        ("data.contrasts=[T3w]", "unknown contrast 'T3w'"),
        ("data.heldout_site=hospital-a", "also a training site"),
        ("objective.kind=gan", "'objective.kind' must be one of"),
    ],
)
def test_train_cli_rejects_bad_config_before_training(override, message):
    res = runner.invoke(train_app, ["show-config", "--config", "configs/recon.yaml", "--set", override])
    assert res.exit_code != 0
    assert message in res.output


def test_show_config_fills_defaults():
    res = runner.invoke(train_app, ["show-config", "--config", "configs/recon.yaml", "--set", "federation.rounds=2"])
    assert res.exit_code == 0, res.output
    assert "rounds: 2" in res.output and "gp_eta: 10.0" in res.output


def test_impossible_acceleration_fails_before_training(tmp_path):
    res = runner.invoke(train_app, [
        "federated", "--config", "configs/recon.yaml", "--set", f"run_dir={tmp_path / 'run'}",
        "--set", f"data.source.cache_dir={tmp_path}", "--set", "data.source.matrix=[32, 32]",
        "--set", "data.source.subjects_per_site=3", "--set", "data.source.slices_per_subject=1",
        "--set", "mask.center_fraction=0.5",
    ])
    assert res.exit_code != 0
    assert "impossible for 32 lines" in str(res.exception) + res.output
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_sequential_engine_trains_checkpoints_and_resumes(tmp_path):
    """--engine sequential: FedAvg rounds with the sites in turn, a checkpoint per round, and a second call that
    resumes after the last checkpoint instead of starting over."""
    args = [
        "federated", "--config", "configs/recon.yaml", "--engine", "sequential", "--set", f"run_dir={tmp_path / 'run'}",
        "--set", f"data.source.cache_dir={tmp_path}", "--set", "data.source.matrix=[32, 32]",
        "--set", "data.source.subjects_per_site=3", "--set", "data.source.slices_per_subject=2",
        "--set", "data.train_sites=[hospital-a,hospital-b]", "--set", "data.heldout_site=null",
        "--set", "data.val_subjects=1", "--set", "data.num_coils=2", "--set", "model.chans=4",
        "--set", "model.num_cascades=1", "--set", "model.sens_chans=2", "--set", "objective.batch_size=2",
    ]
    res = runner.invoke(train_app, [*args, "--set", "federation.rounds=1"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("*.npz")) == ["round_001.npz"]
    first = (tmp_path / "run" / "checkpoints" / "round_001.npz").stat().st_mtime_ns
    res = runner.invoke(train_app, [*args, "--set", "federation.rounds=2"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("*.npz")) == ["round_001.npz", "round_002.npz"]
    assert (tmp_path / "run" / "checkpoints" / "round_001.npz").stat().st_mtime_ns == first  # resumed: not rewritten
    rounds = [json.loads(line)["round"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [1, 2]
