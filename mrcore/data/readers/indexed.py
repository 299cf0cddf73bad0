"""Shared :class:`~mrcore.data.base.SliceSource` plumbing of the readers that index slices by site.

* :class:`IndexedSource`: sources that keep, per site, a list of ``(entry, slice)`` pairs (``_index``),
  the site names (``_sites``) and the contrasts of each site (``_contrasts``). It implements ``sites``,
  ``contrasts``, ``num_slices`` and ``subject`` from them (entries have a ``.subject``).
* :class:`IndexedFileSource`: raw-data sources whose files hold one contrast each (fastMRI, MRD). Entries
  are files with ``.site``, ``.subject``, ``.contrast``, ``.path`` and ``.num_slices``; a subclass lists
  them, passes them to :meth:`IndexedFileSource._index_files` and reads one slice's k-space in
  :meth:`IndexedFileSource._read_kspace`. ``image()`` and ``kspace()`` are the root-sum-of-squares of
  ``ifft2c`` of that k-space (``maps=None``).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import numpy as np

from mrcore.data.base import CONTRASTS, KSpaceSlice, SliceSource
from mrcore.fft import ifft2c

__all__ = ["IndexedFileSource", "IndexedSource", "list_files", "rss", "site_of"]


def rss(coil_images: np.ndarray) -> np.ndarray:
    """Root-sum-of-squares over the coil axis: complex [coils, y, x] -> float32 [y, x]."""
    c = np.asarray(coil_images)
    return np.sqrt(np.sum(np.abs(c) ** 2, axis=0)).astype(np.float32)


def list_files(
    root: str | Path | Sequence[str | Path], what: str, suffixes: tuple[str, ...]
) -> list[Path]:
    """Files named by ``root``: one file, a directory (``suffixes``, recursively) or a list of files (sorted)."""
    if isinstance(root, (str, Path)):
        p = Path(root)
        if not p.exists():
            raise FileNotFoundError(f"{what}: {p} does not exist (expected a directory of HDF5 files or one file)")
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in suffixes)
            if not files:
                raise ValueError(f"{what}: no {' / '.join('*' + x for x in suffixes)} files under {p}")
            return files
        return [p]
    files = [Path(f) for f in root]
    if not files:
        raise ValueError(f"{what}: empty list of files")
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"{what}: {f} does not exist or is not a file")
    return sorted(files)


def site_of(path: Path, site: str | Mapping[str, str], what: str) -> str:
    """The site of ``path``: ``site`` itself, or its entry (by file name, stem or path) in a mapping."""
    if isinstance(site, str):
        return site
    for key in (path.name, path.stem, str(path)):
        if key in site:
            return str(site[key])
    raise ValueError(f"{what}: {path} has no entry in the site mapping (keys are file names or stems)")


class FileEntry(Protocol):
    """One file of an :class:`IndexedFileSource` (holding one contrast)."""

    @property
    def site(self) -> str: ...

    @property
    def subject(self) -> str: ...

    @property
    def contrast(self) -> str: ...

    @property
    def path(self) -> Path: ...

    @property
    def num_slices(self) -> int: ...


class _Entry(Protocol):
    """What every entry of an :class:`IndexedSource` has."""

    @property
    def subject(self) -> str: ...


E = TypeVar("E", bound=_Entry)
F = TypeVar("F", bound=FileEntry)


class IndexedSource(SliceSource, Generic[E]):
    """A source whose slices are ``_index[site][index] = (entry, slice)``; entries have a ``.subject``.

    Subclasses set ``_sites`` (site names in order), ``_index`` and ``_contrasts`` (site -> contrasts).
    """

    _sites: tuple[str, ...]
    _index: dict[str, list[tuple[E, int]]]
    _contrasts: dict[str, tuple[str, ...]]

    def _entry(self, site: str, index: int) -> tuple[E, int]:
        self.check_index(site, index)
        return self._index[site][int(index)]

    # --- SliceSource -----------------------------------------------------------------------------
    @property
    def sites(self) -> tuple[str, ...]:
        return self._sites

    def contrasts(self, site: str) -> tuple[str, ...]:
        self.check_site(site)
        return self._contrasts[site]

    def num_slices(self, site: str) -> int:
        self.check_site(site)
        return len(self._index[site])

    def subject(self, site: str, index: int) -> str:
        return self._entry(site, index)[0].subject


class IndexedFileSource(IndexedSource[F]):
    """Slices of raw k-space files that hold one contrast each (see the module docstring).

    One slice index runs over all slices of all files of a site, in the order the files are given.
    Asking slice ``index`` for a contrast other than its file's is a ``ValueError``.
    """

    #: format name in error messages ("fastMRI files hold one contrast each ...").
    _format_name: str = ""

    def _index_files(self, files: Iterable[F]) -> None:
        """Set ``_sites`` (sorted), ``_index`` (per site: (file, slice) in the given file order), ``_contrasts``."""
        files = list(files)
        self._sites = tuple(sorted({f.site for f in files}))
        self._index = {s: [] for s in self._sites}
        for f in files:
            self._index[f.site].extend((f, i) for i in range(f.num_slices))
        self._contrasts = {
            s: tuple(c for c in CONTRASTS if any(f.contrast == c for f, _ in self._index[s])) for s in self._sites
        }

    @abstractmethod
    def _read_kspace(self, f: F, s: int) -> np.ndarray:
        """k-space of slice ``s`` (counted within file ``f``): complex64 [coils, ky, kx]."""

    def _check_slice_contrast(self, site: str, index: int, contrast: str) -> tuple[F, int]:
        self.check_contrast(site, contrast)
        f, s = self._entry(site, index)
        if f.contrast != contrast:
            raise ValueError(
                f"slice {index} at site {site!r} is {f.contrast!r}, not {contrast!r} ({self._format_name} files hold "
                f"one contrast each; use slice_contrast() or {type(self).__name__}(..., contrasts=[{contrast!r}]))"
            )
        return f, s

    def slice_contrast(self, site: str, index: int) -> str:
        """The contrast of slice ``index`` (the only one :meth:`image` / :meth:`kspace` accept for it)."""
        return self._entry(site, index)[0].contrast

    def path(self, site: str, index: int) -> Path:
        """File holding slice ``index``."""
        return self._entry(site, index)[0].path

    def image(self, site: str, index: int, contrast: str) -> np.ndarray:
        """RSS of ``ifft2c`` of the slice's k-space: float32 [ky, kx]."""
        f, s = self._check_slice_contrast(site, index, contrast)
        return rss(ifft2c(self._read_kspace(f, s)))

    def kspace(self, site: str, index: int, contrast: str, num_coils: int = 8) -> KSpaceSlice:
        """The file's k-space (``num_coils`` is ignored), target = RSS of its ``ifft2c``, ``maps=None``."""
        f, s = self._check_slice_contrast(site, index, contrast)
        k = self._read_kspace(f, s)
        return KSpaceSlice(kspace=k, target=rss(ifft2c(k)), maps=None, site=site, subject=f.subject, contrast=contrast)
