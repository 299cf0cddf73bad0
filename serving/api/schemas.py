"""OpenAPI schemas of the JSON answers and the binary request bodies (what /docs shows)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorOut(BaseModel):
    error: str = Field(description="what was wrong")
    field: str | None = Field(None, description="query parameter, header, body part or DICOM attribute at fault")
    expected: str | None = Field(None, description="what would have been accepted")
    got: str | None = Field(None, description="what came (shape, dtype, value)")
    status: int
    code: str = Field(description="machine-readable kind: invalid_dtype, shape_mismatch, not_finite, unauthorized...")
    request_id: str | None = None


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "missing bearer token"},
    403: {"model": ErrorOut, "description": "the token is not valid"},
    404: {"model": ErrorOut, "description": "unknown model, job or endpoint"},
    422: {"model": ErrorOut, "description": "invalid input; `field` names what is wrong"},
    503: {"model": ErrorOut, "description": "Triton is unavailable; retry later"},
}
UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = ERRORS | {
    400: {"model": ErrorOut, "description": "malformed body (multipart without a boundary, truncated upload)"},
    406: {"model": ErrorOut, "description": "the Accept header names no producible format"},
    413: {"model": ErrorOut, "description": "body over the size limit, or too many slices for a synchronous request"},
    415: {"model": ErrorOut, "description": "unrecognised body format"},
}


class HealthOut(BaseModel):
    status: str


class ModelState(BaseModel):
    name: str
    version: str
    state: str


class ReadyOut(BaseModel):
    status: str = Field(description="ready | not ready")
    triton: str
    models: list[ModelState] = []
    missing_models: list[str] | None = None
    models_not_ready: list[str] | None = None


class ModelVersion(BaseModel):
    version: str
    state: str
    reason: str | None = None
    card: dict[str, Any] | None = Field(None, description="model_card.json of this version (training, metrics, I/O)")


class ModelSummary(BaseModel):
    name: str
    task: str | None = None
    ready: bool
    versions: list[ModelVersion]


class ModelList(BaseModel):
    models: list[ModelSummary]


class ModelDetail(ModelSummary):
    inputs: list[dict[str, Any]] = []
    outputs: list[dict[str, Any]] = []
    max_batch_size: int | None = None


class SliceQualityOut(BaseModel):
    """One slice's reconstruction self-check (k-space self-validation, docs/quality_guardrail.md)."""

    slice: int = Field(description="slice index in the volume (0-based)")
    est_nmse: float | None = Field(None, description="estimated NMSE of the answer, from the acquired data alone: "
                                   "(holdout_nmse x E_missing + dc_residual x E_acquired) / (E_missing + E_acquired), "
                                   "E = signal energy of the missing (interpolated) and acquired lines; null: unavailable")
    est_nmse_zero_filled: float | None = Field(None, description="the same estimate for a zero-filled reconstruction "
                                               "(E_missing / (E_missing + E_acquired)); the flag compares the two")
    holdout_nmse: float | None = Field(description="||M_h(F S x) - y_h||^2 / ||y_h||^2 on the held-out acquired lines "
                                       "(x: the reconstruction without them); zero-filled = 1; null: unavailable")
    dc_residual: float | None = Field(description="the same ratio on the lines the model saw (data consistency)")
    flag: bool = Field(description="est_nmse above quality.ratio_threshold x est_nmse_zero_filled (or holdout_nmse / "
                       "dc_residual above their thresholds, when configured)")
    unavailable: str | None = Field(None, description="why no estimate exists (e.g. no acquired line outside the "
                                    "calibration region)")
    replaced: bool | None = Field(None, description="policy 'fallback' replaced this slice by the zero-filled RSS")


class SynthesisWarningOut(BaseModel):
    """One warning of the synthesis input check (docs/synthesis_input.md): the answer was made, but the source is
    out of the models' distribution."""

    code: str = Field(description="not_brain_like (no left-right symmetry: not an axial brain) | contrast_mismatch "
                                  "(the source's intensity histogram looks like another contrast than ?source=)")
    message: str = Field(description="what was seen, with the feature values")


class JobOut(BaseModel):
    id: str
    kind: str
    status: str = Field(description="queued | running | succeeded | failed")
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    slices_total: int | None = None
    slices_done: int = 0
    params: dict[str, Any] = {}
    links: dict[str, str]
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    quality: list[SliceQualityOut] | None = Field(
        None, description="reconstruction jobs that succeeded: the self-check of every slice (config 'quality')")
    synthesis_warnings: list[SynthesisWarningOut] | None = Field(
        None, description="synthesis jobs that succeeded: the input check's warnings (empty list: none), the same "
                          "as the X-Synthesis-Warning header of a synchronous answer")


class JobList(BaseModel):
    jobs: list[JobOut]


_BINARY = {"schema": {"type": "string", "format": "binary"}}


def body_spec(description: str, raw_types: list[str], *, multipart_related: bool) -> dict:
    """openapi_extra ``requestBody`` of an upload endpoint (the route reads the body itself)."""
    content: dict[str, Any] = {t: _BINARY for t in raw_types}
    content["multipart/form-data"] = {"schema": {
        "type": "object", "required": ["file"],
        "properties": {"file": {"type": "string", "format": "binary", "description": "the data file"},
                       "mask": {"type": "string", "format": "binary", "description": "optional .npy mask"},
                       "maps": {"type": "string", "format": "binary", "description": "optional .npy coil maps"}}}}
    if multipart_related:
        content["multipart/related"] = {"schema": {"type": "string", "format": "binary"}}
    return {"requestBody": {"required": True, "description": description, "content": content}}


def binary_responses(media_types: list[str], description: str, headers: dict | None = None) -> dict:
    out: dict[str, Any] = {"description": description, "content": {t: _BINARY for t in media_types}}
    if headers:
        out["headers"] = headers
    return {200: out}


#: response headers of a reconstruction (OpenAPI)
RECON_HEADERS = {
    "X-Recon-Quality": {
        "description": "The self-check of every slice (config 'quality', docs/quality_guardrail.md): compact JSON list "
                       "of {\"slice\", \"est_nmse\", \"est_nmse_zero_filled\", \"holdout_nmse\", \"dc_residual\", \"flag\"} (plus \"unavailable\": reason, "
                       "\"replaced\": true under policy fallback); absent when quality.enabled is false. A list longer "
                       "than 8 KiB is only in the job resource's 'quality' field.",
        "schema": {"type": "string"}},
    "X-Recon-Quality-Policy": {"description": "report | flag | fallback", "schema": {"type": "string"}},
    "X-Recon-Quality-Replaced": {"description": "policy fallback: comma-separated indices of the slices replaced by "
                                                "the zero-filled RSS image", "schema": {"type": "string"}},
}

#: response headers of a synthesis (OpenAPI)
SYNTH_HEADERS = {
    "X-Synthesis-Warning": {
        "description": "Present only when the synthesis input check (docs/synthesis_input.md) found the source legal "
                       "but out of distribution: compact JSON list of {\"code\", \"message\"}, code "
                       "not_brain_like or contrast_mismatch. The same warnings start ImageComments of every "
                       "instance of a DICOM answer. A source with no head in it is refused (422, code no_head); "
                       "one too small to normalise too (422, code cannot_normalise).",
        "schema": {"type": "string"}},
    "X-Synthetic-Data": {"description": "YES: every answer of /v1/synthesize is synthetic", "schema": {"type": "string"}},
    "X-Source-Contrast": {"description": "the contrast of the input (?source= or read from the DICOM series)",
                          "schema": {"type": "string"}},
    "X-Target-Contrast": {"description": "the synthesized contrast", "schema": {"type": "string"}},
    "X-Derivation-Description": {"description": "model and version that made the answer (as DerivationDescription)",
                                 "schema": {"type": "string"}},
}
