"""Structured logs of the REST API: the services' one set-up (:mod:`serving.logs`, JSON by default) plus the
request id of each record and the API's own access log in place of uvicorn's.

What is logged: method, route template (``/v1/jobs/{job_id}``, not the raw path), status, duration,
sizes, shapes, model names, error codes and the field at fault. What is never logged: query strings,
request bodies, DICOM attribute values, error messages built from uploaded content, tokens.
"""

from __future__ import annotations

import logging

from serving.logs import JsonFormatter, current_request_id, request_id_var
from serving.logs import configure_logging as configure_service_logging

__all__ = ["JsonFormatter", "configure_logging", "current_request_id", "request_id_var"]


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """The services' logging in ``fmt`` (``json`` or ``text``), with uvicorn's loggers routed through it and
    uvicorn's access log replaced by the API's own (which logs route templates, not raw paths with query
    strings)."""
    configure_service_logging(level, fmt)
    for name in ("uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False
    access.disabled = True
