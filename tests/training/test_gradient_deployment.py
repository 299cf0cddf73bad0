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


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """One SuperLink and a SuperNode per site (TLS, registered site keys) for this module's runs; the sites'
    private state directories."""
    root = tmp_path_factory.mktemp("gradient-deployment")
    sites = {s: root / f"state-{s}" for s in SITES}
    with LocalDeployment(root / "flower", sites, start_timeout_s=180) as dep:  # 63 s seen at load average 9
        yield dep, sites


def _sent(state) -> list[dict]:
    """The site's outgoing log (one line per reply, every run of the module)."""
    return [json.loads(x) for x in (state / "outgoing.jsonl").read_text().splitlines()]


@pytest.mark.slow  # 28 s at load average 2 (building the tiny data cache included)
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
def test_gradient_average_through_real_superlink_equals_in_process(tmp_path, deployment):
    """A round of 2 synchronisations (2 Flower train rounds, each site rebuilt for each) of the hybrid WGAN
    objective through a TLS deployment with authenticated sites: the records show each site's bytes, only
    generator gradients leave the sites (critics stay), and the generator equals the in-process engine's on
    the same config (bitwise when measured; the test allows 1e-6)."""
    cfg = _config(tmp_path, "deployed")
    deployed = write_config(tmp_path, cfg)
    local = _in_process(load_run_config(write_config(tmp_path, {**cfg, "run_dir": str(tmp_path / "local")})))
    dep, sites = deployment
    assert dep.run(deployed, timeout_s=600) == "finished:completed"

    remote = load_arrays(tmp_path / "deployed" / "checkpoints" / "round_001.npz")
    init = family_from_config(load_run_config(deployed)).initial_arrays()
    moved = max(float(np.max(np.abs(local[k] - init[k]))) for k in init)
    diff = max(float(np.max(np.abs(remote[k] - local[k]))) for k in init)
    assert moved > 1e-3  # two Adam steps at lr 1e-3
    assert diff < 1e-6, f"deployment differs from in-process by {diff} (the run moved weights by {moved})"

    (row,), (local_row,) = read_metrics(tmp_path / "deployed"), read_metrics(tmp_path / "local")
    assert row["engine"] == "gradient_average" and row["traffic"]["train_received_bytes"] > 0
    for site in SITES:
        m, lm = row["train"][site], local_row["train"][site]
        assert m["sends"] == 2 and m["bytes_sent"] == 2 * m["bytes_per_send"] == lm["bytes_sent"] > 0
        assert m["critic"] == pytest.approx(lm["critic"], rel=1e-5) and m["l1"] == pytest.approx(lm["l1"], rel=1e-5)
    assert (tmp_path / "deployed" / "checkpoints" / "round_001.adam.pt").exists()
    for state in sites.values():
        assert [s["arrays"] for s in _sent(state)[-2:]] == [{"values": [[sum(v.size for v in init.values())], "float32"]}] * 2
        assert "critic" in torch.load(state / "state_round_001.pt", weights_only=True)  # the critic stayed there
        assert not list(state.glob("sync_round_*.pt"))


@pytest.mark.slow
@pytest.mark.e2e
def test_float16_gradients_through_real_superlink_send_half_the_bytes(tmp_path, deployment):
    """float16 gradients (one synchronisation: sync_every 2) through the TLS deployment, with the sites'
    validation: each site's bytes_sent is about half the uncompressed gradient's (measured by the in-process
    engine, which the test above shows sends the same bytes as the deployment)."""
    half = write_config(tmp_path, _config(tmp_path, "half", "float16", sync_every=2, evaluate_sites=True))
    full = _in_process(load_run_config(write_config(tmp_path, _config(tmp_path, "full", sync_every=2))))
    dep, sites = deployment
    assert dep.run(half, timeout_s=600) == "finished:completed"  # a new run: round 1 from no site state
    (row,), (full_row,) = read_metrics(tmp_path / "half"), read_metrics(tmp_path / "full")
    assert set(row["val"]) == set(SITES) and all(v["psnr"] > 0 for v in row["val"].values())
    n = sum(v.size for v in full.values())
    for site in SITES:
        small, big = row["train"][site]["bytes_sent"], full_row["train"][site]["bytes_sent"]
        assert row["train"][site]["sends"] == 1 and big > 4 * n
        assert 0.45 < small / big < 0.55, (site, small, big)
        assert [s["arrays"] for s in _sent(sites[site])[-1:]] == [{"values": [[n], "float16"]}]
