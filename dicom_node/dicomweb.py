"""STOW-RS in (DICOM PS3.18 10.5): an HTTP(S) listener inside the node process, storing through the same
durable path as C-STORE (:meth:`dicom_node.scp.StorageSCP.store`: validation, route rules, spool fsync,
queue commit).

Endpoints (``dicomweb`` section of the node config; bearer token as for the REST API)::

    POST /studies                    every route, in config order (the first that accepts an instance wins)
    POST /studies/{study}            the same; an instance of another study fails (0xA900)
    POST /aets/{AE}/rs/studies[/{study}]   only the routes of called AE title AE

The body is ``multipart/related; type="application/dicom"; boundary=...``, one DICOM file (PS3.10) per part.
The answer is ``application/dicom+json``: ``ReferencedSOPSequence`` (stored instances) and
``FailedSOPSequence`` (``FailureReason`` per instance: 0xC000 not DICOM / cannot be parsed, 0x0122 SOP class
no route accepts, 0xA900 data set does not match the SOP class or no route's rules accept it, 0xC122
transfer syntax not accepted, 0xA700 out of resources; ``ErrorComment`` says why in words).

====== ===========================================================================================
200    every instance stored
202    some stored, some failed
409    none stored
400    the body is not a valid multipart message (no boundary, truncated, no part)
401    no bearer token / 403 a token that is not configured
413    the body is larger than ``dicomweb.max_body_bytes`` (checked against Content-Length, then counted)
415    not ``multipart/related``, a ``type`` other than ``application/dicom``, or a part that is not
       ``application/dicom``
====== ===========================================================================================

Nothing is half-stored: the whole body is read and parsed before the first instance is stored, so a 400,
413 or 415 stores nothing; an instance is listed in ``ReferencedSOPSequence`` only after its file is fsynced
in the spool and its row committed, exactly like a C-STORE ``0x0000``; a failed instance is not stored.
Log lines carry the client's host, counts and hashed UIDs only (no access log: URLs hold Study UIDs).
"""

from __future__ import annotations

import io
import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pydicom
import uvicorn
from pydicom.dataset import Dataset
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route as HttpRoute

from dicom_node.audit import uid_hash
from dicom_node.scp import STATUS_CANNOT_UNDERSTAND, STATUS_DATASET_MISMATCH, STATUS_OK
from serving.api.auth import check_token
from serving.api.errors import ApiError

if TYPE_CHECKING:
    from dicom_node.config import NodeConfig, Route
    from dicom_node.scp import StorageSCP

__all__ = ["DICOM_JSON", "DicomWebServer", "StowResult", "parse_multipart", "stow_status"]

log = logging.getLogger("dicom_node.dicomweb")

DICOM_JSON = "application/dicom+json"
#: pseudo calling AE title of STOW-RS instances in the queue and the audit lines
CALLING = "DICOMWEB"


@dataclass
class Part:
    """One body part: its headers (lower-case names) and its bytes."""

    headers: dict[str, str] = field(default_factory=dict)
    data: bytearray = field(default_factory=bytearray)


@dataclass
class StowResult:
    """Per-instance outcome of a STOW-RS request: ``(sop_class, sop_instance)`` stored, and
    ``(sop_class, sop_instance, failure_reason, comment)`` failed (UIDs empty when the part was unreadable)."""

    stored: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str, int, str]] = field(default_factory=list)

    def response(self) -> dict:
        """The PS3.18 STOW-RS response as DICOM JSON (``ReferencedSOPSequence``, ``FailedSOPSequence``)."""
        ds = Dataset()
        if self.stored:
            ds.ReferencedSOPSequence = [_item(c, i) for c, i in self.stored]
        if self.failed:
            items = []
            for c, i, reason, comment in self.failed:
                item = _item(c, i)
                item.FailureReason = reason
                item.ErrorComment = comment[:64]
                items.append(item)
            ds.FailedSOPSequence = items
        return ds.to_json_dict()


def _item(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item


def stow_status(result: StowResult) -> int:
    """HTTP status of a parsed body: 200 all stored, 202 some failed, 409 none stored."""
    if not result.failed:
        return 200
    return 202 if result.stored else 409


# --------------------------------------------------------------------------------------------------------------
# the body
# --------------------------------------------------------------------------------------------------------------
def _boundary(content_type: str | None) -> bytes:
    """The boundary of a ``multipart/related; type="application/dicom"`` Content-Type (ApiError 415 / 400)."""
    expected = 'multipart/related; type="application/dicom"; boundary=...'
    media, params = parse_options_header(content_type or "")
    if media.lower() != b"multipart/related":
        raise ApiError(415, "STOW-RS takes a multipart/related body of DICOM files", field="Content-Type",
                       expected=expected, got=(content_type or "none")[:100])
    kind = params.get(b"type", b"application/dicom").lower()
    if kind != b"application/dicom":
        raise ApiError(415, "only application/dicom parts are accepted (no DICOM JSON/XML metadata + bulk data)",
                       field="Content-Type", expected=expected, got=kind.decode("latin-1")[:100])
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "the multipart/related Content-Type has no boundary", field="Content-Type",
                       expected=expected)
    return boundary


async def parse_multipart(request: Request, limit: int) -> list[Part]:
    """Read the whole body (at most ``limit`` bytes) and split it into parts with python-multipart's streaming
    parser. ApiError 413 (too large), 415 (media types), 400 (malformed, truncated, no part)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the body ({int(declared)} bytes) is larger than the limit of {limit} bytes",
                       field="body", expected=f"at most {limit} bytes (dicomweb.max_body_bytes)")
    boundary = _boundary(request.headers.get("content-type"))
    parts: list[Part] = []
    name, value = bytearray(), bytearray()

    def header_end() -> None:
        parts[-1].headers[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
        name.clear()
        value.clear()

    callbacks = {
        "on_part_begin": lambda: parts.append(Part()),
        "on_header_field": lambda d, s, e: name.extend(d[s:e]),
        "on_header_value": lambda d, s, e: value.extend(d[s:e]),
        "on_header_end": header_end,
        "on_part_data": lambda d, s, e: parts[-1].data.extend(d[s:e]),
    }
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]  # its callback TypedDict
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"the body is larger than the limit of {limit} bytes", field="body",
                               expected=f"at most {limit} bytes (dicomweb.max_body_bytes)")
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as e:
        raise ApiError(400, f"the multipart body cannot be parsed ({e})", field="body",
                       expected="parts separated by the boundary of the Content-Type") from None
    if parser.state != MultipartState.END:
        raise ApiError(400, "the multipart body ends before its closing boundary (truncated?)", field="body",
                       expected="--boundary-- at the end")
    if not parts:
        raise ApiError(400, "the multipart body has no part", field="body", expected="one DICOM file per part")
    for i, part in enumerate(parts, start=1):
        media, _ = parse_options_header(part.headers.get("content-type", "application/dicom"))
        if media.lower() != b"application/dicom":
            raise ApiError(415, f"part {i} is {media.decode('latin-1')[:60]!r}, not application/dicom",
                           field=f"part {i} Content-Type", expected="application/dicom")
    return parts


# --------------------------------------------------------------------------------------------------------------
# storing
# --------------------------------------------------------------------------------------------------------------
def _read(data: bytes) -> Dataset:
    """A PS3.10 file (preamble, ``DICM``, file meta) parsed completely (any error: not understood)."""
    ds = pydicom.dcmread(io.BytesIO(data), force=False)
    for _ in ds.iterall():  # pydicom parses lazily: surface every decoding error now
        pass
    return ds


def store_parts(scp: StorageSCP, parts: list[Part], *, routes: list[Route], called: str, host: str,
                study: str | None) -> StowResult:
    """Store each part through :meth:`StorageSCP.store` (durable, routed); returns what was stored / failed."""
    result = StowResult()
    for i, part in enumerate(parts, start=1):
        data = bytes(part.data)
        try:
            ds = _read(data)
            sop_class, sop_uid = str(ds.get("SOPClassUID", "")), str(ds.get("SOPInstanceUID", ""))
        except Exception as e:  # noqa: BLE001 - any parsing failure of an uploaded part
            log.warning("STOW-RS from %s: part %d is not a DICOM file (%s): 0xC000", host, i, e.__class__.__name__)
            result.failed.append(("", "", STATUS_CANNOT_UNDERSTAND, f"part {i} is not a DICOM file"))
            continue
        if not sop_class or not sop_uid:
            log.warning("STOW-RS from %s: part %d has no SOPClassUID/SOPInstanceUID: 0xC000", host, i)
            result.failed.append((sop_class, sop_uid, STATUS_CANNOT_UNDERSTAND, "no SOPClassUID / SOPInstanceUID"))
            continue
        if study is not None and str(ds.get("StudyInstanceUID", "")) != study:
            log.warning("STOW-RS from %s: instance %s is not of the target study %s: 0xA900", host, uid_hash(sop_uid),
                        uid_hash(study))
            result.failed.append((sop_class, sop_uid, STATUS_DATASET_MISMATCH, "StudyInstanceUID differs from the URL"))
            continue
        status = scp.store(ds, called=called, calling=CALLING, host=host, encoded=lambda data=data: data,
                           routes=routes, protocol="STOW-RS")
        code = status if isinstance(status, int) else int(status.Status)
        if code == STATUS_OK:
            result.stored.append((sop_class, sop_uid))
        else:
            comment = "" if isinstance(status, int) else str(status.get("ErrorComment", ""))
            result.failed.append((sop_class, sop_uid, code, comment))
    return result


# --------------------------------------------------------------------------------------------------------------
# the server
# --------------------------------------------------------------------------------------------------------------
class DicomWebServer:
    """The STOW-RS listener: a Starlette app served by uvicorn in a thread of the node process.

    Parameters
    ----------
    config : NodeConfig (its ``dicomweb`` section: host, port, max_body_bytes, auth)
    scp : the node's StorageSCP, whose :meth:`~dicom_node.scp.StorageSCP.store` every instance goes through
    """

    def __init__(self, config: NodeConfig, scp: StorageSCP) -> None:
        self.config = config
        self.settings = config.dicomweb
        self.scp = scp
        self.digests = self.settings.token_digests() if self.settings.auth_enabled else None
        self.app = Starlette(routes=[
            HttpRoute("/studies", self._stow, methods=["POST"]),
            HttpRoute("/studies/{study}", self._stow, methods=["POST"]),
            HttpRoute("/aets/{aet}/rs/studies", self._stow, methods=["POST"]),
            HttpRoute("/aets/{aet}/rs/studies/{study}", self._stow, methods=["POST"]),
        ])
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.address: tuple[str, int] | None = None

    # --- lifecycle -----------------------------------------------------------------------------------------
    def start(self, timeout: float = 15.0) -> tuple[str, int]:
        """Bind (errors such as a used port surface here), serve in a thread; returns the bound (host, port)."""
        host, port = self.settings.host, self.settings.port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family)
        tls = self.settings.tls
        config = uvicorn.Config(
            self.app, log_config=None, access_log=False, lifespan="off", timeout_keep_alive=30, server_header=False,
            ssl_certfile=str(tls.certificate) if tls else None, ssl_keyfile=str(tls.private_key) if tls else None,
            ssl_ca_certs=str(tls.ca_certificates) if tls and tls.ca_certificates else None,
            ssl_cert_reqs=int(ssl.CERT_REQUIRED if tls and tls.require_client_certificate else ssl.CERT_NONE))
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="dicom-node-dicomweb", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the DICOMweb listener on {host}:{port} did not start")
            time.sleep(0.02)
        self.address = sock.getsockname()[:2]
        return self.address

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=15)
        self._server = self._thread = None

    def describe(self) -> str:
        host, port = self.address or (self.settings.host, self.settings.port)
        auth = "bearer token" if self.settings.auth_enabled else "NO authentication"
        scheme = "https" if self.settings.tls else "http"
        return (f"DICOMweb STOW-RS on {scheme}://{host}:{port}/studies ({auth}, bodies up to "
                f"{self.settings.max_body_bytes} B)")

    # --- the endpoint --------------------------------------------------------------------------------------
    async def _stow(self, request: Request) -> JSONResponse:
        host = request.client.host if request.client else "-"
        try:
            if self.digests is not None:
                check_token(self.digests, request.headers.get("authorization"))
            aet = request.path_params.get("aet")
            routes = list(self.config.routes_for(aet) if aet is not None else self.config.routes)
            if not routes:
                raise ApiError(404, f"no route has the called AE title {aet!r}", field="path",
                               expected=", ".join(sorted({r.called_ae_title for r in self.config.routes})))
            parts = await parse_multipart(request, self.settings.max_body_bytes)
        except ApiError as e:
            log.warning("STOW-RS from %s: %d %s", host, e.status, e.code)
            return JSONResponse(e.body(), status_code=e.status, headers=e.headers)
        except ClientDisconnect:
            log.warning("STOW-RS from %s: the client disconnected before the end of the body; nothing stored", host)
            return JSONResponse({"error": "client disconnected"}, status_code=400)
        study = request.path_params.get("study")
        t0 = time.monotonic()
        result = await run_in_threadpool(store_parts, self.scp, parts, routes=routes, called=aet or "*", host=host,
                                         study=study)
        status = stow_status(result)
        log.info("STOW-RS from %s%s: %d part(s), %d stored, %d failed in %.2f s -> %d", host,
                 f" study {uid_hash(study)}" if study else "", len(parts), len(result.stored), len(result.failed),
                 time.monotonic() - t0, status)
        return JSONResponse(result.response(), status_code=status, media_type=DICOM_JSON)
