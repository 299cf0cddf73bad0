"""The one logging set-up of the services (REST API, DICOM node, ``make run``'s stack): JSON or text by option.

``configure_logging(level, fmt)`` sends every logger to stderr, one record per line, and turns library
warnings into log records. ``json``: one object per line ``{"ts", "level", "logger", "msg", "request_id", ...}``
with the record's extra fields; ``text``: ``<time> <level> <logger>: <message>`` followed by the request id and
the extra fields when there are any. Neither format ever formats a dataset or a request body: what goes
into a record is the caller's choice, and the callers log ids, hashes, shapes and codes only; a DICOM UID only through :func:`uid_hash`.

The REST API adds its request ids (:data:`request_id_var`) and replaces uvicorn's access log
(:mod:`serving.api.logs`); the DICOM node adds its audit file and quiets pynetdicom (:mod:`dicom_node.audit`).
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import sys
import time

__all__ = ["LOG_FORMATS", "JsonFormatter", "TextFormatter", "configure_logging", "current_request_id",
           "request_id_var", "uid_hash"]

LOG_FORMATS = ("json", "text")

#: the id of the request being served (set by the REST API's middleware; None outside a request)
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "color_message"}


def uid_hash(uid: object) -> str:
    """The one way a DICOM UID (study, series, SOP instance) appears in a log line or an error message: the first
    12 hex digits of its SHA-256 (stable, so lines about one series can be joined; not reversible in practice).
    ``None`` or empty: ``"-"``."""
    if uid is None or str(uid) == "":
        return "-"
    return hashlib.sha256(str(uid).encode()).hexdigest()[:12]


def current_request_id() -> str | None:
    return request_id_var.get()


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in record.__dict__.items() if k not in _RESERVED and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", "request_id", ...extra}``; exceptions as type + traceback lines."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        rid = getattr(record, "request_id", None) or request_id_var.get()
        if rid:
            out["request_id"] = rid
        for k, v in _extras(record).items():
            if k != "request_id":
                out[k] = v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else str(v)
        if record.exc_info and record.exc_info[0] is not None:
            out["exc_type"] = record.exc_info[0].__name__
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """``<time> <level> <logger>: <message>``, then ``request_id=...`` and ``key=value`` of the extra fields."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record).rstrip()  # warnings end their message with a newline
        extra = _extras(record)
        rid = extra.pop("request_id", None) or request_id_var.get()
        pairs = " ".join(f"{k}={v}" for k, v in ([("request_id", rid)] if rid else []) + list(extra.items()))
        return f"{base} {pairs}".rstrip()


class _ServiceHandler(logging.StreamHandler):
    """The stderr handler this module installs (replaced, never doubled, when called again)."""


def configure_logging(level: str = "INFO", fmt: str = "json") -> logging.Handler:
    """Send every logger's records to stderr in ``fmt`` (``json`` or ``text``) at ``level``; library warnings
    become records too. Returns the handler (callers may add filters)."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    handler = _ServiceHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, _ServiceHandler) or type(h) is logging.StreamHandler:
            root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    return handler
