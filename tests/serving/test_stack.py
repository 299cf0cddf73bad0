"""`make run`'s command: Triton, the REST API and the DICOM node start together, answer, and stop cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import ROOT, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_stack_starts_every_component_and_stops_on_sigterm(tmp_path):
    ports = {k: free_port() for k in ("http", "grpc", "metrics", "api", "dicom")}
    token_file = tmp_path / "token"
    cmd = [sys.executable, "-m", "serving.stack", "--triton-http-port", str(ports["http"]),
           "--triton-grpc-port", str(ports["grpc"]), "--triton-metrics-port", str(ports["metrics"]),
           "--api-port", str(ports["api"]), "--dicom-port", str(ports["dicom"]), "--token-file", str(token_file),
           "--dicom-storage", str(tmp_path / "node")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MRI_API_TOKENS")}
    log = open(tmp_path / "stack.log", "w+")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        ready = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{ports['api']}/health/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                pass
            if ready:
                break
            time.sleep(0.5)
        log.seek(0)
        output = log.read()
        assert ready, f"REST API not ready; stack output:\n{output[-3000:]}"
        assert "MRI service running" in output and f"127.0.0.1:{ports['dicom']}" in output
        assert token_file.stat().st_mode & 0o077 == 0, "the generated token file must be private"
        token = token_file.read_text().strip()
        assert token not in output, "the token must not be printed"
        models = httpx.get(f"http://127.0.0.1:{ports['api']}/v1/models", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert models.status_code == 200 and "recon_unrolled" in models.text
        assert httpx.get(f"http://127.0.0.1:{ports['api']}/v1/models", timeout=10).status_code == 401
        echo = subprocess.run(["echoscu", "-aet", "SCANNER", "-aec", "RECON", "127.0.0.1", str(ports["dicom"])],
                              capture_output=True, text=True, timeout=30)
        assert echo.returncode == 0, echo.stderr
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0
    leftovers = subprocess.run(["pgrep", "-f", f"--port {ports['api']}|--http-port={ports['http']}|--port {ports['dicom']}"],
                               capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", f"processes left behind: {leftovers.stdout}"
