"""Compressed FedAvg replies through Flower's real simulation engine (Ray): sites send float16 weight deltas,
the coordinator decodes them before averaging, and each site's bytes per round reach metrics.jsonl."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training.federation.coordinator import latest_checkpoint, read_metrics
from training.federation.payload import to_bytes
from training.federation.records import load_arrays
from training.federation.registry import family_from_config
from training.federation.runconfig import load_run_config

pytestmark = pytest.mark.slow


def test_flower_fedavg_with_float16_deltas(tmp_path):
    cfg = load_run_config(None, [
        "family=recon", f"run_dir={tmp_path / 'run'}", f"data.source.cache_dir={tmp_path / 'cache'}",
        "data.source.matrix=[32, 32]", "data.source.subjects_per_site=3", "data.source.slices_per_subject=2",
        "data.train_sites=[hospital-a, hospital-b]", "data.heldout_site=null", "data.num_coils=2",
        "data.val_subjects=1", "model.chans=4", "model.num_cascades=1", "model.sens_chans=2",
        "objective.batch_size=2", "federation.rounds=1", "federation.evaluate_sites=false",
        "federation.compression.kind=float16",
    ])
    from training.federation.simulation import simulate  # deferred: Ray + Flower simulation

    simulate(cfg, num_cpus=2)
    _, path = latest_checkpoint(cfg["run_dir"])
    aggregated = load_arrays(path)
    family = family_from_config(cfg)
    init = family.initial_arrays()
    updates = [family.train_site(s, init, 1, tmp_path / "independent" / s) for s in family.train_sites]
    weights = np.array([u.num_examples for u in updates], np.float64)
    for name, value in aggregated.items():
        assert value.dtype == init[name].dtype
        exact = sum(w * u.arrays[name] for w, u in zip(weights, updates, strict=True)) / weights.sum()
        step = np.abs(exact - init[name]).max()
        # float16 deltas: each delta's relative rounding error <= 2**-11, so the average moves by less than that
        np.testing.assert_allclose(value, exact, rtol=0, atol=2.0**-11 * step + 1e-7, err_msg=name)
    (row,) = read_metrics(cfg["run_dir"])
    for site in family.train_sites:
        sent = [json.loads(x) for x in (tmp_path / "run" / "sites" / site / "outgoing.jsonl").read_text().splitlines()]
        ((shape, dtype),) = sent[0]["arrays"].values()
        assert dtype == "float16" and shape == [sum(v.size for v in init.values())]
        expected_len = len(to_bytes({"values": np.zeros(shape, np.float16)}))
        assert row["train"][site]["bytes_sent"] == expected_len
