"""The REST API end to end: a real uvicorn process in front of the real tritonserver (shipped repository).

Every input format, every output format, synthesis from a DICOM zip, job mode, auth, limits, each bad-input
case of the issue (JSON body naming the field), logs, and the server staying up for other clients.
"""

from __future__ import annotations

import io
import json
import subprocess
import threading
import time
import zipfile

import h5py
import httpx
import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from serving.client import TritonClient
from serving.dicom import decode_kspace, load_datasets, read_kspace_file, real_world_values
from tests.conftest import ROOT, free_port
from tests.serving.api_support import (
    AUTH,
    OTHER_TOKEN,
    ApiServer,
    assert_error,
    ensure_examples,
    load_npy,
    npy_bytes,
    npz_bytes,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def examples():
    return ensure_examples()


@pytest.fixture(scope="module")
def api(triton_url, tmp_path_factory):
    """The API with a small synchronous slice limit (16) so the job-mode volume (24 slices) needs a job."""
    server = ApiServer(triton_url, tmp_path_factory.mktemp("api"),
                       overrides=("limits.sync_max_slices=16", "limits.max_body_bytes=16777216"))
    with server:
        yield server


@pytest.fixture(scope="module")
def http(api):
    with api.client(headers=AUTH) as c:
        yield c


@pytest.fixture(scope="module")
def triton(triton_url):
    with TritonClient(triton_url) as c:
        yield c


def _recon(http, body: bytes, params: str = "", **kwargs) -> httpx.Response:
    return http.post("/v1/reconstruct" + params, content=body, **kwargs)


# --- operations ------------------------------------------------------------------------------------------
def test_health_needs_no_token_and_reports_triton_and_models(api):
    with api.client() as c:
        assert c.get("/health/live").json() == {"status": "alive"}
        ready = c.get("/health/ready")
        assert ready.status_code == 200, ready.text
        body = ready.json()
        assert body["status"] == "ready" and body["triton"] == "ready"
        assert {"name": "recon_unrolled", "version": "1", "state": "READY"} in body["models"]


def test_models_with_versions_and_model_cards(http):
    r = http.get("/v1/models")
    assert r.status_code == 200
    models = {m["name"]: m for m in r.json()["models"]}
    recon = models["recon_unrolled"]
    assert recon["ready"] and recon["task"] == "reconstruction"
    card = recon["versions"][0]["card"]
    assert card["name"] == "recon_unrolled" and card["version"] == 1 and card["metrics"]
    one = http.get("/v1/models/recon_unrolled").json()
    assert one["max_batch_size"] == 8 and [i["name"] for i in one["inputs"]] == ["kspace", "mask"]
    assert_error(http.get("/v1/models/no_such_model"), 404, "name", "unknown_model")


def test_openapi_and_docs_are_served(api):
    with api.client() as c:
        spec = c.get("/openapi.json").json()
        assert "/v1/reconstruct" in spec["paths"] and "/v1/jobs/{job_id}/result" in spec["paths"]
        assert spec["components"]["securitySchemes"]
        assert c.get("/docs").status_code == 200


# --- reconstruction: each input format --------------------------------------------------------------------
def _reference(triton, kspace, mask):
    return triton.reconstruct(kspace, mask)


@pytest.mark.parametrize("kind", ["npy", "npz", "multipart", "fastmri", "mrd", "dicom"])
def test_reconstruct_each_input_format_equals_the_triton_client(http, triton, examples, kind):
    if kind == "npy":
        k = np.load(examples / "kspace.npy")
        r, ref = _recon(http, (examples / "kspace.npy").read_bytes()), _reference(triton, k, None)
    elif kind == "npz":
        z = np.load(examples / "kspace.npz")
        r, ref = _recon(http, (examples / "kspace.npz").read_bytes()), _reference(triton, z["kspace"], z["mask"])
        assert r.headers["x-mask"] == "uploaded" and r.headers["x-coil-maps"].startswith("ignored")
    elif kind == "multipart":
        k, m = np.load(examples / "kspace.npy"), np.load(examples / "mask.npy")
        r = http.post("/v1/reconstruct", files={"file": ("k.npy", (examples / "kspace.npy").read_bytes()),
                                                "mask": ("m.npy", (examples / "mask.npy").read_bytes())})
        ref = _reference(triton, k, m)
    elif kind == "fastmri":
        with h5py.File(examples / "kspace_fastmri.h5") as f:
            k, m = f["kspace"][()], np.broadcast_to(f["mask"][()][None, :], f["kspace"].shape[-2:])
        r, ref = _recon(http, (examples / "kspace_fastmri.h5").read_bytes()), _reference(triton, k, m)
    elif kind == "mrd":
        kf = read_kspace_file(examples / "kspace_mrd.h5")
        r, ref = _recon(http, (examples / "kspace_mrd.h5").read_bytes()), _reference(triton, kf.kspace, kf.mask)
    else:
        kv = decode_kspace(load_datasets(examples / "kspace_dicom.zip"))
        r, ref = _recon(http, (examples / "kspace_dicom.zip").read_bytes()), _reference(triton, kv.kspace, kv.mask)
    assert r.status_code == 200, r.text[:500]
    assert r.headers["content-type"] == "application/x-npy"
    out = load_npy(r.content)
    assert out.dtype == np.float32 and out.shape == (2, 128, 128)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6 * float(np.abs(ref).max()))


def test_reconstruct_pins_a_model_version_and_says_which_ran(http, triton, examples):
    """?version= picks one of the versions Triton serves side by side; the answer names the version it used."""
    k, m = np.load(examples / "kspace.npy"), np.load(examples / "mask.npy")
    body = (examples / "kspace.npy").read_bytes()
    newest = max(int(v) for v in triton.model_info("recon_unrolled")["versions"])
    for version in ("1", str(newest)):
        r = _recon(http, body, f"?version={version}&format=dicom")
        assert r.status_code == 200, r.text[:300]
        with zipfile.ZipFile(io.BytesIO(r.content)) as z:
            ds = pydicom.dcmread(io.BytesIO(z.read(z.namelist()[0])))
        assert f"version {version}" in str(ds.DerivationDescription)
        r = _recon(http, body, f"?version={version}")
        ref = triton.reconstruct(k, m, version=version)
        np.testing.assert_allclose(load_npy(r.content), ref, rtol=0, atol=1e-6 * float(np.abs(ref).max()))
    assert_error(_recon(http, body, "?version=99"), 404, "model", "unknown_model")
    assert_error(_recon(http, body, "?version=0"), 422, "version", "invalid_parameter")


def test_input_format_can_be_forced_and_mismatch_is_a_clear_error(http, examples):
    r = _recon(http, (examples / "kspace.npy").read_bytes(), "?input_format=npy")
    assert r.status_code == 200
    assert_error(_recon(http, (examples / "kspace.npy").read_bytes(), "?input_format=fastmri"), 422, "body", "unreadable")
    assert_error(_recon(http, b"x", "?input_format=hdf9"), 422, "input_format", "invalid_parameter")


# --- reconstruction: each output format -------------------------------------------------------------------
def test_output_nifti_png_and_accept_negotiation(http, examples):
    body = (examples / "kspace.npz").read_bytes()
    npy = load_npy(_recon(http, body).content)
    r = _recon(http, body, "?format=nifti&pixel_spacing_mm=0.9&slice_thickness_mm=4")
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-nifti"
    img = nib.Nifti1Image.from_bytes(r.content)
    assert img.shape == (128, 128, 2)
    np.testing.assert_allclose(img.header.get_zooms(), (0.9, 0.9, 4.0), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(img.dataobj).transpose(2, 1, 0), npy)
    r = _recon(http, body, headers={"Accept": "image/png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    png = Image.open(io.BytesIO(r.content))
    assert png.size == (256, 128) and png.mode == "L"  # 2 slices side by side
    one = Image.open(io.BytesIO(_recon(http, body, "?format=png&slice=1").content))
    assert one.size == (128, 128)
    assert_error(_recon(http, body, "?format=png&slice=5"), 422, "slice")
    assert_error(_recon(http, body, "?format=npy&slice=0"), 422, "slice")
    assert_error(_recon(http, body, headers={"Accept": "text/html"}), 406, "Accept", "not_acceptable")
    r = _recon(http, body, headers={"Accept": "text/html;q=0.9, application/x-nifti"})
    assert r.headers["content-type"] == "application/x-nifti"


def _zip_datasets(content: bytes) -> list[pydicom.Dataset]:
    with zipfile.ZipFile(io.BytesIO(content)) as z:
        return [pydicom.dcmread(io.BytesIO(z.read(n))) for n in sorted(z.namelist())]


def test_output_dicom_zip_is_a_valid_mr_series(http, examples, tmp_path):
    body = (examples / "kspace.npy").read_bytes()
    ref = load_npy(_recon(http, body).content)
    r = _recon(http, body, "?format=dicom")
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    datasets = _zip_datasets(r.content)
    assert len(datasets) == 2
    uids = {str(ds.SOPInstanceUID) for ds in datasets}
    assert len(uids) == 2 and len({str(ds.SeriesInstanceUID) for ds in datasets}) == 1
    for i, ds in enumerate(sorted(datasets, key=lambda d: int(d.InstanceNumber))):
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4" and ds.Modality == "MR"
        assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "OTHER"]
        assert ds.Rows == 128 and ds.Columns == 128 and ds.BitsAllocated == 16
        assert ds.PatientID.startswith("MRI-SERVICE-") and ds.StudyInstanceUID and ds.FrameOfReferenceUID
        assert ds.ManufacturerModelName == "recon_unrolled" and "recon_unrolled" in ds.SeriesDescription
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx([240 / 128, 240 / 128])
        slope = float(ds.RealWorldValueMappingSequence[0].RealWorldValueSlope)
        np.testing.assert_allclose(real_world_values(ds), ref[i], atol=slope)
    path = tmp_path / "im.dcm"
    path.write_bytes(zipfile.ZipFile(io.BytesIO(r.content)).read("IM0001.dcm"))
    v = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    errors = [line for line in (v.stdout + v.stderr).splitlines() if line.startswith("Error")]
    assert not errors, errors


def test_output_dicom_multipart_related(http, examples):
    r = _recon(http, (examples / "kspace_mrd.h5").read_bytes(),
               headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert r.status_code == 200
    ct = r.headers["content-type"]
    assert ct.startswith("multipart/related") and 'type="application/dicom"' in ct
    from serving.api.uploads import split_multipart_related

    boundary = ct.split("boundary=")[1]
    parts = split_multipart_related(r.content, boundary)
    assert len(parts) == 2
    datasets = [pydicom.dcmread(io.BytesIO(p)) for p in parts]
    assert {ds.Rows for ds in datasets} == {128}
    assert "T2w" in datasets[0].SeriesDescription  # from the MRD protocol name


def test_reconstruction_of_dicom_raw_data_keeps_patient_and_study(http, examples):
    raw = load_datasets(examples / "kspace_dicom.zip")
    out = _zip_datasets(_recon(http, (examples / "kspace_dicom.zip").read_bytes(), "?format=dicom").content)
    assert {str(ds.StudyInstanceUID) for ds in out} == {str(raw[0].StudyInstanceUID)}
    assert out[0].PatientID == raw[0].PatientID and str(out[0].SeriesInstanceUID) != str(raw[0].SeriesInstanceUID)
    assert out[0].ReferencedSeriesSequence[0].SeriesInstanceUID == raw[0].SeriesInstanceUID


# --- synthesis --------------------------------------------------------------------------------------------
def test_synthesis_from_a_dicom_zip_keeps_patient_study_geometry_and_references_the_source(http, examples):
    """Needs the shipped synth_t1w_to_t2w model (lead: added to model_repository before the final run)."""
    src = load_datasets(examples / "t1w_series.zip")
    r = http.post("/v1/synthesize?target=T2w", content=(examples / "t1w_series.zip").read_bytes())
    assert r.status_code == 200, r.text[:500]
    assert r.headers["x-model"] == "synth_t1w_to_t2w" and r.headers["x-source-contrast"] == "T1w"
    assert r.headers["x-synthetic-data"] == "YES"
    assert r.headers["x-derivation-description"].startswith("synth_t1w_to_t2w version ")
    out = sorted(_zip_datasets(r.content), key=lambda d: float(d.ImagePositionPatient[2]))
    src = sorted(src, key=lambda d: float(d.ImagePositionPatient[2]))
    assert len(out) == len(src) == 4
    for o, s in zip(out, src):
        assert o.PatientName == s.PatientName and o.PatientID == s.PatientID
        assert o.StudyInstanceUID == s.StudyInstanceUID and o.FrameOfReferenceUID == s.FrameOfReferenceUID
        assert o.SeriesInstanceUID != s.SeriesInstanceUID and o.SOPInstanceUID != s.SOPInstanceUID
        assert list(o.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert o.SyntheticData == "YES" and len(o.DerivationCodeSequence) == 1
        assert o.DerivationDescription == r.headers["x-derivation-description"]
        assert list(o.ImagePositionPatient) == list(s.ImagePositionPatient)
        assert list(o.PixelSpacing) == list(s.PixelSpacing)
        assert o.SourceImageSequence[0].ReferencedSOPInstanceUID == s.SOPInstanceUID
        assert o.ReferencedSeriesSequence[0].SeriesInstanceUID == s.SeriesInstanceUID
    r = http.post("/v1/synthesize?source=T1w&target=T2w", content=(examples / "t1w.nii.gz").read_bytes())
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-nifti"
    assert r.headers["x-synthetic-data"] == "YES"
    assert nib.Nifti1Image.from_bytes(r.content).shape == (128, 128, 4)


def test_synthesis_errors_name_the_field(http, examples):
    series = (examples / "t1w_series.zip").read_bytes()
    assert_error(http.post("/v1/synthesize?target=T3w", content=series), 422, "target", "unknown_contrast")
    assert_error(http.post("/v1/synthesize?target=T2w&model=synth_no_such_model", content=series), 404, "model",
                 "unknown_model")
    assert_error(http.post("/v1/synthesize?target=T1w", content=series), 422, "target", "invalid_parameter")
    assert_error(http.post("/v1/synthesize", content=series), 422, "target", "invalid_parameter")
    img = npy_bytes(np.ones((2, 32, 32), np.float32))
    assert_error(http.post("/v1/synthesize?target=T2w", content=img), 422, "source", "missing_field")
    assert_error(http.post("/v1/synthesize?target=T2w", content=npy_bytes(np.ones((2, 32, 32), np.complex64))),
                 422, "body", "invalid_dtype")
    broken = io.BytesIO()
    with zipfile.ZipFile(broken, "w") as z:
        z.writestr("a.dcm", b"not dicom at all" * 20)
    assert_error(http.post("/v1/synthesize?target=T2w", content=broken.getvalue()), 422, "body", "dicom_unreadable")
    assert_error(http.post("/v1/synthesize?target=T2w", content=b"\x1f\x8b" + b"\x00" * 400), 422, "body")
    truncated = (examples / "t1w.nii.gz").read_bytes()[:3000]
    assert_error(http.post("/v1/synthesize?target=T2w", content=truncated), 422, "body", "unreadable")


# --- job mode ---------------------------------------------------------------------------------------------
def _wait(http, job_id: str, timeout_s: float = 240.0) -> dict:
    deadline = time.monotonic() + timeout_s
    seen = set()
    while time.monotonic() < deadline:
        job = http.get(f"/v1/jobs/{job_id}").json()
        seen.add((job["status"], job["slices_done"]))
        if job["status"] in ("succeeded", "failed"):
            job["seen"] = seen
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish: {job}")


@pytest.mark.slow
def test_job_mode_for_a_volume_over_the_synchronous_limit(api, http, examples, triton):
    body = (examples / "kspace_job.npy").read_bytes()  # 24 slices: over this server's sync limit of 16
    too_many = _recon(http, npy_bytes(np.load(examples / "kspace_job.npy")[:20, :2, ::4, ::4]))
    err = assert_error(too_many, 413, "kspace", "too_many_slices")
    assert "job" in err["error"]
    assert_error(_recon(http, body), 413, "body", "too_large")  # 25 MB > this server's 16 MiB synchronous limit
    r = http.post("/v1/jobs/reconstruct?format=npy", content=body)
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}" and job["status"] == "queued"
    assert job["slices_total"] == 24
    # the server keeps answering other clients while the job runs
    t0 = time.monotonic()
    assert http.get("/health/live").status_code == 200
    small = _recon(http, (examples / "kspace.npy").read_bytes())
    assert small.status_code == 200 and time.monotonic() - t0 < 60
    done = _wait(http, job["id"])
    assert done["status"] == "succeeded", done
    assert any(status == "running" for status, _ in done["seen"]) or done["slices_done"] == 24
    assert done["links"]["result"] == f"/v1/jobs/{job['id']}/result"
    result = http.get(done["links"]["result"])
    assert result.status_code == 200 and result.headers["content-type"] == "application/x-npy"
    out = load_npy(result.content)
    ref = triton.reconstruct(np.load(examples / "kspace_job.npy"))
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6 * float(np.abs(ref).max()))
    # the job's files (patient data) are readable by nobody but the server's user: dirs 0700, files 0600
    jobs_dir = api.workdir / "jobs"
    assert (jobs_dir / job["id"] / "state.json").is_file()
    leaked = subprocess.run(["find", str(jobs_dir), "-perm", "/g+rwx,o+rwx"], capture_output=True, text=True,
                            check=True).stdout
    assert leaked == "", leaked
    # visible to its owner only; listed; deleted
    with api.client(headers={"Authorization": f"Bearer {OTHER_TOKEN}"}) as other:
        assert_error(other.get(f"/v1/jobs/{job['id']}"), 404, "job_id", "unknown_job")
    assert job["id"] in [j["id"] for j in http.get("/v1/jobs").json()["jobs"]]
    assert http.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert_error(http.get(f"/v1/jobs/{job['id']}"), 404, "job_id")
    assert_error(http.get("/v1/jobs/not-a-job-id"), 404, "job_id")


def test_job_with_bad_input_is_refused_at_submission_and_result_of_unfinished_job_is_409(http, examples):
    assert_error(http.post("/v1/jobs/reconstruct", content=npy_bytes(np.ones((2, 4, 32, 32), np.float32))), 422,
                 "kspace", "invalid_dtype")
    r = http.post("/v1/jobs/reconstruct?format=dicom", content=(examples / "kspace_job.npy").read_bytes())
    assert r.status_code == 202
    job_id = r.json()["id"]
    early = http.get(f"/v1/jobs/{job_id}/result")
    if early.status_code != 200:  # normally still queued/running
        assert_error(early, 409, "job_id")
    assert _wait(http, job_id)["status"] == "succeeded"
    assert len(_zip_datasets(http.get(f"/v1/jobs/{job_id}/result").content)) == 24


# --- auth and limits --------------------------------------------------------------------------------------
def test_auth_401_without_token_403_with_a_wrong_one(api, examples):
    body = (examples / "kspace.npy").read_bytes()
    with api.client() as c:
        for method, path in (("GET", "/v1/models"), ("GET", "/metrics"), ("POST", "/v1/reconstruct"),
                             ("GET", "/v1/jobs"), ("POST", "/v1/synthesize?target=T2w")):
            r = c.request(method, path, content=body if method == "POST" else None)
            assert_error(r, 401, "Authorization", "unauthorized")
            assert r.headers["www-authenticate"].startswith("Bearer")
            r = c.request(method, path, content=body if method == "POST" else None,
                          headers={"Authorization": "Bearer wrong-token-0000000000000"})
            assert_error(r, 403, "Authorization", "forbidden")
        assert_error(c.get("/v1/models", headers={"Authorization": "Basic dXNlcjpwYXNz"}), 401, "Authorization")


def test_body_over_the_limit_is_413_declared_or_chunked(api, examples):
    big = (examples / "kspace_job.npy").read_bytes()  # 25 MB > this server's 16 MiB limit
    with api.client(headers=AUTH) as c:
        assert_error(c.post("/v1/reconstruct", content=big), 413, "body", "too_large")

        def chunks():
            for i in range(0, len(big), 1 << 20):
                yield big[i:i + (1 << 20)]

        r = c.post("/v1/reconstruct", content=chunks())  # no Content-Length: counted while read
        assert_error(r, 413, "body", "too_large")
        assert c.get("/health/live").status_code == 200


def _bad_inputs(examples):
    k = np.load(examples / "kspace.npy")
    nan = k.copy()
    nan[0, 0, 0, 0] = np.nan
    inf = k.copy()
    inf[1, 2, 3, 4] = np.inf
    h5 = (examples / "kspace_fastmri.h5").read_bytes()
    return [
        ("real k-space", npy_bytes(k.real.astype(np.float32)), "", 422, "kspace", "invalid_dtype"),
        ("re/im trailing axis", npy_bytes(np.stack([k.real, k.imag], -1)), "", 422, "kspace", "invalid_dtype"),
        ("rank 2", npy_bytes(k[0, 0]), "", 422, "kspace", "invalid_rank"),
        ("rank 5", npy_bytes(k[None]), "", 422, "kspace", "invalid_rank"),
        ("NaN", npy_bytes(nan), "", 422, "kspace", "not_finite"),
        ("Inf", npy_bytes(inf), "", 422, "kspace", "not_finite"),
        ("zero-size", npy_bytes(np.zeros((0, 8, 128, 128), np.complex64)), "", 422, "kspace", "empty_array"),
        ("all zeros", npy_bytes(np.zeros((1, 2, 32, 32), np.complex64)), "", 422, "kspace", "invalid_input"),
        ("matrix too small", npy_bytes(k[:, :, :8, :8]), "", 422, "kspace", "invalid_shape"),
        ("mask shape", npz_bytes(kspace=k, mask=np.ones((64, 64), np.float32)), "", 422, "mask", "shape_mismatch"),
        ("mask values", npz_bytes(kspace=k, mask=np.full((128, 128), 0.5, np.float32)), "", 422, "mask",
         "invalid_values"),
        ("mask empty", npz_bytes(kspace=k, mask=np.zeros((128, 128), np.float32)), "", 422, "mask", "invalid_values"),
        ("mask complex", npz_bytes(kspace=k, mask=np.ones((128, 128), np.complex64)), "", 422, "mask", "invalid_dtype"),
        ("maps shape", npz_bytes(kspace=k, maps=np.ones((3, 128, 128), np.complex64)), "", 422, "maps",
         "shape_mismatch"),
        ("npz without kspace", npz_bytes(data=k), "", 422, "kspace", "missing_field"),
        ("object array", _pickled(), "", 422, "kspace", "unreadable"),
        ("truncated npy", npy_bytes(k)[:5000], "", 422, "kspace", "unreadable"),
        ("corrupt HDF5", h5[:4000], "", 422, "body", "unreadable"),
        ("HDF5 without kspace", _h5_without_kspace(), "?input_format=fastmri", 422, "kspace", "missing_field"),
        ("corrupt zip", b"PK\x03\x04" + b"\x00" * 300, "", 422, "body", None),
        ("not DICOM after the preamble", b"\x00" * 128 + b"DICM" + b"\xff" * 200, "", 422, "SOPClassUID", None),
        ("truncated DICOM", _truncated_dicom(examples), "", 422, None, None),
        ("empty body", b"", "", 422, "body", "empty_body"),
        ("garbage", b"hello world" * 100, "", 415, "body", "unsupported_format"),
        ("unknown contrast", npy_bytes(k), "?contrast=T7", 422, "contrast", "unknown_contrast"),
        ("unknown model", npy_bytes(k), "?model=no_such_model", 404, "model", "unknown_model"),
        ("bad model name", npy_bytes(k), "?model=../../etc", 422, "model", "invalid_parameter"),
        ("unknown format", npy_bytes(k), "?format=jpeg", 422, "format", "invalid_parameter"),
        ("negative spacing", npy_bytes(k), "?pixel_spacing_mm=-1", 422, "pixel_spacing_mm", "invalid_parameter"),
    ]


def _truncated_dicom(examples) -> bytes:
    with zipfile.ZipFile(examples / "kspace_dicom.zip") as z:
        return z.read(sorted(z.namelist())[0])[:2000]


def _pickled() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    return buf.getvalue()


def _h5_without_kspace() -> bytes:
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.create_dataset("image", data=np.zeros((2, 2), np.float32))
    return buf.getvalue()


def test_every_bad_input_is_a_4xx_naming_the_field_and_the_server_keeps_serving(http, examples):
    failures = []
    for name, body, params, status, field, code in _bad_inputs(examples):
        r = _recon(http, body, params)
        try:
            assert_error(r, status, field, code)
        except AssertionError as exc:
            failures.append(f"{name}: {exc}")
    assert not failures, "\n".join(failures)
    assert _recon(http, (examples / "kspace.npy").read_bytes()).status_code == 200


def test_concurrent_clients_are_served(http, examples):
    """Several clients at once (each Triton call runs in a worker thread with its own Triton client)."""
    body = (examples / "kspace.npy").read_bytes()
    results: list[tuple[str, int]] = []

    def recon() -> None:
        results.append(("recon", _recon(http, body).status_code))

    def models() -> None:
        results.append(("models", http.get("/v1/models").status_code))

    def ready() -> None:
        results.append(("ready", http.get("/health/ready").status_code))

    threads = [threading.Thread(target=f) for f in (recon, models, recon, ready, recon, models, recon, ready)]
    for t in threads:
        t.start()
    r = http.get("/health/live")
    for t in threads:
        t.join()
    assert r.status_code == 200
    assert sorted(results) == sorted([("recon", 200)] * 4 + [("models", 200)] * 2 + [("ready", 200)] * 2)


# --- logs, request ids, metrics ---------------------------------------------------------------------------
def test_structured_logs_with_request_ids_and_no_patient_data(api, http, examples, tmp_path):
    from serving.api.dicom_adapter import new_mr_series
    from serving.dicom import SeriesGeometry

    vol = np.random.default_rng(0).random((3, 32, 32)).astype(np.float32)
    series = new_mr_series(vol, SeriesGeometry.axial(3, (32, 32)), model_name="test", model_version="1",
                           series_description="T1w test", original=True, patient_name="Zzyzx^Quintessa",
                           patient_id="PID-7734-XQ", extra={"PatientBirthDate": "19311231"})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i, ds in enumerate(series):
            b = io.BytesIO()
            pydicom.dcmwrite(b, ds, enforce_file_format=True)
            z.writestr(f"{i}.dcm", b.getvalue())
    series[1].StudyInstanceUID = "1.2.3.4"  # a mixed series: the error names the attribute, the log does not
    buf2 = io.BytesIO()
    with zipfile.ZipFile(buf2, "w") as z:
        for i, ds in enumerate(series):
            b = io.BytesIO()
            pydicom.dcmwrite(b, ds, enforce_file_format=True)
            z.writestr(f"{i}.dcm", b.getvalue())
    http.post("/v1/synthesize?target=T2w&model=synth_no_such_model", content=buf.getvalue())
    r = http.post("/v1/synthesize?target=T2w", content=buf2.getvalue(), headers={"X-Request-ID": "trace-42"})
    assert_error(r, 422, "StudyInstanceUID", "dicom_mismatch")
    assert r.headers["x-request-id"] == "trace-42"
    http.post("/v1/reconstruct?contrast=T7", content=b"x")
    time.sleep(0.3)
    records = api.log_records()  # every line is JSON
    text = api.log_text()
    for secret in ("Zzyzx", "Quintessa", "PID-7734", "19311231", "test-token", "contrast=T7"):
        assert secret not in text, secret
    requests = [rec for rec in records if rec.get("msg") == "request"]
    assert requests and all(rec.get("request_id") for rec in requests)
    traced = [rec for rec in requests if rec["request_id"] == "trace-42"]
    assert traced and traced[0]["route"] == "/v1/synthesize" and traced[0]["status"] == 422
    assert traced[0]["code"] == "dicom_mismatch"


def test_prometheus_metrics_count_requests_errors_latency_and_slices(http, examples):
    _recon(http, (examples / "kspace.npy").read_bytes())
    text = http.get("/metrics").text
    assert 'mri_api_requests_total{method="POST",route="/v1/reconstruct",status="200"}' in text
    assert "mri_api_request_duration_seconds_bucket" in text
    assert 'mri_api_slices_processed_total{model="recon_unrolled",task="reconstruction"}' in text
    assert "mri_api_errors_total" in text and "mri_api_jobs" in text


# --- Triton down, HTTPS ------------------------------------------------------------------------------------
def test_triton_unreachable_gives_503_and_not_ready_while_live(tmp_path, examples):
    dead = f"127.0.0.1:{free_port()}"
    with ApiServer(dead, tmp_path) as api, api.client(headers=AUTH) as c:
        assert c.get("/health/live").status_code == 200
        ready = c.get("/health/ready")
        assert ready.status_code == 503 and ready.json()["triton"] == "unreachable", ready.text
        r = c.post("/v1/reconstruct", content=(examples / "kspace.npy").read_bytes())
        assert_error(r, 503, None, "inference_unavailable")
        assert r.headers["retry-after"]


@pytest.mark.slow
def test_https_with_uvicorn_certificates(triton_url, tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    server = ApiServer(triton_url, tmp_path, scheme="https",
                       extra_args=("--ssl-certfile", str(cert), "--ssl-keyfile", str(key)))
    with server:
        r = httpx.get(server.url + "/v1/models", headers=AUTH, verify=str(cert))
        assert r.status_code == 200 and r.json()["models"]
        with pytest.raises(httpx.HTTPError):  # plain HTTP to the TLS port
            httpx.get(f"http://127.0.0.1:{server.port}/health/live", timeout=5)


def test_cli_help_and_openapi_dump(tmp_path):
    import sys

    out = subprocess.run([sys.executable, "-m", "serving.api", "serve", "--help"], cwd=ROOT, capture_output=True,
                         text=True)
    assert out.returncode == 0 and "--ssl-certfile" in out.stdout
    spec_path = tmp_path / "openapi.json"
    subprocess.run([sys.executable, "-m", "serving.api", "openapi", "--out", str(spec_path)], cwd=ROOT, check=True,
                   capture_output=True)
    assert json.loads(spec_path.read_text())["info"]["title"]
