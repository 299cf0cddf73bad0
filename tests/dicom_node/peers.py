"""Real peers for the DICOM node tests: Orthanc (the PACS), dcmtk (the scanner), dciodvfy, the node itself
as a subprocess. Every process started here is stopped by its owner (fixtures use try/finally)."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pydicom
import yaml

from serving.orthanc import ORTHANC_BINARY, Modality, OrthancSettings, write_config
from tests.conftest import ROOT, free_port

ORTHANC = ORTHANC_BINARY
#: Debian's orthanc-dicomweb (make system-deps): STOW-RS/QIDO-RS/WADO-RS under /dicom-web/
ORTHANC_DICOMWEB = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def need(*tools: str) -> None:
    import pytest

    missing = [t for t in tools if shutil.which(t) is None and not Path(t).exists()]
    if missing:
        pytest.fail(f"required tool(s) not installed: {missing} (make system-deps installs dcmtk, orthanc, "
                    "dicom3tools)")


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


# --------------------------------------------------------------------------------------------------
# Orthanc
# --------------------------------------------------------------------------------------------------
class Orthanc:
    """An Orthanc server with its own config and storage in ``directory``; the config is the project's one
    definition (:func:`serving.orthanc.orthanc_config`), here without HTTP authentication and accepting
    C-STORE from any AE title (a throw-away test PACS).

    ``http_port``/``dicom_port``/``auth`` attach the REST helpers to an Orthanc started elsewhere (the one
    ``make run`` embeds, with its user and password) without calling :meth:`start`."""

    def __init__(self, directory: Path, modalities: dict[str, tuple[str, str, int]] | None = None,
                 aet: str = "ORTHANC", *, http_port: int | None = None, dicom_port: int | None = None,
                 auth: tuple[str, str] | None = None, user: tuple[str, str] | None = None,
                 extra: dict | None = None) -> None:
        """``user`` (an alias of ``auth``): (name, password) with HTTP authentication on; ``extra``: more
        configuration keys (plugins, DICOMweb...) over the project's config."""
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.http_port, self.dicom_port, self.aet = http_port or free_port(), dicom_port or free_port(), aet
        self.modalities = dict(modalities or {})
        self.auth = auth or user
        self.extra = dict(extra or {})
        self.proc: subprocess.Popen | None = None

    def settings(self) -> OrthancSettings:
        return OrthancSettings(directory=self.dir, http_port=self.http_port, dicom_port=self.dicom_port,
                               ae_title=self.aet, name="test-pacs", restrict_dicom=False,
                               users=dict([self.auth]) if self.auth else None,
                               modalities={k: Modality(*v) for k, v in self.modalities.items()})

    def write_config(self) -> Path:
        path = write_config(self.settings())
        if self.extra:
            cfg = json.loads(path.read_text())
            cfg.update(self.extra)
            path.write_text(json.dumps(cfg, indent=1))
        return path

    def start(self) -> Orthanc:
        cfg = self.write_config()
        self.log = open(self.dir / "orthanc.log", "ab")
        self.proc = subprocess.Popen([ORTHANC, str(cfg)], stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=self.dir)
        wait_for(self._up, 20, "Orthanc REST API")
        return self

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            log = (self.dir / "orthanc.log").read_text()[-2000:]
            raise RuntimeError(f"Orthanc exited with {self.proc.returncode}: {log}")
        try:
            self.get("/system")
            return True
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    def stop(self) -> None:
        """Kill it (a clean Orthanc shutdown takes seconds; its storage is a throw-away test directory)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()

    # --- REST ------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body=None, raw: bool = False, timeout: float = 60):
        data = None
        headers = {}
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers["Content-Type"] = "application/dicom" if isinstance(body, bytes) else "application/json"
        if self.auth:
            headers["Authorization"] = "Basic " + base64.b64encode(":".join(self.auth).encode()).decode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=data, method=method,
                                     headers=headers)
        with urllib.request.urlopen(req, timeout=timeout) as r:
            content = r.read()
        return content if raw else json.loads(content or b"null")

    def get(self, path: str, raw: bool = False):
        return self._request("GET", path, raw=raw)

    def post(self, path: str, body=None):
        return self._request("POST", path, body)

    def upload(self, path: Path) -> str:
        return self.post("/instances", Path(path).read_bytes())["ID"]

    def send_to(self, modality: str, resources: list[str], timeout: float = 120) -> None:
        """C-STORE resources (Orthanc ids) to a configured modality (synchronously)."""
        self._request("POST", f"/modalities/{modality}/store",
                      {"Resources": resources, "Synchronous": True, "Timeout": 60}, timeout=timeout)

    def series(self) -> list[dict]:
        return [self.get(f"/series/{s}") for s in self.get("/series")]

    def series_by_uid(self, uid: str) -> dict | None:
        for s in self.series():
            if s["MainDicomTags"]["SeriesInstanceUID"] == uid:
                return s
        return None

    def derived_series(self, source_series_uid: str | None = None) -> list[dict]:
        """Series whose first instance has ImageType DERIVED (optionally referencing a source series)."""
        out = []
        for s in self.series():
            ds = self.dataset(s["Instances"][0])
            if "DERIVED" in list(ds.get("ImageType", [])):
                refs = [str(i.SeriesInstanceUID) for i in ds.get("ReferencedSeriesSequence", [])]
                if source_series_uid is None or source_series_uid in refs:
                    out.append(s)
        return out

    def dataset(self, instance_id: str) -> pydicom.Dataset:
        return pydicom.dcmread(io.BytesIO(self.get(f"/instances/{instance_id}/file", raw=True)))

    def datasets(self, series: dict) -> list[pydicom.Dataset]:
        return [self.dataset(i) for i in series["Instances"]]

    def export(self, series: dict, directory: Path) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        out = []
        for i, inst in enumerate(series["Instances"]):
            p = directory / f"{i:04d}.dcm"
            p.write_bytes(self.get(f"/instances/{inst}/file", raw=True))
            out.append(p)
        return out


# --------------------------------------------------------------------------------------------------
# dcmtk and dicom3tools
# --------------------------------------------------------------------------------------------------
def storescu(port: int, files_or_dir, *, aet: str = "SCANNER", aec: str, extra: list[str] = (),
             timeout: float = 120) -> subprocess.CompletedProcess:
    items = [str(files_or_dir)] if isinstance(files_or_dir, (str, Path)) else [str(f) for f in files_or_dir]
    cmd = ["storescu", "-v", "-aet", aet, "-aec", aec, *extra]
    if any(Path(i).is_dir() for i in items):
        cmd += ["+sd", "+r"]
    cmd += ["127.0.0.1", str(port), *items]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def echoscu(port: int, *, aet: str = "SCANNER", aec: str, extra: list[str] = ()) -> subprocess.CompletedProcess:
    return subprocess.run(["echoscu", "-aet", aet, "-aec", aec, *extra, "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=60)


#: Standard attributes newer than Debian's dicom3tools dictionary, which dciodvfy reports as unknown:
#: Synthetic Data (0008,001C), in the standard since 2021 (pydicom's dictionary has it).
NEWER_THAN_DCIODVFY = ("(0x0008,0x001c)",)


def dciodvfy_errors(path: Path) -> list[str]:
    """Lines of ``dciodvfy`` output that report an error (except 'not a recognized standard attribute' for the
    standard attributes of :data:`NEWER_THAN_DCIODVFY`)."""
    r = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (r.stdout + r.stderr).splitlines() if "Error" in line
            and not ("not a recognized standard attribute" in line and any(t in line for t in NEWER_THAN_DCIODVFY))]


# --------------------------------------------------------------------------------------------------
# the node as a subprocess
# --------------------------------------------------------------------------------------------------
def node_config(tmp: Path, *, port: int, destinations: dict, routes: list, **extra) -> Path:
    cfg = {"ae_title": "MRI_NODE", "listen": {"host": "127.0.0.1", "port": port}, "storage_dir": str(tmp / "node"),
           "quiet_seconds": 1.0, "destinations": destinations, "routes": routes,
           "processing": {"max_attempts": 4, "retry_base_seconds": 0.5, "retry_max_seconds": 2},
           "delivery": {"max_attempts": 20, "retry_base_seconds": 0.5, "retry_max_seconds": 2, "workers": 2},
           "network_timeout_seconds": 20}
    cfg.update(extra)
    path = tmp / "node.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class NodeProcess:
    """``python -m dicom_node serve`` as a real subprocess (stdout/stderr to ``log``)."""

    def __init__(self, config: Path, *, processor: str | None = "tests.dicom_node.doubles:processor",
                 env: dict | None = None) -> None:
        self.config = config
        self.processor = processor
        self.env = env or {}
        self.log_path = config.parent / "node.log"
        self.proc: subprocess.Popen | None = None
        self.port = yaml.safe_load(config.read_text())["listen"]["port"]

    def start(self, timeout: float = 60) -> NodeProcess:
        cmd = [sys.executable, "-m", "dicom_node", "serve", "--config", str(self.config)]
        if self.processor:
            cmd += ["--processor", self.processor]
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._log = open(self.log_path, "ab")
        env = {**os.environ, "PYTHONPATH": str(ROOT), **self.env}
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        wait_for(self._listening, timeout, "the DICOM node to listen")
        return self

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"dicom node exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
        return "DICOM node listening on" in self.log()[self._offset:]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no clean-up at all."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None
        self._log.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if getattr(self, "_log", None):
            self._log.close()

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "dicom_node", *args, "--config", str(self.config)],
                              capture_output=True, text=True, cwd=ROOT, timeout=60)

    def jobs(self) -> list[dict]:
        """Jobs as ``dicom_node jobs --json`` shows them, read straight from the queue database (cheaper
        than a CLI process per poll; the CLI itself is tested in test_cli.py)."""
        from dicom_node.queue import JobQueue

        storage = Path(yaml.safe_load(self.config.read_text())["storage_dir"])
        q = JobQueue(storage / "queue.sqlite")
        try:
            return [{"id": j.id, "state": j.state, "attempts": j.attempts, "last_error": j.last_error,
                     "instances": j.num_instances,
                     "deliveries": {d.destination: f"{d.state}({d.attempts})" for d in q.deliveries(j.id)}}
                    for j in q.jobs()]
        finally:
            q.close()
