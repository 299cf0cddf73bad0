"""dicom_node.config: the example config loads; every mistake is named."""

from __future__ import annotations

import copy

import pytest
import yaml

from dicom_node.config import ConfigError, load_config, parse_config
from tests.conftest import ROOT

EXAMPLE = ROOT / "configs" / "dicom_node.yaml"


def base() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def test_example_config_loads():
    cfg = load_config(EXAMPLE)
    assert [r.called_ae_title for r in cfg.routes] == ["RECON", "SYNTH_T2", "RECON_V1"]
    assert cfg.route("recon").version is None and cfg.route("recon_v1").version == "1"
    synth = cfg.route("synth_t2")
    assert synth.model_name == "synth_t1w_to_t2w" and synth.rules["contrast"] == ("T1w",)
    assert cfg.destinations["pacs"].port == 4242
    assert cfg.processing.delay(1) == 2 and cfg.processing.delay(3) == 8 and cfg.delivery.delay(50) == 300
    assert cfg.routes_for("RECON")[0].task == "reconstruction" and cfg.routes_for("NOPE") == ()


@pytest.mark.parametrize(("route", "message"), [
    ({"task": "reconstruction", "version": 0}, "version: expected a model version number"),
    ({"task": "reconstruction", "version": "v2"}, "version: expected a model version number"),
    ({"task": "synthesis", "source": "T1w", "target": "T2w", "version": 1}, "version: pins a reconstruction model.s version; a synthesis route takes none"),
])
def test_a_route_version_must_be_a_reconstruction_version_number(tmp_path, route, message):
    data = {"storage_dir": str(tmp_path), "destinations": {"pacs": {"ae_title": "P", "host": "h", "port": 104}},
            "routes": [{"called_ae_title": "X", "destinations": ["pacs"], **route}]}
    with pytest.raises(ConfigError, match=rf"routes\[0\]\.{message}"):
        parse_config(data)


def test_toml_is_accepted(tmp_path):
    p = tmp_path / "node.toml"
    p.write_text('storage_dir = "x"\n[destinations.pacs]\nae_title = "P"\nhost = "h"\nport = 104\n'
                 '[[routes]]\ncalled_ae_title = "RECON"\ntask = "reconstruction"\ndestinations = ["pacs"]\n')
    cfg = load_config(p)
    assert cfg.routes[0].name == "recon" and cfg.port == 11112


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c.update(colour="red"), r"config: unknown key\(s\) \['colour'\]"),
    (lambda c: c["routes"][0].update(task="recon"), r"routes\[0\].task: expected 'reconstruction' or 'synthesis'"),
    (lambda c: c["routes"][1].update(destinations=["nowhere"]), r"routes\[1\].destinations: unknown destination"),
    (lambda c: c["routes"][1].pop("source"), r"routes\[1\].source: expected one of T1w"),
    (lambda c: c["routes"][0].update(called_ae_title="A" * 17), r"routes\[0\].called_ae_title: expected an AE"),
    (lambda c: c["destinations"]["pacs"].update(port=70000), r"destinations.pacs.port: expected a TCP port"),
    (lambda c: c["routes"][0].update(series_description="{patient}"), r"series_description: unknown field"),
    (lambda c: c.update(tls={"certificate": "/nope.pem", "private_key": "/nope.key"}), r"tls.certificate: file"),
    (lambda c: c.update(quiet_seconds=-1), r"quiet_seconds: expected a number >= 0"),
    (lambda c: c.update(allowed_peers=[{"ae_title": "X", "hosts": "127.0.0.1"}]), r"allowed_peers\[0\].hosts"),
    (lambda c: c["routes"].append(copy.deepcopy(c["routes"][0])), r"route names must be unique"),
    (lambda c: c.update(quiet_seconds=10, incomplete_timeout_seconds=5), r"incomplete_timeout_seconds: must be >= "),
    (lambda c: c.update(storage_group="no-such-group-mri"), r"storage_group: storage group 'no-such-group-mri' does"),
])
def test_errors_name_the_key(mutate, message):
    c = base()
    mutate(c)
    with pytest.raises(ConfigError, match=message):
        parse_config(c)


def test_rules_match_case_insensitively_with_globs():
    c = base()
    c["routes"][1]["rules"] = {"SeriesDescription": ["*t1*", "mprage*"], "Modality": "MR"}
    route = parse_config(c).routes[1]
    assert route.mismatch({"SeriesDescription": "Ax T1 SE", "Modality": "MR"}) is None
    assert route.mismatch({"SeriesDescription": "MPRAGE sag", "Modality": "MR"}) is None
    assert "SeriesDescription" in route.mismatch({"SeriesDescription": "T2 tse", "Modality": "MR"})
    assert "Modality" in route.mismatch({"SeriesDescription": "t1", "Modality": None})
