"""Helpers of the REST API tests: a real uvicorn server process, the example files, small payload builders."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from tests.conftest import ROOT, free_port

TOKEN = "test-token-" + "a1b2c3d4e5f6a7b8"
OTHER_TOKEN = "other-token-" + "0f1e2d3c4b5a6978"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXAMPLES_VERSION = "3"


class ApiServer:
    """``python -m serving.api serve`` in a subprocess (real uvicorn) on a free port; logs to ``log_path``."""

    def __init__(self, triton_url: str, workdir: Path, *, overrides: tuple[str, ...] = (),
                 tokens: tuple[str, ...] = (TOKEN, OTHER_TOKEN), extra_args: tuple[str, ...] = (),
                 scheme: str = "http") -> None:
        self.port = free_port()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"api-{self.port}.log"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.cmd = [sys.executable, "-m", "serving.api", "serve", "--port", str(self.port), "--triton-url", triton_url,
                    "--set", f"jobs.directory={self.workdir / 'jobs'}",
                    "--set", f"triton.model_repository={ROOT / 'model_repository'}", *extra_args]
        for o in overrides:
            self.cmd += ["--set", o]
        self.env = {**os.environ, "MRI_API_TOKENS": ",".join(tokens), "PYTHONUNBUFFERED": "1"}
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 60.0) -> ApiServer:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"API server exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health/live", timeout=1.0, verify=False).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"API server did not start within {timeout_s} s:\n{self.log_text()[-3000:]}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_records(self) -> list[dict]:
        """Every log line as JSON (fails on a line that is not JSON)."""
        out = []
        for line in self.log_text().splitlines():
            if line.strip():
                out.append(json.loads(line))
        return out

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 120.0), **kwargs)

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def ensure_examples() -> Path:
    """The example files (``mri-api examples``), written once into ``.cache/api-examples`` and reused."""
    out = ROOT / ".cache" / "api-examples"
    stamp = out / f".complete-{EXAMPLES_VERSION}"
    if not stamp.exists():
        subprocess.run([sys.executable, "-m", "serving.api", "examples", "--out", str(out)], cwd=ROOT, check=True,
                       capture_output=True)
        stamp.touch()
    return out


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def load_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def assert_error(response: httpx.Response, status: int, field: str | None, code: str | None = None) -> dict:
    """The API's JSON error shape, with the expected status and field; never a stack trace."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json"), response.headers["content-type"]
    body = response.json()
    assert {"error", "field", "expected", "status", "code", "request_id"} <= set(body), body
    assert body["status"] == status
    if field is not None:
        assert body["field"] == field, body
    if code is not None:
        assert body["code"] == code, body
    assert "Traceback" not in response.text and 'File "' not in response.text
    assert body["request_id"] == response.headers.get("x-request-id")
    return body
