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


def test_dicomweb_destination_and_listener_parse(tmp_path, monkeypatch):
    secret = tmp_path / "pw"
    secret.write_text("pa55word\n")
    c = base()
    c["destinations"]["web"] = {"kind": "dicomweb", "url": "http://127.0.0.1:8042/dicom-web/",
                                "auth": {"username": "node", "password_file": str(secret)}}
    c["destinations"]["tok"] = {"kind": "dicomweb", "url": "https://pacs.example:443/rs",
                                "auth": {"token_env": "PACS_TOKEN"}}
    c["dicomweb"] = {"port": 0, "max_body_bytes": 1000, "auth": {"tokens": ["a-token-of-16-chars-or-more"]}}
    cfg = parse_config(c)
    web, tok = cfg.destinations["web"], cfg.destinations["tok"]
    assert web.url == "http://127.0.0.1:8042/dicom-web" and web.describe() == "web(STOW-RS http://127.0.0.1:8042/dicom-web)"
    assert web.auth.kind == "basic" and web.auth.secret() == "pa55word" and "pa55word" not in repr(cfg)
    monkeypatch.setenv("PACS_TOKEN", "t0k3n")
    assert tok.auth.kind == "bearer" and tok.auth.secret() == "t0k3n"
    monkeypatch.delenv("PACS_TOKEN")
    with pytest.raises(ValueError, match="environment variable PACS_TOKEN"):
        tok.auth.secret()
    assert cfg.dicomweb.enabled and cfg.dicomweb.port == 0 and cfg.dicomweb.max_body_bytes == 1000
    assert len(cfg.dicomweb.token_digests()) == 1
    assert not load_config(EXAMPLE).dicomweb.enabled  # off unless the site turns it on


def test_dicomweb_listener_without_a_token_is_an_error(monkeypatch):
    monkeypatch.delenv("MRI_API_TOKENS", raising=False)
    monkeypatch.delenv("MRI_API_TOKENS_FILE", raising=False)
    c = base()
    c["dicomweb"] = {"enabled": True}
    with pytest.raises(ConfigError, match="dicomweb.auth: the DICOMweb listener is on .* no token is configured"):
        parse_config(c).dicomweb.token_digests()
    monkeypatch.setenv("MRI_API_TOKENS", "the-api-token-0123456789")  # make run's token serves both
    assert len(parse_config(c).dicomweb.token_digests()) == 1
    c["dicomweb"]["auth"] = {"enabled": False}
    assert not parse_config(c).dicomweb.auth_enabled


@pytest.mark.parametrize("dest, message", [
    ({"kind": "dicomweb"}, r"destinations.web: missing required key\(s\) \['url'\]"),
    ({"kind": "dicomweb", "url": "ftp://x/rs"}, r"destinations.web.url: expected the DICOMweb service root"),
    ({"kind": "dicomweb", "url": "http://x", "ae_title": "X"}, r"destinations.web: unknown key\(s\) \['ae_title'\]"),
    ({"kind": "stow", "url": "http://x"}, r"destinations.web.kind: expected 'dicom' .* or 'dicomweb'"),
    ({"kind": "dicomweb", "url": "http://x", "auth": {"token_env": "T", "username": "u", "password_env": "P"}},
     r"destinations.web.auth: either a bearer token .* not both"),
    ({"kind": "dicomweb", "url": "http://x", "auth": {"username": "u"}},
     r"destinations.web.auth: expected token_file or token_env"),
    ({"kind": "dicomweb", "url": "http://x", "auth": {"token_file": "/no/such/file"}},
     r"destinations.web.auth.token_file: file /no/such/file does not exist"),
    ({"kind": "dicomweb", "url": "http://x", "auth": {"token_env": "not a name"}},
     r"destinations.web.auth.token_env: expected an environment variable name"),
    ({"kind": "dicomweb", "url": "http://x", "tls": {"verify_server": False}},
     r"destinations.web.tls: TLS settings need an https:// url"),
])
def test_dicomweb_destination_errors_name_the_key(dest, message):
    c = base()
    c["destinations"]["web"] = dest
    with pytest.raises(ConfigError, match=message):
        parse_config(c)


@pytest.mark.parametrize("section, message", [
    ({"port": 70000}, r"dicomweb.port: expected a TCP port"),
    ({"max_body_bytes": 0}, r"dicomweb.max_body_bytes: expected an integer >= 1"),
    ({"enabled": "yes"}, r"dicomweb.enabled: expected true or false"),
    ({"path": "/x"}, r"dicomweb: unknown key\(s\) \['path'\]"),
    ({"auth": {"tokens": ["short"]}}, r"dicomweb.auth.tokens\[0\]: must be a token of at least 16 characters"),
])
def test_dicomweb_listener_errors_name_the_key(section, message):
    c = base()
    c["dicomweb"] = section
    with pytest.raises(ConfigError, match=message):
        parse_config(c)
