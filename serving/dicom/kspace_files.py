"""k-space from files: ``.npy``, ``.npz``, fastMRI HDF5 and ISMRMRD/MRD, for ``wrap-kspace`` and REST.

The HDF5 formats are read with the project's readers (:class:`mrcore.data.readers.FastMRISource`,
:class:`mrcore.data.readers.MRDSource`); nothing is re-parsed here except fastMRI's optional ``/mask``
dataset (a 1-D mask over the last axis, present in undersampled fastMRI test files), which the reader
does not expose.

Masks: an explicit ``mask`` wins; else ``.npz`` ``mask`` / fastMRI ``/mask`` / MRD sampled lines; else, with
``acceleration``, a mask from :func:`mrcore.masks.make_mask` is applied (retrospective undersampling of
fully sampled data); else ``None`` (the receiver treats non-zero samples as sampled). k-space and mask are
checked by the one contract of :mod:`mrcore.contract` (``ContractError``, a ValueError, on refusal).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from mrcore.contract import check_kspace, check_mask
from mrcore.data.readers.fastmri import FastMRISource
from mrcore.data.readers.mrd import MRDSource
from mrcore.masks import make_mask  # imports sigpy (seconds): only when needed

__all__ = ["KSpaceFile", "read_kspace_file"]


@dataclass(frozen=True)
class KSpaceFile:
    """k-space read from a file.

    Attributes
    ----------
    kspace : complex64 [slices, coils, ky, kx] (undersampled when a mask was applied)
    mask : float32 [ky, kx] or [slices, ky, kx], or None
    contrast : str or None
    phase_encoding_axis : -2 (rows; MRD, ``.npy``) or -1 (columns; fastMRI)
    """

    kspace: np.ndarray
    mask: np.ndarray | None
    contrast: str | None
    phase_encoding_axis: int


def _load_numpy(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False), None
    with np.load(path, allow_pickle=False) as z:
        if "kspace" not in z:
            raise ValueError(f"{path}: no 'kspace' array (found {sorted(z.files)})")
        return z["kspace"], (z["mask"] if "mask" in z else None)


def _load_fastmri(path: Path, contrast: str | None) -> tuple[np.ndarray, np.ndarray | None, str]:
    src = FastMRISource(path, site="file", default_contrast=contrast)
    c = src.slice_contrast("file", 0)
    k = np.stack([src.kspace("file", i, c).kspace for i in range(src.num_slices("file"))])
    mask = None
    with h5py.File(path, "r") as f:
        if "mask" in f:  # undersampled fastMRI files: 1-D mask over the last (phase-encoding) axis
            m = np.asarray(f["mask"], dtype=np.float32).reshape(-1)
            if m.size == k.shape[-1]:
                mask = np.broadcast_to(m[None, :], k.shape[-2:]).copy()
    return k, mask, c


def _load_mrd(path: Path, contrast: str | None) -> tuple[np.ndarray, np.ndarray, str]:
    src = MRDSource(path, site="file", contrast=contrast)
    c = src.slice_contrast("file", 0)
    n = src.num_slices("file")
    k = np.stack([src.kspace("file", i, c).kspace for i in range(n)])
    lines = np.stack([src.sampled_lines("file", i) for i in range(n)])  # [S, ky]
    mask = np.repeat(lines[:, :, None], k.shape[-1], axis=2).astype(np.float32)
    if np.all(mask == mask[:1]):
        mask = mask[0]
    return k, mask, c


def read_kspace_file(
    path: str | Path,
    *,
    mask: np.ndarray | str | Path | None = None,
    contrast: str | None = None,
    acceleration: float | None = None,
    mask_kind: str = "equispaced",
    center_fraction: float = 0.08,
    seed: int = 0,
) -> KSpaceFile:
    """Read k-space from ``.npy`` / ``.npz`` (``kspace``, optional ``mask``) / fastMRI ``.h5`` / MRD ``.h5``/``.mrd``.

    Parameters
    ----------
    path : the file.
    mask : float32 [ky, kx] or [slices, ky, kx] array, or a ``.npy`` file of one; optional.
    contrast : contrast name; for HDF5 files it is the fallback when the file names none.
    acceleration : when no mask is found, undersample retrospectively with ``make_mask(mask_kind, (ky, kx),
        acceleration, center_fraction, seed, axis=phase_encoding_axis)``.

    Returns
    -------
    KSpaceFile with kspace complex64 [slices, coils, ky, kx].
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p} does not exist")
    axis, found_contrast = -2, contrast
    if p.suffix in (".npy", ".npz"):
        k, file_mask = _load_numpy(p)
    elif h5py.is_hdf5(p):
        with h5py.File(p, "r") as f:
            is_fastmri = isinstance(f.get("kspace"), h5py.Dataset)
        if is_fastmri:
            k, file_mask, found_contrast = _load_fastmri(p, contrast)
            axis = -1
        else:
            k, file_mask, found_contrast = _load_mrd(p, contrast)
    else:
        raise ValueError(f"{p}: unsupported file (expected .npy, .npz, fastMRI .h5 or ISMRMRD .h5/.mrd)")
    if mask is not None:
        file_mask = np.load(mask, allow_pickle=False) if isinstance(mask, (str, Path)) else np.asarray(mask)
    k = check_kspace(k)
    _, _, ny, nx = k.shape
    if file_mask is None and acceleration is not None:
        file_mask = make_mask(mask_kind, (ny, nx), float(acceleration), center_fraction, seed, axis=axis)
    if file_mask is not None:
        file_mask = check_mask(np.asarray(file_mask), k.shape)
        k = (k * (file_mask if file_mask.ndim == 2 else file_mask[:, None])).astype(np.complex64)
    return KSpaceFile(k, file_mask, found_contrast, axis)
