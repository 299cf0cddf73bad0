"""fastMRI HDF5 reader: raw multi-coil (or single-coil) k-space as :class:`~mrcore.data.base.SliceSource`.

File layout (https://github.com/facebookresearch/fastMRI, ``fastmri/data/mri_data.py``)::

    /kspace               complex64 [slices, coils, ky, kx]   (multi-coil)
                          complex64 [slices, ky, kx]          (single-coil: read as 1 coil)
    /reconstruction_rss   float32   [slices, 320, 320]        (optional; centre crop, absent in test sets)
    /ismrmrd_header       bytes (XML)                         (optional; never read here)
    attrs: acquisition ('CORPD_FBK', 'CORPDFS_FBK', 'AXT1', 'AXT1PRE', 'AXT1POST', 'AXT2', 'AXFLAIR', ...),
           max, norm, patient_id (never read here)

Conventions and decisions
-------------------------
* One slice index runs over all slices of all files of a site (files sorted by name, slices in file order).
  Every file holds one contrast, so ``contrasts(site)`` is the union over its files and asking slice
  ``index`` for a contrast other than its own is a ``ValueError``; :meth:`FastMRISource.slice_contrast`
  says which one it has. Pass ``contrasts=("T2w",)`` to keep only the files of one contrast, which makes
  every index valid for that contrast (the usual set-up for reconstruction training).
* ``kspace()`` returns the stored k-space unchanged (``num_coils`` is ignored; ``maps`` is ``None``).
  fastMRI stores the readout (frequency-encoding, 2x oversampled: 640 for knee) on axis ``-2`` and the
  phase encoding on axis ``-1``, so its undersampling masks act on the LAST axis; the class attribute
  :attr:`FastMRISource.phase_encode_axis` (``-1``) records it.
* ``target`` and ``image()`` are the root-sum-of-squares of ``ifft2c`` of the full stored k-space, at the
  k-space size (e.g. 640 x 368), NOT the 320 x 320 centre crop of fastMRI's ``reconstruction_rss``; that
  stored reference is available separately through :meth:`FastMRISource.reconstruction_rss`.
* Files are opened read-only for each access and only the requested slice is read (h5py hyperslab), so
  nothing large is held in memory and the source is safe to use from forked data-loader workers.
* Subject = file stem; the ``patient_id`` attribute and the XML header are never read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from mrcore.contrast import FASTMRI_ACQUISITIONS, contrast_of_acquisition
from mrcore.data.base import CONTRASTS, KSpaceSlice
from mrcore.data.readers.indexed import IndexedFileSource, list_files, rss, site_of
from mrcore.validate import check_choice

__all__ = ["FASTMRI_ACQUISITIONS", "FastMRISource", "contrast_of_acquisition", "rss"]

_SUFFIXES = (".h5", ".hdf5")


@dataclass(frozen=True)
class _File:
    path: Path
    site: str
    subject: str
    contrast: str
    num_slices: int
    multicoil: bool
    has_rss: bool


class FastMRISource(IndexedFileSource[_File]):
    """Slices of fastMRI HDF5 files.

    Parameters
    ----------
    root : path or list of paths
        A directory (searched recursively for ``*.h5``/``*.hdf5``), one file, or a list of files.
    site : str or mapping
        Site name of every file, or a mapping from file name / file stem to site name.
    contrasts : sequence of str, optional
        Keep only files of these contrasts (default: all).
    contrast_map : mapping, optional
        Extra or overriding ``acquisition`` -> contrast entries (see :data:`FASTMRI_ACQUISITIONS`).
    default_contrast : str, optional
        Contrast of files whose ``acquisition`` is missing or unknown; ``None`` (default) makes them an error.
    """

    #: axis of the k-space arrays along which lines are phase encoded (masks apply there); fastMRI: last.
    phase_encode_axis: int = -1
    _format_name = "fastMRI"

    def __init__(
        self,
        root: str | Path | Sequence[str | Path],
        *,
        site: str | Mapping[str, str] = "fastmri",
        contrasts: Sequence[str] | None = None,
        contrast_map: Mapping[str, str] | None = None,
        default_contrast: str | None = None,
    ) -> None:
        what = "FastMRISource"
        if contrasts is not None:
            contrasts = tuple(contrasts)
            for c in contrasts:
                check_choice("contrast", c, CONTRASTS)
        if default_contrast is not None:
            check_choice("default_contrast", default_contrast, CONTRASTS)
        if contrast_map:
            for k, v in contrast_map.items():
                check_choice(f"contrast_map[{k!r}]", v, CONTRASTS)

        files: list[_File] = []
        for path in list_files(root, what, _SUFFIXES):
            info = self._inspect(path, contrast_map, default_contrast)
            if contrasts is not None and info[0] not in contrasts:
                continue
            contrast, n, multicoil, has_rss = info
            files.append(_File(path, site_of(path, site, what), path.stem, contrast, n, multicoil, has_rss))
        if not files:
            raise ValueError(
                f"{what}: no usable fastMRI files under {root}"
                + (f" with contrasts {', '.join(contrasts)}" if contrasts else "")
            )

        # per site: list of (file, slice) in file-name order
        self._index_files(files)

    # --- construction helpers ------------------------------------------------------------------
    @staticmethod
    def _inspect(path: Path, contrast_map, default_contrast) -> tuple[str, int, bool, bool]:
        if not h5py.is_hdf5(path):
            raise ValueError(f"{path}: not an HDF5 file (expected a fastMRI HDF5 file with a 'kspace' dataset)")
        with h5py.File(path, "r") as f:
            if "kspace" not in f or not isinstance(f["kspace"], h5py.Dataset):
                raise ValueError(f"{path}: no 'kspace' dataset (expected fastMRI layout [slices, coils, ky, kx])")
            ks = f["kspace"]
            if ks.ndim not in (3, 4):
                raise ValueError(
                    f"{path}: 'kspace' must be [slices, coils, ky, kx] or [slices, ky, kx], got {ks.dtype} {ks.shape}"
                )
            if ks.dtype.kind != "c":
                raise ValueError(f"{path}: 'kspace' must be complex64, got {ks.dtype} {ks.shape}")
            if min(ks.shape) == 0:
                raise ValueError(f"{path}: 'kspace' is empty, got shape {ks.shape}")
            acq = f.attrs.get("acquisition")
            if isinstance(acq, bytes):
                acq = acq.decode("utf-8", "replace")
            contrast = contrast_of_acquisition(acq, contrast_map, default_contrast)
            if contrast is None:
                raise ValueError(
                    f"{path}: unknown acquisition {acq!r}; expected one of "
                    f"{', '.join(map(repr, FASTMRI_ACQUISITIONS))} (or pass contrast_map / default_contrast)"
                )
            has_rss = "reconstruction_rss" in f
            return contrast, int(ks.shape[0]), ks.ndim == 4, has_rss

    def _read_kspace(self, f: _File, s: int) -> np.ndarray:
        with h5py.File(f.path, "r") as h:
            k = np.asarray(h["kspace"][s])
        if not f.multicoil:
            k = k[None]
        return k.astype(np.complex64, copy=False)

    # --- SliceSource (the rest from IndexedFileSource) -------------------------------------------
    def image(self, site: str, index: int, contrast: str) -> np.ndarray:
        """RSS of ``ifft2c`` of the full stored k-space: float32 [ky, kx]-sized (not the 320x320 crop)."""
        return super().image(site, index, contrast)

    def kspace(self, site: str, index: int, contrast: str, num_coils: int = 8) -> KSpaceSlice:
        """The stored k-space (``num_coils`` is ignored), target = RSS of its ``ifft2c``, ``maps=None``."""
        return super().kspace(site, index, contrast, num_coils)

    def reconstruction_rss(self, site: str, index: int) -> np.ndarray | None:
        """fastMRI's stored ``reconstruction_rss`` slice (float32, usually 320x320), or ``None`` if absent."""
        f, s = self._entry(site, index)
        if not f.has_rss:
            return None
        with h5py.File(f.path, "r") as h:
            return np.asarray(h["reconstruction_rss"][s], dtype=np.float32)
