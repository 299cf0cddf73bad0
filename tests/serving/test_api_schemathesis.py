"""Schemathesis against the live server's OpenAPI document (real uvicorn + Triton), with EVERY check: no 5xx,
status codes, content types, headers and bodies as documented, schema-invalid input rejected, schema-valid input
accepted, correct ``Allow`` on 405, authentication enforced, a deleted job gone.

Bounded: 30 examples per operation, one worker, fixed seed (about 20-60 s on 2 cores). The exceptions to
"schema-valid input is accepted" (upload bodies that are any bytes in OpenAPI but must be a k-space file or an
MR series) and the job id the job operations are checked with are in ``tests/serving/schemathesis.toml``. The
same run from the shell: ``MRI_ST_JOB_ID=<a job id> st --config-file tests/serving/schemathesis.toml run
http://127.0.0.1:8080/openapi.json --checks all -n 30 -H "Authorization: Bearer $T"``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.serving.api_support import AUTH, TOKEN, ApiServer, ensure_examples

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CONFIG = Path(__file__).with_name("schemathesis.toml")


def succeeded_job(api: ApiServer) -> str:
    """Submit a small reconstruction job and wait until it succeeded; its id."""
    body = (ensure_examples() / "kspace.npy").read_bytes()
    with api.client(headers=AUTH) as http:
        r = http.post("/v1/jobs/reconstruct?format=npy", content=body)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status = http.get(f"/v1/jobs/{job_id}").json()["status"]
            if status in ("succeeded", "failed"):
                break
            time.sleep(0.3)
    assert status == "succeeded"
    return job_id


def test_schemathesis_all_checks_pass(triton_url, tmp_path):
    st = Path(sys.executable).with_name("st")
    assert st.exists(), "schemathesis (st) is part of the test dependencies"
    with ApiServer(triton_url, tmp_path / "server") as api:
        job_id = succeeded_job(api)
        t0 = time.monotonic()
        run = subprocess.run([str(st), "--config-file", str(CONFIG), "run", f"{api.url}/openapi.json",
                              "--checks", "all", "--max-examples", "30", "--seed", "1", "--workers", "1",
                              "--no-color", "--generation-database", "none", "--request-timeout", "120",
                              "--header", f"Authorization: Bearer {TOKEN}"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=900,
                             env={**os.environ, "MRI_ST_JOB_ID": job_id})
        seconds = time.monotonic() - t0
        server_errors = [line for line in api.log_text().splitlines()
                         if line.strip() and json.loads(line).get("status", 0) >= 500]
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    assert "generated" in run.stdout and " passed" in run.stdout and "failures" not in run.stdout
    for phase in ("Coverage", "Fuzzing", "Stateful"):
        assert f"✅ {phase}" in run.stdout, run.stdout[-3000:]
    assert not server_errors, server_errors[:5]
    assert "unhandled error" not in api.log_text()
    assert seconds < 300, f"schemathesis took {seconds:.0f} s"
