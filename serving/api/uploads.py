"""Reading request bodies (raw, ``multipart/form-data``, ``multipart/related``) into an :class:`Upload`.

Synchronous requests keep the body in memory (it is at most ``limits.max_body_bytes``); job submissions
stream it into the job's directory (:func:`read_upload` with ``directory``).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path

import anyio
from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from serving.api.errors import ApiError
from serving.api.inputs import Upload

__all__ = ["read_upload", "split_multipart_related"]

FORM_FIELDS = ("file", "mask", "maps")
_BOUNDARY = re.compile(r'boundary="?([^";]{1,200})"?', re.IGNORECASE)


def split_multipart_related(body: bytes, boundary: str) -> list[bytes]:
    """The part bodies of a ``multipart/related`` message (RFC 2046 framing)."""
    delim = b"\r\n--" + boundary.encode("latin-1")
    data = b"\r\n" + body
    sections = data.split(delim)
    parts = []
    for sec in sections[1:]:
        if sec.startswith(b"--"):
            break
        head, sep, content = sec.partition(b"\r\n\r\n")
        if not sep:
            raise ApiError(422, "malformed multipart/related part (no header/body separator)", field="body",
                           expected="multipart/related parts with headers, a blank line and the DICOM file",
                           code="unreadable")
        parts.append(content)
    if not parts:
        raise ApiError(422, "multipart/related body holds no parts", field="body",
                       expected=f"parts delimited by --{boundary[:40]}", code="unreadable")
    return parts


def _create(path: Path):
    """Open a new file of an uploaded job for writing, with its directory's read/write bits (0600 in a 0700 job
    directory, 0640 in a 2750 one): uploads are patient data."""
    mode = stat.S_IMODE(os.stat(path.parent).st_mode) & 0o660
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode | 0o600), "wb")


async def _save(src: UploadFile, path: Path) -> Path:
    def copy() -> None:
        src.file.seek(0)
        with _create(path) as out:
            shutil.copyfileobj(src.file, out, 1 << 20)

    await anyio.to_thread.run_sync(copy)
    return path


async def read_upload(request: Request, directory: Path | None = None) -> Upload:
    """The request body as an Upload; files go to ``directory`` (job mode) or stay in memory."""
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";")[0].strip().lower()
    if media == "multipart/form-data":
        return await _form(request, directory)
    if media == "multipart/related":
        m = _BOUNDARY.search(content_type)
        if not m:
            raise ApiError(400, "multipart/related without a boundary parameter", field="Content-Type",
                           expected='multipart/related; type="application/dicom"; boundary=...', code="bad_request")
        parts = split_multipart_related(await request.body(), m.group(1))
        files: list[bytes | Path] = list(parts)
        if directory is not None:
            files = []
            for i, p in enumerate(parts):
                path = directory / f"file-{i}"
                with _create(path) as out:
                    out.write(p)
                files.append(path)
        return Upload(files, "application/dicom", multipart_related=True)
    if directory is None:
        return Upload([await request.body()], media or None)
    path = directory / "file-0"
    with _create(path) as out:
        async for chunk in request.stream():
            if chunk:
                await anyio.to_thread.run_sync(out.write, chunk)
    return Upload([path], media or None)


async def _form(request: Request, directory: Path | None) -> Upload:
    try:
        form = await request.form(max_files=10_000, max_fields=16)
    except (ApiError, ClientDisconnect):
        raise
    except Exception as exc:  # noqa: BLE001 - MultiPartException, python_multipart's MultipartParseError, ...
        raise ApiError(422, f"malformed multipart/form-data: {str(exc)[:200]}", field="body",
                       expected="multipart/form-data with a 'file' part (curl -F file=@...)",
                       code="unreadable") from None
    try:
        unknown = sorted({k for k, _ in form.multi_items()} - set(FORM_FIELDS))
        if unknown:
            raise ApiError(422, f"unknown form field(s) {unknown[:5]}", field=unknown[0][:40],
                           expected="form fields 'file' (one or more), 'mask', 'maps'", code="invalid_input")
        items = form.multi_items()
        uploads = [v for k, v in items if k == "file"]
        if not uploads:
            raise ApiError(422, "no 'file' part in the form", field="file",
                           expected="a 'file' part with the data (curl -F file=@kspace.npy)", code="missing_field")
        for name in ("mask", "maps"):
            if sum(1 for k, _ in items if k == name) > 1:
                raise ApiError(422, f"more than one '{name}' part", field=name, expected=f"at most one '{name}'",
                               code="invalid_input")
        for k, v in items:
            if not isinstance(v, UploadFile):
                raise ApiError(422, f"form field '{k}' must be a file upload", field=k,
                               expected=f"curl -F {k}=@path", code="invalid_input")
        files: list[bytes | Path] = []
        for i, f in enumerate(u for u in uploads if isinstance(u, UploadFile)):  # all are, as checked above
            files.append(await _save(f, directory / f"file-{i}") if directory is not None else await f.read())
        parts: dict[str, bytes | Path] = {}
        for name in ("mask", "maps"):
            part = next((v for k, v in items if k == name), None)
            if isinstance(part, UploadFile):
                parts[name] = await _save(part, directory / name) if directory is not None else await part.read()
        first = uploads[0]
        assert isinstance(first, UploadFile)
        ct = (first.content_type or "").split(";")[0].strip().lower() or None
        return Upload(files, ct, filename=None, parts=parts, multipart_related=False)
    finally:
        await form.close()
