"""The one durable-write helper: every writer of state (checkpoints, job records, spooled DICOM, caches) uses it.

A crash (power loss, kill -9) at any moment leaves either the old file or the new one, never a torn one:
write a temporary file next to the target, ``fsync`` it, ``os.replace`` it onto the target, ``fsync`` the
directory so the rename itself is on disk. Appends to a log (``metrics.jsonl``, a privacy ledger) are
flushed and ``fsync``-ed per record.

Patient data at rest: :class:`Permissions` says which modes a store of patient data (the DICOM node's spool,
results and queue, the REST API's jobs) uses: directories 0700 and files 0600, or with a group 2750 / 0640
(directories setgid, so every new entry belongs to that group). The writers here take those modes; a server
process also sets its umask (:meth:`Permissions.apply_umask`) so that nothing it creates is world-readable.

This is file-system plumbing, not MRI math; it lives in :mod:`mrcore` because that is the one layer that
training, the REST API and the DICOM node all import.
"""

from __future__ import annotations

import grp
import json
import os
import secrets
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Permissions", "append_durable", "durable_path", "fsync_dir", "make_dirs", "write_durable",
           "write_json_durable"]


@dataclass(frozen=True)
class Permissions:
    """Modes of a store of patient data: owner only (dirs 0700, files 0600), or shared with ``group`` (dirs 2750,
    setgid so new entries inherit the group; files 0640). Nothing is ever readable by other users."""

    group: str | None = None

    def __post_init__(self) -> None:
        if self.group is not None:
            try:
                grp.getgrnam(self.group)
            except KeyError:
                raise ValueError(f"storage group {self.group!r} does not exist on this host") from None

    @property
    def dir_mode(self) -> int:
        return 0o2750 if self.group else 0o700

    @property
    def file_mode(self) -> int:
        return 0o640 if self.group else 0o600

    @property
    def umask(self) -> int:
        return 0o027 if self.group else 0o077

    def apply_umask(self) -> int:
        """Set the process umask to match (for writers that do not take a mode); returns the previous one."""
        return os.umask(self.umask)

    def prepare(self, root: str | Path) -> Path:
        """Create ``root`` (missing parents too, with the same mode) and bring every entry already under it to
        these modes and group (a store written by an older version, with 0644 files)."""
        root = Path(root)
        make_dirs(root, mode=self.dir_mode)
        gid = grp.getgrnam(self.group).gr_gid if self.group else -1
        for d, _dirs, files in os.walk(root):
            for name, mode in [(d, self.dir_mode)] + [(os.path.join(d, f), self.file_mode) for f in files]:
                if os.path.islink(name):
                    continue
                if gid != -1:
                    os.chown(name, -1, gid)
                os.chmod(name, mode)
        return root

    def create_file(self, path: str | Path) -> Path:
        """Create ``path`` empty with :attr:`file_mode` unless it exists (a file another library then opens:
        SQLite, a log handler); an existing file is left as it is (:meth:`prepare` fixes a store's modes)."""
        path = Path(path)
        make_dirs(path.parent, mode=self.dir_mode)
        try:
            fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, self.file_mode)
        except FileExistsError:
            return path
        os.close(fd)
        os.chmod(path, self.file_mode)
        return path


def fsync_dir(directory: str | Path) -> None:
    """``fsync`` a directory, so that the renames and creations inside it survive a crash."""
    fd = os.open(str(directory), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(directory: str | Path, mode: int | None = None) -> None:
    """``mkdir -p`` that also ``fsync``-s the parent of every directory it creates (new entries are durable);
    ``mode`` (e.g. 0o700): the mode of each directory it creates (whatever the umask)."""
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
        if mode is not None:
            os.chmod(d, mode)
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
def durable_path(path: str | Path, *, tmp: Path | None = None, mode: int | None = None,
                 dir_mode: int | None = None) -> Iterator[Path]:
    """A temporary path to write ``path`` through (for writers that want a file name: ``np.save``,
    ``torch.save``, ``onnx.save``, ``Dataset.save_as``).

    On a normal exit the temporary file is ``fsync``-ed and renamed onto ``path`` and the directory is
    ``fsync``-ed; on an exception it is removed and ``path`` is untouched. ``tmp`` names the temporary file
    (default: a unique hidden ``.part`` name next to ``path``); missing directories are made (:func:`make_dirs`,
    with ``dir_mode``). ``mode``: the file's mode (e.g. 0o600), set before it gets its name.
    """
    target = Path(path)
    make_dirs(target.parent, mode=dir_mode)
    temporary = Path(tmp) if tmp is not None else _temporary_name(target)
    try:
        yield temporary
        if mode is not None:
            os.chmod(temporary, mode)
        _fsync_file(temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    fsync_dir(target.parent)


def write_durable(path: str | Path, data: bytes | str | Iterable[bytes], *, mode: int | None = None,
                  dir_mode: int | None = None) -> None:
    """Write ``data`` (bytes, text as UTF-8, or an iterable of byte chunks) to ``path`` crash-safely (``mode``,
    ``dir_mode``: see :func:`durable_path`)."""
    with durable_path(path, mode=mode, dir_mode=dir_mode) as tmp, open(tmp, "wb") as f:
        if isinstance(data, str):
            f.write(data.encode("utf-8"))
        elif isinstance(data, (bytes, bytearray, memoryview)):
            f.write(data)
        else:
            for chunk in data:
                f.write(chunk)


def write_json_durable(path: str | Path, payload: Any, *, mode: int | None = None, dir_mode: int | None = None,
                       **dumps_kwargs: Any) -> None:
    """``json.dumps(payload, **dumps_kwargs)`` written crash-safely to ``path`` (``mode``, ``dir_mode``: see
    :func:`durable_path`)."""
    write_durable(path, json.dumps(payload, **dumps_kwargs), mode=mode, dir_mode=dir_mode)


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
