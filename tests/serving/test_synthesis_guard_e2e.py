"""The synthesis input check end to end: the real REST server (uvicorn) over HTTP in front of the real tritonserver
with the shipped synthesis models. Never a silent result: a T2w series sent as T1w is answered with the
X-Synthesis-Warning header (and ImageComments, and the job's synthesis_warnings); a series with no head is
refused (422 no_head); one too small to normalise too (422 cannot_normalise)."""

from __future__ import annotations

import io
import json
import time
import zipfile

import numpy as np
import pydicom
import pytest

from mrcore.data.randomize import natural_image
from serving.synthesis_check import COMMENT_PREFIX
from tests.conftest import ROOT
from tests.mrcore.test_synthesis_input import phantom_series
from tests.serving.api_support import AUTH, ApiServer, assert_error, load_npy, npy_bytes

pytestmark = pytest.mark.e2e

SYNTH = "/v1/synthesize?source=T1w&target=T2w"


@pytest.fixture(scope="module")
def http(triton_url, tmp_path_factory):
    if not (ROOT / "model_repository" / "synth_t1w_to_t2w").is_dir():
        pytest.skip("model_repository has no synth_t1w_to_t2w model")
    with ApiServer(triton_url, tmp_path_factory.mktemp("api")) as server, server.client(headers=AUTH) as c:
        yield c


def _warnings(response) -> list[dict]:
    return json.loads(response.headers["x-synthesis-warning"])


def test_t2w_sent_as_t1w_is_answered_with_the_warning_header_and_comments(http):
    r = http.post(SYNTH + "&format=npy", content=npy_bytes(phantom_series("T2w")))
    assert r.status_code == 200, r.text[:500]
    assert r.headers["x-synthetic-data"] == "YES"
    warnings = _warnings(r)
    assert [w["code"] for w in warnings] == ["contrast_mismatch"]
    assert "looks T2w, not T1w" in warnings[0]["message"]
    assert load_npy(r.content).shape == (4, 128, 128)
    r = http.post(SYNTH + "&format=dicom", content=npy_bytes(phantom_series("T2w")))
    assert r.status_code == 200 and _warnings(r) == warnings
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        instances = [pydicom.dcmread(io.BytesIO(z.read(n))) for n in z.namelist()]
    assert len(instances) == 4
    for ds in instances:
        assert str(ds.ImageComments).startswith(COMMENT_PREFIX) and "looks T2w, not T1w" in ds.ImageComments
        assert ds.SyntheticData == "YES"


def test_a_t1w_series_on_its_route_has_no_warning(http):
    r = http.post(SYNTH + "&format=npy", content=npy_bytes(phantom_series("T1w")))
    assert r.status_code == 200, r.text[:500]
    assert "x-synthesis-warning" not in r.headers


def test_a_series_with_no_head_is_refused_naming_the_reason(http):
    grass = natural_image("grass")
    err = assert_error(http.post(SYNTH, content=npy_bytes(np.stack([grass, grass]).astype(np.float32))), 422,
                       "PixelData", "no_head")
    assert "no head in the source series" in err["error"] and "field of view" in err["error"]
    assert "axial brain series" in err["expected"]


def test_a_series_too_small_to_normalise_is_refused_naming_the_reason(http):
    tiny = np.zeros((2, 32, 32), np.float32)
    tiny[0, 3, 3] = 7.0
    err = assert_error(http.post(SYNTH, content=npy_bytes(tiny)), 422, "PixelData", "cannot_normalise")
    assert "foreground voxels" in err["error"] and err["got"] == "2 slice(s) of 32x32"


def _wait(http, job_id: str, timeout_s: float = 240.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = http.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish")


def test_jobs_carry_the_warnings_and_the_refusal(http):
    r = http.post("/v1/jobs/synthesize?source=T1w&target=T2w&format=npy", content=npy_bytes(phantom_series("T2w")))
    assert r.status_code == 202, r.text[:500]
    done = _wait(http, r.json()["id"])
    assert done["status"] == "succeeded", done
    assert [w["code"] for w in done["synthesis_warnings"]] == ["contrast_mismatch"]
    result = http.get(done["links"]["result"])
    assert result.status_code == 200 and _warnings(result) == done["synthesis_warnings"]
    r = http.post("/v1/jobs/synthesize?source=T1w&target=T2w&format=npy", content=npy_bytes(phantom_series("T1w")))
    assert _wait(http, r.json()["id"])["synthesis_warnings"] == []
    grass = natural_image("grass")
    r = http.post("/v1/jobs/synthesize?source=T1w&target=T2w&format=npy",
                  content=npy_bytes(np.stack([grass, grass]).astype(np.float32)))
    failed = _wait(http, r.json()["id"])
    assert failed["status"] == "failed" and failed["error"]["code"] == "no_head" and failed["error"]["status"] == 422


def test_the_openapi_document_describes_the_warning_header(http):
    spec = http.get("/openapi.json").json()
    headers = spec["paths"]["/v1/synthesize"]["post"]["responses"]["200"]["headers"]
    assert "X-Synthesis-Warning" in headers and "no_head" in headers["X-Synthesis-Warning"]["description"]
    job = spec["components"]["schemas"]["JobOut"]["properties"]
    assert "synthesis_warnings" in job
