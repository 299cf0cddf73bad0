"""A federation a security officer can sign off, tested with the real flower-superlink and flower-supernodes:
TLS with the federation's private CA, SuperNode authentication (an unknown key cannot join), and SecAgg+ of
the generator weights (the coordinator sees only the weighted average, equal to plain FedAvg's)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import shutil

import numpy as np
import pytest
import yaml

from benchmarks.common import free_port
from mrcore.config import ConfigError
from training.federation.checkpoints import read_metrics
from training.federation.config import SecureAggregationConfig
from training.federation.deploy import DeploymentError, LocalDeployment
from training.federation.pki import (
    Pki,
    PkiError,
    check_server_certificate,
    create_pki,
    issue_server_certificate,
    public_key_fingerprint,
)
from training.federation.records import load_arrays
from training.federation.registry import family_from_config, family_from_yaml
from training.federation.secure import site_reply_content

SITES = ["hospital-a", "hospital-b"]


def tiny_config(tmp_path, run: str, sites=SITES, **federation) -> dict:
    return {
        "family": "recon",
        "run_dir": str(tmp_path / run),
        "seed": 3,
        "data": {
            "source": {"matrix": [32, 32], "subjects_per_site": 3, "slices_per_subject": 2,
                       "cache_dir": str(tmp_path / "cache")},
            "train_sites": list(sites),
            "heldout_site": None,
            "num_coils": 4,
            "val_subjects": 1,
        },
        "model": {"chans": 8, "num_cascades": 1, "sens_chans": 4},
        "objective": {"batch_size": 2, "lr": 1e-3},
        "federation": {"rounds": 1, "evaluate_sites": False, **federation},
    }


def write_config(tmp_path, cfg: dict):
    path = tmp_path / f"{cfg['run_dir'].rsplit('/', 1)[-1]}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# -- PKI, no processes --------------------------------------------------------------------------------
def test_pki_files_keys_private_and_server_certificate_checked(tmp_path):
    pki = create_pki(tmp_path / "pki", SITES, ["coordinator.example.org"])
    assert (pki.root.stat().st_mode & 0o777) == 0o700
    for key in (pki.ca_key, pki.server_key, *(pki.site_key(s) for s in SITES)):
        assert (key.stat().st_mode & 0o777) == 0o600, key
    for host in ("localhost", "127.0.0.1", "coordinator.example.org"):
        check_server_certificate(pki.server_cert, pki.ca_cert, host)
    with pytest.raises(PkiError, match="does not name host 'other.example.org'"):
        check_server_certificate(pki.server_cert, pki.ca_cert, "other.example.org")
    other = create_pki(tmp_path / "other", ["x"])
    with pytest.raises(PkiError, match="was not issued by the CA"):
        check_server_certificate(other.server_cert, pki.ca_cert, "localhost")
    expired = Pki(tmp_path / "pki")
    issue_server_certificate(expired, ["localhost"], 1, not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=3),
                             out_cert=tmp_path / "old.pem", out_key=tmp_path / "old.key")
    with pytest.raises(PkiError, match="old.pem expired"):
        check_server_certificate(tmp_path / "old.pem", pki.ca_cert, "localhost")
    # adding a hospital keeps the CA and the other keys
    before = pki.ca_cert.read_bytes(), pki.site_key("hospital-a").read_bytes()
    create_pki(tmp_path / "pki", ["hospital-c"])
    assert (pki.ca_cert.read_bytes(), pki.site_key("hospital-a").read_bytes()) == before
    assert public_key_fingerprint(pki.site_public_key("hospital-c")).startswith("SHA256:")
    with pytest.raises(PkiError, match="site name"):
        create_pki(tmp_path / "pki", ["../evil"])


def test_secure_aggregation_with_fewer_sites_than_its_threshold_is_refused(tmp_path):
    cfg = tiny_config(tmp_path, "r", secure_aggregation={"enabled": True, "reconstruction_threshold": 3})
    with pytest.raises(ConfigError, match=r"reconstruction_threshold=3 must be in \[2, num_shares=2\].*hospital-a"):
        family_from_config(cfg)
    one = tiny_config(tmp_path, "r", sites=["hospital-a"], secure_aggregation={"enabled": True})
    with pytest.raises(ConfigError, match=r"at least 2 training sites, got \['hospital-a'\]"):
        family_from_config(one)
    family_from_config(tiny_config(tmp_path, "r", secure_aggregation={"enabled": True}))


def test_site_refuses_to_send_what_secure_aggregation_would_distort():
    cfg = SecureAggregationConfig(enabled=True, max_weight=10.0, clipping_range=1.0)
    ok = {"w": np.full((2, 2), 1.5, np.float32)}
    content = site_reply_content(ok, 6, {"loss": 0.1}, cfg, "hospital-a")  # 1.5 * 6/10 = 0.9 < 1
    assert list(content.array_records) == ["fitres.parameters"]
    with pytest.raises(ValueError, match=r"site 'hospital-a': array 'w' reaches 1.2 after weighting"):
        site_reply_content(ok, 8, {}, cfg, "hospital-a")
    with pytest.raises(ValueError, match=r"site 'hospital-b': 11 examples this round exceed .*max_weight=10"):
        site_reply_content(ok, 11, {}, cfg, "hospital-b")


# -- real SuperLink and SuperNodes ------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.e2e
def test_site_with_unknown_key_is_refused(tmp_path):
    pki = create_pki(tmp_path / "pki", ["hospital-a", "hospital-x"])
    sites = {"hospital-a": tmp_path / "a", "hospital-x": tmp_path / "x"}
    dep = LocalDeployment(tmp_path / "flower", sites, pki=pki.root, register=["hospital-a"])
    fingerprint = public_key_fingerprint(pki.site_public_key("hospital-x"))
    with pytest.raises(DeploymentError, match=f"site 'hospital-x' refused by the SuperLink: its key {re.escape(fingerprint)}.* is not registered"):
        with dep:
            pass
    assert "SuperNode ID:" in (tmp_path / "flower" / "supernode-hospital-a.log").read_text()  # the known key joined


@pytest.mark.slow
@pytest.mark.e2e
def test_revoked_site_cannot_join_again(tmp_path):
    sites = {"hospital-a": tmp_path / "a"}
    with LocalDeployment(tmp_path / "flower", sites) as dep:
        dep.unregister("hospital-a")  # what docs/federation.md tells the coordinator to do
        with pytest.raises(DeploymentError, match="site 'hospital-a' refused by the SuperLink: its key .* not registered"):
            dep._start_node("hospital-a", tmp_path / "a", free_port(), dep.link_port)


@pytest.mark.slow
@pytest.mark.e2e
def test_certificate_from_another_ca_is_refused(tmp_path):
    pki = create_pki(tmp_path / "pki", ["hospital-a"])
    other = create_pki(tmp_path / "other", ["hospital-a"])
    # the SuperLink presents a certificate from another CA: refused before anything starts
    bad = tmp_path / "bad"
    shutil.copytree(pki.root, bad)
    for name in ("server.pem", "server.key"):
        shutil.copy(other.root / name, bad / name)
    with pytest.raises(DeploymentError, match="SuperLink certificate refused: .*was not issued by the CA"):
        with LocalDeployment(tmp_path / "f1", {"hospital-a": tmp_path / "a"}, pki=bad):
            pass
    # an expired SuperLink certificate from the right CA: refused before anything starts
    expired = tmp_path / "expired"
    shutil.copytree(pki.root, expired)
    for name in ("server.pem", "server.key"):
        (expired / name).unlink()
    issue_server_certificate(Pki(expired), ["localhost", "127.0.0.1"], 1,
                             not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=2))
    with pytest.raises(DeploymentError, match="SuperLink certificate refused: .*server.pem expired on"):
        with LocalDeployment(tmp_path / "f0", {"hospital-a": tmp_path / "a"}, pki=expired):
            pass
    # a site that trusts another CA: its TLS handshake with the real SuperLink fails
    with pytest.raises(DeploymentError, match="site 'hospital-a' refused the SuperLink's certificate.*CERTIFICATE_VERIFY_FAILED"):
        with LocalDeployment(tmp_path / "f2", {"hospital-a": tmp_path / "a"}, pki=pki.root, site_ca=other.ca_cert):
            pass


@pytest.mark.slow
@pytest.mark.e2e
def test_insecure_mode_warns(tmp_path, caplog):
    dep = LocalDeployment(tmp_path / "flower", {"hospital-a": tmp_path / "a"}, insecure=True)
    with caplog.at_level(logging.WARNING, logger="training.federation.deploy"):
        dep._check_pki()
    assert "without TLS" in caplog.text


@pytest.mark.slow
@pytest.mark.e2e
def test_secure_aggregation_equals_fedavg_and_coordinator_sees_only_the_aggregate(tmp_path):
    """Two runs on one TLS deployment with authenticated sites: plain FedAvg, then SecAgg+, same seed, so
    the sites compute the same updates; the aggregates agree and SecAgg+'s coordinator got no site arrays."""
    plain = write_config(tmp_path, tiny_config(tmp_path, "plain"))
    secure = write_config(tmp_path, tiny_config(tmp_path, "secure", secure_aggregation={
        "enabled": True, "max_weight": 16.0}))
    sites = {s: tmp_path / f"state-{s}" for s in SITES}
    with LocalDeployment(tmp_path / "flower", sites) as deployment:
        assert deployment.run(plain, timeout_s=600) == "finished:completed"
        for state in sites.values():  # round 1 starts from no site state in both runs
            for f in state.glob("state_round_*.pt"):
                f.unlink()
        assert deployment.run(secure, timeout_s=600) == "finished:completed"

    a = load_arrays(tmp_path / "plain" / "checkpoints" / "round_001.npz")
    b = load_arrays(tmp_path / "secure" / "checkpoints" / "round_001.npz")
    family = family_from_yaml((tmp_path / "secure" / "config.yaml").read_text())
    init = family.initial_arrays()
    assert set(a) == set(b) == set(init)
    moved = max(float(np.max(np.abs(a[k] - init[k]))) for k in a)
    diff = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
    assert moved > 1e-4  # the round trained
    assert diff < 1e-5, f"SecAgg+ aggregate differs from FedAvg's by {diff} (the round moved weights by {moved})"
    for k in a:
        assert b[k].dtype == a[k].dtype and b[k].shape == a[k].shape

    plain_row, secure_row = read_metrics(tmp_path / "plain")[0], read_metrics(tmp_path / "secure")[0]
    assert set(plain_row["traffic"]["received_arrays"]) == set(SITES)
    for site in SITES:
        assert len(plain_row["traffic"]["received_arrays"][site]) == len(init)  # FedAvg: each site's weights
        assert secure_row["traffic"]["received_arrays"].get(site, []) == []  # SecAgg+: no site's arrays
    assert set(secure_row["train"]) == set(SITES)  # scalar metrics still arrive, with the example counts
    assert secure_row["train"]["hospital-a"]["num-examples"] == plain_row["train"]["hospital-a"]["num-examples"]
    assert secure_row["traffic"]["train_received_bytes"] > 0
    for state in sites.values():  # each site still sent the generator weights only (into the masking)
        sent = [json.loads(x) for x in (state / "outgoing.jsonl").read_text().splitlines()]
        assert [set(s["arrays"]) for s in sent] == [set(init), set(init)]


def test_federation_certs_cli_and_sequential_engine_refusal(tmp_path):
    from typer.testing import CliRunner

    from training.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["federation-certs", "--out", str(tmp_path / "pki"), "--sites", "hospital-a hospital-b",
                              "--host", "coordinator.example.org"])
    assert res.exit_code == 0, res.output
    assert "hospital-b: private key" in res.output and "SHA256:" in res.output
    assert (tmp_path / "pki" / "sites" / "hospital-b" / "supernode.key").stat().st_mode & 0o777 == 0o600
    bad = runner.invoke(app, ["federation-certs", "--out", str(tmp_path / "pki"), "--sites", "a/b"])
    assert bad.exit_code == 2 and "site name 'a/b'" in " ".join(re.sub(r"[│╭╮╰╯─]", " ", bad.output).split())
    seq = runner.invoke(app, ["federated", "-c", "configs/recon.yaml", "--engine", "sequential",
                              "--set", "federation.secure_aggregation.enabled=true",
                              "--set", f"run_dir={tmp_path / 'run'}"])
    flat = " ".join(re.sub(r"[│╭╮╰╯─]", " ", seq.output).split())
    assert seq.exit_code == 2 and "the sequential engine has none" in flat, flat


def secure_round_equals_weighted_mean_of_own_updates(tmp_path, config: list[str]):
    """One SecAgg+ round of ``config`` in Flower's simulation (sites with different example counts); checks that
    the checkpoint is the example-weighted mean of the sites' own updates recomputed independently (same seeds)
    and that the coordinator received no site's arrays. Returns ``(family, {site: SiteUpdate})``."""
    from training.federation.runconfig import load_run_config
    from training.federation.simulation import simulate

    cfg = load_run_config(None, config)
    simulate(cfg, num_cpus=2)
    aggregated = load_arrays(tmp_path / "run" / "checkpoints" / "round_001.npz")
    family = family_from_config(cfg)
    init = family.initial_arrays()
    updates = {s: family.train_site(s, init, 1, tmp_path / "independent" / s) for s in family.train_sites}
    weights = np.array([u.num_examples for u in updates.values()], dtype=np.float64)
    assert weights[0] != weights[1]
    for name, value in aggregated.items():
        expected = sum(w * u.arrays[name] for w, u in zip(weights, updates.values())) / weights.sum()
        np.testing.assert_allclose(value, expected, rtol=0, atol=1e-5, err_msg=name)
    row = read_metrics(tmp_path / "run")[0]
    assert all(names == [] for names in row["traffic"]["received_arrays"].values())
    return family, updates


@pytest.mark.slow
def test_secure_aggregation_keeps_fedavg_weighting_and_critics_local_in_simulation(tmp_path):
    """Sites with different amounts of data (so the weighting matters) and the hybrid objective (a WGAN
    critic at each site): SecAgg+ in Flower's simulation gives the example-weighted mean of the sites' own
    updates, computed here independently, and the critics never leave the sites."""
    import torch

    overrides = [f"run_dir={tmp_path / 'run'}", f"data.source.cache_dir={tmp_path / 'cache'}",
                 "data.source.matrix=[40, 40]", "data.source.subjects_per_site=3", "data.source.slices_per_subject=3",
                 "data.train_sites=[hospital-a, hospital-b]", "data.heldout_site=null", "data.num_coils=4",
                 "data.val_subjects=1", "model.chans=8", "model.num_cascades=1", "model.sens_chans=4",
                 "objective.batch_size=2", "objective.kind=hybrid", "data.site_train_slices={hospital-a: 2}",
                 "federation.rounds=1", "federation.secure_aggregation.enabled=true",
                 "federation.secure_aggregation.max_weight=16"]
    family, _ = secure_round_equals_weighted_mean_of_own_updates(tmp_path, ["family=recon", *overrides])
    for site in family.train_sites:
        state = next((tmp_path / "run" / "sites" / site).glob("state_round_*.pt"))
        assert "critic" in torch.load(state, weights_only=True)  # the critic stayed at the site


@pytest.mark.slow
def test_secure_aggregation_of_dp_synthesis_keeps_each_sites_epsilon(tmp_path):
    """The synthesis family (DP-SGD on the generators, PatchGAN discriminators at each site) under SecAgg+ in
    Flower's simulation: the aggregate is the example-weighted mean of the sites' own private updates (computed
    here independently, same seeds, same DP noise), and each site's privacy ledger records exactly the epsilon
    that site's own training gives without SecAgg+: secure aggregation changes neither the update nor the
    accounting."""
    from training.synthesis.family import read_ledger

    overrides = [f"run_dir={tmp_path / 'run'}", f"data.source.cache_dir={tmp_path / 'cache'}",
                 "data.source.matrix=[32, 32]", "data.source.subjects_per_site=4", "data.source.slices_per_subject=3",
                 "data.val_subjects=1", "data.test_subjects=1",
                 "data.source.extra={}", "data.train_sites=[hospital-a, hospital-b]", "data.train_slices_total=6",
                 "data.partition=gradual", "augment.patch_size=0", "model.generator=resnet", "model.chans=4",
                 "model.depth=1", "model.norm=instance", "model.init_weights=null", "objective.batch_size=2",
                 "objective.micro_batch_size=2", "privacy.enabled=true", "federation.rounds=1",
                 "federation.local_epochs=1", "federation.secure_aggregation.enabled=true",
                 "federation.secure_aggregation.max_weight=16"]
    family, updates = secure_round_equals_weighted_mean_of_own_updates(tmp_path, ["family=synthesis", *overrides])
    for site, update in updates.items():
        ledger = read_ledger(tmp_path / "run" / "sites" / site)
        assert len(ledger) == 1 and ledger[0]["epsilon"] == pytest.approx(update.metrics["epsilon"], rel=1e-12)
        assert 0 < ledger[0]["epsilon"] < float("inf")
