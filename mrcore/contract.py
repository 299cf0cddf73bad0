"""The k-space / mask contract: what every entry point accepts as undersampled multi-coil k-space.

One definition, called by the Triton client (:mod:`serving.client`), the file readers
(:mod:`serving.dicom.kspace_files`), the DICOM raw-data codec (:mod:`serving.dicom.rawdata`) and the REST API
(:mod:`serving.api.inputs`), so a bad input gets the same verdict whichever way it arrives.

* ``kspace``: complex ``[slices, coils, ky, kx]`` or ``[coils, ky, kx]``, finite, ``ky, kx >= 16``, not all
  zero; returned as C-contiguous ``complex64 [slices, coils, ky, kx]``.
* ``mask``: real 0/1 ``[ky, kx]`` (one for every slice), ``[slices, ky, kx]``, or a line mask: 1-D of length
  ``ky`` (lines along kx, phase encoding on axis -2) or of length ``kx`` (phase encoding on axis -1; ``ky``
  wins when ``ky == kx``); every slice samples something. Returned as ``float32 [ky, kx]`` or
  ``float32 [slices, ky, kx]``.

Every refusal is a :class:`ContractError` (a ``ValueError``) naming the field, what was expected and what
came, with a short machine-readable ``code``; REST answers it with 422 and those fields, the DICOM layer
with a DIMSE failure status, the CLIs with an error message.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["KSPACE_LAYOUT", "MIN_MATRIX", "ContractError", "check_kspace", "check_mask", "check_mask_shape", "describe",
           "kspace_layout", "mask_per_slice"]

#: the accepted k-space layouts, as error messages spell them
KSPACE_LAYOUT = "complex64 [slices, coils, ky, kx] or [coils, ky, kx]"
#: smallest accepted ky and kx (the served networks downsample; fewer samples carry no image)
MIN_MATRIX = 16


class ContractError(ValueError):
    """Input that breaks the k-space / mask contract.

    Attributes
    ----------
    field : ``"kspace"`` or ``"mask"`` (or the caller's name for it)
    expected : what would have been accepted
    got : what came (dtype and shape, or a count)
    code : ``invalid_dtype``, ``invalid_rank``, ``empty_array``, ``invalid_shape``, ``not_finite``,
        ``invalid_input`` (k-space without a sample), ``shape_mismatch``, ``invalid_values``
    """

    def __init__(self, message: str, *, field: str, expected: str, got: str, code: str) -> None:
        super().__init__(message)
        self.field, self.expected, self.got, self.code = field, expected, got, code


def describe(value: Any) -> str:
    """``"float32 (2, 8, 64, 64)"`` for an array, the type name for anything else."""
    if isinstance(value, np.ndarray):
        return f"{value.dtype} {tuple(value.shape)}"
    return type(value).__name__


def kspace_layout(kspace: Any, *, field: str = "kspace") -> np.ndarray:
    """The layout half of :func:`check_kspace`: a complex array of rank 3 or 4 without an empty axis, returned
    as a ``[slices, coils, ky, kx]`` view (values not looked at, no copy).

    Raises
    ------
    ContractError
        ``invalid_dtype``, ``invalid_rank``, ``empty_array``.
    """
    got = describe(kspace)
    if not isinstance(kspace, np.ndarray) or kspace.dtype.kind != "c":
        hint = (" (real/imaginary as a trailing axis is not accepted: send a complex array)"
                if isinstance(kspace, np.ndarray) and kspace.ndim and kspace.shape[-1] == 2 else "")
        raise ContractError(f"{field} must be {KSPACE_LAYOUT}, got {got}{hint}", field=field, expected=KSPACE_LAYOUT,
                            got=got, code="invalid_dtype")
    if kspace.ndim not in (3, 4):
        raise ContractError(f"{field} must have rank 3 or 4, got rank {kspace.ndim}", field=field,
                            expected=KSPACE_LAYOUT, got=got, code="invalid_rank")
    if kspace.size == 0:
        raise ContractError(f"{field} has an empty axis", field=field, expected=KSPACE_LAYOUT + " with no empty axis",
                            got=got, code="empty_array")
    return kspace if kspace.ndim == 4 else kspace[None]


def check_kspace(kspace: Any, *, field: str = "kspace", require_samples: bool = True) -> np.ndarray:
    """Validate and normalise a k-space volume.

    Parameters
    ----------
    kspace : complex [slices, coils, ky, kx] or [coils, ky, kx] (centred orthonormal FFT convention)
    field : the name errors give it
    require_samples : refuse k-space that is zero everywhere (off for one part of a volume, e.g. one
        raw-data instance, whose volume is checked as a whole)

    Returns
    -------
    complex64 [slices, coils, ky, kx], C-contiguous (no copy when it already is).

    Raises
    ------
    ContractError
        Those of :func:`kspace_layout`; ``invalid_shape`` (ky or kx below :data:`MIN_MATRIX`), ``not_finite``,
        ``invalid_input`` (no non-zero sample).
    """
    k = kspace_layout(kspace, field=field)
    got = describe(kspace)
    ky, kx = k.shape[-2:]
    if min(ky, kx) < MIN_MATRIX:
        raise ContractError(f"{field} matrix (ky, kx) must be at least {MIN_MATRIX}x{MIN_MATRIX}, got {ky}x{kx}",
                            field=field, expected=f"ky and kx of at least {MIN_MATRIX}", got=got, code="invalid_shape")
    k = np.ascontiguousarray(k, dtype=np.complex64)
    finite = np.isfinite(k)
    if not finite.all():
        raise ContractError(f"{field} holds {int(finite.size - finite.sum())} NaN/Inf values", field=field,
                            expected="finite values", got=got, code="not_finite")
    if require_samples and not np.any(k):
        raise ContractError(f"{field} is all zeros", field=field, expected="sampled (non-zero) k-space lines",
                            got=got, code="invalid_input")
    return k


def check_mask(mask: Any, kspace_shape: tuple[int, ...], *, field: str = "mask") -> np.ndarray:
    """Validate and normalise a sampling mask for k-space of ``kspace_shape``.

    Parameters
    ----------
    mask : real 0/1 [ky, kx], [slices, ky, kx], or a line mask [ky] (or [kx] when ``kx != ky``)
    kspace_shape : (slices, coils, ky, kx) of the k-space it samples (as :func:`check_kspace` returns it)
    field : the name errors give it

    Returns
    -------
    float32 [ky, kx] or [slices, ky, kx], C-contiguous, values 0 and 1.

    Raises
    ------
    ContractError
    """
    expected = _mask_expected(kspace_shape)
    got = describe(mask)
    if not isinstance(mask, np.ndarray) or mask.dtype.kind not in "biuf":
        raise ContractError(f"{field} must be a real (0/1) array, got {got}", field=field, expected=expected, got=got,
                            code="invalid_dtype")
    if mask.size == 0:
        raise ContractError(f"{field} is empty", field=field, expected=expected, got=got, code="empty_array")
    _, _, ky, kx = kspace_shape
    m = mask
    if m.ndim == 1 and m.shape[0] == ky:
        m = np.repeat(m[:, None], kx, axis=1)
    elif m.ndim == 1 and m.shape[0] == kx:
        m = np.repeat(m[None, :], ky, axis=0)
    else:
        check_mask_shape(m.shape, kspace_shape, field=field, got=got)
    m = np.ascontiguousarray(m, dtype=np.float32)
    if not np.isfinite(m).all() or not np.isin(m, (0.0, 1.0)).all():
        raise ContractError(f"{field} must hold only 0 and 1", field=field, expected=expected, got=got,
                            code="invalid_values")
    if not m.reshape(-1, ky * kx).any(axis=1).all():
        raise ContractError(f"{field} samples nothing (in at least one slice)", field=field, expected=expected,
                            got=got, code="invalid_values")
    return m


def check_mask_shape(mask_shape: tuple[int, ...], kspace_shape: tuple[int, ...], *, field: str = "mask",
                     got: str | None = None) -> None:
    """Refuse a (2-D or 3-D) mask shape that does not fit k-space of ``kspace_shape`` [slices, coils, ky, kx]
    (``shape_mismatch``); for codecs that know the shape before they read the samples."""
    s, _, ky, kx = kspace_shape
    if tuple(mask_shape) not in ((ky, kx), (s, ky, kx)):
        expected = _mask_expected(kspace_shape)
        raise ContractError(f"{field} must be {expected} (kspace {list(kspace_shape)}), got "
                            f"{got or tuple(mask_shape)}", field=field, expected=expected,
                            got=got or str(tuple(mask_shape)), code="shape_mismatch")


def _mask_expected(kspace_shape: tuple[int, ...]) -> str:
    s, _, ky, kx = kspace_shape
    return f"float32 [ky, kx] = [{ky}, {kx}], [slices, ky, kx] = [{s}, {ky}, {kx}], or lines [{ky}], values 0/1"


def mask_per_slice(mask: np.ndarray, slices: int) -> np.ndarray:
    """A checked mask as float32 [slices, ky, kx] (a [ky, kx] mask repeated for every slice)."""
    m = np.asarray(mask, dtype=np.float32)
    return np.ascontiguousarray(np.broadcast_to(m, (slices, *m.shape[-2:])))
