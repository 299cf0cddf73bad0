"""Operations endpoints: liveness, readiness (no token), models with their cards, Prometheus metrics."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse, Response

from serving.api.auth import require_token
from serving.api.errors import ApiError
from serving.api.schemas import ERRORS, HealthOut, ModelDetail, ModelList, ReadyOut

router = APIRouter()

MODEL_NAME = r"^[A-Za-z0-9_.-]{1,128}$"


@router.get("/health/live", response_model=HealthOut, tags=["operations"],
            summary="Liveness: the API process answers (no token needed)")
async def live() -> dict:
    return {"status": "alive"}


@router.get("/health/ready", response_model=ReadyOut, tags=["operations"],
            summary="Readiness: Triton and the required models are ready (no token needed)",
            responses={503: {"model": ReadyOut, "description": "Triton or a model is not ready"}})
async def ready(request: Request):
    state = request.app.state
    ok, detail = await anyio.to_thread.run_sync(state.inference.readiness, state.settings.required_models)
    body = {"status": "ready" if ok else "not ready", **detail}
    return JSONResponse(body, status_code=200 if ok else 503)


def _versions(request: Request, name: str, entries) -> list[dict]:
    inference = request.app.state.inference
    out = []
    for m in sorted(entries, key=lambda m: (len(m.version), m.version)):
        out.append({"version": m.version, "state": m.state, "reason": m.reason or None,
                    "card": inference.card(name, m.version)})
    return out


@router.get("/v1/models", response_model=ModelList, tags=["models"], responses=ERRORS,
            summary="Models served by Triton, with their versions, states and model cards")
async def models(request: Request, _: str = Depends(require_token)):
    index = await anyio.to_thread.run_sync(lambda: request.app.state.inference.models(max_age_s=0))
    names = sorted({m.name for m in index})
    items = []
    for name in names:
        versions = _versions(request, name, [m for m in index if m.name == name])
        task = next((v["card"].get("task") for v in versions if v["card"]), None)
        items.append({"name": name, "task": task, "ready": any(v["state"] == "READY" for v in versions),
                      "versions": versions})
    return {"models": items}


@router.get("/v1/models/{name}", response_model=ModelDetail, tags=["models"], responses=ERRORS,
            summary="One model: versions, model cards, inputs/outputs and batch size")
async def model(request: Request, _: str = Depends(require_token), name: str = Path(..., pattern=MODEL_NAME)):
    inference = request.app.state.inference
    index = await anyio.to_thread.run_sync(lambda: inference.models(max_age_s=0))
    entries = [m for m in index if m.name == name]
    if not entries:
        raise ApiError(404, f"unknown model {name!r}", field="name", expected=f"one of {sorted({m.name for m in index})}",
                       code="unknown_model")
    versions = _versions(request, name, entries)
    info = None
    if any(v["state"] == "READY" for v in versions):
        info = await anyio.to_thread.run_sync(lambda: inference.model_info(name, max_age_s=0))
    task = next((v["card"].get("task") for v in versions if v["card"]), None)
    return {"name": name, "task": task, "ready": info is not None, "versions": versions,
            "inputs": (info or {}).get("inputs", []), "outputs": (info or {}).get("outputs", []),
            "max_batch_size": (info or {}).get("max_batch_size")}


@router.get("/metrics", tags=["operations"], responses=ERRORS | {200: {"content": {"text/plain": {}},
                                                                       "description": "Prometheus text format"}},
            summary="Prometheus metrics (bearer token required)", response_class=Response)
async def metrics(request: Request, _: str = Depends(require_token)):
    body, content_type = await anyio.to_thread.run_sync(request.app.state.metrics.render)
    return Response(body, media_type=content_type)
