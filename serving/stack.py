"""``make run``: Triton, the REST API and the DICOM node together, on the shipped model repository.

    python -m serving.stack                      # CPU: the wheel's tritonserver + python backend
    python -m serving.stack --gpu                # GPU host / NGC container: config.pbtxt (onnxruntime, KIND_GPU)

Triton runs through :class:`serving.triton.TritonServer`; the REST API (uvicorn) and the DICOM node run as
child processes pointed at it. The command prints where each listens, and stops everything on Ctrl-C or
SIGTERM (a child that dies stops the stack with its exit code, it is not silently left out).
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import typer

from serving.logs import configure_logging
from serving.triton import TritonServer, TritonSettings, TritonStartError

app = typer.Typer(add_completion=False, help=__doc__)
log = logging.getLogger("mri-stack")


def _child(name: str, cmd: list[str], env: dict) -> subprocess.Popen:
    log.info("starting %s: %s", name, " ".join(cmd))
    return subprocess.Popen(cmd, env=env, start_new_session=True)


def api_token(path: Path) -> Path:
    """A bearer token for the REST API, created once (0600) at ``path`` and reused; returns the path.

    Only used when neither ``MRI_API_TOKENS`` nor ``MRI_API_TOKENS_FILE`` is set: a local ``make run``
    then works without set-up, and the token never appears in logs.
    """
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32) + "\n")
    return path


def _stop(children: dict[str, subprocess.Popen]) -> None:
    for proc in children.values():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    for proc in children.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@app.command()
def main(
    repository: Path = typer.Option(Path("model_repository"), help="Triton model repository."),
    host: str = typer.Option("127.0.0.1", help="Address every component listens on."),
    triton_http_port: int = typer.Option(8000, help="Triton HTTP port."),
    triton_grpc_port: int = typer.Option(8001, help="Triton gRPC port."),
    triton_metrics_port: int = typer.Option(8002, help="Triton metrics port."),
    api_port: int = typer.Option(8080, help="REST API port."),
    api_config: Path = typer.Option(Path("configs/serving.yaml"), help="REST API configuration."),
    dicom_port: int = typer.Option(11112, help="DICOM node port."),
    dicom_config: Path = typer.Option(Path("configs/dicom_node.yaml"), help="DICOM node configuration."),
    dicom_storage: Path = typer.Option(None, help="Override the DICOM node's storage_dir (spool, queue, results)."),
    token_file: Path = typer.Option(Path(".cache/api-token"), help="Token file created for the REST API when "
                                    "MRI_API_TOKENS / MRI_API_TOKENS_FILE are not set."),
    gpu: bool = typer.Option(False, help="Serve config.pbtxt (onnxruntime backend, KIND_GPU) with --triton-binary."),
    triton_binary: Path = typer.Option(None, help="tritonserver binary (default: the nvidia-pytriton wheel's)."),
    triton_backends: Path = typer.Option(None, help="Triton backend directory (with --triton-binary)."),
) -> None:
    """Start Triton, then the REST API and the DICOM node; print the endpoints; run until stopped."""
    configure_logging("INFO", "text")
    settings = TritonSettings(repository=repository, host=host, http_port=triton_http_port, grpc_port=triton_grpc_port,
                              metrics_port=triton_metrics_port, model_config_name=None if gpu else "cpu",
                              binary=triton_binary, backend_directory=triton_backends)
    server = TritonServer(settings)
    try:
        server.start()
    except (TritonStartError, ValueError) as exc:
        typer.echo(f"error: Triton did not start: {exc}", err=True)
        raise typer.Exit(1) from None
    env = dict(os.environ)
    token_note = "tokens from MRI_API_TOKENS / MRI_API_TOKENS_FILE"
    if not env.get("MRI_API_TOKENS") and not env.get("MRI_API_TOKENS_FILE"):
        env["MRI_API_TOKENS_FILE"] = str(api_token(token_file))
        token_note = f"bearer token in {token_file}: export MRI_API_TOKEN=$(cat {token_file})"
    children: dict[str, subprocess.Popen] = {}
    stop: dict[str, object] = {"signal": None}

    def handle(signum, _frame):
        stop["signal"] = signum

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    code = 0
    try:
        children["REST API"] = _child("REST API", [
            sys.executable, "-m", "serving.api", "serve", "--config", str(api_config), "--host", host,
            "--port", str(api_port), "--triton-url", server.http_url], env)
        children["DICOM node"] = _child("DICOM node", [
            sys.executable, "-m", "dicom_node", "serve", "--config", str(dicom_config), "--host", host,
            "--port", str(dicom_port), "--inference-url", server.http_url,
            *(["--storage-dir", str(dicom_storage)] if dicom_storage else [])], env)
        typer.echo("\n".join([
            "MRI service running:",
            f"  Triton       HTTP {server.http_url}  gRPC {server.grpc_url}  metrics {server.metrics_url}",
            f"               models: {', '.join(f'{m.name} v{m.version}' for m in server.models)}",
            f"  REST API     http://{host}:{api_port}  (OpenAPI docs: http://{host}:{api_port}/docs; {token_note})",
            f"  DICOM node   {host}:{dicom_port}  AE titles of the routes in {dicom_config}",
            "Stop with Ctrl-C.",
        ]))
        while stop["signal"] is None:
            for name, proc in children.items():
                if proc.poll() is not None:
                    log.error("%s exited with code %s; stopping the stack", name, proc.returncode)
                    code = proc.returncode or 1
                    stop["signal"] = "child"
            if server.process is None or server.process.poll() is not None:
                log.error("tritonserver exited; stopping the stack")
                code, stop["signal"] = 1, "triton"
            time.sleep(0.5)
    finally:
        _stop(children)
        server.stop()
    raise typer.Exit(code)


if __name__ == "__main__":
    app()
