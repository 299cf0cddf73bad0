"""Isik et al.'s gradient averaging between real hospitals: one Flower round per synchronisation through a real
flower-superlink and flower-supernodes over TLS with authenticated sites, equal to the in-process engine."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.training.test_federation_security import SITES, tiny_config, write_config
from training.federation.checkpoints import read_metrics
from training.federation.deploy import LocalDeployment
from training.federation.gradient_average import run_gradient_average
from training.federation.records import load_arrays
from training.federation.registry import family_from_config
from training.federation.runconfig import load_run_config

HYBRID = {"kind": "hybrid", "batch_size": 2, "lr": 1e-3, "pure_l1_batches": 1, "ramp_batches": 2}


def _config(tmp_path, run: str, compression: str = "none", **federation) -> dict:
    cfg = tiny_config(tmp_path, run, mode="gradient_average", compression={"kind": compression}, **federation)
    cfg["objective"] = dict(HYBRID)
    return cfg


def _in_process(cfg: dict) -> dict[str, np.ndarray]:
    """The in-process engine on ``cfg`` with one torch thread, as each site's process has (MRI_SITE_THREADS)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_gradient_average(cfg)
    finally:
        torch.set_num_threads(threads)


def test_site_rebuilt_between_synchronisations_gives_the_same_gradients(tmp_path):
    """What a SuperNode does (a new site object per message, the round so far from ``suspend``) equals one site
    object living through the round: same gradients bitwise, the same batches and WGAN random numbers, even
    with another site drawing random numbers in between."""
    cfg = load_run_config(write_config(tmp_path, _config(tmp_path, "r")))
    family = family_from_config(cfg)
    weights = family.initial_arrays()
    live = family.gradient_site("hospital-a", tmp_path / "live", 1)
    other = family.gradient_site("hospital-b", tmp_path / "other", 1)
    assert live.num_batches == 2 and live.critic is not None
    for sync in range(live.num_batches):
        expected, n1 = live.gradient(weights, 1)
        other.gradient(weights, 1)  # in process the other site runs in between, on the same global RNG
        rebuilt = family.gradient_site("hospital-a", tmp_path / "rebuilt", 1, sync)
        got, n2 = rebuilt.gradient(weights, 1)
        assert n1 == n2 == 2
        for k in expected:
            np.testing.assert_array_equal(got[k], expected[k], err_msg=f"sync {sync + 1}: {k}")
        rebuilt.suspend()
        weights = {k: v - 1e-2 * expected[k] for k, v in weights.items()}
    assert rebuilt.finish(1) == live.finish(1)
    assert not list((tmp_path / "rebuilt").glob("sync_round_*.pt"))  # the round's file is gone once it ends
    with pytest.raises(ValueError, match=r"site 'hospital-a': synchronisation 2 of round 1 needs the state after "
                                         r"synchronisation 1 in .*sync_round_001.pt; found no file"):
        family.gradient_site("hospital-a", tmp_path / "rebuilt", 1, 1)


@pytest.mark.slow
@pytest.mark.e2e
def test_gradient_average_through_real_superlink_equals_in_process_and_float16_halves_bytes(tmp_path):
    """Two rounds of 2 synchronisations (4 Flower train rounds) of the hybrid WGAN objective through a TLS
    deployment with authenticated sites: the records show each site's bytes, the critics stay at the sites,
    and the final generator equals the in-process engine's on the same config. A second run, float16
    gradients, sends about half the bytes."""
    cfg = _config(tmp_path, "deployed", rounds=2, evaluate_sites=True)
    deployed = write_config(tmp_path, cfg)
    local = _in_process(load_run_config(write_config(tmp_path, {**cfg, "run_dir": str(tmp_path / "local")})))
    half = write_config(tmp_path, _config(tmp_path, "half", "float16", rounds=1))
    sites = {s: tmp_path / f"state-{s}" for s in SITES}
    with LocalDeployment(tmp_path / "flower", sites) as deployment:
        assert deployment.run(deployed, timeout_s=600) == "finished:completed"
        for state in sites.values():  # the float16 run starts from no site state, as a new run would
            for f in [*state.glob("state_round_*.pt"), *state.glob("compression/*")]:
                f.unlink()
        assert deployment.run(half, timeout_s=600) == "finished:completed"

    remote = load_arrays(tmp_path / "deployed" / "checkpoints" / "round_002.npz")
    init = family_from_config(load_run_config(deployed)).initial_arrays()
    moved = max(float(np.max(np.abs(local[k] - init[k]))) for k in init)
    diff = max(float(np.max(np.abs(remote[k] - local[k]))) for k in init)
    assert moved > 1e-3  # four Adam steps at lr 1e-3
    assert diff < 1e-6, f"deployment differs from in-process by {diff} (the run moved weights by {moved})"

    rows, local_rows = read_metrics(tmp_path / "deployed"), read_metrics(tmp_path / "local")
    assert [r["round"] for r in rows] == [1, 2] and all(r["engine"] == "gradient_average" for r in rows)
    for row, local_row in zip(rows, local_rows, strict=True):
        assert set(row["val"]) == set(SITES) and row["traffic"]["train_received_bytes"] > 0
        for site in SITES:
            m, lm = row["train"][site], local_row["train"][site]
            assert m["sends"] == 2 and m["bytes_sent"] == 2 * m["bytes_per_send"] == lm["bytes_sent"]
            assert m["critic"] == pytest.approx(lm["critic"], rel=1e-5) and m["lambda"] == lm["lambda"]
            assert row["val"][site]["psnr"] == pytest.approx(local_row["val"][site]["psnr"], abs=1e-4)
    assert (tmp_path / "deployed" / "checkpoints" / "round_002.adam.pt").exists()
    for state in sites.values():  # only uncompressed generator gradients, then float16 ones, left the sites
        sent = [json.loads(x) for x in (state / "outgoing.jsonl").read_text().splitlines()]
        assert [s["arrays"]["values"][1] for s in sent] == ["float32"] * 4 + ["float16"] * 2
        assert all(set(s["arrays"]) == {"values"} for s in sent)
        assert "critic" in torch.load(state / "state_round_001.pt", weights_only=True)  # the critic stayed there
        assert not list(state.glob("sync_round_*.pt"))

    full, small = rows[0]["train"]["hospital-a"]["bytes_sent"], read_metrics(tmp_path / "half")[0]["train"]["hospital-a"]["bytes_sent"]
    assert 0.45 < small / full < 0.55, (small, full)
