"""REST API pieces without servers: settings, auth, input checks, formats, geometry, jobs, metrics, middleware."""

from __future__ import annotations

import asyncio
import grp
import io
import json
import os
import stat
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient

from serving.api import ApiSettings, create_app
from serving.api.auth import check_token
from serving.api.errors import ApiError
from serving.api.geometry import affine_from_geometry, geometry_from_affine
from serving.api.inputs import Upload, check_contrast, parse_recon, parse_synth
from serving.api.jobs import Job, JobRunner, JobStore
from serving.api.outputs import OutputMeta, negotiate, render
from serving.api.settings import ConfigError, LimitSettings, token_digest
from serving.api.uploads import split_multipart_related
from serving.dicom import SeriesGeometry
from tests.conftest import ROOT, free_port
from tests.serving.api_support import npy_bytes, npz_bytes

TOKEN = "unit-test-token-0123456789"
LIMITS = LimitSettings()


def settings(tmp_path: Path, *overrides: str, env: dict | None = None) -> ApiSettings:
    return ApiSettings.load(None, [f"jobs.directory={tmp_path / 'jobs'}", f"triton.url=127.0.0.1:{free_port()}",
                                   *overrides], environ={"MRI_API_TOKENS": TOKEN, **(env or {})})


def kspace(s=2, c=4, n=32, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((s, c, n, n)) + 1j * rng.standard_normal((s, c, n, n))).astype(np.complex64)


def err(fn, *args, **kwargs) -> ApiError:
    with pytest.raises(ApiError) as info:
        fn(*args, **kwargs)
    return info.value


# --- settings and auth ------------------------------------------------------------------------------------
def test_settings_file_environment_and_overrides(tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text("triton: {url: 'triton:8001', protocol: grpc}\nlimits: {sync_max_slices: 8}\n"
                   f"auth: {{tokens: ['{token_digest('file-token-0123456789')}']}}\n")
    s = ApiSettings.load(cfg, ["limits.max_slices=100"],
                         environ={"MRI_API_TOKENS": "env-token-0123456789, second-token-0123456789",
                                  "MRI_API_TRITON_URL": "10.0.0.5:8001", "MRI_API_CORS_ORIGINS": "https://a.example"})
    assert s.triton.url == "10.0.0.5:8001" and s.triton.protocol == "grpc"
    assert s.limits.sync_max_slices == 8 and s.limits.max_slices == 100
    assert s.cors.allow_origins == ("https://a.example",)
    assert s.auth.digests() == {token_digest(t) for t in ("file-token-0123456789", "env-token-0123456789",
                                                          "second-token-0123456789")}
    shipped = ApiSettings.load(ROOT / "configs" / "serving.yaml", environ={"MRI_API_TOKENS": TOKEN})
    assert shipped.triton.url == "127.0.0.1:8000" and shipped.cors.allow_origins == ()


@pytest.mark.parametrize("overrides, env, message", [
    ([], {}, "no token is configured"),
    ([], {"MRI_API_TOKENS": "short"}, "MRI_API_TOKENS entry 1"),
    (["triton.url=http://host:8000"], {"MRI_API_TOKENS": TOKEN}, "triton.url"),
    (["limits.max_body_bytes=0"], {"MRI_API_TOKENS": TOKEN}, "limits.max_body_bytes"),
    (["triton.protocol=soap"], {"MRI_API_TOKENS": TOKEN}, "triton.protocol"),
    (["limitz.x=1"], {"MRI_API_TOKENS": TOKEN}, "unknown config key 'limitz'"),
    (["auth.tokens_file=/no/such/file"], {"MRI_API_TOKENS": TOKEN}, "auth.tokens_file"),
])
def test_settings_errors_name_the_key(overrides, env, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        ApiSettings.load(None, overrides, environ=env)


def test_tokens_file_and_digests(tmp_path):
    f = tmp_path / "tokens"
    f.write_text(f"# API tokens\nfile-token-0123456789\n{token_digest('digest-token-0123456789')}  # ci\n")
    s = ApiSettings.load(None, [], environ={"MRI_API_TOKENS_FILE": str(f)})
    digests = s.auth.digests()
    assert check_token(digests, "Bearer file-token-0123456789") == token_digest("file-token-0123456789")
    assert check_token(digests, "bearer  digest-token-0123456789 ") == token_digest("digest-token-0123456789")
    assert err(check_token, digests, None).status == 401
    e = err(check_token, digests, "Basic dXNlcjpwYXNz")
    assert e.status == 401 and e.headers["WWW-Authenticate"].startswith("Bearer")
    assert err(check_token, digests, "Bearer ").status == 401
    assert err(check_token, digests, "Bearer wrong-token-0123456789").status == 403


# --- inputs -----------------------------------------------------------------------------------------------
def test_masks_of_every_accepted_shape():
    k = kspace(2, 4, 32) * 0
    k[:, :, ::2] = 1
    ky_lines = (np.arange(32) % 2 == 0).astype(np.float32)
    for mask in (ky_lines, np.repeat(ky_lines[:, None], 32, 1), np.repeat(np.repeat(ky_lines[None, :, None], 2, 0),
                                                                          32, 2)):
        r = parse_recon(Upload([npz_bytes(kspace=k, mask=mask)]), None, LIMITS)
        assert r.mask.shape[-2:] == (32, 32) and set(np.unique(r.mask)) == {0.0, 1.0}
    kx = kspace(1, 2, 32)[:, :, :, :24]
    r = parse_recon(Upload([npz_bytes(kspace=kx, mask=np.ones(24, np.float32))]), None, LIMITS)
    assert r.mask.shape == (32, 24) and r.mask.all()  # a 1-D mask of length kx != ky: columns
    r = parse_recon(Upload([npz_bytes(kspace=k, mask=ky_lines.astype(bool))]), None, LIMITS)
    assert r.mask.dtype == np.float32


def test_mask_and_maps_as_separate_parts_and_twice_is_an_error():
    k = kspace()
    maps = kspace(1, 4, 32)[0]
    r = parse_recon(Upload([npy_bytes(k)], parts={"mask": npy_bytes(np.ones((32, 32), np.float32)),
                                                  "maps": npy_bytes(maps)}), None, LIMITS)
    assert r.mask.shape == (32, 32) and r.maps.shape == (4, 32, 32)
    e = err(parse_recon, Upload([npz_bytes(kspace=k, mask=np.ones((32, 32)))],
                                parts={"mask": npy_bytes(np.ones((32, 32)))}), None, LIMITS)
    assert e.field == "mask" and e.status == 422
    e = err(parse_recon, Upload([npy_bytes(k)], parts={"maps": npy_bytes(np.ones((4, 32, 32)))}), None, LIMITS)
    assert (e.field, e.code) == ("maps", "invalid_dtype")
    e = err(parse_recon, Upload([npy_bytes(k), npy_bytes(k)]), None, LIMITS)
    assert e.field == "file"


def test_limits_on_slices_coils_and_matrix():
    limits = LimitSettings(sync_max_slices=2, max_slices=3, max_coils=3, max_matrix=32)
    e = err(parse_recon, Upload([npy_bytes(kspace(3, 2, 32))]), None, limits)
    assert (e.status, e.code) == (413, "too_many_slices") and "job" in e.error
    parse_recon(Upload([npy_bytes(kspace(3, 2, 32))]), None, limits, sync=False)
    assert err(parse_recon, Upload([npy_bytes(kspace(4, 2, 32))]), None, limits, sync=False).status == 413
    assert err(parse_recon, Upload([npy_bytes(kspace(1, 4, 32))]), None, limits).field == "kspace"
    assert err(parse_recon, Upload([npy_bytes(kspace(1, 2, 48))]), None, limits).code == "invalid_shape"


def test_contrast_names_are_case_insensitive_and_checked():
    assert check_contrast("T2w", "target") == "T2w" and check_contrast("FLAIR", "x") == "FLAIR"
    assert err(check_contrast, "t2w", "target").status == 422  # the OpenAPI enum, exactly
    assert check_contrast(None, "x") is None
    e = err(check_contrast, "T3w", "target")
    assert (e.status, e.field) == (422, "target") and "T1w" in e.expected


def test_synthesis_inputs_npy_and_nifti():
    vol = np.random.default_rng(0).random((3, 40, 36)).astype(np.float32)
    r = parse_synth(Upload([npy_bytes(vol)]), None, LIMITS)
    assert r.input_format == "npy" and r.volume.shape == (3, 40, 36)
    img = nib.Nifti1Image(vol.transpose(2, 1, 0).astype(np.int16), np.diag([0.8, 0.9, 3.0, 1.0]))
    img.header.set_slope_inter(2.0, 1.0)
    r = parse_synth(Upload([img.to_bytes()]), None, LIMITS)
    assert r.input_format == "nifti" and r.volume.shape == (3, 40, 36)
    np.testing.assert_allclose(r.volume, vol.astype(np.int16) * 2.0 + 1.0)  # scl_slope/inter applied once
    import gzip

    r = parse_synth(Upload([gzip.compress(img.to_bytes())]), None, LIMITS)
    assert r.volume.shape == (3, 40, 36)
    bomb = gzip.compress(b"\x00" * (8 << 20))
    e = err(parse_synth, Upload([bomb]), "nifti", LimitSettings(max_job_body_bytes=1 << 20))
    assert e.status == 413


# --- formats ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt, accept, default, expected", [
    ("png", "application/x-npy", "npy", "png"),
    (None, None, "dicom", "dicom"),
    (None, "*/*", "nifti", "nifti"),
    (None, "image/png", "npy", "png"),
    (None, "application/zip", "npy", "dicom"),
    (None, 'multipart/related; type="application/dicom"', "npy", "dicom-multipart"),
    (None, "text/html;q=0.9, application/x-nifti;q=0.5", "npy", "nifti"),
    (None, "image/png;q=0.1, application/x-npy", "dicom", "npy"),
    (None, "image/png;q=0", "npy", None),
    (None, "text/html", "npy", None),
])
def test_format_negotiation(fmt, accept, default, expected):
    if expected is None:
        assert err(negotiate, fmt, accept, default).status == 406
    else:
        assert negotiate(fmt, accept, default) == expected


def test_geometry_affine_round_trip_and_nifti_conventions():
    g = SeriesGeometry(np.array([[-100.0, -90.0, -20.0 + 4.5 * i] for i in range(5)]),
                       np.array([1.0, 0, 0, 0, 0.8, -0.6]), (0.9, 0.7), 4.5, None)
    a = affine_from_geometry(g)
    back = geometry_from_affine(a, 5)
    np.testing.assert_allclose(back.positions, g.positions, atol=1e-9)
    np.testing.assert_allclose(back.orientation, g.orientation, atol=1e-12)
    np.testing.assert_allclose(back.pixel_spacing, g.pixel_spacing)
    assert back.slice_thickness == pytest.approx(4.5)
    # voxel (0, 0, 0) is the first slice's first pixel, in RAS (LPS with x and y negated)
    np.testing.assert_allclose(a[:3, 3], [100.0, 90.0, -20.0])
    np.testing.assert_allclose(nib.affines.voxel_sizes(a), [0.7, 0.9, 4.5])


def test_every_output_format_renders(tmp_path):
    vol = np.random.default_rng(1).random((3, 20, 24)).astype(np.float32) * 100
    meta = OutputMeta("reconstruction", "recon_unrolled", "1", "T2w recon", "T2w")
    out = render("npy", vol, meta)
    np.testing.assert_array_equal(np.load(io.BytesIO(out.body)), vol)
    img = nib.Nifti1Image.from_bytes(render("nifti", vol, meta).body)
    np.testing.assert_allclose(np.asarray(img.dataobj).transpose(2, 1, 0), vol)
    from PIL import Image

    assert Image.open(io.BytesIO(render("png", vol, meta).body)).size == (48, 40)
    rendered = render("dicom-multipart", vol, meta)
    boundary = rendered.media_type.split("boundary=")[1]
    parts = split_multipart_related(rendered.body, boundary)
    datasets = [pydicom.dcmread(io.BytesIO(p)) for p in parts]
    assert [int(d.InstanceNumber) for d in datasets] == [1, 2, 3]
    assert all("SourceImageSequence" not in d for d in datasets)  # no source series: no references
    assert rendered.headers["X-Series-Instance-UID"] == str(datasets[0].SeriesInstanceUID)


def test_multipart_related_parser_rejects_garbage():
    assert split_multipart_related(b"--b\r\nContent-Type: application/dicom\r\n\r\nDATA\r\n--b--\r\n", "b") == [b"DATA"]
    assert err(split_multipart_related, b"no parts here", "b").field == "body"
    assert err(split_multipart_related, b"--b\r\nno header end\r\n--b--", "b").status == 422


# --- jobs -------------------------------------------------------------------------------------------------
class FakeInference:
    quality = None  # the reconstruction self-check is off
    metrics = None

    def __init__(self, fail: Exception | None = None):
        self.fail, self.calls = fail, 0

    def reconstruct(self, k, mask, model, maps=None, progress=None, version=None):
        self.calls += 1
        if self.fail:
            raise self.fail
        if progress:
            progress(k.shape[0])
        return np.abs(k).sum(1).astype(np.float32), False, None

    def version(self, model):
        return "7"


def _run_jobs(runner: JobRunner, until, timeout_s=20.0):
    async def main():
        await runner.start()
        deadline = time.monotonic() + timeout_s
        while not until() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await runner.stop()

    asyncio.run(main())


def test_a_failing_job_is_reported_with_its_error(tmp_path):
    from serving.client import InferenceError

    s = settings(tmp_path)
    store = JobStore(s.jobs.directory)
    runner = JobRunner(store, FakeInference(InferenceError("model 'x': shape not supported")), s)
    job = store.new("reconstruct", "owner1", {"model": "recon_unrolled", "format": "npy"})
    parsed = parse_recon(Upload([npy_bytes(kspace())]), None, LIMITS)

    async def main():
        await runner.start()
        runner.submit(job, parsed)
        for _ in range(200):
            if store.load(job.id).status in ("succeeded", "failed"):
                break
            await asyncio.sleep(0.05)
        await runner.stop()

    asyncio.run(main())
    done = store.load(job.id)
    assert done.status == "failed" and done.error["code"] == "inference_rejected" and done.error["status"] == 422
    assert "shape not supported" in done.error["error"] and done.finished_at is not None
    public = done.public()
    assert "result" not in public["links"] and public["error"]["field"] == "body"


def test_jobs_survive_a_restart(tmp_path):
    s = settings(tmp_path)
    store = JobStore(s.jobs.directory)
    queued = store.new("reconstruct", "o", {"model": "recon_unrolled", "format": "npy", "input_format": None})
    (store.path(queued.id) / "input" / "file-0").write_bytes(npy_bytes(kspace()))
    queued.input = {"files": ["file-0"], "parts": [], "content_type": None}
    queued.status = "running"  # the server died while it ran
    store.save(queued)
    partial = store.new("reconstruct", "o", {"model": "recon_unrolled", "format": "npy"})  # upload never completed
    inference = FakeInference()
    runner = JobRunner(store, inference, s)
    _run_jobs(runner, lambda: store.load(queued.id).status == "succeeded")
    done = store.load(queued.id)
    assert done.status == "succeeded" and done.attempts == 1 and inference.calls == 1
    assert np.load(store.path(queued.id) / done.result["file"]).shape == (2, 32, 32)
    assert not (store.path(queued.id) / "input").exists()  # input removed once the job finished
    assert store.load(partial.id).status == "failed" and store.load(partial.id).error["code"] == "interrupted"
    assert store.counts() == {"succeeded": 1, "failed": 1}
    old = store.load(partial.id)
    old.finished_at = time.time() - 10 * s.jobs.keep_seconds
    store.save(old)
    assert store.cleanup(s.jobs.keep_seconds) == 1 and store.load(partial.id) is None


@pytest.mark.parametrize("group", [None, grp.getgrgid(os.getgid()).gr_name])
def test_job_files_are_never_readable_by_other_users(tmp_path, group):
    """Job directories 0700 and files 0600 (with ``jobs.group``: 2750 / 0640 and that group), also for a store
    an older version left with 0644 files; checked with find(1) as an operator would."""
    s = replace(settings(tmp_path), jobs=replace(settings(tmp_path).jobs, group=group))
    s.jobs.directory.mkdir(parents=True)
    legacy = s.jobs.directory / "legacy.txt"
    legacy.write_text("x")
    os.chmod(legacy, 0o644)
    store = JobStore(s.jobs.directory, s.jobs.permissions)
    job = store.new("reconstruct", "o", {"model": "recon_unrolled", "format": "npy", "input_format": None})
    (store.path(job.id) / "input" / "file-0").write_bytes(npy_bytes(kspace()))
    job.input = {"files": ["file-0"], "parts": [], "content_type": None}
    job.status = "queued"
    store.save(job)
    runner = JobRunner(store, FakeInference(), s)
    _run_jobs(runner, lambda: store.load(job.id).status == "succeeded")
    assert store.load(job.id).status == "succeeded"
    root = s.jobs.directory
    found = subprocess.run(["find", str(root), "-perm", "/o+rwx"], capture_output=True, text=True, check=True)
    assert found.stdout == ""
    files = [p for p in root.rglob("*") if p.is_file()]
    assert len(files) >= 3  # state.json, the result, the legacy file
    for p in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        if group is None:
            assert mode == (0o700 if p.is_dir() else 0o600), (p, oct(mode))
        else:
            assert mode == (0o2750 if p.is_dir() else 0o640) and p.stat().st_gid == grp.getgrnam(group).gr_gid, p
    with pytest.raises(ConfigError, match="jobs.group"):
        replace(s.jobs, group="no-such-group-mri")


def test_job_ids_are_checked_before_touching_the_disk(tmp_path):
    store = JobStore(tmp_path)
    for bad in ("../etc", "x" * 32, "0" * 31):
        assert err(store.path, bad).status == 404
    assert err(store.get, "0" * 32, "o").status == 404
    job = Job("a" * 32, "reconstruct", "o")
    assert job.public()["links"] == {"self": f"/v1/jobs/{'a' * 32}"}


# --- app without Triton: CORS, 500s, metrics fallback, no torch -------------------------------------------
def test_cors_is_off_by_default_and_on_when_configured(tmp_path):
    pre = {"Origin": "https://viewer.example", "Access-Control-Request-Method": "POST"}
    with TestClient(create_app(settings(tmp_path))) as c:
        r = c.options("/v1/reconstruct", headers=pre)
        assert "access-control-allow-origin" not in r.headers
    with TestClient(create_app(settings(tmp_path, "cors.allow_origins=['https://viewer.example']"))) as c:
        r = c.options("/v1/reconstruct", headers=pre)
        assert r.headers["access-control-allow-origin"] == "https://viewer.example"


def test_an_internal_error_is_a_json_500_without_traceback(tmp_path):
    app = create_app(settings(tmp_path))

    def boom():
        raise RuntimeError("secret internal detail /etc/passwd")

    app.add_api_route("/boom", boom)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/boom", headers={"X-Request-ID": "rid-1"})
        assert r.status_code == 500 and r.json()["error"] == "internal error"
        assert r.json()["request_id"] == "rid-1" and "secret" not in r.text and "Traceback" not in r.text
        assert c.get("/health/live").status_code == 200
        r = c.get("/nowhere")
        assert r.status_code == 404 and r.json()["field"] == "path"
        r = c.put("/v1/reconstruct", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 405 and r.json()["field"] == "path"


def test_metrics_fallback_without_prometheus_client(monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    from serving.api.metrics import Metrics

    m = Metrics(job_counts=lambda: {"queued": 2})
    m.request("POST", "/v1/reconstruct", 422, 0.5, "invalid_dtype")
    m.inferred("reconstruction", "recon_unrolled", 4, 1.5)
    text, content_type = m.render()
    text = text.decode()
    assert 'mri_api_requests_total{method="POST",route="/v1/reconstruct",status="422"} 1' in text
    assert 'mri_api_errors_total{route="/v1/reconstruct",code="invalid_dtype"} 1' in text
    assert 'mri_api_slices_processed_total{task="reconstruction",model="recon_unrolled"} 4' in text
    assert 'mri_api_jobs{state="queued"} 2' in text and content_type.startswith("text/plain")


def test_the_api_never_imports_torch():
    code = ("import sys; import serving.api.app, serving.api.cli, serving.api.inputs, serving.api.examples, "
            "serving.dicom.kspace_files, mrcore.data.readers.mrd, mrcore.data.readers.fastmri; "
            "from serving.api import create_app; "
            "print(json.dumps(sorted(m for m in ('torch', 'sigpy') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert json.loads(out.stdout) == []
