"""Federation layer with the reconstruction family: FedAvg weights, what leaves a site, resume.

These tests run Flower's real simulation engine (Ray) with tiny models and data.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from training.federation.coordinator import latest_checkpoint, read_metrics
from training.federation.records import load_arrays, to_record
from training.federation.registry import family_from_config
from training.federation.runconfig import load_run_config
from training.federation.strategy import SharedWeightsViolation, check_shared_arrays, describe

pytestmark = pytest.mark.slow


def tiny_config(tmp_path, run_name="run", **over) -> dict:
    overrides = [
        f"run_dir={tmp_path / run_name}",
        f"data.source.cache_dir={tmp_path / 'cache'}",
        "data.source.matrix=[40, 40]",
        "data.source.subjects_per_site=3",
        "data.source.slices_per_subject=3",
        "data.train_sites=[hospital-a, hospital-b]",
        "data.heldout_site=hospital-c",
        "data.num_coils=4",
        "data.val_subjects=1",
        "data.max_eval_slices=3",
        "model.chans=8",
        "model.num_cascades=2",
        "model.sens_chans=4",
        "objective.batch_size=2",
        "federation.rounds=1",
    ] + [f"{k}={v}" for k, v in over.items()]
    return load_run_config(None, ["family=recon", *overrides])


def simulate(cfg):
    from training.federation.simulation import simulate as run

    run(cfg, num_cpus=2)


def test_fedavg_is_weighted_mean_of_site_updates_and_only_generator_leaves(tmp_path):
    # different amounts of data per site, so that weighting matters
    cfg = tiny_config(tmp_path, **{"objective.kind": "hybrid", "data.site_train_slices": "{hospital-a: 2}"})
    simulate(cfg)
    rnd, path = latest_checkpoint(cfg["run_dir"])
    assert rnd == 1
    aggregated = load_arrays(path)

    # Independently: each site's local update from the same initial weights, then the weighted mean.
    family = family_from_config(cfg)
    init = family.initial_arrays()
    updates = []
    for site in family.train_sites:
        updates.append(family.train_site(site, init, 1, tmp_path / "independent" / site))
    weights = np.array([u.num_examples for u in updates], dtype=np.float64)
    assert weights.min() > 0 and weights[0] != weights[1]
    for name, value in aggregated.items():
        expected = sum(w * u.arrays[name] for w, u in zip(weights, updates)) / weights.sum()
        np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6, err_msg=name)

    # What left each site: exactly the generator's arrays, never the critic.
    generator_keys = set(init)
    for site in family.train_sites:
        lines = (tmp_path / "run" / "sites" / site / "outgoing.jsonl").read_text().splitlines()
        assert lines, site
        for line in lines:
            sent = json.loads(line)["arrays"]
            assert set(sent) == generator_keys
            assert not any("critic" in k or "disc" in k for k in sent)
        state = list((tmp_path / "run" / "sites" / site).glob("state_round_*.pt"))
        assert state, "the critic must stay at the site"
        import torch

        assert "critic" in torch.load(state[0], weights_only=True)

    rows = read_metrics(cfg["run_dir"])
    assert rows[-1]["round"] == 1 and set(rows[-1]["val"]) == set(family.train_sites)
    assert {"psnr", "ssim", "nmse"} <= set(rows[-1]["heldout"])


def test_strategy_refuses_replies_with_extra_arrays():
    shared = {"g.weight": np.zeros((2, 2), np.float32)}
    check_shared_arrays(to_record(shared), describe(shared))
    with pytest.raises(SharedWeightsViolation, match="extra"):
        check_shared_arrays(to_record({**shared, "critic.weight": np.ones(3, np.float32)}), describe(shared))
    with pytest.raises(SharedWeightsViolation, match="expected"):
        check_shared_arrays(to_record({"g.weight": np.zeros((3, 2), np.float32)}), describe(shared))


def test_resume_gives_the_same_next_round(tmp_path):
    straight = tiny_config(tmp_path, "straight", **{"federation.rounds": 2, "federation.evaluate_sites": "false"})
    simulate(straight)
    interrupted = tiny_config(tmp_path, "resumed", **{"federation.rounds": 1, "federation.evaluate_sites": "false"})
    simulate(interrupted)
    assert latest_checkpoint(interrupted["run_dir"])[0] == 1
    interrupted["federation"]["rounds"] = 2
    simulate(interrupted)
    a = load_arrays(latest_checkpoint(straight["run_dir"])[1])
    b = load_arrays(latest_checkpoint(interrupted["run_dir"])[1])
    assert latest_checkpoint(interrupted["run_dir"])[0] == 2
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-7, err_msg=k)
    assert [r["round"] for r in read_metrics(interrupted["run_dir"])] == [1, 2]


def test_fl_mrcm_target_sends_only_latents_and_sources_keep_their_identifiers(tmp_path):
    """FL-MRCM through the federation: the target node trains nothing and sends only pooled latents; the
    source sites train with them and keep their domain identifiers; only generator weights are averaged."""
    import torch

    cfg = tiny_config(tmp_path, **{"mrcm.enabled": "true", "mrcm.target_slices": 4, "mrcm.feature_pool": 2,
                                   "data.heldout_adapt_subjects": 1, "federation.rounds": 2})
    simulate(cfg)
    assert latest_checkpoint(cfg["run_dir"])[0] == 2
    family = family_from_config(cfg)
    assert family.federation_sites == ("hospital-a", "hospital-b", "hospital-c")

    target_dir = tmp_path / "run" / "sites" / "hospital-c"
    sent = [json.loads(line) for line in (target_dir / "outgoing.jsonl").read_text().splitlines()]
    assert [s["round"] for s in sent] == [1, 2]
    for s in sent:  # the adaptation subject's 3 slices x 8 channels x (40 / 2)^2: latents only
        assert s["arrays"] == {"latents": [[3, 8, 20, 20], "float32"]}
    assert not list(target_dir.glob("state_round_*.pt")), "the target site must not train"

    generator_keys = set(family.initial_arrays())
    for site in ("hospital-a", "hospital-b"):
        lines = [json.loads(x) for x in (tmp_path / "run" / "sites" / site / "outgoing.jsonl").read_text().splitlines()]
        assert len(lines) == 2 and all(set(x["arrays"]) == generator_keys for x in lines)
        state = torch.load(tmp_path / "run" / "sites" / site / "state_round_002.pt", weights_only=True)
        assert any(k.startswith("classifier") for k in state["identifier"]), "the identifier stays at the site"
    rows = read_metrics(cfg["run_dir"])
    for site in ("hospital-a", "hospital-b"):
        assert {"align", "domain"} <= set(rows[-1]["train"][site])
    assert "hospital-c" not in rows[-1]["train"] and "hospital-c" not in rows[-1]["val"]
    # the held-out metrics leave out the adaptation subject the target's latents came from
    adapt, tested = family._heldout_subject_split()
    src = family.source
    assert {src.subject("hospital-c", i) for i in adapt}.isdisjoint({src.subject("hospital-c", i) for i in tested})
