"""TLS: dcmtk's echoscu/storescu with +tls against the node (mutual TLS), and the node delivering to Orthanc
over DICOM TLS. Certificates are generated here with the openssl CLI. Inference: the TEST DOUBLE backend."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.dicom_node.data import ellipse_volume, mr_series, write_series
from tests.dicom_node.peers import Orthanc, echoscu, need, node_config, storescu, wait_for
from tests.dicom_node.test_e2e_orthanc import SYNTH_ROUTE

pytestmark = pytest.mark.e2e


def self_signed(directory, name: str) -> tuple[str, str]:
    key, crt = directory / f"{name}.key", directory / f"{name}.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", str(key),
                    "-out", str(crt), "-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    return str(key), str(crt)


@pytest.fixture
def certs(tmp_path):
    need("openssl")
    d = tmp_path / "certs"
    d.mkdir()
    return {n: self_signed(d, n) for n in ("node", "scanner", "pacs")}


def test_mutual_tls_with_dcmtk_and_tls_delivery_to_orthanc(tmp_path, certs, node_factory, node_port):
    node_key, node_crt = certs["node"]
    scan_key, scan_crt = certs["scanner"]
    pacs_key, pacs_crt = certs["pacs"]
    orthanc = Orthanc(tmp_path / "pacs")
    cfg_path = orthanc.write_config()
    cfg = json.loads(cfg_path.read_text())
    cfg.update({"DicomTlsEnabled": True, "DicomTlsCertificate": pacs_crt, "DicomTlsPrivateKey": pacs_key,
                "DicomTlsTrustedCertificates": node_crt, "DicomTlsRemoteCertificateRequired": True})
    orthanc.write_config = lambda: (cfg_path.write_text(json.dumps(cfg)), cfg_path)[1]
    orthanc.start()
    try:
        dest = {"pacs": {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port,
                         "tls": {"certificate": node_crt, "private_key": node_key, "ca_certificates": pacs_crt}}}
        node_cfg = node_config(tmp_path, port=node_port, destinations=dest, routes=[SYNTH_ROUTE],
                               tls={"certificate": node_crt, "private_key": node_key, "ca_certificates": scan_crt,
                                    "require_client_certificate": True})
        node = node_factory(node_cfg)
        tls = ["+tls", scan_key, scan_crt, "+cf", node_crt]
        r = echoscu(node.port, aec="SYNTH_T2", extra=tls)
        assert r.returncode == 0, r.stdout + r.stderr
        assert echoscu(node.port, aec="SYNTH_T2").returncode != 0  # plain TCP to the TLS port
        r = echoscu(node.port, aec="SYNTH_T2", extra=["+tls", pacs_key, pacs_crt, "+cf", node_crt])
        assert r.returncode != 0  # a client certificate the node does not trust
        sources = mr_series(ellipse_volume(3, 32, 32))
        r = storescu(node.port, write_series(sources, tmp_path / "src"), aec="SYNTH_T2", extra=tls)
        assert r.returncode == 0, r.stdout + r.stderr
        derived = wait_for(lambda: orthanc.derived_series(str(sources[0].SeriesInstanceUID)), 60,
                           "the derived series delivered over TLS")
        wait_for(lambda: len(orthanc.get(f"/series/{derived[0]['ID']}")["Instances"]) == 3, 20, "3 instances")
    finally:
        orthanc.stop()
