"""The one error shape of the API and the exception handlers that produce it.

Every answer with status >= 400 has a JSON body::

    {"error": "kspace must be complex ...", "field": "kspace", "expected": "complex64 [slices, coils, ky, kx]",
     "got": "float32 (2, 8, 64, 64)", "status": 422, "request_id": "3f9c..."}

``field`` names the query parameter, header, body part (``body``, ``kspace``, ``mask``, ``maps``) or
DICOM attribute at fault; ``expected`` says what would have been accepted. A server-side failure is a
500 with ``{"error": "internal error", "request_id": ...}``: no stack trace, no exception text.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from mrcore.contract import ContractError
from serving.api.logs import current_request_id
from serving.client import InferenceError, InferenceUnavailable, UnknownModel

log = logging.getLogger("serving.api")

__all__ = ["ApiError", "error_response", "install_handlers"]


class ApiError(Exception):
    """A request the API answers with ``status`` (4xx for client mistakes, 503 for Triton down).

    Parameters
    ----------
    status : HTTP status
    error : human-readable message (what was wrong); never patient data
    field : query parameter / header / body part / DICOM attribute at fault
    expected : what would have been accepted
    got : what came (shape, dtype, value), optional
    headers : extra response headers (``WWW-Authenticate``, ``Retry-After``)
    code : short machine-readable kind, logged instead of the message
    """

    def __init__(self, status: int, error: str, *, field: str | None = None, expected: str | None = None,
                 got: str | None = None, headers: dict[str, str] | None = None, code: str | None = None) -> None:
        super().__init__(error)
        self.status, self.error, self.field, self.expected, self.got = int(status), error, field, expected, got
        self.headers = headers or {}
        self.code = code or _default_code(self.status)

    @classmethod
    def from_contract(cls, exc: ContractError) -> ApiError:
        """The k-space / mask contract's refusal (:mod:`mrcore.contract`) as a 422: its field, expectation, what
        came and its code (the one place the two are mapped)."""
        return cls(422, str(exc), field=exc.field, expected=exc.expected, got=exc.got, code=exc.code)

    def body(self) -> dict:
        out: dict[str, object] = {"error": self.error, "field": self.field, "expected": self.expected}
        if self.got is not None:
            out["got"] = self.got
        out.update(status=self.status, code=self.code, request_id=current_request_id())
        return out


def _default_code(status: int) -> str:
    return {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
            406: "not_acceptable", 409: "conflict", 413: "too_large", 415: "unsupported_media_type",
            422: "invalid_input", 429: "too_many_requests", 503: "unavailable"}.get(status, "error")


def error_response(exc: ApiError, request: Request | None = None) -> JSONResponse:
    if request is not None:
        request.state.error_code = exc.code  # for the access log and the error metric
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def _validation_error(exc: RequestValidationError) -> ApiError:
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(x) for x in first.get("loc", ())]
    where = loc[0] if loc else "request"
    name = ".".join(loc[1:]) if len(loc) > 1 else where
    ctx = first.get("ctx") or {}
    expected = ctx.get("expected") or first.get("msg")
    got = first.get("input")
    got_s = None if got is None or isinstance(got, (dict, list, bytes)) else str(got)[:80]
    msg = f"invalid {where} parameter {name!r}: {first.get('msg', 'invalid value')}"
    return ApiError(422, msg, field=name, expected=str(expected) if expected is not None else None, got=got_s,
                    code="invalid_parameter")


def _routes(routes):
    """Every route, those of included routers too (FastAPI >= 0.13x keeps an included router as one entry)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _routes(inner.routes)
        else:
            yield route


def _allowed(request: Request) -> str:
    """The ``Allow`` header of a 405: the methods of EVERY route whose path matches (Starlette's names only the
    first one's, so ``/v1/jobs/{job_id}`` said ``GET`` without ``DELETE``)."""
    static: set[str] = set()
    templated: set[str] = set()
    for route in _routes(request.app.router.routes):
        match, _ = route.matches({**request.scope, "method": "\x00"})  # no method matches: PARTIAL = path matches
        if match == Match.PARTIAL and getattr(route, "methods", None):
            (templated if getattr(route, "param_convertors", None) else static).update(route.methods)
    # a path that is a route of its own (/v1/jobs/reconstruct) is that resource, not an id of /v1/jobs/{job_id}
    return ", ".join(sorted(static or templated))


def install_handlers(app: FastAPI) -> None:
    """Map ApiError, request validation, HTTP errors and the client layer's errors to the JSON shape."""
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc, request)

    @app.exception_handler(ContractError)
    async def _contract(request: Request, exc: ContractError):
        return error_response(ApiError.from_contract(exc), request)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return error_response(_validation_error(exc), request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        field = "path" if exc.status_code in (404, 405) else None
        detail = exc.detail if isinstance(exc.detail, str) else "request not accepted"
        expected = None
        if exc.status_code == 404:
            detail, expected = f"no such endpoint: {request.url.path}", "an endpoint listed at /docs"
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed(request)
            detail, expected = f"method {request.method} is not allowed on {request.url.path}", headers["Allow"]
        return error_response(ApiError(exc.status_code, detail, field=field, expected=expected, headers=headers),
                              request)

    @app.exception_handler(UnknownModel)
    async def _unknown_model(request: Request, exc: UnknownModel):
        return error_response(ApiError(404, f"unknown model: {exc}", field="model",
                                       expected="a model listed by GET /v1/models", code="unknown_model"), request)

    @app.exception_handler(InferenceUnavailable)
    async def _unavailable(request: Request, exc: InferenceUnavailable):
        return error_response(ApiError(503, "the inference server is unavailable; retry later", field=None,
                                       expected=None, headers={"Retry-After": "5"}, code="inference_unavailable"), request)

    @app.exception_handler(InferenceError)
    async def _rejected(request: Request, exc: InferenceError):
        return error_response(ApiError(422, f"the model rejected the input: {exc}", field="body",
                                       expected="input the model accepts (see GET /v1/models/{name})",
                                       code="inference_rejected"), request)
