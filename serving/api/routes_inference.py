"""``POST /v1/reconstruct`` and ``POST /v1/synthesize`` (synchronous) and their job-mode twins."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import anyio
from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, Response

from serving.api.auth import require_token
from serving.api.errors import ApiError
from serving.api.inputs import check_contrast, parse_recon, parse_synth
from serving.api.outputs import Rendered, negotiate
from serving.api.pipeline import ReconOptions, SynthOptions, reconstruct, synthesize
from serving.api.schemas import (
    RECON_HEADERS,
    SYNTH_HEADERS,
    UPLOAD_ERRORS,
    ErrorOut,
    JobList,
    JobOut,
    binary_responses,
    body_spec,
)
from serving.api.uploads import read_upload
from serving.client import UnknownModel, synthesis_model_name

__all__ = ["router"]

router = APIRouter()

OutputFormat = Literal["npy", "nifti", "png", "dicom", "dicom-multipart"]
ReconInputFormat = Literal["npy", "npz", "fastmri", "mrd", "dicom"]
SynthInputFormat = Literal["dicom", "nifti", "npy"]
MODEL = r"^[A-Za-z0-9_.-]{1,128}$"
_OUT_TYPES = ["application/x-npy", "application/x-nifti", "image/png", "application/zip", "multipart/related"]

RECON_BODY = body_spec(
    "Undersampled multi-coil k-space: .npy (complex64 [slices, coils, ky, kx] or [coils, ky, kx]), .npz "
    "('kspace', optional 'mask', 'maps'), fastMRI HDF5, ISMRMRD/MRD HDF5, or DICOM Raw Data instances (zip). "
    "Raw body (curl --data-binary @file) or multipart/form-data (file, optional mask/maps as .npy).",
    ["application/octet-stream", "application/x-npy", "application/x-npz", "application/x-hdf5", "application/zip"],
    multipart_related=True)
SYNTH_BODY = body_spec(
    "A source-contrast magnitude series: DICOM MR series (zip, one instance, several 'file' parts, or "
    "multipart/related), NIfTI (.nii / .nii.gz, slices along the third axis) or .npy float [slices, rows, cols].",
    ["application/octet-stream", "application/zip", "application/dicom", "application/x-nifti", "application/gzip",
     "application/x-npy"], multipart_related=True)


@dataclass(frozen=True)
class ReconQuery:
    format: str | None
    input_format: str | None
    model: str | None
    contrast: str | None
    slice: int | None
    pixel_spacing_mm: float | None
    slice_thickness_mm: float | None
    version: int | None = None


def recon_query(
    format: OutputFormat | None = Query(None, description="answer format (else from Accept; default npy)"),
    input_format: ReconInputFormat | None = Query(None, description="body format (else Content-Type / magic bytes)"),
    model: str | None = Query(None, pattern=MODEL, description="Triton model (default: the configured recon model)"),
    contrast: str | None = Query(None, max_length=40, description="contrast label of the data"),
    slice: int | None = Query(None, ge=0, le=100_000, description="format=png: preview this slice only"),
    pixel_spacing_mm: float | None = Query(None, gt=0, le=100, description="in-plane pixel spacing of the images"),
    slice_thickness_mm: float | None = Query(None, gt=0, le=1000, description="slice thickness / spacing"),
    version: int | None = Query(None, ge=1, le=1_000_000, description="model version to use (default: the newest; "
                                "GET /v1/models lists the versions with their model cards)"),
) -> ReconQuery:
    return ReconQuery(format, input_format, model, contrast, slice, pixel_spacing_mm, slice_thickness_mm, version)


@dataclass(frozen=True)
class SynthQuery:
    target: str
    source: str | None
    format: str | None
    input_format: str | None
    model: str | None
    slice: int | None


def synth_query(
    target: str = Query(..., max_length=40, description="contrast to synthesize"),
    source: str | None = Query(None, max_length=40, description="contrast of the input (DICOM: guessed if absent)"),
    format: OutputFormat | None = Query(None, description="answer format (default: dicom for DICOM input, nifti "
                                                          "for NIfTI input, npy for .npy input)"),
    input_format: SynthInputFormat | None = Query(None, description="body format (else Content-Type / magic bytes)"),
    model: str | None = Query(None, pattern=MODEL, description="Triton model (default synth_<source>_to_<target>)"),
    slice: int | None = Query(None, ge=0, le=100_000, description="format=png: preview this slice only"),
) -> SynthQuery:
    return SynthQuery(target, source, format, input_format, model, slice)


def _owner(digest: str) -> str:
    """Job owner tag: 16 hex digits of the token's digest (never the token)."""
    return digest[7:23] if digest.startswith("sha256:") else digest


def _response(r: Rendered) -> Response:
    return Response(r.body, media_type=r.media_type, headers={
        **r.headers, "Content-Disposition": f'attachment; filename="{r.filename}"'})


# -- reconstruction ----------------------------------------------------------------------------------
def _recon_setup(request: Request, q: ReconQuery) -> tuple[str, str, str | None]:
    settings = request.app.state.settings
    fmt = negotiate(q.format, request.headers.get("accept"), "npy")
    return fmt, q.model or settings.recon_model, check_contrast(q.contrast, "contrast")


def _recon_options(q: ReconQuery, fmt: str, model: str, contrast: str | None) -> ReconOptions:
    if q.slice is not None and fmt != "png":
        raise ApiError(422, "'slice' applies to format=png only", field="slice", expected="format=png",
                       code="invalid_parameter")
    return ReconOptions(model, fmt, q.slice, q.pixel_spacing_mm, q.slice_thickness_mm, contrast,
                        None if q.version is None else str(q.version))


@router.post("/v1/reconstruct", tags=["inference"], openapi_extra=RECON_BODY,
             responses=UPLOAD_ERRORS | binary_responses(_OUT_TYPES, "the reconstructed magnitude images",
                                                        RECON_HEADERS),
             summary="Reconstruct undersampled k-space (synchronous; up to limits.sync_max_slices slices)",
             response_class=Response)
async def reconstruct_sync(request: Request, _: str = Depends(require_token), q: ReconQuery = Depends(recon_query)):
    state = request.app.state
    fmt, model, contrast = _recon_setup(request, q)
    opts = _recon_options(q, fmt, model, contrast)
    await anyio.to_thread.run_sync(state.inference.require_model, model, opts.version)
    upload = await read_upload(request)
    req = await anyio.to_thread.run_sync(partial(parse_recon, upload, q.input_format, state.settings.limits,
                                                 contrast=contrast, sync=True))
    del upload
    rendered = await anyio.to_thread.run_sync(lambda: reconstruct(state.inference, req, opts))
    return _response(rendered)


# -- synthesis --------------------------------------------------------------------------------------
def _synth_setup(request: Request, q: SynthQuery) -> tuple[str, str | None]:
    target = check_contrast(q.target, "target")
    source = check_contrast(q.source, "source")
    assert target is not None  # a required query parameter
    return target, source


def _synth_options(request: Request, q: SynthQuery, req, target: str, source: str | None) -> SynthOptions:
    source = source or req.source
    if source is None:
        raise ApiError(422, "the source contrast is unknown: give it as ?source=", field="source",
                       expected="one of T1w, T2w, PD, FLAIR (could not be determined from the input)",
                       code="missing_field")
    if source == target:
        raise ApiError(422, f"source and target are both {target}", field="target",
                       expected="a contrast different from the source", code="invalid_parameter")
    default = {"dicom": "dicom", "nifti": "nifti", "npy": "npy"}[req.input_format]
    fmt = negotiate(q.format, request.headers.get("accept"), default)
    if q.slice is not None and fmt != "png":
        raise ApiError(422, "'slice' applies to format=png only", field="slice", expected="format=png",
                       code="invalid_parameter")
    return SynthOptions(q.model or synthesis_model_name(source, target), fmt, source, target, q.slice)


async def _require_synth_model(request: Request, model: str | None, target: str, source: str | None) -> None:
    """404 naming ``target`` (or ``model`` when given) when the wanted direction has no model in Triton;
    nothing to check yet when neither the model nor the source contrast is known."""
    if model is None:
        if source is None:
            return
        model = synthesis_model_name(source, target)
    name = model
    try:
        await anyio.to_thread.run_sync(request.app.state.inference.require_model, name)
    except UnknownModel:
        index = await anyio.to_thread.run_sync(request.app.state.inference.models)
        synth = sorted({m.name for m in index if m.name.startswith("synth_")})
        raise ApiError(404, f"no synthesis model {name!r} in the repository", field="model" if model else "target",
                       expected=f"one of the served synthesis models: {', '.join(synth) or 'none'}",
                       code="unknown_model") from None


@router.post("/v1/synthesize", tags=["inference"], openapi_extra=SYNTH_BODY,
             responses=UPLOAD_ERRORS | binary_responses(_OUT_TYPES, "the synthesized series", SYNTH_HEADERS),
             summary="Synthesize a target contrast from a source series (synchronous)", response_class=Response)
async def synthesize_sync(request: Request, _: str = Depends(require_token), q: SynthQuery = Depends(synth_query)):
    state = request.app.state
    target, source = _synth_setup(request, q)
    await _require_synth_model(request, q.model, target, source)
    upload = await read_upload(request)
    req = await anyio.to_thread.run_sync(partial(parse_synth, upload, q.input_format, state.settings.limits, sync=True))
    del upload
    opts = _synth_options(request, q, req, target, source)
    await _require_synth_model(request, q.model, target, opts.source)
    rendered = await anyio.to_thread.run_sync(lambda: synthesize(state.inference, req, opts))
    return _response(rendered)


# -- jobs -------------------------------------------------------------------------------------------
def _accepted(job) -> JSONResponse:
    return JSONResponse(job.public(), status_code=202, headers={"Location": f"/v1/jobs/{job.id}"})


async def _receive_job(request: Request, kind: str, owner: str, params: dict, parse):
    state = request.app.state
    state.jobs.check_capacity()
    await anyio.to_thread.run_sync(state.job_store.cleanup, state.settings.jobs.keep_seconds)
    job = state.job_store.new(kind, owner, params)
    d = state.job_store.path(job.id)
    try:
        upload = await read_upload(request, d / "input")
        job.input = {"files": [p.name for p in upload.files if isinstance(p, Path)], "parts": sorted(upload.parts),
                     "content_type": upload.content_type, "related": upload.multipart_related,
                     "bytes": await anyio.to_thread.run_sync(upload.nbytes)}
        parsed = await anyio.to_thread.run_sync(lambda: parse(upload, d))
        return job, parsed
    except BaseException:  # any failure, even cancellation: drop the half-made job, re-raise
        state.job_store.delete(job.id)
        raise


def _submit(state, job, parsed) -> None:
    try:
        state.jobs.submit(job, parsed)
    except BaseException:  # 429 when the queue filled up during the upload: no job is left behind
        state.job_store.delete(job.id)
        raise


_JOB_RESPONSES = UPLOAD_ERRORS | {202: {"model": JobOut, "description": "job accepted; poll the Location URL"},
                                  429: {"model": ErrorOut, "description": "too many queued jobs"}}


@router.post("/v1/jobs/reconstruct", tags=["jobs"], openapi_extra=RECON_BODY, status_code=202,
             responses=_JOB_RESPONSES, response_model=JobOut,
             summary="Submit a reconstruction job (large volumes): 202 + job URL")
async def reconstruct_job(request: Request, owner: str = Depends(require_token), q: ReconQuery = Depends(recon_query)):
    state = request.app.state
    fmt, model, contrast = _recon_setup(request, q)
    opts = _recon_options(q, fmt, model, contrast)  # checks the parameters before the upload is read
    await anyio.to_thread.run_sync(state.inference.require_model, model, opts.version)
    params = {"model": model, "format": fmt, "input_format": q.input_format, "contrast": contrast, "slice": q.slice,
              "pixel_spacing_mm": q.pixel_spacing_mm, "slice_thickness_mm": q.slice_thickness_mm,
              "version": opts.version}
    job, parsed = await _receive_job(request, "reconstruct", _owner(owner), params, lambda u, d: parse_recon(
        u, q.input_format, state.settings.limits, contrast=contrast, sync=False, scratch=d))
    job.params["input_format"] = parsed.input_format
    _submit(state, job, parsed)
    return _accepted(job)


@router.post("/v1/jobs/synthesize", tags=["jobs"], openapi_extra=SYNTH_BODY, status_code=202,
             responses=_JOB_RESPONSES, response_model=JobOut,
             summary="Submit a synthesis job: 202 + job URL")
async def synthesize_job(request: Request, owner: str = Depends(require_token), q: SynthQuery = Depends(synth_query)):
    state = request.app.state
    target, source = _synth_setup(request, q)
    await _require_synth_model(request, q.model, target, source)
    job, parsed = await _receive_job(request, "synthesize", _owner(owner), {}, lambda u, d: parse_synth(
        u, q.input_format, state.settings.limits, sync=False))
    try:
        opts = _synth_options(request, q, parsed, target, source)
        await _require_synth_model(request, q.model, target, opts.source)
    except BaseException:  # any failure, even cancellation: drop the half-made job, re-raise
        state.job_store.delete(job.id)
        raise
    job.params = {"model": opts.model, "format": opts.format, "input_format": parsed.input_format,
                  "source": opts.source, "target": opts.target, "slice": opts.slice_index}
    _submit(state, job, parsed)
    return _accepted(job)


@router.get("/v1/jobs", tags=["jobs"], response_model=JobList, responses=UPLOAD_ERRORS,
            summary="The caller's jobs (newest first)")
async def list_jobs(request: Request, owner: str = Depends(require_token)):
    jobs = await anyio.to_thread.run_sync(request.app.state.job_store.all)
    mine = sorted((j for j in jobs if j.owner == _owner(owner)), key=lambda j: -j.created_at)
    return {"jobs": [j.public() for j in mine]}


@router.get("/v1/jobs/{job_id}", tags=["jobs"], response_model=JobOut, responses=UPLOAD_ERRORS,
            summary="State of a job (queued, running with progress, succeeded, failed with the error)")
async def get_job(request: Request, owner: str = Depends(require_token), job_id: str = PathParam(...)):
    job = request.app.state.job_store.get(job_id, _owner(owner))
    return job.public()


@router.get("/v1/jobs/{job_id}/result", tags=["jobs"], response_class=Response,
            responses=UPLOAD_ERRORS | {409: {"model": ErrorOut, "description": "the job has not succeeded (yet)"}}
            | binary_responses(_OUT_TYPES, "the job's answer, in the format asked at submission"),
            summary="Download the result of a succeeded job")
async def job_result(request: Request, owner: str = Depends(require_token), job_id: str = PathParam(...)):
    store = request.app.state.job_store
    job = store.get(job_id, _owner(owner))
    if job.status != "succeeded" or not job.result:
        err = job.error or {}
        raise ApiError(409, f"job {job.id} is {job.status}" + (f": {err.get('error')}" if err else ""),
                       field="job_id", expected="a succeeded job (poll GET /v1/jobs/{job_id})",
                       got=job.status, code=f"job_{job.status}")
    path = store.path(job.id) / job.result["file"]
    if not path.is_file():
        raise ApiError(404, "the job's result was removed", field="job_id", expected="a job within jobs.keep_seconds",
                       code="result_gone")
    headers = dict(job.result.get("headers") or {})
    return FileResponse(path, media_type=job.result["media_type"], filename=job.result["filename"], headers=headers)


@router.delete("/v1/jobs/{job_id}", tags=["jobs"], status_code=204, response_class=Response,
               responses=UPLOAD_ERRORS | {409: {"model": ErrorOut, "description": "the job is running"}},
               summary="Delete a job and its files (a queued job is cancelled)")
async def delete_job(request: Request, owner: str = Depends(require_token), job_id: str = PathParam(...)):
    store = request.app.state.job_store
    job = store.get(job_id, _owner(owner))
    if job.status == "running":
        raise ApiError(409, "the job is running; delete it when it has finished", field="job_id",
                       expected="a job that is not running", got=job.status, code="job_running")
    store.delete(job.id)
    return Response(status_code=204)

