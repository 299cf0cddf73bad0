"""End to end with real peers: Orthanc sends a series to the node and receives the derived series; dcmtk's
storescu sends k-space wrapped by the CLI. Inference is the TEST DOUBLE backend (tests/dicom_node/doubles.py);
the same flows against a real Triton server are in test_triton_e2e.py."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from serving.dicom import real_world_values
from tests.dicom_node.data import (
    BIRTH_DATE,
    PATIENT_ID,
    PATIENT_NAME,
    ellipse_volume,
    mr_series,
    undersampled_kspace,
    write_series,
)
from tests.dicom_node.doubles import expected_recon, expected_synthesis
from tests.dicom_node.peers import dciodvfy_errors, node_config, storescu, wait_for

pytestmark = pytest.mark.e2e

SYNTH_ROUTE = {"called_ae_title": "SYNTH_T2", "task": "synthesis", "source": "T1w", "target": "T2w",
               "destinations": ["pacs"], "rules": {"Modality": "MR", "contrast": "T1w"},
               "series_description": "{description} synthetic {contrast}", "series_number_offset": 2000}
RECON_ROUTE = {"called_ae_title": "RECON", "task": "reconstruction", "model": "recon_unrolled",
               "destinations": ["pacs"], "series_number_offset": 1000}


def pacs_destination(orthanc) -> dict:
    return {"pacs": {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}}


def check_no_phi(*texts: str) -> None:
    for text in texts:
        for secret in (PATIENT_NAME, PATIENT_NAME.split("^")[0], PATIENT_ID, BIRTH_DATE):
            assert secret not in text, f"patient data {secret!r} found in a log"


def assert_derived_matches(derived_ds, sources, expected_volume, tmp_path, *, offset, description_part):
    """Geometry, references, identity, pixel values and dciodvfy of a derived series vs its sources."""
    by_pos = {tuple(np.round(np.array(s.ImagePositionPatient, float), 3)): (i, s) for i, s in enumerate(sources)}
    src_series = str(sources[0].SeriesInstanceUID)
    assert len(derived_ds) == len(sources)
    assert len({str(d.SOPInstanceUID) for d in derived_ds}) == len(sources)
    for d in derived_ds:
        assert str(d.SOPClassUID) == "1.2.840.10008.5.1.4.1.1.4"
        assert list(d.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert str(d.PatientID) == PATIENT_ID and str(d.StudyInstanceUID) == str(sources[0].StudyInstanceUID)
        assert str(d.SeriesInstanceUID) != src_series
        assert int(d.SeriesNumber) == int(sources[0].SeriesNumber) + offset
        assert description_part in str(d.SeriesDescription)
        assert "version" in str(d.DerivationDescription)
        if "synthetic" in description_part:  # every synthesized instance says so (Synthetic Data, 0008,001C)
            assert d.SyntheticData == "YES" and len(d.DerivationCodeSequence) == 1
        else:
            assert "SyntheticData" not in d
        assert [str(r.SeriesInstanceUID) for r in d.ReferencedSeriesSequence] == [src_series]
        i, src = by_pos[tuple(np.round(np.array(d.ImagePositionPatient, float), 3))]
        assert str(d.SourceImageSequence[0].ReferencedSOPInstanceUID) == str(src.SOPInstanceUID)
        np.testing.assert_allclose(np.array(d.ImageOrientationPatient, float),
                                   np.array(src.ImageOrientationPatient, float), atol=1e-6)
        np.testing.assert_allclose(np.array(d.PixelSpacing, float), np.array(src.PixelSpacing, float), rtol=1e-6)
        assert float(d.SliceThickness) == pytest.approx(float(src.SliceThickness))
        values = real_world_values(d)
        ref = expected_volume[i]
        tol = float(d.RealWorldValueMappingSequence[0].RealWorldValueSlope)
        np.testing.assert_allclose(values, ref, atol=tol)
    for k, d in enumerate(derived_ds):
        p = tmp_path / f"derived_{k}.dcm"
        d.save_as(p)
        assert dciodvfy_errors(p) == [], f"dciodvfy errors on derived instance {k}"


def test_orthanc_sends_series_to_node_and_receives_the_derived_series(tmp_path, orthanc_factory, node_factory,
                                                                     node_port):
    orthanc = orthanc_factory({"node": ("SYNTH_T2", "127.0.0.1", node_port)})
    cfg = node_config(tmp_path, port=node_port, destinations=pacs_destination(orthanc), routes=[SYNTH_ROUTE],
                      allowed_peers=[{"ae_title": orthanc.aet, "hosts": ["127.0.0.1"]}])
    node = node_factory(cfg)
    vol = ellipse_volume(6, 48, 40)
    sources = mr_series(vol, description="T1w axial SE")
    files = write_series(sources, tmp_path / "src")
    ids = [orthanc.upload(f) for f in files]
    series_id = orthanc.get(f"/instances/{ids[0]}")["ParentSeries"]
    orthanc.send_to("node", [series_id])

    derived = wait_for(lambda: orthanc.derived_series(str(sources[0].SeriesInstanceUID)), 60, "derived series")
    assert len(orthanc.series()) == 2 and len(derived) == 1
    wait_for(lambda: len(orthanc.get(f"/series/{derived[0]['ID']}")["Instances"]) == 6, 20, "6 instances")
    out = orthanc.datasets(orthanc.get(f"/series/{derived[0]['ID']}"))
    stored = np.stack([s.pixel_array for s in sources]).astype(np.float32)
    assert_derived_matches(out, sources, expected_synthesis(stored), tmp_path, offset=2000,
                           description_part="synthetic T2w")
    jobs = node.jobs()
    assert [j["state"] for j in jobs] == ["done"] and jobs[0]["deliveries"] == {"pacs": "done(1)"}
    log = node.log() + (tmp_path / "node" / "audit.log").read_text()
    assert "AUDIT received" in log and "AUDIT sent" in log and "status=ok" in log
    check_no_phi(log)


def test_storescu_sends_wrapped_kspace_and_the_reconstruction_reaches_orthanc(tmp_path, orthanc_factory,
                                                                              node_factory, node_port):
    orthanc = orthanc_factory()
    cfg = node_config(tmp_path, port=node_port, destinations=pacs_destination(orthanc), routes=[RECON_ROUTE],
                      allowed_peers=[{"ae_title": "SCANNER"}])
    node = node_factory(cfg)
    kspace, mask = undersampled_kspace(slices=5, coils=4, rows=48, cols=40)
    np.save(tmp_path / "k.npy", kspace)
    np.save(tmp_path / "mask.npy", mask)
    r = subprocess.run(
        [sys.executable, "-m", "dicom_node", "wrap-kspace", str(tmp_path / "k.npy"), "--out",
         str(tmp_path / "raw"), "--mask", str(tmp_path / "mask.npy"), "--contrast", "T2w", "--patient-id",
         PATIENT_ID, "--patient-name", PATIENT_NAME], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    raw_files = sorted((tmp_path / "raw").glob("*.dcm"))
    assert len(raw_files) == 5
    for f in raw_files[:1]:
        assert dciodvfy_errors(f) == []
    res = storescu(node.port, tmp_path / "raw", aec="RECON")
    assert res.returncode == 0, res.stdout + res.stderr

    derived = wait_for(lambda: orthanc.series(), 60, "derived series in Orthanc")
    wait_for(lambda: len(orthanc.get(f"/series/{derived[0]['ID']}")["Instances"]) == 5, 20, "5 instances")
    out = orthanc.datasets(orthanc.get(f"/series/{derived[0]['ID']}"))
    out.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    ref = expected_recon(kspace)
    for i, d in enumerate(out):
        assert str(d.PatientID) == PATIENT_ID
        assert str(d.SourceImageSequence[0].ReferencedSOPClassUID) == "1.2.840.10008.5.1.4.1.1.66"
        assert (d.Rows, d.Columns) == (48, 40)
        np.testing.assert_allclose(np.array(d.PixelSpacing, float), [240 / 48, 240 / 40], rtol=1e-6)
        tol = float(d.RealWorldValueMappingSequence[0].RealWorldValueSlope)
        np.testing.assert_allclose(real_world_values(d), ref[i], atol=tol)
        p = tmp_path / f"recon_{i}.dcm"
        d.save_as(p)
        assert dciodvfy_errors(p) == []
    check_no_phi(node.log())
