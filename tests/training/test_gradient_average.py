"""Isik et al.'s gradient averaging and compressed FedAvg through `mri-train federated` (real training, tiny
reconstruction config)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from training.cli import app as train_app
from training.federation.gradient_average import CentreOptimizer
from training.federation.payload import to_bytes

runner = CliRunner()


def _args(tmp_path, *extra: str) -> list[str]:
    return [
        "federated", "--config", "configs/recon.yaml", "--engine", "sequential", "--set", f"run_dir={tmp_path / 'run'}",
        "--set", f"data.source.cache_dir={tmp_path / 'cache'}", "--set", "data.source.matrix=[32, 32]",
        "--set", "data.source.subjects_per_site=3", "--set", "data.source.slices_per_subject=2",
        "--set", "data.train_sites=[hospital-a,hospital-b]", "--set", "data.heldout_site=null",
        "--set", "data.val_subjects=1", "--set", "data.num_coils=2", "--set", "model.chans=4",
        "--set", "model.num_cascades=1", "--set", "model.sens_chans=2", "--set", "objective.batch_size=2",
        *extra,
    ]


def _rows(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]


def test_gradient_average_hybrid_trains_critics_stay_local_bytes_logged_and_resumes(tmp_path):
    """gradient_average with a WGAN hybrid objective and top-k 10 % gradients: the generator changes, each
    site's outgoing log lists only compressed generator gradients (no critic), bytes per round are logged in
    metrics.jsonl and metrics.csv and equal sends x bytes per send; a second call resumes (Adam state too)."""
    args = _args(tmp_path, "--set", "federation.mode=gradient_average", "--set", "objective.kind=hybrid",
                 "--set", "objective.pure_l1_batches=1", "--set", "objective.ramp_batches=2",
                 "--set", "federation.compression.kind=topk", "--set", "federation.compression.ratio=0.1")
    res = runner.invoke(train_app, [*args, "--set", "federation.rounds=1"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "gradient-averaging engine" in res.output
    run = tmp_path / "run"
    (row,) = _rows(tmp_path)
    assert row["engine"] == "gradient_average"
    for site in ("hospital-a", "hospital-b"):
        m = row["train"][site]
        assert m["sends"] == 2 and m["bytes_sent"] == pytest.approx(m["sends"] * m["bytes_per_send"])
        assert "critic" in m and "l1" in m
        sent = [json.loads(x) for x in (run / "sites" / site / "outgoing.jsonl").read_text().splitlines()]
        assert len(sent) == 2
        assert all(set(s["arrays"]) == {"idx", "val"} for s in sent)  # top-k of the generator gradient, nothing else
        assert "critic" in torch.load(run / "sites" / site / "state_round_001.pt", weights_only=True)
    assert "bytes_sent" in (run / "metrics.csv").read_text().splitlines()[0]
    w1 = dict(np.load(run / "checkpoints" / "round_001.npz"))
    assert (run / "checkpoints" / "round_001.adam.pt").exists()
    res = runner.invoke(train_app, [*args, "--set", "federation.rounds=2"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert [r["round"] for r in _rows(tmp_path)] == [1, 2]
    w2 = dict(np.load(run / "checkpoints" / "round_002.npz"))
    assert any(not np.array_equal(w1[k], w2[k]) for k in w1)


def test_gradient_average_equals_one_centralised_step_per_batch():
    """The centre's step with the averaged gradient is plain Adam on the average: two sites with gradients
    g1, g2 give the same weights as Adam on (g1 + g2) / 2."""
    w = {"a": np.ones((3, 2), np.float32), "b": np.zeros(4, np.float32)}
    g1 = {"a": np.full((3, 2), 0.5, np.float32), "b": np.arange(4, dtype=np.float32)}
    g2 = {"a": np.full((3, 2), -0.1, np.float32), "b": -np.arange(4, dtype=np.float32) * 3}
    centre = CentreOptimizer(w, {"lr": 0.1})
    centre.step({k: (g1[k] + g2[k]) / 2 for k in w}, 1.0)
    p = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in w.items()}
    opt = torch.optim.Adam(list(p.values()), lr=0.1)
    for k in p:
        p[k].grad = torch.from_numpy((g1[k] + g2[k]) / 2)
    opt.step()
    for k in w:
        np.testing.assert_allclose(centre.arrays()[k], p[k].detach().numpy(), rtol=1e-6)


def test_fedavg_float16_deltas_log_bytes_and_halve_them(tmp_path):
    """Sequential FedAvg, uncompressed and with float16 deltas: both train, both log bytes per site, and
    float16 sends one float16 vector (less than half the bytes of the float32 weight arrays and their headers)."""
    res = runner.invoke(train_app, [*_args(tmp_path, "--set", "federation.rounds=1")])
    assert res.exit_code == 0, res.output + repr(res.exception)
    full = _rows(tmp_path)[0]["train"]["hospital-a"]["bytes_sent"]
    res = runner.invoke(train_app, [*_args(tmp_path, "--set", "federation.rounds=1",
                                           "--set", "federation.compression.kind=float16"), "--fresh"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    half = _rows(tmp_path)[0]["train"]["hospital-a"]["bytes_sent"]
    n = sum(v.size for v in np.load(tmp_path / "run" / "checkpoints" / "round_001.npz").values())
    assert full > 4 * n and half == len(to_bytes({"values": np.zeros(n, np.float16)}))
    assert half < full / 2  # one float16 vector vs every float32 weight array with its own header


@pytest.mark.parametrize("setting,message", [
    ("federation.compression.ratio=2", "federation.compression.ratio must be in [0.01, 1], got 2.0"),
    ("federation.sync_every=0", "federation.sync_every must be >= 1"),
])
def test_bad_federation_settings_refused_before_any_round(tmp_path, setting, message):
    res = runner.invoke(train_app, [*_args(tmp_path, "--set", "federation.mode=gradient_average",
                                           "--set", "federation.compression.kind=topk", "--set", setting)],
                         env={"COLUMNS": "300"})  # the error box must not wrap the message
    assert res.exit_code != 0
    assert message in res.output + str(res.exception)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_gradient_average_refused_with_mrcm_and_for_synthesis(tmp_path):
    res = runner.invoke(train_app, [*_args(tmp_path, "--set", "federation.mode=gradient_average",
                                           "--set", "mrcm.enabled=true", "--set", "data.heldout_adapt_subjects=1",
                                           "--set", "data.heldout_site=hospital-c")],
                         env={"COLUMNS": "300"})
    assert res.exit_code != 0 and "cannot be combined with mrcm.enabled" in res.output + str(res.exception)
    res = runner.invoke(train_app, ["show-config", "--config", "configs/synthesis.yaml",
                                    "--set", "federation.mode=gradient_average", "--set", "federation.local_epochs=1"],
                       env={"COLUMNS": "300"})
    assert res.exit_code != 0 and "implemented for the recon family only" in res.output + str(res.exception)
