"""The synthesis family: local DP training without Flower, then the federation (only generators leave a
site, per-site epsilon every round, resume, privacy budget stop) with Flower's real simulation engine."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from training.federation.coordinator import latest_checkpoint, read_metrics
from training.federation.family import StopRun
from training.federation.records import load_arrays
from training.federation.registry import family_from_config
from training.federation.runconfig import load_run_config
from training.privacy import PrivacyBudgetExceeded, epsilon


def tiny_config(tmp_path, run_name="run", *extra) -> dict:
    return load_run_config(None, [
        "family=synthesis", f"run_dir={tmp_path / run_name}", f"data.source.cache_dir={tmp_path / 'cache'}",
        "data.source.matrix=[24, 24]", "data.source.subjects_per_site=4", "data.source.slices_per_subject=4",
        "data.train_sites=[hospital-a, hospital-b]", "data.partition=gradual", "data.train_slices_total=6",
        "data.max_eval_slices=2", "model.chans=4", "model.num_res_blocks=1", "model.disc_chans=4",
        "objective.batch_size=2", "federation.rounds=1", *extra,
    ])


def make_family(cfg):
    return family_from_config(cfg)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_local_dp_round_reports_epsilon_and_keeps_discriminators_at_the_site(tmp_path):
    fam = make_family(tiny_config(tmp_path))
    init = fam.initial_arrays()
    assert all(k.startswith(("g_ab.", "g_ba.")) for k in init)
    state = tmp_path / "state"
    up = fam.train_site("hospital-a", init, 1, state)
    assert set(up.arrays) == set(init) and up.num_examples == 4  # gradual over 2 sites: 4 of 6
    q = 2 / 4  # expected batch 2 of 4 records
    assert up.metrics["epsilon"] == pytest.approx(epsilon([(1.07, q, int(up.metrics["steps"]))], 1e-5))
    saved = torch.load(state / "state_round_001.pt", weights_only=True)
    assert {"d_a", "d_b", "opt_d", "opt_g"} <= set(saved)
    ledger = [json.loads(line) for line in (state / "privacy_ledger.jsonl").read_text().splitlines()]
    assert ledger[0]["round"] == 1 and ledger[0]["epsilon"] == pytest.approx(up.metrics["epsilon"])
    # round 2 composes with round 1 (one accountant per site across rounds)
    up2 = fam.train_site("hospital-a", up.arrays, 2, state)
    assert up2.metrics["epsilon"] > up.metrics["epsilon"]


def test_dp_changes_the_update_and_non_dp_is_deterministic(tmp_path):
    dp = make_family(tiny_config(tmp_path, "dp"))
    plain = make_family(tiny_config(tmp_path, "plain", "privacy.enabled=false"))
    init = dp.initial_arrays()
    u_plain = plain.train_site("hospital-a", init, 1, tmp_path / "s1")
    u_plain2 = plain.train_site("hospital-a", init, 1, tmp_path / "s2")
    u_dp = dp.train_site("hospital-a", init, 1, tmp_path / "s3")
    for k in init:
        np.testing.assert_array_equal(u_plain.arrays[k], u_plain2.arrays[k])
    diff = max(float(np.abs(u_dp.arrays[k] - u_plain.arrays[k]).max()) for k in init)
    assert diff > 1e-4 and "epsilon" not in u_plain.metrics


def test_budget_is_checked_before_training(tmp_path):
    fam = make_family(tiny_config(tmp_path, "run", "privacy.epsilon_budget=0.5"))
    with pytest.raises(PrivacyBudgetExceeded, match="above privacy.epsilon_budget=0.5") as info:
        fam.train_site("hospital-a", fam.initial_arrays(), 1, tmp_path / "state")
    assert isinstance(info.value, StopRun)
    assert not (tmp_path / "state" / "privacy_ledger.jsonl").exists()  # nothing trained, nothing spent


def simulate(cfg):
    from training.federation.simulation import simulate as run

    run(cfg, num_cpus=2)


@pytest.mark.slow
def test_only_generators_leave_and_resume_gives_the_same_rounds(tmp_path):
    straight = tiny_config(tmp_path, "straight", "federation.rounds=2")
    simulate(straight)
    fam = make_family(straight)
    generator_keys = set(fam.initial_arrays())
    for site in fam.train_sites:
        site_dir = tmp_path / "straight" / "sites" / site
        lines = [json.loads(x) for x in (site_dir / "outgoing.jsonl").read_text().splitlines()]
        assert [x["round"] for x in lines] == [1, 2]
        for line in lines:  # exactly the two generators, never a discriminator or optimiser state
            assert set(line["arrays"]) == generator_keys
            assert not any(k.startswith(("d_a", "d_b", "disc", "opt")) for k in line["arrays"])
        assert "d_a" in torch.load(site_dir / "state_round_002.pt", weights_only=True)
    rows = read_metrics(straight["run_dir"])
    assert [r["round"] for r in rows] == [1, 2]
    for r in rows:  # per-site epsilon every round, growing; per-site validation metrics
        assert set(r["train"]) == set(fam.train_sites) and set(r["val"]) == set(fam.train_sites)
        assert all({"psnr", "ssim", "mae"} <= set(v) for v in r["val"].values())
        assert {"psnr", "identity_psnr", "psnr_rev"} <= set(r["heldout"])
    for site in fam.train_sites:
        assert rows[1]["train"][site]["epsilon"] > rows[0]["train"][site]["epsilon"] > 0
    sidecar = json.loads((tmp_path / "straight" / "checkpoints" / "round_002.json").read_text())
    assert sidecar["train"]["hospital-a"]["epsilon"] == rows[1]["train"]["hospital-a"]["epsilon"]
    assert (tmp_path / "straight" / "plots" / "samples.png").exists()

    resumed = tiny_config(tmp_path, "resumed", "federation.rounds=1")
    simulate(resumed)
    resumed["federation"]["rounds"] = 2
    simulate(resumed)
    a = load_arrays(latest_checkpoint(straight["run_dir"])[1])
    b = load_arrays(latest_checkpoint(resumed["run_dir"])[1])
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
    eps = [r["train"]["hospital-b"]["epsilon"] for r in read_metrics(resumed["run_dir"])]
    assert eps == pytest.approx([r["train"]["hospital-b"]["epsilon"] for r in rows])


@pytest.mark.slow
def test_run_stops_with_a_clear_message_when_the_budget_would_be_exceeded(tmp_path):
    probe = make_family(tiny_config(tmp_path, "probe"))
    one_round = probe.train_site("hospital-b", probe.initial_arrays(), 1, tmp_path / "probe-state").metrics["epsilon"]
    cfg = tiny_config(tmp_path, "budget", "federation.rounds=3", f"privacy.epsilon_budget={one_round * 1.2}",
                      "federation.evaluate_sites=false")
    with pytest.raises(StopRun, match=r"round 2 would take site .* above privacy.epsilon_budget") as info:
        simulate(cfg)
    assert "the last checkpoint (round 1) is the final model" in info.value.reason
    assert latest_checkpoint(cfg["run_dir"])[0] == 1


@pytest.mark.parametrize("extra", [
    ("privacy.enabled=false",),
    ("privacy.clipping=flat",),
    ("privacy.clipping=per_layer",),
])
def test_micro_batches_take_the_same_step_as_the_whole_batch(tmp_path, extra):
    """Cutting each batch into chunks (objective.micro_batch_size) changes neither the update, nor the
    noise, nor the privacy accounting: only the floating-point summation order.

    Compared through the generators' outputs: the biases of convolutions followed by InstanceNorm get
    gradients of ~1e-8 (the norm removes them), whose sign, and so Adam's step, is rounding noise; they
    do not change the output."""
    common = ("data.source.slices_per_subject=16", "data.partition=average", "data.train_slices_total=24",
              "objective.batch_size=8", "privacy.noise_multiplier=0.3", *extra)
    whole = make_family(tiny_config(tmp_path, "whole", "objective.micro_batch_size=0", *common))
    chunked = make_family(tiny_config(tmp_path, "chunked", "objective.micro_batch_size=3", *common))
    init = whole.initial_arrays()
    u_whole = whole.train_site("hospital-a", init, 1, tmp_path / "s1")
    u_chunked = chunked.train_site("hospital-a", init, 1, tmp_path / "s2")
    assert u_whole.metrics["steps"] == u_chunked.metrics["steps"] == 2  # 12 records, expected batch 8
    x = torch.rand(4, 1, 24, 24, generator=torch.Generator().manual_seed(0)) + 0.5
    with torch.no_grad():
        before, y_whole, y_chunked = (whole.generators_from(arr).g_ab.eval()(x)
                                      for arr in (init, u_whole.arrays, u_chunked.arrays))
    moved = float((y_whole - before).abs().max())
    assert moved > 1e-2
    assert float((y_whole - y_chunked).abs().max()) < 1e-3 * moved
    assert u_whole.metrics["loss"] == pytest.approx(u_chunked.metrics["loss"], rel=1e-5)
    assert u_whole.metrics.get("epsilon") == u_chunked.metrics.get("epsilon")


@pytest.mark.parametrize("n, size", [(70, 16), (64, 16), (1, 16), (5, 0), (33, 32), (7, 1)])
def test_micro_batches_cover_the_batch_in_near_equal_chunks(n, size):
    from training.synthesis.loop import micro_batches

    parts = micro_batches(n, size)
    lengths = [p.stop - p.start for p in parts]
    assert parts[0].start == 0 and parts[-1].stop == n and all(a.stop == b.start for a, b in zip(parts, parts[1:]))
    assert max(lengths) - min(lengths) <= 1 and (size <= 0 or max(lengths) <= size)
    assert len(parts) == (1 if size <= 0 else -(-n // size))
