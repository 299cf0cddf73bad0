"""``create_app(settings)``: the FastAPI application (run it with uvicorn, see :mod:`serving.api.cli`).

Endpoints (OpenAPI at ``/docs``, ``/openapi.json``)::

    GET    /health/live                 liveness (no token)
    GET    /health/ready                Triton + required models ready (no token)
    GET    /v1/models                   models, versions, states, model cards
    GET    /v1/models/{name}            one model: versions, cards, inputs/outputs, max batch
    POST   /v1/reconstruct              k-space -> images (synchronous)
    POST   /v1/synthesize               source series -> target contrast (synchronous)
    POST   /v1/jobs/reconstruct         the same as a job: 202 + Location
    POST   /v1/jobs/synthesize
    GET    /v1/jobs                     the caller's jobs
    GET    /v1/jobs/{job_id}            job state and progress
    GET    /v1/jobs/{job_id}/result     download the answer
    DELETE /v1/jobs/{job_id}
    GET    /metrics                     Prometheus (token required)

For ``uvicorn --factory serving.api.app:app_from_env``: settings from ``MRI_API_CONFIG`` (YAML path) and the
``MRI_API_*`` environment variables.
"""

from __future__ import annotations

import logging
import os
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from mrcore.data.base import CONTRASTS
from serving.api.errors import install_handlers
from serving.api.inference import Inference
from serving.api.jobs import JobRunner, JobStore
from serving.api.logs import configure_logging
from serving.api.metrics import Metrics
from serving.api.middleware import RequestContext
from serving.api.routes_inference import router as inference_router
from serving.api.routes_ops import router as ops_router
from serving.api.settings import ApiSettings

__all__ = ["app_from_env", "create_app"]

log = logging.getLogger("serving.api")

DESCRIPTION = """
MRI reconstruction and contrast synthesis through NVIDIA Triton. The API validates and converts; the
models run in Triton.

* **Authentication**: `Authorization: Bearer <token>` on every endpoint except `/health/*`
  (401 without a token, 403 with an unknown one).
* **Errors**: every 4xx/5xx answer is JSON `{"error", "field", "expected", "got", "status", "code", "request_id"}`.
* **Formats**: request bodies are raw files (`curl --data-binary @file`) or `multipart/form-data`
  (`curl -F file=@...`); answers are chosen with `?format=` or `Accept`.
* **Large volumes**: `POST /v1/jobs/...` answers 202 with a job URL; poll it, then download `/result`.
"""


def repository_models(repository: Path | None) -> list[str]:
    """Names of the models in a Triton model repository (directories with a ``config.pbtxt``), sorted."""
    if repository is None or not Path(repository).is_dir():
        return []
    return sorted(d.name for d in Path(repository).iterdir() if (d / "config.pbtxt").is_file())


def _with_enums(app: FastAPI, models: list[str]):
    """``app.openapi`` with enums where the API accepts a closed set: ``contrast``, ``source`` and ``target`` (the
    contrasts of :data:`mrcore.data.base.CONTRASTS`), and, when the repository's models are known, ``model`` of
    reconstruction (no ``synth_`` prefix) and synthesis (``synth_`` prefix) operations and ``name`` of
    ``/v1/models/{name}``."""
    plain = app.openapi
    synth = [m for m in models if m.startswith("synth_")]
    recon = [m for m in models if not m.startswith("synth_")]

    def values(path: str, name: str) -> list[str] | None:
        if name in ("contrast", "source", "target"):
            return list(CONTRASTS)
        if name == "model":
            return (synth if "synth" in path else recon) or None
        if name == "name" and path == "/v1/models/{name}":
            return models or None
        return None

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = plain()
        for path, ops in schema.get("paths", {}).items():
            for op in ops.values():
                for param in op.get("parameters", []) if isinstance(op, dict) else []:
                    enum = values(path, param.get("name", ""))
                    if enum:
                        sch = param.get("schema", {})
                        string = next((a for a in sch.get("anyOf", []) if a.get("type") == "string"), sch)
                        string["enum"] = enum
                        string.pop("pattern", None)
                        string.pop("maxLength", None)
        app.openapi_schema = schema
        return schema

    return openapi


def create_app(settings: ApiSettings) -> FastAPI:
    """The API for ``settings`` (tokens, Triton URL, limits, job directory...)."""
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await app.state.jobs.start()
        log.info("API started", extra={"triton": settings.triton.url, "protocol": settings.triton.protocol,
                                       "jobs_dir": str(settings.jobs.directory)})
        try:
            yield
        finally:
            await app.state.jobs.stop()
            app.state.inference.close()

    app = FastAPI(title="MRI reconstruction and synthesis API", version="1.0.0", description=DESCRIPTION,
                  lifespan=lifespan, docs_url="/docs" if settings.docs else None,
                  redoc_url="/redoc" if settings.docs else None,
                  openapi_url="/openapi.json" if settings.docs else None)
    store = JobStore(settings.jobs.directory, settings.jobs.permissions)
    metrics = Metrics(job_counts=store.counts)
    inference = Inference(settings.triton.url, settings.triton.protocol, settings.triton.timeout_s,
                          concurrency=settings.limits.inference_concurrency,
                          chunk_slices=settings.jobs.chunk_slices, model_repository=settings.triton.model_repository,
                          metrics=metrics, quality=settings.quality)
    app.state.settings = settings
    app.state.token_digests = settings.auth.digests()
    app.state.metrics = metrics
    app.state.inference = inference
    app.state.job_store = store
    app.state.jobs = JobRunner(store, inference, settings)

    install_handlers(app)
    app.include_router(ops_router)
    app.include_router(inference_router)
    # the OpenAPI document lists the repository's models (Triton serves the same repository) and the contrasts
    app.openapi = _with_enums(app, repository_models(settings.triton.model_repository))  # type: ignore[method-assign]

    if settings.cors.allow_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors.allow_origins), allow_credentials=False,
                           allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "Accept", "X-Request-ID"],
                           expose_headers=["X-Request-ID", "Location", "X-Model", "X-Model-Version",
                                           "X-Recon-Quality"])
    app.add_middleware(RequestContext, metrics=metrics, max_body_bytes=settings.limits.max_body_bytes,
                       max_job_body_bytes=settings.limits.max_job_body_bytes)
    return app


def app_from_env() -> FastAPI:
    """App factory for ``uvicorn --factory``: ``MRI_API_CONFIG`` (optional YAML) + ``MRI_API_*`` variables."""
    path = os.environ.get("MRI_API_CONFIG")
    settings = ApiSettings.load(Path(path) if path else None)
    configure_logging(settings.logging.level, settings.logging.format)
    settings.jobs.permissions.apply_umask()  # job files are patient data: nothing this process writes is o+r
    return create_app(settings)
