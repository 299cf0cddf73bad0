"""`mri-api`: run the REST API with uvicorn, write example data, make tokens, dump the OpenAPI spec.

    mri-api serve --config configs/serving.yaml                       # Triton at triton.url
    mri-api serve --start-triton --port 8080                          # also start Triton (model_repository/)
    mri-api serve --ssl-certfile cert.pem --ssl-keyfile key.pem       # HTTPS
    mri-api examples --out examples/                                  # small files for the curl examples
    mri-api token                                                     # a new random token and its digest
    mri-api openapi --out docs/openapi.json
"""

from __future__ import annotations

import json
import logging
import secrets
from pathlib import Path

import typer
import uvicorn

from serving.api.app import create_app
from serving.api.logs import configure_logging
from serving.api.settings import ApiSettings, ConfigError, token_digest
from serving.triton import TritonServer, TritonSettings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
log = logging.getLogger("serving.api")

CONFIG_OPT = typer.Option(None, "--config", "-c", help="YAML file (see configs/serving.yaml).")
SET_OPT = typer.Option([], "--set", "-s", help="Override a key, e.g. --set limits.sync_max_slices=32.")


def _settings(config: Path | None, overrides: list[str], triton_url: str | None) -> ApiSettings:
    if triton_url:
        overrides = [*overrides, f"triton.url={triton_url}"]
    try:
        return ApiSettings.load(config, overrides)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from None


@app.command()
def serve(
    config: Path | None = CONFIG_OPT,
    set_: list[str] = SET_OPT,
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8080, min=0, max=65535, help="TCP port."),
    triton_url: str | None = typer.Option(None, help="host:port of Triton (overrides triton.url)."),
    ssl_certfile: Path | None = typer.Option(None, help="PEM certificate (chain): serve HTTPS."),
    ssl_keyfile: Path | None = typer.Option(None, help="PEM private key of the certificate."),
    ssl_keyfile_password: str | None = typer.Option(None, envvar="MRI_API_SSL_KEY_PASSWORD",
                                                    help="Password of the key (or MRI_API_SSL_KEY_PASSWORD)."),
    start_triton: bool = typer.Option(False, help="Start tritonserver with --model-repository first (CPU config)."),
    model_repository: Path = typer.Option(Path("model_repository"), help="With --start-triton: the repository."),
    triton_port: int = typer.Option(8000, help="With --start-triton: Triton's HTTP port (gRPC +1, metrics +2)."),
    timeout_keep_alive: int = typer.Option(30, help="Seconds an idle keep-alive connection stays open."),
) -> None:
    """Run the API with uvicorn (one process: jobs run in it; see docs/api.md for HTTPS and deployment)."""
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise typer.BadParameter("--ssl-certfile and --ssl-keyfile go together")
    for p in (ssl_certfile, ssl_keyfile):
        if p is not None and not p.is_file():
            raise typer.BadParameter(f"{p} does not exist")
    triton = None
    if start_triton:
        triton = TritonServer(TritonSettings(repository=model_repository, http_port=triton_port,
                                             grpc_port=triton_port + 1, metrics_port=triton_port + 2))
        set_ = [*set_, f"triton.model_repository={model_repository}"]
    settings = _settings(config, set_, triton_url)
    if triton is not None and not triton_url:
        url = triton.grpc_url if settings.triton.protocol == "grpc" else triton.http_url
        settings = _settings(config, set_, url)
    configure_logging(settings.logging.level, settings.logging.format)
    settings.jobs.permissions.apply_umask()  # job files are patient data: nothing this process writes is o+r
    try:
        if triton is not None:
            triton.start()
        scheme = "https" if ssl_certfile else "http"
        log.info("serving", extra={"url": f"{scheme}://{host}:{port}", "docs": f"{scheme}://{host}:{port}/docs"})
        uvicorn.run(create_app(settings), host=host, port=port, ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
                    ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None, ssl_keyfile_password=ssl_keyfile_password,
                    log_config=None, access_log=False, timeout_keep_alive=timeout_keep_alive, server_header=False)
    finally:
        if triton is not None:
            triton.stop()


@app.command()
def examples(out: Path = typer.Option(Path("examples"), help="Directory for the example files."),
             cache_dir: Path = typer.Option(Path(".cache/mrdata"), help="Phantom cache directory.")) -> None:
    """Write the small example files of the curl examples (k-space .npy/.npz/fastMRI/MRD/DICOM, T1w DICOM, NIfTI)."""
    from serving.api.examples import (
        write_examples,  # deferred: the phantom, ismrmrd and nibabel (~1.5 s) serve only this command
    )

    for name, path in write_examples(out, cache_dir=cache_dir).items():
        typer.echo(f"{name:<16} {path}")


@app.command()
def token() -> None:
    """Print a new random token (give it to the client) and its sha256 digest (for auth.tokens in the config)."""
    t = secrets.token_urlsafe(32)
    typer.echo(f"token:  {t}\ndigest: {token_digest(t)}")


@app.command()
def openapi(out: Path | None = typer.Option(None, help="Write here instead of stdout."),
            config: Path | None = CONFIG_OPT) -> None:
    """The OpenAPI document (JSON) of the API."""
    settings = ApiSettings.load(config, ["auth.enabled=false"], environ={})
    spec = json.dumps(create_app(settings).openapi(), indent=2)
    if out is None:
        typer.echo(spec)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(spec + "\n")


def main() -> None:
    app()
