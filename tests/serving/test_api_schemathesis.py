"""Schemathesis against the live server's OpenAPI spec (real uvicorn + Triton): no answer is a 5xx.

Bounded: 30 examples per operation, one worker, fixed seed (about 30 s on 2 cores). The same run from the
shell: ``st run http://127.0.0.1:8080/openapi.json -c not_a_server_error -n 30 -H "Authorization: Bearer $T"``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serving.api_support import TOKEN, ApiServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_schemathesis_finds_no_server_error(triton_url, tmp_path):
    st = Path(sys.executable).with_name("st")
    assert st.exists(), "schemathesis (st) is part of the test dependencies"
    with ApiServer(triton_url, tmp_path / "server") as api:
        run = subprocess.run([str(st), "run", f"{api.url}/openapi.json", "--checks", "not_a_server_error",
                              "--max-examples", "30", "--seed", "1", "--workers", "1", "--no-color",
                              "--generation-database", "none", "--request-timeout", "120",
                              "--header", f"Authorization: Bearer {TOKEN}"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=900)
        server_errors = [line for line in api.log_text().splitlines()
                         if line.strip() and json.loads(line).get("status", 0) >= 500]
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "generated" in run.stdout and " passed" in run.stdout
    assert not server_errors, server_errors[:5]
    assert "unhandled error" not in api.log_text()
