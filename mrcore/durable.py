"""The one durable-write helper: every writer of state (checkpoints, job records, spooled DICOM, caches) uses it.

A crash (power loss, kill -9) at any moment leaves either the old file or the new one, never a torn one:
write a temporary file next to the target, ``fsync`` it, ``os.replace`` it onto the target, ``fsync`` the
directory so the rename itself is on disk. Appends to a log (``metrics.jsonl``, a privacy ledger) are
flushed and ``fsync``-ed per record.

This is file-system plumbing, not MRI math; it lives in :mod:`mrcore` because that is the one layer that
training, the REST API and the DICOM node all import.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["append_durable", "durable_path", "fsync_dir", "make_dirs", "write_durable", "write_json_durable"]


def fsync_dir(directory: str | Path) -> None:
    """``fsync`` a directory, so that the renames and creations inside it survive a crash."""
    fd = os.open(str(directory), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(directory: str | Path) -> None:
    """``mkdir -p`` that also ``fsync``-s the parent of every directory it creates (new entries are durable)."""
    missing = []
    d = Path(directory)
    while not d.exists():
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue
        fsync_dir(d.parent)


def _fsync_file(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temporary_name(path: Path) -> Path:
    """``.<stem>.<pid>.<thread>.<random>.part<suffix>`` next to ``path``: unique per writer, hidden from directory
    readers that skip dot-files, and with the target's suffix (``np.save`` appends ``.npy`` to other names)."""
    unique = f"{os.getpid()}.{threading.get_ident()}.{secrets.token_hex(3)}"
    return path.with_name(f".{path.stem}.{unique}.part{path.suffix}")


@contextmanager
def durable_path(path: str | Path, *, tmp: Path | None = None) -> Iterator[Path]:
    """A temporary path to write ``path`` through (for writers that want a file name: ``np.save``,
    ``torch.save``, ``onnx.save``, ``Dataset.save_as``).

    On a normal exit the temporary file is ``fsync``-ed and renamed onto ``path`` and the directory is
    ``fsync``-ed; on an exception it is removed and ``path`` is untouched. ``tmp`` names the temporary file
    (default: a unique hidden ``.part`` name next to ``path``); missing directories are made (:func:`make_dirs`).
    """
    target = Path(path)
    make_dirs(target.parent)
    temporary = Path(tmp) if tmp is not None else _temporary_name(target)
    try:
        yield temporary
        _fsync_file(temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    fsync_dir(target.parent)


def write_durable(path: str | Path, data: bytes | str | Iterable[bytes]) -> None:
    """Write ``data`` (bytes, text as UTF-8, or an iterable of byte chunks) to ``path`` crash-safely."""
    with durable_path(path) as tmp, open(tmp, "wb") as f:
        if isinstance(data, str):
            f.write(data.encode("utf-8"))
        elif isinstance(data, (bytes, bytearray, memoryview)):
            f.write(data)
        else:
            for chunk in data:
                f.write(chunk)


def write_json_durable(path: str | Path, payload: Any, **dumps_kwargs: Any) -> None:
    """``json.dumps(payload, **dumps_kwargs)`` written crash-safely to ``path``."""
    write_durable(path, json.dumps(payload, **dumps_kwargs))


def append_durable(path: str | Path, text: str) -> None:
    """Append ``text`` to ``path`` and ``fsync`` it (a record of an append-only log is on disk on return)."""
    target = Path(path)
    make_dirs(target.parent)
    created = not target.exists()
    with open(target, "a") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    if created:
        fsync_dir(target.parent)
