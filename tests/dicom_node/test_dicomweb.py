"""DICOMweb with real peers: STOW-RS into the node from the real ``curl`` binary, STOW-RS out of the node to
Orthanc's DICOMweb plugin (Debian's orthanc-dicomweb), retries then ``failed`` while the DICOMweb server is
down, and every kind of bad input (PS3.18 status codes, FailureReason per instance, nothing half-stored).
Inference is the TEST DOUBLE backend (tests/dicom_node/doubles.py); the node runs as a subprocess."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pydicom
import pytest
import yaml

from serving.dicom import real_world_values
from tests.conftest import free_port
from tests.dicom_node.data import ellipse_volume, mr_series, write_series
from tests.dicom_node.doubles import expected_synthesis
from tests.dicom_node.peers import ORTHANC_DICOMWEB, need, node_config, wait_for
from tests.dicom_node.test_e2e_orthanc import check_no_phi
from tests.dicom_node.test_tls import self_signed

pytestmark = pytest.mark.e2e

TOKEN = "stow-test-token-0123456789abcdef"
BOUNDARY = "dicomweb-test-boundary-7f3a"
SYNTH_ROUTE = {"called_ae_title": "SYNTH_T2", "task": "synthesis", "source": "T1w", "target": "T2w",
               "destinations": ["web"], "rules": {"Modality": "MR", "contrast": "T1w"},
               "series_description": "{description} synthetic {contrast}", "series_number_offset": 2000}
#: PS3.18 FailureReason values (the C-STORE statuses of the same failures)
NOT_DICOM, SOP_CLASS_NOT_ACCEPTED, MISMATCH = 0xC000, 0x0122, 0xA900


# --------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------
def multipart(parts: list[bytes], content_types: list[str] | None = None) -> bytes:
    """A multipart/related body with ``parts`` (each ``application/dicom`` unless said otherwise)."""
    out = b""
    for i, data in enumerate(parts):
        ct = content_types[i] if content_types else "application/dicom"
        out += f"--{BOUNDARY}\r\nContent-Type: {ct}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def curl(url: str, body: bytes, tmp_path: Path, *, token: str | None = TOKEN, chunked: bool = False,
         extra: tuple[str, ...] = (),
         content_type: str = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}') -> tuple[int, dict]:
    """POST ``body`` with the real curl binary (``chunked``: no Content-Length); returns (HTTP status, JSON answer)."""
    body_file, out = tmp_path / "body.bin", tmp_path / "answer.json"
    body_file.write_bytes(body)
    cmd = ["curl", "-sS", "-o", str(out), "-w", "%{http_code} %{content_type}", "-H", f"Content-Type: {content_type}",
           "--data-binary", f"@{body_file}", url]
    if chunked:
        cmd[1:1] = ["-H", "Transfer-Encoding: chunked"]
    cmd[1:1] = list(extra)
    if token:
        cmd[1:1] = ["-H", f"Authorization: Bearer {token}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    code, _, media = r.stdout.partition(" ")
    answer = json.loads(out.read_text() or "null")
    if int(code) in (200, 202, 409):
        assert media == "application/dicom+json", media
    return int(code), answer


def referenced(answer: dict) -> list[str]:
    return [i["00081155"]["Value"][0] for i in answer.get("00081199", {}).get("Value", [])]


def failures(answer: dict) -> list[tuple[str | None, int]]:
    """(SOP Instance UID or None, FailureReason) of each FailedSOPSequence item."""
    out = []
    for item in answer.get("00081198", {}).get("Value", []):
        uid = item.get("00081155", {}).get("Value", [None])[0]
        out.append((uid, item["00081197"]["Value"][0]))
    return out


def stored_instances(config: Path) -> dict[str, Path]:
    """SOP Instance UID -> spool file of every instance the node's queue holds."""
    storage = Path(yaml.safe_load(config.read_text())["storage_dir"])
    db = storage / "queue.sqlite"
    if not db.exists():
        return {}
    with sqlite3.connect(db) as c:
        return {uid: Path(p) for uid, p in c.execute("SELECT sop_uid, path FROM instances")}


def t1_series(tmp_path: Path, name: str = "t1", slices: int = 4, **kwargs) -> tuple[list, list[Path]]:
    datasets = mr_series(ellipse_volume(slices, seed=len(name)), **kwargs)
    return datasets, write_series(datasets, tmp_path / name)


@pytest.fixture
def web_node(tmp_path, node_factory):
    """``make(destinations, routes=..., **config)`` -> (node, STOW-RS base URL, config path)."""

    def make(destinations: dict, routes=(SYNTH_ROUTE,), max_body_bytes: int = 8 * 2**20, web_port: int | None = None,
             tls: dict | None = None, **extra):
        need_curl()
        web_port = web_port or free_port()
        section = {"host": "127.0.0.1", "port": web_port, "max_body_bytes": max_body_bytes, "tls": tls}
        cfg = node_config(tmp_path, port=free_port(), destinations=destinations, routes=list(routes),
                          dicomweb=section, **extra)
        node = node_factory(cfg, env={"MRI_API_TOKENS": TOKEN})
        base = f"{'https' if tls else 'http'}://127.0.0.1:{web_port}"
        assert f"DICOMweb STOW-RS on {base}/studies (bearer token" in node.log()
        return node, base, cfg

    return make


def need_curl() -> None:
    if shutil.which("curl") is None:
        pytest.fail("curl is not installed")


# --------------------------------------------------------------------------------------------------------------
# (a) + (b): STOW-RS in from curl, STOW-RS out to Orthanc's DICOMweb plugin
# --------------------------------------------------------------------------------------------------------------
def test_stow_in_from_curl_and_stow_out_to_orthanc_dicomweb(tmp_path, orthanc_factory, web_node):
    password = tmp_path / "orthanc-password"
    password.write_text("s3cret-orthanc-pw\n")
    password.chmod(0o600)
    orthanc = orthanc_factory(name="web-pacs", user=("node", "s3cret-orthanc-pw"),
                              extra={"Plugins": [ORTHANC_DICOMWEB], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}})
    web = {"web": {"kind": "dicomweb", "url": f"http://127.0.0.1:{orthanc.http_port}/dicom-web",
                   "auth": {"username": "node", "password_file": str(password)}}}
    node, base, cfg = web_node(web)
    sources, files = t1_series(tmp_path)

    code, answer = curl(f"{base}/studies", multipart([f.read_bytes() for f in files]), tmp_path)

    assert code == 200 and failures(answer) == []
    uids = {str(ds.SOPInstanceUID) for ds in sources}
    assert set(referenced(answer)) == uids
    spool = stored_instances(cfg)  # acknowledged = in the queue and on disk, byte for byte
    assert set(spool) == uids
    for f, ds in zip(files, sources):
        assert spool[str(ds.SOPInstanceUID)].read_bytes() == f.read_bytes()
    jobs = wait_for(lambda: [j for j in node.jobs() if j["state"] == "done"], 120, "the job to be done")
    assert jobs[0]["deliveries"] == {"web": "done(1)"}  # Orthanc answered the STOW-RS: it holds every instance
    derived = orthanc.derived_series(str(sources[0].SeriesInstanceUID))
    assert len(derived) == 1
    got = orthanc.datasets(derived[0])
    assert len(got) == len(sources)
    assert {str(d.StudyInstanceUID) for d in got} == {str(sources[0].StudyInstanceUID)}
    assert all("synthetic" in str(d.SeriesDescription) and d.SyntheticData == "YES" for d in got)
    by_pos = {tuple(ds.ImagePositionPatient): ds for ds in sources}
    for d in got:
        src = by_pos[tuple(d.ImagePositionPatient)]
        assert str(d.SourceImageSequence[0].ReferencedSOPInstanceUID) == str(src.SOPInstanceUID)
        expected = expected_synthesis(src.pixel_array.astype("float32"))
        slope = float(d.RealWorldValueMappingSequence[0].RealWorldValueSlope)
        assert abs(real_world_values(d) - expected).max() <= slope
    audit = (Path(yaml.safe_load(cfg.read_text())["storage_dir"]) / "audit.log").read_text()
    assert "calling_ae=DICOMWEB" in audit and "destination=web(STOW-RS" in audit
    check_no_phi(node.log(), audit)
    for uid in uids:  # hashed UIDs only
        assert uid not in node.log()


def test_orthanc_stows_a_series_to_the_node_and_gets_the_derived_series_back(tmp_path, orthanc_factory, web_node):
    """Both directions with Orthanc's DICOMweb plugin as client and server; a 10-slice 256x256 series (> 1 MB:
    dicomweb-client sends it with chunked transfer encoding)."""
    web_port = free_port()
    server = {"Url": f"http://127.0.0.1:{web_port}/aets/SYNTH_T2/rs/", "HttpHeaders": {"Authorization": f"Bearer {TOKEN}"}}
    orthanc = orthanc_factory(name="web-pacs", extra={
        "Plugins": [ORTHANC_DICOMWEB], "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Servers": {"node": server}}})
    web = {"web": {"kind": "dicomweb", "url": f"http://127.0.0.1:{orthanc.http_port}/dicom-web"}}
    node, _, cfg = web_node(web, web_port=web_port)
    volume = ellipse_volume(10, 256, 256)
    sources = mr_series(volume)
    files = write_series(sources, tmp_path / "t1_big")
    assert sum(f.stat().st_size for f in files) > 10**6
    for f in files:
        orthanc.upload(f)
    series_id = orthanc.series_by_uid(str(sources[0].SeriesInstanceUID))["ID"]

    orthanc._request("POST", "/dicom-web/servers/node/stow", {"Resources": [series_id], "Synchronous": True},
                     timeout=120)

    assert set(stored_instances(cfg)) == {str(ds.SOPInstanceUID) for ds in sources}
    assert wait_for(lambda: [j for j in node.jobs() if j["state"] == "done"], 120, "done")[0]["deliveries"] == \
        {"web": "done(1)"}
    derived = orthanc.derived_series(str(sources[0].SeriesInstanceUID))
    got = orthanc.datasets(derived[0])
    assert len(got) == 10 and {str(d.StudyInstanceUID) for d in got} == {str(sources[0].StudyInstanceUID)}


def test_stow_out_with_a_bearer_token_to_another_node(tmp_path, node_factory, web_node):
    """Node A delivers its derived T2w series by STOW-RS (bearer token from a file) to node B's listener, whose
    T2w->T1w route takes it: both ends of the node's DICOMweb, with authentication, between two processes."""
    b_dir = tmp_path / "b"
    b_dir.mkdir()
    b_web = free_port()
    b_route = {**SYNTH_ROUTE, "called_ae_title": "SYNTH_T1", "source": "T2w", "target": "T1w",
               "rules": {"Modality": "MR", "SeriesDescription": "*synthetic T2w"}, "destinations": ["nowhere"]}
    b_cfg = node_config(b_dir, port=free_port(), routes=[b_route], quiet_seconds=600,
                        destinations={"nowhere": {"ae_title": "NOWHERE", "host": "127.0.0.1", "port": free_port()}},
                        dicomweb={"host": "127.0.0.1", "port": b_web, "auth": {"tokens": ["node-b-token-0123456789"]}})
    node_factory(b_cfg, env={"MRI_API_TOKENS": ""})
    token = tmp_path / "b-token"
    token.write_text("node-b-token-0123456789\n")
    web = {"web": {"kind": "dicomweb", "url": f"http://127.0.0.1:{b_web}/aets/SYNTH_T1/rs",
                   "auth": {"token_file": str(token)}}}
    node_a, base, _ = web_node(web)
    sources, files = t1_series(tmp_path)
    assert curl(f"{base}/studies", multipart([f.read_bytes() for f in files]), tmp_path)[0] == 200
    job = wait_for(lambda: [j for j in node_a.jobs() if j["state"] in ("done", "failed")], 120, "delivery to node B")[0]
    assert job["state"] == "done", job
    at_b = [pydicom.dcmread(p) for p in stored_instances(b_cfg).values()]
    assert len(at_b) == len(sources)
    assert {str(d.SeriesInstanceUID) for d in at_b} != {str(sources[0].SeriesInstanceUID)}
    assert all(d.SyntheticData == "YES" and str(d.StudyInstanceUID) == str(sources[0].StudyInstanceUID) for d in at_b)


# --------------------------------------------------------------------------------------------------------------
# (c): the DICOMweb server is down: retries with back-off, then failed; retry after it is up
# --------------------------------------------------------------------------------------------------------------
def test_stow_out_retries_then_fails_while_the_server_is_down(tmp_path, web_node):
    closed = free_port()  # nothing listens there
    web = {"web": {"kind": "dicomweb", "url": f"http://127.0.0.1:{closed}/dicom-web"}}
    node, base, cfg = web_node(web, delivery={"max_attempts": 3, "retry_base_seconds": 0.2, "retry_max_seconds": 1})
    _, files = t1_series(tmp_path)
    code, _ = curl(f"{base}/studies", multipart([f.read_bytes() for f in files]), tmp_path)
    assert code == 200
    job = wait_for(lambda: [j for j in node.jobs() if j["state"] == "failed"], 120, "the job to fail")[0]
    assert job["deliveries"] == {"web": "failed(3)"}
    assert "connection refused" in job["last_error"] and "STOW-RS" in job["last_error"]
    log = node.log()
    assert log.count("delivery to web attempt") == 2 and "FAILED after 3 attempt(s)" in log


def test_stow_over_https_with_client_certificates(tmp_path, web_node):
    need("openssl")
    d = tmp_path / "certs"
    d.mkdir()
    (node_key, node_crt), (client_key, client_crt) = (self_signed(d, "node"), self_signed(d, "client"))
    tls = {"certificate": node_crt, "private_key": node_key, "ca_certificates": client_crt,
           "require_client_certificate": True}
    web = {"web": {"kind": "dicomweb", "url": f"http://127.0.0.1:{free_port()}/dicom-web"}}
    node, base, cfg = web_node(web, tls=tls, quiet_seconds=600)
    sources, files = t1_series(tmp_path)
    body = multipart([f.read_bytes() for f in files])
    code, answer = curl(f"{base}/studies", body, tmp_path, extra=("--cacert", node_crt, "--cert", client_crt,
                                                                   "--key", client_key))
    assert code == 200 and set(referenced(answer)) == {str(ds.SOPInstanceUID) for ds in sources}
    plain = subprocess.run(["curl", "-sS", "-o", "/dev/null", "--cacert", node_crt, f"{base}/studies", "-d", "x"],
                           capture_output=True, text=True, timeout=30)
    assert plain.returncode != 0  # no client certificate: the handshake fails
    http = subprocess.run(["curl", "-sS", "-o", "/dev/null", base.replace("https", "http") + "/studies", "-d", "x"],
                          capture_output=True, text=True, timeout=30)
    assert http.returncode != 0  # plain HTTP to the TLS port is not served


# --------------------------------------------------------------------------------------------------------------
# (d): bad input
# --------------------------------------------------------------------------------------------------------------
def test_bad_stow_bodies_get_ps3_18_statuses_and_nothing_half_stored(tmp_path, web_node):
    pacs = {"web": {"kind": "dicomweb", "url": f"http://127.0.0.1:{free_port()}/dicom-web"}}
    node, base, cfg = web_node(pacs, max_body_bytes=200_000, quiet_seconds=600)  # nothing gets processed
    sources, files = t1_series(tmp_path)
    good = files[0].read_bytes()
    url = f"{base}/studies"

    # the Content-Type of the request: not multipart/related, or not of application/dicom parts -> 415
    code, answer = curl(url, good, tmp_path, content_type="application/dicom")
    assert code == 415 and answer["field"] == "Content-Type"
    code, _ = curl(url, multipart([good]), tmp_path,
                   content_type=f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}')
    assert code == 415
    code, answer = curl(url, multipart([good, b"{}"], ["application/dicom", "application/json"]), tmp_path)
    assert code == 415 and "part 2" in answer["error"]
    # malformed: no boundary, truncated before the closing boundary, no part -> 400
    assert curl(url, multipart([good]), tmp_path, content_type='multipart/related; type="application/dicom"')[0] == 400
    assert curl(url, multipart([good])[:-30], tmp_path)[0] == 400
    assert curl(url, f"--{BOUNDARY}--\r\n".encode(), tmp_path)[0] == 400
    # over the size limit -> 413
    big = mr_series(ellipse_volume(1, 256, 256))
    big_file = write_series(big, tmp_path / "big")[0]
    assert big_file.stat().st_size > 100_000
    code, answer = curl(url, multipart([big_file.read_bytes(), big_file.read_bytes()]), tmp_path)
    assert code == 413 and "200000" in answer["error"]  # refused by its Content-Length, before it is read
    code, answer = curl(url, multipart([big_file.read_bytes(), big_file.read_bytes()]), tmp_path, chunked=True)
    assert code == 413 and "200000" in answer["error"]  # no Content-Length: counted while it is read
    # authentication: none -> 401, unknown token -> 403
    assert curl(url, multipart([good]), tmp_path, token=None)[0] == 401
    assert curl(url, multipart([good]), tmp_path, token="not-the-token-0123456789")[0] == 403
    assert stored_instances(cfg) == {}, "a body refused as a whole stores nothing"

    # a part that is not DICOM -> 409, FailureReason 0xC000 for that part
    code, answer = curl(url, multipart([b"this is not a DICOM file" * 10]), tmp_path)
    assert code == 409 and failures(answer) == [(None, NOT_DICOM)] and referenced(answer) == []
    # a part whose SOP class no route accepts (CT Image Storage) -> 409, 0x0122
    ct = mr_series(ellipse_volume(1), description="CT", study_uid=str(sources[0].StudyInstanceUID))[0]
    ct.SOPClassUID = ct.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ct.Modality = "CT"
    ct_file = write_series([ct], tmp_path / "ct")[0]
    code, answer = curl(url, multipart([ct_file.read_bytes()]), tmp_path)
    assert code == 409 and failures(answer) == [(str(ct.SOPInstanceUID), SOP_CLASS_NOT_ACCEPTED)]
    # an MR image no route's rules accept (T2-weighted sent to the T1w->T2w route) -> 409, 0xA900
    t2, t2_files = t1_series(tmp_path, "t2", slices=1, description="T2w axial TSE", tr=4000.0, te=100.0)
    code, answer = curl(url, multipart([t2_files[0].read_bytes()]), tmp_path)
    assert code == 409 and failures(answer) == [(str(t2[0].SOPInstanceUID), MISMATCH)]
    # an instance of another study than the URL's -> 409, 0xA900
    code, answer = curl(f"{url}/1.2.3.4.5", multipart([good]), tmp_path)
    assert code == 409 and failures(answer) == [(str(sources[0].SOPInstanceUID), MISMATCH)]
    # an AE title without a route -> 404
    assert curl(f"{base}/aets/NOPE/rs/studies", multipart([good]), tmp_path)[0] == 404
    assert stored_instances(cfg) == {}, "failed instances are not stored"

    # mixed: the good parts are stored and referenced, the bad ones fail -> 202
    code, answer = curl(f"{base}/aets/SYNTH_T2/rs/studies/{sources[0].StudyInstanceUID}",
                        multipart([files[1].read_bytes(), b"garbage", ct_file.read_bytes(), files[2].read_bytes()]),
                        tmp_path)
    assert code == 202
    ok = [str(sources[1].SOPInstanceUID), str(sources[2].SOPInstanceUID)]
    assert referenced(answer) == ok
    assert failures(answer) == [(None, NOT_DICOM), (str(ct.SOPInstanceUID), SOP_CLASS_NOT_ACCEPTED)]
    assert set(stored_instances(cfg)) == set(ok)
    assert all(pydicom.dcmread(p).SOPInstanceUID in ok for p in stored_instances(cfg).values())
    check_no_phi(node.log())
