"""Start and stop the real ``tritonserver`` binary shipped in the ``nvidia-pytriton`` wheel.

Without Docker or GPU the server runs the python backend (also from the wheel), whose stub runs the
models' ``model.onnx`` with ONNX Runtime (``--model-config-name=cpu``). A GPU host runs the same
repository in the stock NGC container instead (see the Dockerfile); there ``config.pbtxt`` selects
the onnxruntime backend on KIND_GPU.

    with TritonServer(TritonSettings(repository=Path("model_repository"))) as server:
        print(server.http_url)          # "127.0.0.1:8000"

The launcher checks the repository first (:mod:`serving.repository`), waits for readiness with a
timeout, refuses to continue when a model failed to load (naming it and the cause from Triton's log),
and removes the python backend's shared-memory regions on exit.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytriton
import tritonclient.http as httpclient

from .repository import ModelEntry, check_repository
from .supervisor import stop_process_group

log = logging.getLogger(__name__)


class TritonStartError(RuntimeError):
    """tritonserver did not become ready; the message says why (model, cause, log excerpt)."""


@dataclass(frozen=True)
class TritonSettings:
    """How to run tritonserver.

    ``model_config_name``: ``"cpu"`` selects ``configs/cpu.pbtxt`` (python backend + ONNX Runtime);
    ``None`` uses ``config.pbtxt`` (onnxruntime backend, KIND_GPU: the NGC container only).
    """

    repository: Path = Path("model_repository")
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    model_config_name: str | None = "cpu"
    startup_timeout_s: float = 120.0
    log_verbose: int = 0
    log_file: Path | None = None
    #: another tritonserver (e.g. /opt/tritonserver/bin/tritonserver in the NGC container) and its backends
    binary: Path | None = None
    backend_directory: Path | None = None


def pytriton_dir() -> Path:
    """The ``pytriton/tritonserver`` directory of the installed wheel."""
    return Path(pytriton.__file__).resolve().parent / "tritonserver"


def backend_directory(cache: Path | None = None) -> Path:
    """A backend directory with the python backend for this interpreter's version (built once).

    ``backends/python/`` gets ``libtriton_python.so``, ``triton_python_backend_utils.py`` and the
    ``triton_python_backend_stub`` matching ``sys.version_info``; a stub of another Python version makes
    the server hang until its timeout.
    """
    base = pytriton_dir()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = base / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise TritonStartError(f"nvidia-pytriton ships no python backend stub for Python {version}")
    cache = Path(cache or Path(tempfile.gettempdir()) / f"mri-triton-backends-{os.getuid()}-{version}")
    target = cache / "python"
    files = {"libtriton_python.so": base / "backends" / "python" / "libtriton_python.so",
             "triton_python_backend_utils.py": base / "backends" / "python" / "triton_python_backend_utils.py",
             "triton_python_backend_stub": stub}
    target.mkdir(parents=True, exist_ok=True)
    for name, src in files.items():
        dst = target / name
        if not dst.exists() or dst.stat().st_size != src.stat().st_size:
            tmp = dst.with_name(f".{name}.{os.getpid()}")
            shutil.copy2(src, tmp)
            tmp.replace(dst)
    return cache


def server_environment() -> dict[str, str]:
    """Environment of the server and its python stubs: the wheel's bundled libraries, this
    interpreter's libpython (not the system's) and this environment's site-packages (numpy, ONNX Runtime)."""
    env = dict(os.environ)
    libs = Path(pytriton.__file__).resolve().parents[1] / "nvidia_pytriton.libs"
    libdirs = [str(libs), sysconfig.get_config_var("LIBDIR") or ""]
    env["LD_LIBRARY_PATH"] = ":".join([d for d in libdirs if d] + [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p])
    env["PYTHONPATH"] = ":".join([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
                                 + [p for p in env.get("PYTHONPATH", "").split(":") if p])
    env.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    return env


def cleanup_shared_memory(prefix: str) -> int:
    """Remove ``/dev/shm/<prefix>*`` left by python backend stubs; returns how many were removed."""
    removed = 0
    for p in Path("/dev/shm").glob(f"{prefix}*"):
        try:
            p.unlink()
            removed += 1
        except OSError:
            pass
    return removed


_LOAD_ERROR = re.compile(r"failed to load '([^']+)' version (\d+): (.*)")


def load_errors(log_text: str) -> list[str]:
    """``"model 'x' version 1: cause"`` for every model Triton failed to load, from its log."""
    return [f"model {m.group(1)!r} version {m.group(2)}: {m.group(3).strip()}" for m in _LOAD_ERROR.finditer(log_text)]


class TritonServer:
    """A running tritonserver process (context manager; :meth:`stop` is idempotent)."""

    def __init__(self, settings: TritonSettings) -> None:
        self.settings = settings
        self.process: subprocess.Popen | None = None
        self.models: list[ModelEntry] = []
        self.shm_prefix = f"mri_triton_{os.getpid()}_{uuid.uuid4().hex[:8]}_"
        self._log_path: Path | None = None
        self._own_log = False
        self.backends: Path | None = None

    @property
    def http_url(self) -> str:
        return f"{self.settings.host}:{self.settings.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.settings.host}:{self.settings.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.metrics_port}/metrics"

    def command(self) -> list[str]:
        s = self.settings
        binary = s.binary or pytriton_dir() / "bin" / "tritonserver"
        cmd = [
            str(binary),
            f"--model-repository={Path(s.repository).resolve()}",
            f"--backend-directory={self.backends}",
            f"--http-address={s.host}", f"--http-port={s.http_port}",
            f"--grpc-address={s.host}", f"--grpc-port={s.grpc_port}",
            f"--metrics-address={s.host}", f"--metrics-port={s.metrics_port}",
            "--allow-gpu-metrics=false", "--pinned-memory-pool-byte-size=0", "--cuda-memory-pool-byte-size=0:0",
            "--exit-on-error=true", "--strict-readiness=true", "--disable-auto-complete-config",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            f"--log-verbose={s.log_verbose}",
        ]
        if s.model_config_name:
            cmd.append(f"--model-config-name={s.model_config_name}")
        return cmd

    def log_text(self) -> str:
        return self._log_path.read_text(errors="replace") if self._log_path and self._log_path.exists() else ""

    def start(self) -> TritonServer:
        s = self.settings
        self.models = check_repository(s.repository, s.model_config_name)
        self.backends = Path(s.backend_directory) if s.backend_directory else backend_directory()
        if s.model_config_name is None and not (self.backends / "onnxruntime").is_dir():
            raise TritonStartError(
                f"models {sorted(m.name for m in self.models)} use the onnxruntime backend on KIND_GPU (config.pbtxt), "
                f"which {self.backends} does not hold (the nvidia-pytriton wheel ships only the python backend): run "
                "them in the NGC Triton container (see Dockerfile) or start with model_config_name='cpu'")
        if s.log_file:
            self._log_path = Path(s.log_file)
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
        else:
            fd, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(fd)
            self._log_path, self._own_log = Path(name), True
        log.info("starting tritonserver (%s) with %d model(s): %s", s.model_config_name or "gpu", len(self.models),
                 ", ".join(f"{m.name} v{m.version}" for m in self.models))
        with open(self._log_path, "ab") as out:
            self.process = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                            env=server_environment(), start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:  # any failure, even Ctrl-C: stop the server process, re-raise
            self.stop()
            raise
        log.info("tritonserver ready: HTTP %s, gRPC %s, metrics %s", self.http_url, self.grpc_url, self.metrics_url)
        return self

    def _wait_ready(self) -> None:
        s = self.settings
        deadline = time.monotonic() + s.startup_timeout_s
        client = httpclient.InferenceServerClient(self.http_url, connection_timeout=2.0, network_timeout=5.0)
        process = self.process
        assert process is not None, "start() launches the process before it waits"
        try:
            while time.monotonic() < deadline:
                code = process.poll()
                if code is not None:
                    errors = load_errors(self.log_text())
                    cause = "; ".join(errors) if errors else self.log_text()[-2000:]
                    raise TritonStartError(f"tritonserver exited with code {code} before it was ready: {cause}")
                try:
                    if client.is_server_ready() and all(client.is_model_ready(m.name) for m in self.models):
                        return
                except Exception:  # noqa: BLE001 - not listening yet
                    pass
                time.sleep(0.25)
        finally:
            client.close()
        errors = load_errors(self.log_text())
        raise TritonStartError(
            f"tritonserver was not ready within {s.startup_timeout_s:.0f} s"
            + (f": {'; '.join(errors)}" if errors else f"; last log lines:\n{self.log_text()[-2000:]}"))

    def stop(self, timeout_s: float = 15.0) -> None:
        proc, self.process = self.process, None
        stop_process_group(proc, timeout_s)
        removed = cleanup_shared_memory(self.shm_prefix)
        if removed:
            log.info("removed %d shared-memory region(s) of the python backend", removed)
        if self._own_log and self._log_path is not None and proc is not None:
            self._own_log = False
            self._log_path.unlink(missing_ok=True)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
