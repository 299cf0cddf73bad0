"""``make run``: Orthanc (the embedded PACS and viewer), Triton, the REST API and the DICOM node, supervised.

    python -m serving.stack                      # CPU: the wheel's tritonserver + python backend
    python -m serving.stack --gpu                # GPU host / NGC container: config.pbtxt (onnxruntime, KIND_GPU)
    python -m serving.stack --no-orthanc         # without the embedded PACS (the node config's destinations as they are)

Orthanc runs through :class:`serving.orthanc.OrthancServer` (config, storage and a generated password under
``.cache/orthanc/``) and is both the DICOM node's default destination (the node destination named by
``--pacs-destination`` is pointed at it) and a source that sends to the node (every route's called AE title is a
modality of Orthanc: ``POST /modalities/RECON/store``). Triton runs through :class:`serving.triton.TritonServer`;
the REST API (uvicorn) and the DICOM node run as child processes pointed at it. Every service runs in its own
process group under :class:`serving.supervisor.Supervisor`: one that exits is logged and restarted with
back-off while the others keep serving. The command prints where each listens and stops everything, and
exits, only on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import typer
import yaml

from mrcore.config import ConfigError, read_config_file
from mrcore.durable import write_durable
from serving.logs import configure_logging
from serving.orthanc import (
    Modality,
    OrthancServer,
    OrthancSettings,
    OrthancStartError,
    available_plugins,
)
from serving.supervisor import ChildProcess, Service, Supervisor
from serving.triton import TritonServer, TritonSettings, TritonStartError

app = typer.Typer(add_completion=False, help=__doc__)
log = logging.getLogger("mri-stack")

#: The embedded Orthanc's HTTP user; its password is generated into ``<orthanc-dir>/password``.
ORTHANC_USER = "mri"


def secret_file(path: Path) -> Path:
    """A random secret, created once (0600) at ``path`` and reused; returns the path. The secret itself is
    never printed or logged."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32) + "\n")
    return path


def api_token(path: Path) -> Path:
    """A bearer token for the REST API, created once (0600) at ``path`` and reused; returns the path.

    Only used when neither ``MRI_API_TOKENS`` nor ``MRI_API_TOKENS_FILE`` is set: a local ``make run``
    then works without set-up, and the token never appears in logs.
    """
    return secret_file(path)


def _loopback(host: str) -> str:
    """The address a local peer uses to reach a listener bound to ``host`` (a wildcard -> 127.0.0.1)."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


def orthanc_modalities(node_config: dict[str, Any], host: str, port: int) -> dict[str, Modality]:
    """Orthanc's DICOM modalities for the node: one per route (named by its called AE title, so that
    ``POST /modalities/SYNTH_T2/store`` sends to that route) and the node's own AE title (the calling AE of
    its deliveries, which a restricted Orthanc must know)."""
    names = [r.get("called_ae_title") for r in node_config.get("routes") or [] if isinstance(r, dict)]
    names.append(node_config.get("ae_title", "MRI_NODE"))
    return {str(n): Modality(str(n), _loopback(host), port) for n in names if n}


def node_config_for(node_config: dict[str, Any], destination: str, orthanc: OrthancSettings) -> dict[str, Any]:
    """A copy of the node's configuration whose ``destination`` is the embedded Orthanc and whose
    ``allowed_peers`` (when it restricts peers) admits Orthanc's AE title from 127.0.0.1."""
    cfg = yaml.safe_load(yaml.safe_dump(node_config))  # a deep copy
    destinations = cfg.get("destinations")
    if not isinstance(destinations, dict) or destination not in destinations:
        known = sorted(destinations) if isinstance(destinations, dict) else []
        raise ConfigError(f"destinations.{destination}: the node configuration has no destination {destination!r} "
                          f"to point at the embedded Orthanc (--pacs-destination; known: {known})")
    destinations[destination] = {"ae_title": orthanc.ae_title, "host": "127.0.0.1", "port": orthanc.dicom_port}
    peers = cfg.get("allowed_peers")
    if isinstance(peers, list) and not any(isinstance(p, dict) and p.get("ae_title") == orthanc.ae_title
                                           for p in peers):
        peers.append({"ae_title": orthanc.ae_title, "hosts": ["127.0.0.1"]})
    return cfg


def write_private(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` crash-safely with mode 0600 in a 0700 directory (it may name hosts and ports of
    the site, and the PACS it delivers patient data to)."""
    write_durable(path, text, mode=0o600, dir_mode=0o700)
    path.parent.chmod(0o700)  # also when the directory was there before
    return path


def triton_service(server: TritonServer) -> Service:
    """Triton as a supervised service: a restart cleans up the dead server's shared memory first."""

    def start() -> subprocess.Popen:
        server.stop()
        server.start()
        assert server.process is not None, "TritonServer.start() leaves a running process"
        return server.process

    return Service("Triton", start, server.stop)


def orthanc_service(server: OrthancServer) -> Service:
    """Orthanc as a supervised service (``start`` returns once its REST API answers)."""

    def start() -> subprocess.Popen:
        server.start()
        assert server.process is not None, "OrthancServer.start() leaves a running process"
        return server.process

    return Service("Orthanc", start, server.stop)


@app.command()
def main(
    repository: Path = typer.Option(Path("model_repository"), help="Triton model repository."),
    host: str = typer.Option("127.0.0.1", help="Address the REST API, the DICOM node and Triton listen on."),
    triton_http_port: int = typer.Option(8000, envvar="MRI_TRITON_HTTP_PORT", help="Triton HTTP port."),
    triton_grpc_port: int = typer.Option(8001, envvar="MRI_TRITON_GRPC_PORT", help="Triton gRPC port."),
    triton_metrics_port: int = typer.Option(8002, envvar="MRI_TRITON_METRICS_PORT", help="Triton metrics port."),
    api_port: int = typer.Option(8080, envvar="MRI_API_PORT", help="REST API port."),
    api_config: Path = typer.Option(Path("configs/serving.yaml"), help="REST API configuration."),
    dicom_port: int = typer.Option(11112, envvar="MRI_DICOM_PORT", help="DICOM node port."),
    dicom_config: Path = typer.Option(Path("configs/dicom_node.yaml"), help="DICOM node configuration."),
    dicomweb_port: int = typer.Option(8081, envvar="MRI_DICOMWEB_PORT", min=0,
                                      help="The node's DICOMweb STOW-RS listener (bearer token of the REST API); 0: off."),
    dicom_storage: Path = typer.Option(None, help="Override the DICOM node's storage_dir (spool, queue, results)."),
    token_file: Path = typer.Option(Path(".cache/api-token"), help="Token file created for the REST API when "
                                    "MRI_API_TOKENS / MRI_API_TOKENS_FILE are not set."),
    orthanc: bool = typer.Option(True, help="Start the embedded Orthanc (PACS and web viewer)."),
    orthanc_http_port: int = typer.Option(8042, envvar="MRI_ORTHANC_HTTP_PORT", help="Orthanc HTTP port."),
    orthanc_dicom_port: int = typer.Option(4242, envvar="MRI_ORTHANC_DICOM_PORT", help="Orthanc DICOM port."),
    orthanc_dir: Path = typer.Option(Path(".cache/orthanc"), help="Orthanc's config, storage, log and password."),
    pacs_destination: str = typer.Option("pacs", help="The node destination pointed at the embedded Orthanc."),
    state_dir: Path = typer.Option(Path(".cache/stack"), help="Where the stack writes the node configuration "
                                   "it runs (the given one, its PACS destination pointed at Orthanc)."),
    backoff_max: float = typer.Option(30.0, help="Longest wait (s) before restarting a crashed service."),
    gpu: bool = typer.Option(False, help="Serve config.pbtxt (onnxruntime backend, KIND_GPU) with --triton-binary."),
    triton_binary: Path = typer.Option(None, help="tritonserver binary (default: the nvidia-pytriton wheel's)."),
    triton_backends: Path = typer.Option(None, help="Triton backend directory (with --triton-binary)."),
) -> None:
    """Start Orthanc, Triton, the REST API and the DICOM node; print the endpoints; restart what crashes."""
    configure_logging("INFO", "text")
    services: list[Service] = []
    lines: list[str] = []
    node_config_path = dicom_config
    if orthanc:
        try:
            raw = read_config_file(dicom_config)
            plugins = available_plugins()
            password = secret_file(orthanc_dir / "password").read_text().strip()
            settings = OrthancSettings(directory=orthanc_dir, http_port=orthanc_http_port,
                                       dicom_port=orthanc_dicom_port, users={ORTHANC_USER: password},
                                       modalities=orthanc_modalities(raw, host, dicom_port), plugins=plugins)
            node_config_path = write_private(state_dir / "dicom_node.yaml", yaml.safe_dump(
                node_config_for(raw, pacs_destination, settings), sort_keys=False))
        except (ConfigError, FileNotFoundError) as exc:
            typer.echo(f"error: embedded Orthanc: {exc}", err=True)
            raise typer.Exit(1) from None
        pacs = OrthancServer(settings)
        services.append(orthanc_service(pacs))
        lines += [f"  Orthanc      {pacs.explorer_url}  (user {ORTHANC_USER}, password in {orthanc_dir / 'password'})",
                  f"               DICOM {settings.ae_title}@127.0.0.1:{orthanc_dicom_port}; sends to the node as "
                  f"modalities {', '.join(sorted(settings.modalities))}; storage {orthanc_dir / 'db'}"]
    server = TritonServer(TritonSettings(
        repository=repository, host=host, http_port=triton_http_port, grpc_port=triton_grpc_port,
        metrics_port=triton_metrics_port, model_config_name=None if gpu else "cpu", binary=triton_binary,
        backend_directory=triton_backends))
    services.append(triton_service(server))
    env = dict(os.environ)
    token_note = "tokens from MRI_API_TOKENS / MRI_API_TOKENS_FILE"
    if not env.get("MRI_API_TOKENS") and not env.get("MRI_API_TOKENS_FILE"):
        env["MRI_API_TOKENS_FILE"] = str(api_token(token_file))
        token_note = f"bearer token in {token_file}: export MRI_API_TOKEN=$(cat {token_file})"
    services.append(ChildProcess("REST API", [
        sys.executable, "-m", "serving.api", "serve", "--config", str(api_config), "--host", host,
        "--port", str(api_port), "--triton-url", server.http_url], env))
    services.append(ChildProcess("DICOM node", [
        sys.executable, "-m", "dicom_node", "serve", "--config", str(node_config_path), "--host", host,
        "--port", str(dicom_port), "--inference-url", server.http_url,
        *(["--dicomweb-port", str(dicomweb_port)] if dicomweb_port else []),
        *(["--storage-dir", str(dicom_storage)] if dicom_storage else [])], env))
    supervisor = Supervisor(services, backoff_max_s=backoff_max)
    _run(supervisor, lambda: "\n".join([
        "MRI service running:",
        f"  Triton       HTTP {server.http_url}  gRPC {server.grpc_url}  metrics {server.metrics_url}",
        f"               models: {', '.join(f'{m.name} v{m.version}' for m in server.models)}",
        f"  REST API     http://{host}:{api_port}  (OpenAPI docs: http://{host}:{api_port}/docs; {token_note})",
        f"  DICOM node   {host}:{dicom_port}  AE titles of the routes in {dicom_config}",
        *([f"               DICOMweb STOW-RS http://{host}:{dicomweb_port}/studies (the REST API's bearer token)"]
          if dicomweb_port else []),
        *lines,
        "A service that exits is restarted (at once, then after 1, 2, 4 ... s if it keeps exiting). Stop with Ctrl-C.",
    ]))


def _run(supervisor: Supervisor, banner) -> None:
    """Start the supervisor, print ``banner()``, and wait for SIGINT/SIGTERM; then stop everything."""
    stop = threading.Event()
    starting = [True]

    def handle(_signum, _frame):
        stop.set()
        if starting[0]:  # abort a start in progress (Triton may take a minute to load its models)
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    try:
        try:
            supervisor.start()
        except (TritonStartError, OrthancStartError, ValueError, OSError) as exc:
            typer.echo(f"error: the stack did not start: {exc}", err=True)
            raise typer.Exit(1) from None
        starting[0] = False
        typer.echo(banner())
        sys.stdout.flush()
        while not stop.wait(0.5):
            pass
        log.info("stopping the stack")
    except KeyboardInterrupt:  # a signal during the start
        log.info("stopping the stack (interrupted while starting)")
    finally:
        supervisor.stop()


if __name__ == "__main__":
    app()
