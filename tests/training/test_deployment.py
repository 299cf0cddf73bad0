"""Flower deployment mode: one real flower-superlink and one flower-supernode per hospital on localhost,
one round of the reconstruction family, submitted with `flwr run` (no simulation engine)."""

from __future__ import annotations

import json

import pytest
import yaml

from training.federation.coordinator import latest_checkpoint, read_metrics
from training.federation.deploy import LocalDeployment
from training.federation.records import load_arrays
from training.federation.registry import family_from_yaml

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_one_round_across_real_superlink_and_supernodes(tmp_path):
    config = {
        "family": "recon",
        "run_dir": str(tmp_path / "run"),
        "data": {
            "source": {"matrix": [40, 40], "subjects_per_site": 3, "slices_per_subject": 2,
                       "cache_dir": str(tmp_path / "cache")},
            "train_sites": ["hospital-a", "hospital-b"],
            "heldout_site": None,
            "num_coils": 4,
            "val_subjects": 1,
        },
        "model": {"chans": 8, "num_cascades": 1, "sens_chans": 4},
        "objective": {"batch_size": 2},
        "federation": {"rounds": 1},
    }
    cfg_file = tmp_path / "recon.yaml"
    cfg_file.write_text(yaml.safe_dump(config))
    sites = {"hospital-a": tmp_path / "state-a", "hospital-b": tmp_path / "state-b"}
    with LocalDeployment(tmp_path / "flower", sites) as deployment:
        status = deployment.run(cfg_file, ["seed=1"], timeout_s=600)
    assert status == "finished:completed"

    rnd, path = latest_checkpoint(tmp_path / "run")
    assert rnd == 1
    family = family_from_yaml((tmp_path / "run" / "config.yaml").read_text())
    assert family.cfg.seed == 1  # the override travelled through `flwr run --run-config`
    assert set(load_arrays(path)) == set(family.initial_arrays())
    for site, state in sites.items():
        sent = [json.loads(x) for x in (state / "outgoing.jsonl").read_text().splitlines()]
        assert [s["site"] for s in sent] == [site]
        assert set(sent[0]["arrays"]) == set(family.initial_arrays())
    assert set(read_metrics(tmp_path / "run")[0]["val"]) == set(sites)
