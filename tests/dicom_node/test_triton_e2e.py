"""End to end with a REAL tritonserver (session fixture ``triton_url`` from tests/conftest.py), the node as a
subprocess with its production processor (serving.client.TritonClient), dcmtk storescu as the scanner and
Orthanc as the PACS. Also: Triton unreachable for a while (connection refused), the job is retried, then
succeeds once Triton is reachable again."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading

import numpy as np
import pytest

from serving.client import TritonClient
from serving.dicom import real_world_values
from tests.conftest import ROOT, free_port
from tests.dicom_node.data import PATIENT_ID, ellipse_volume, mr_series, undersampled_kspace, write_series
from tests.dicom_node.peers import dciodvfy_errors, node_config, storescu, wait_for
from tests.dicom_node.test_e2e_orthanc import (
    RECON_ROUTE,
    SYNTH_ROUTE,
    assert_derived_matches,
    check_no_phi,
    pacs_destination,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; until ``start()`` nothing listens (connection refused)."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.port = free_port()
        self._sock: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", self.port))
        self._sock.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while self._sock is not None:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def wrap(tmp_path, kspace, mask) -> list:
    np.save(tmp_path / "k.npy", kspace)
    np.save(tmp_path / "m.npy", mask)
    r = subprocess.run([sys.executable, "-m", "dicom_node", "wrap-kspace", str(tmp_path / "k.npy"), "--mask",
                        str(tmp_path / "m.npy"), "--out", str(tmp_path / "raw"), "--contrast", "T2w", "--patient-id",
                        PATIENT_ID], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return sorted((tmp_path / "raw").glob("*.dcm"))


@pytest.mark.parametrize("pinned", [None, "1"])  # the newest model version, or version 1 pinned by the route
def test_reconstruction_through_triton_reaches_orthanc(tmp_path, triton_url, orthanc_factory, node_factory,
                                                       node_port, pinned):
    orthanc = orthanc_factory()
    route = {**RECON_ROUTE, **({"version": int(pinned)} if pinned else {})}
    cfg = node_config(tmp_path, port=node_port, destinations=pacs_destination(orthanc), routes=[route],
                      inference={"url": triton_url, "protocol": "http"})
    node = node_factory(cfg, processor=None)  # production processor: serving.client.TritonClient
    kspace, mask = undersampled_kspace(slices=4, coils=8, rows=64, cols=64)
    files = wrap(tmp_path, kspace, mask)
    r = storescu(node.port, files, aec="RECON")
    assert r.returncode == 0, r.stdout + r.stderr
    series = wait_for(lambda: orthanc.series(), 120, "the reconstructed series in Orthanc")
    wait_for(lambda: len(orthanc.get(f"/series/{series[0]['ID']}")["Instances"]) == 4, 30, "4 instances")
    out = sorted(orthanc.datasets(orthanc.get(f"/series/{series[0]['ID']}")),
                 key=lambda d: float(d.ImagePositionPatient[2]))
    with TritonClient(triton_url) as client:
        expected = client.reconstruct(kspace, mask, version=pinned or "")
        version = pinned or str(max(client.model_info("recon_unrolled")["versions"], key=int))
    for i, d in enumerate(out):
        assert f"recon_unrolled version {version}" in str(d.DerivationDescription)
        assert str(d.PatientID) == PATIENT_ID and list(d.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        tol = float(d.RealWorldValueMappingSequence[0].RealWorldValueSlope)
        np.testing.assert_allclose(real_world_values(d), expected[i], atol=tol + 1e-5 * float(expected.max()))
        p = tmp_path / f"recon_{i}.dcm"
        d.save_as(p)
        assert dciodvfy_errors(p) == []
    check_no_phi(node.log())


def test_triton_unavailable_then_back_the_job_is_retried_and_succeeds(tmp_path, triton_url, orthanc_factory,
                                                                      node_factory, node_port):
    orthanc = orthanc_factory()
    proxy = TcpProxy(triton_url)  # not listening yet: Triton is "down"
    cfg = node_config(tmp_path, port=node_port, destinations=pacs_destination(orthanc), routes=[RECON_ROUTE],
                      inference={"url": proxy.url, "protocol": "http"},
                      processing={"max_attempts": 50, "retry_base_seconds": 0.5, "retry_max_seconds": 1})
    node = node_factory(cfg, processor=None)
    try:
        kspace, mask = undersampled_kspace(slices=2, coils=4, rows=32, cols=32)
        assert storescu(node.port, wrap(tmp_path, kspace, mask), aec="RECON").returncode == 0
        wait_for(lambda: (j := node.jobs()) and j[0]["attempts"] >= 2, 60, "retried attempts")
        job = node.jobs()[0]
        assert "InferenceUnavailable" in job["last_error"] and job["state"] in ("complete", "processing")
        assert orthanc.series() == []
        proxy.start()  # Triton reachable again
        wait_for(lambda: [j["state"] for j in node.jobs()] == ["done"], 120, "job done")
        assert len(orthanc.series()) == 1
    finally:
        proxy.stop()


def test_synthesis_through_triton(tmp_path, triton_url, orthanc_factory, node_factory, node_port):
    if not (ROOT / "model_repository" / "synth_t1w_to_t2w").is_dir():
        pytest.skip("model_repository has no synth_t1w_to_t2w model yet (synthesis export pending)")
    orthanc = orthanc_factory({"node": ("SYNTH_T2", "127.0.0.1", node_port)})
    cfg = node_config(tmp_path, port=node_port, destinations=pacs_destination(orthanc), routes=[SYNTH_ROUTE],
                      inference={"url": triton_url, "protocol": "http"})
    node_factory(cfg, processor=None)
    sources = mr_series(ellipse_volume(4, 64, 64))
    ids = [orthanc.upload(f) for f in write_series(sources, tmp_path / "src")]
    orthanc.send_to("node", [orthanc.get(f"/instances/{ids[0]}")["ParentSeries"]])
    derived = wait_for(lambda: orthanc.derived_series(str(sources[0].SeriesInstanceUID)), 120, "derived series")
    wait_for(lambda: len(orthanc.get(f"/series/{derived[0]['ID']}")["Instances"]) == 4, 30, "4 instances")
    out = orthanc.datasets(orthanc.get(f"/series/{derived[0]['ID']}"))
    stored = np.stack([s.pixel_array for s in sources]).astype(np.float32)
    with TritonClient(triton_url) as client:
        expected = client.synthesize(stored, "T1w", "T2w")
    assert_derived_matches(out, sources, expected, tmp_path, offset=2000, description_part="synthetic T2w")


def test_reconstruction_self_check_reaches_orthanc_and_fallback_replaces_the_flagged(
        tmp_path, triton_url, orthanc_factory, node_factory, node_port):
    """Issue 19 through the node: every derived instance carries the self-check (private block, ImageComments) equal
    to the shared client's; policy fallback replaces exactly the flagged slices by the zero-filled RSS, says so in
    DerivationDescription and marks the series; no patient data in the log."""
    from mrcore.fft import ifft2c
    from serving.dicom.quality import FLAG_SUFFIX, read_quality
    from serving.quality import QualitySettings

    kspace, mask = undersampled_kspace(slices=4, coils=8, rows=64, cols=64, seed=5)
    with TritonClient(triton_url) as client:
        model, checked = client.reconstruct_checked(kspace, mask, settings=QualitySettings())
    def ratio(q):
        return q.est_nmse / q.est_nmse_zero_filled

    values = sorted(ratio(q) for q in checked if q.est_nmse is not None)
    assert len(values) == 4 and values[0] < values[-1]
    threshold = (values[1] + values[2]) / 2
    flagged = {q.slice for q in checked if q.est_nmse is not None and ratio(q) > threshold}
    orthanc = orthanc_factory()
    cfg = node_config(tmp_path, port=node_port, destinations=pacs_destination(orthanc), routes=[RECON_ROUTE],
                      inference={"url": triton_url, "protocol": "http"},
                      quality={"policy": "fallback", "ratio_threshold": float(threshold)})
    node = node_factory(cfg, processor=None)
    r = storescu(node.port, wrap(tmp_path, kspace, mask), aec="RECON")
    assert r.returncode == 0, r.stdout + r.stderr
    series = wait_for(lambda: orthanc.series(), 120, "the reconstructed series in Orthanc")
    wait_for(lambda: len(orthanc.get(f"/series/{series[0]['ID']}")["Instances"]) == 4, 30, "4 instances")
    out = sorted(orthanc.datasets(orthanc.get(f"/series/{series[0]['ID']}")),
                 key=lambda d: float(d.ImagePositionPatient[2]))
    zero_filled = np.sqrt((np.abs(ifft2c(kspace * mask)) ** 2).sum(axis=1))
    for i, d in enumerate(out):
        q = read_quality(d)
        assert q["slice"] == i and q["flag"] == (i in flagged) and bool(q.get("replaced")) == (i in flagged)
        assert q["holdout_nmse"] == pytest.approx(checked[i].holdout_nmse, rel=2e-3, abs=1e-6)
        assert q["est_nmse"] == pytest.approx(checked[i].est_nmse, rel=2e-3, abs=1e-6)
        assert str(d.ImageComments).startswith("Self-check: estimated NMSE")
        assert ("FLAGGED" in str(d.ImageComments)) == (i in flagged)
        assert str(d.SeriesDescription).endswith(FLAG_SUFFIX)
        assert ("replaced by zero-filled RSS" in str(d.DerivationDescription)) == (i in flagged)
        want = zero_filled[i] if i in flagged else model[i]
        tol = float(d.RealWorldValueMappingSequence[0].RealWorldValueSlope)
        np.testing.assert_allclose(real_world_values(d), want, atol=tol + 1e-5 * float(max(model.max(), want.max())))
        p = tmp_path / f"checked_{i}.dcm"
        d.save_as(p)
        assert dciodvfy_errors(p) == []
    log = node.log()
    lines = [ln for ln in log.splitlines() if "reconstruction self-check" in ln]
    assert lines and all("flagged" in ln and str(len(flagged)) in ln for ln in lines)
    check_no_phi(log)
