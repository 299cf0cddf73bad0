"""The reconstruction self-check end to end (issue 19): a real uvicorn API in front of the real tritonserver.

The header, the job resource's quality field and the DICOM private block / ImageComments carry the same numbers,
which equal the shared client's :meth:`~serving.client.TritonClient.reconstruct_checked`; policy ``fallback``
replaces exactly the flagged slices by the zero-filled RSS; bad input gets a 4xx naming the key.
"""

from __future__ import annotations

import io
import json
import time
import zipfile

import numpy as np
import pydicom
import pytest

from mrcore.fft import ifft2c
from serving.client import TritonClient
from serving.dicom import real_world_values
from serving.dicom.quality import FLAG_SUFFIX, read_quality
from serving.quality import QualitySettings
from tests.dicom_node.data import undersampled_kspace
from tests.serving.api_support import AUTH, ApiServer, assert_error, load_npy, npz_bytes

pytestmark = pytest.mark.e2e

SLICES = 6


@pytest.fixture(scope="module")
def volume():
    """Six slices of an ellipse phantom, 8 coils, 64x64, every 4th line plus the centre."""
    return undersampled_kspace(slices=SLICES, coils=8, rows=64, cols=64, seed=3)


@pytest.fixture(scope="module")
def triton(triton_url):
    with TritonClient(triton_url) as c:
        yield c


@pytest.fixture(scope="module")
def reference(triton, volume):
    """The answer and the self-check as the shared client computes them (default settings)."""
    kspace, mask = volume
    image, quality = triton.reconstruct_checked(kspace, mask, settings=QualitySettings())
    return image, [q.public() for q in quality]


def _server(triton_url, tmp_path_factory, *overrides):
    return ApiServer(triton_url, tmp_path_factory.mktemp("api"), overrides=overrides)


@pytest.fixture(scope="module")
def report_api(triton_url, tmp_path_factory):
    with _server(triton_url, tmp_path_factory, "quality.policy=report") as server:
        yield server


def _same(got: list[dict], want: list[dict]) -> None:
    assert [g["slice"] for g in got] == [w["slice"] for w in want]
    for g, w in zip(got, want):
        assert g["flag"] == w["flag"]
        for key in ("est_nmse", "est_nmse_zero_filled", "holdout_nmse", "dc_residual"):
            assert g[key] == pytest.approx(w[key], rel=2e-3, abs=1e-6), (key, g, w)


def _dicom(content: bytes) -> list[pydicom.Dataset]:
    with zipfile.ZipFile(io.BytesIO(content)) as z:
        return [pydicom.dcmread(io.BytesIO(z.read(n))) for n in sorted(z.namelist())]


def _ratio(q: dict) -> float:
    """est_nmse / est_nmse_zero_filled of one slice's JSON object (what ``quality.ratio_threshold`` compares)."""
    return q["est_nmse"] / q["est_nmse_zero_filled"]


def test_header_job_dicom_and_metrics_agree_with_the_client(report_api, volume, reference):
    kspace, mask = volume
    ref_image, ref_quality = reference
    body = npz_bytes(kspace=kspace, mask=mask)
    with report_api.client(headers=AUTH, timeout=300) as http:
        r = http.post("/v1/reconstruct", content=body)
        assert r.status_code == 200, r.text[:300]
        header = json.loads(r.headers["x-recon-quality"])
        assert r.headers["x-recon-quality-policy"] == "report"
        assert len(header) == SLICES and set(header[0]) >= {"slice", "est_nmse", "est_nmse_zero_filled", "holdout_nmse",
                                                             "dc_residual", "flag"}
        _same(header, ref_quality)
        rule = QualitySettings()  # the server runs the defaults: the ratio rule only
        for q in header:
            assert q["flag"] == (q["est_nmse"] > rule.ratio_threshold * q["est_nmse_zero_filled"])
            assert 0 <= q["holdout_nmse"] and np.isfinite(q["holdout_nmse"]) and 0 < q["est_nmse_zero_filled"] < 1
        # report: the pixels are the model's answer, untouched
        np.testing.assert_allclose(load_npy(r.content), ref_image, rtol=0, atol=1e-5 * float(ref_image.max()))

        d = http.post("/v1/reconstruct?format=dicom", content=body)
        assert d.status_code == 200, d.text[:300]
        datasets = _dicom(d.content)
        _same([read_quality(ds) for ds in datasets], header)
        for ds, q in zip(datasets, header):
            assert str(ds.ImageComments).startswith("Self-check: estimated NMSE")
            assert f"{q['est_nmse']:.4f}" in str(ds.ImageComments) and f"{q['holdout_nmse']:.3f}" in str(ds.ImageComments)
            assert not str(ds.SeriesDescription).endswith(FLAG_SUFFIX)  # report never marks the series

        job = http.post("/v1/jobs/reconstruct", content=body)
        assert job.status_code == 202, job.text[:300]
        url = job.headers["location"]
        deadline = time.monotonic() + 240
        while (state := http.get(url).json())["status"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, state
            time.sleep(0.5)
        assert state["status"] == "succeeded", state
        _same(state["quality"], header)

        spec = http.get("/openapi.json").json()
        assert "X-Recon-Quality" in spec["paths"]["/v1/reconstruct"]["post"]["responses"]["200"]["headers"]
        assert "quality" in spec["components"]["schemas"]["JobOut"]["properties"]
        metrics = http.get("/metrics").text
        lines = [ln for ln in metrics.splitlines() if ln.startswith("mri_api_recon_selfcheck_slices_total{")]
        total = sum(float(ln.rsplit(" ", 1)[1]) for ln in lines)
        assert total == 3 * SLICES  # three reconstructions of six slices
        flagged = sum(float(ln.rsplit(" ", 1)[1]) for ln in lines if 'verdict="flagged"' in ln)
        assert flagged == 3 * sum(q["flag"] for q in header)
    assert "reconstruction self-check" in report_api.log_text()


def test_fallback_replaces_exactly_the_flagged_slices(triton_url, tmp_path_factory, volume, reference):
    kspace, mask = volume
    _, ref_quality = reference
    values = sorted(_ratio(q) for q in ref_quality)
    assert values[0] < values[-1], "the test needs slices with different estimated errors"
    threshold = (values[SLICES // 2 - 1] + values[SLICES // 2]) / 2  # flags the upper half
    with _server(triton_url, tmp_path_factory, "quality.policy=fallback", f"quality.ratio_threshold={threshold}") \
            as server, server.client(headers=AUTH, timeout=300) as http:
        body = npz_bytes(kspace=kspace, mask=mask)
        r = http.post("/v1/reconstruct", content=body)
        assert r.status_code == 200, r.text[:300]
        header = json.loads(r.headers["x-recon-quality"])
        flagged = [q["slice"] for q in header if q["flag"]]
        assert flagged == [q["slice"] for q in ref_quality if _ratio(q) > threshold]
        assert 0 < len(flagged) < SLICES
        assert [q["slice"] for q in header if q.get("replaced")] == flagged
        assert r.headers["x-recon-quality-replaced"] == ",".join(map(str, flagged))
        out = load_npy(r.content)
        zero_filled = np.sqrt((np.abs(ifft2c(kspace * mask)) ** 2).sum(axis=1))
        with TritonClient(triton_url) as c:
            model = c.reconstruct(kspace, mask)
        for i in range(SLICES):
            want = zero_filled[i] if i in flagged else model[i]
            np.testing.assert_allclose(out[i], want, rtol=0, atol=1e-5 * float(want.max()))

        datasets = _dicom(http.post("/v1/reconstruct?format=dicom", content=body).content)
        for i, ds in enumerate(datasets):
            assert str(ds.SeriesDescription).endswith(FLAG_SUFFIX)
            replaced = "replaced by zero-filled RSS" in str(ds.DerivationDescription)
            assert replaced == (i in flagged)
            assert read_quality(ds).get("replaced", False) == (i in flagged)
            tol = float(ds.RealWorldValueMappingSequence[0].RealWorldValueSlope)
            want = zero_filled[i] if i in flagged else model[i]
            np.testing.assert_allclose(real_world_values(ds), want, atol=tol + 1e-5 * float(out.max()))


def test_unavailable_estimate_and_a_fraction_that_leaves_too_few_lines(report_api, volume):
    kspace, _ = volume
    rows = kspace.shape[-2]
    centre = np.zeros((rows, kspace.shape[-1]), np.float32)
    centre[rows // 2 - 8:rows // 2 + 8] = 1
    with report_api.client(headers=AUTH, timeout=300) as http:
        r = http.post("/v1/reconstruct", content=npz_bytes(kspace=kspace * centre, mask=centre))
        assert r.status_code == 200, r.text[:300]
        header = json.loads(r.headers["x-recon-quality"])
        assert all(q["holdout_nmse"] is None and not q["flag"] and "calibration" in q["unavailable"] for q in header)
        one_more = centre.copy()
        one_more[2] = 1  # a single line outside the calibration region: holding it out leaves the model none
        r = http.post("/v1/reconstruct", content=npz_bytes(kspace=kspace * one_more, mask=one_more))
        err = assert_error(r, 422, "quality.holdout_fraction")
        assert "holdout_fraction" in err["error"]


def test_bad_quality_config_names_the_key(tmp_path):
    from dicom_node.config import parse_config
    from mrcore.config import ConfigError
    from serving.api.settings import ApiSettings

    env = {"MRI_API_TOKENS": "a-token-of-enough-length"}
    for override, key in (("quality.policy=ignore", "quality.policy"), ("quality.holdout_fraction=0.9",
                                                                          "quality.holdout_fraction"),
                          ("quality.holdout_threshold=-1", "quality.holdout_threshold"),
                          ("quality.ratio_threshold=0", "quality.ratio_threshold")):
        with pytest.raises(ConfigError, match=key):
            ApiSettings.load(None, [override], environ=env)
    base = {"storage_dir": str(tmp_path), "destinations": {"p": {"ae_title": "P", "host": "127.0.0.1", "port": 104}},
            "routes": [{"called_ae_title": "RECON", "task": "reconstruction", "model": "recon_unrolled",
                        "destinations": ["p"]}]}
    assert parse_config(base).quality == QualitySettings()
    for quality, key in (({"policy": "ignore"}, "quality.policy"), ({"holdout_fraction": 0}, "quality.holdout_fraction"),
                         ({"treshold": 1}, "quality.treshold")):
        with pytest.raises(ConfigError, match=key):
            parse_config({**base, "quality": quality})
