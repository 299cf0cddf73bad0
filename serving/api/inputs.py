"""Request bodies -> validated arrays. Every problem is an :class:`~serving.api.errors.ApiError` (4xx) naming
the field and what was expected.

Bodies
------
* raw: the file is the whole body (``curl --data-binary @file``); the format comes from ``input_format``,
  else the ``Content-Type``, else the file's magic bytes;
* ``multipart/form-data`` (``curl -F file=@kspace.npy -F mask=@mask.npy``): part ``file`` (several ``file``
  parts for single DICOM instances), optional ``mask`` and ``maps`` (``.npy``);
* ``multipart/related; type="application/dicom"`` (DICOMweb STOW style): one DICOM instance per part.

Reconstruction inputs (``kspace`` complex64 ``[slices, coils, ky, kx]`` or ``[coils, ky, kx]``):
``npy``, ``npz`` (``kspace``, optional ``mask``, ``maps``), ``fastmri`` (HDF5 ``/kspace``, optional
``/mask``), ``mrd`` (ISMRMRD HDF5), ``dicom`` (Raw Data Storage instances with the k-space private block of
:mod:`serving.dicom.rawdata`). HDF5 and DICOM parsing is :mod:`serving.dicom` 's; this module adds the
checks that give each error its field.

Synthesis inputs (magnitude ``[slices, rows, cols]``): ``dicom`` (MR series: zip, instances, multipart),
``nifti`` (``.nii`` / ``.nii.gz``, slices along the third voxel axis), ``npy`` (float ``[S, H, W]``).
"""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset

from mrcore.contract import ContractError, check_mask, kspace_layout
from mrcore.contract import check_kspace as contract_kspace
from mrcore.contrast import contrast_from_header, contrast_of_acquisition
from mrcore.data.base import CONTRASTS
from mrcore.data.readers.mrd import read_header
from serving.api.errors import ApiError
from serving.dicom import DicomInputError, SeriesGeometry, SeriesVolume, decode_kspace, load_datasets, read_series
from serving.dicom.kspace_files import read_kspace_file
from serving.dicom.series import guess_contrast

if TYPE_CHECKING:
    from serving.api.settings import LimitSettings

__all__ = ["ReconInput", "SynthInput", "Upload", "check_contrast", "detect_recon_format", "detect_synth_format",
           "parse_recon", "parse_synth"]

RECON_INPUTS = ("npy", "npz", "fastmri", "mrd", "dicom")
SYNTH_INPUTS = ("dicom", "nifti", "npy")
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_GZIP_MAGIC = b"\x1f\x8b"
_ACCEPTED_RECON = ".npy, .npz, fastMRI HDF5, ISMRMRD/MRD HDF5, or DICOM Raw Data (zip or instances)"
_ACCEPTED_SYNTH = "a DICOM MR series (zip, instances or multipart/related), NIfTI (.nii/.nii.gz) or .npy"


@dataclass
class Upload:
    """A request body. ``files`` holds the main file(s) (bytes in memory or a path on disk, in upload order);
    ``parts`` the optional named extras (``mask``, ``maps``)."""

    files: list[bytes | Path]
    content_type: str | None = None
    filename: str | None = None
    parts: dict[str, bytes | Path] = field(default_factory=dict)
    multipart_related: bool = False

    @property
    def main(self) -> bytes | Path:
        return self.files[0]

    def head(self, n: int = 512) -> bytes:
        return _head(self.main, n)

    def nbytes(self) -> int:
        return sum(len(f) if isinstance(f, bytes) else Path(f).stat().st_size for f in self.files)


@dataclass
class ReconInput:
    """Validated reconstruction input."""

    kspace: np.ndarray                  # complex64 [S, C, ky, kx]
    mask: np.ndarray | None             # float32 [ky, kx] or [S, ky, kx]
    maps: np.ndarray | None             # complex64 [C, ky, kx] or [S, C, ky, kx]
    input_format: str
    contrast: str | None = None
    geometry: SeriesGeometry | None = None  # DICOM Raw Data input
    sources: list[Dataset] | None = None    # source Raw Data datasets (DICOM input)
    description: str | None = None      # series description hint (MRD protocol name)
    pixel_spacing: tuple[float, float] | None = None


@dataclass
class SynthInput:
    """Validated synthesis input."""

    volume: np.ndarray                  # float32 [S, rows, cols]
    input_format: str
    source: str | None = None           # contrast found in the input (DICOM heuristics)
    series: SeriesVolume | None = None  # DICOM input
    nifti: nib.Nifti1Image | nib.Nifti2Image | None = None  # NIfTI input: affine and header kept for the answer


def _head(data: bytes | Path, n: int) -> bytes:
    if isinstance(data, (bytes, bytearray)):
        return bytes(data[:n])
    with open(data, "rb") as f:
        return f.read(n)


def _fmt(a: np.ndarray) -> str:
    return f"{a.dtype} {tuple(a.shape)}"


def check_contrast(value: str | None, field_name: str) -> str | None:
    """``value`` if it is one of :data:`mrcore.data.base.CONTRASTS` exactly (the enum of the OpenAPI document),
    else ApiError 422 naming ``field_name``."""
    if value is None or value in CONTRASTS:
        return value
    raise ApiError(422, f"unknown contrast {value[:40]!r}", field=field_name, expected=f"one of {', '.join(CONTRASTS)}",
                   got=value[:40], code="unknown_contrast")


# --------------------------------------------------------------------------------------------------
# format detection
# --------------------------------------------------------------------------------------------------
_CT_RECON = {"application/x-npy": "npy", "application/npy": "npy", "application/x-npz": "npz",
             "application/x-fastmri": "fastmri", "application/x-ismrmrd": "mrd", "application/x-mrd": "mrd",
             "application/dicom": "dicom", "application/dicom+zip": "dicom"}
_CT_SYNTH = {"application/x-npy": "npy", "application/npy": "npy", "application/x-nifti": "nifti",
             "application/nifti": "nifti", "application/dicom": "dicom", "application/dicom+zip": "dicom"}


def _is_npz(data: bytes | Path) -> bool:
    try:
        with zipfile.ZipFile(io.BytesIO(data) if isinstance(data, bytes) else data) as z:
            names = [n for n in z.namelist() if not n.endswith("/")]
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    return bool(names) and all(n.endswith(".npy") for n in names)


def _is_fastmri(data: bytes | Path) -> bool:
    try:
        with h5py.File(io.BytesIO(data) if isinstance(data, bytes) else data, "r") as f:
            return isinstance(f.get("kspace"), h5py.Dataset)
    except Exception:  # noqa: BLE001 - h5py raises OSError/KeyError/ValueError on corrupt files
        return False


def _is_dicom(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


def detect_recon_format(upload: Upload, declared: str | None) -> str:
    """``npy`` / ``npz`` / ``fastmri`` / ``mrd`` / ``dicom`` from ``input_format``, Content-Type or magic bytes."""
    if declared:
        return declared
    if upload.multipart_related:
        return "dicom"
    ct = (upload.content_type or "").split(";")[0].strip().lower()
    if ct in _CT_RECON:
        return _CT_RECON[ct]
    head = upload.head()
    if not head:
        raise ApiError(422, "the request body is empty", field="body", expected=_ACCEPTED_RECON, code="empty_body")
    if head.startswith(_NPY_MAGIC):
        return "npy"
    if head.startswith(_ZIP_MAGIC):
        return "npz" if _is_npz(upload.main) else "dicom"
    if head.startswith(_HDF5_MAGIC):
        return "fastmri" if _is_fastmri(upload.main) else "mrd"
    if _is_dicom(head):
        return "dicom"
    raise ApiError(415, "unrecognised body: not .npy, .npz, HDF5 or DICOM", field="body", expected=_ACCEPTED_RECON,
                   got=f"{len(head)}+ bytes starting {head[:8]!r}", code="unsupported_format")


def detect_synth_format(upload: Upload, declared: str | None) -> str:
    if declared:
        return declared
    if upload.multipart_related or len(upload.files) > 1:
        return "dicom"
    ct = (upload.content_type or "").split(";")[0].strip().lower()
    if ct in _CT_SYNTH:
        return _CT_SYNTH[ct]
    head = upload.head()
    if not head:
        raise ApiError(422, "the request body is empty", field="body", expected=_ACCEPTED_SYNTH, code="empty_body")
    if head.startswith(_NPY_MAGIC):
        return "npy"
    if head.startswith(_ZIP_MAGIC) or _is_dicom(head):
        return "dicom"
    if head.startswith(_GZIP_MAGIC) or _nifti_header(head):
        return "nifti"
    raise ApiError(415, "unrecognised body: not DICOM, NIfTI or .npy", field="body", expected=_ACCEPTED_SYNTH,
                   got=f"{len(head)}+ bytes starting {head[:8]!r}", code="unsupported_format")


def _nifti_header(head: bytes) -> bool:
    if len(head) < 348:
        return False
    size_le, size_be = int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big")
    return 348 in (size_le, size_be) or 540 in (size_le, size_be)


# --------------------------------------------------------------------------------------------------
# numpy
# --------------------------------------------------------------------------------------------------
def _load_npy(data: bytes | Path, field_name: str) -> np.ndarray:
    """The array of a .npy body (a file on disk is memory-mapped: a queued job does not hold it in memory)."""
    try:
        arr = (np.load(io.BytesIO(data), allow_pickle=False) if isinstance(data, bytes)
               else np.load(data, mmap_mode="r", allow_pickle=False))
    except ValueError as exc:
        msg = "object arrays (pickles) are not accepted" if "pickle" in str(exc).lower() else "not a valid .npy file"
        raise ApiError(422, f"{field_name}: {msg}", field=field_name, expected="a .npy file of a numeric array",
                       code="unreadable") from None
    except (OSError, EOFError, zipfile.BadZipFile, TypeError) as exc:
        raise ApiError(422, f"{field_name}: not a readable .npy file ({exc.__class__.__name__})", field=field_name,
                       expected="a .npy file of a numeric array", code="unreadable") from None
    if not isinstance(arr, np.ndarray):
        raise ApiError(422, f"{field_name}: expected one array (.npy), got an archive", field=field_name,
                       expected="a .npy file", code="invalid_input")
    return arr


def _load_npz(data: bytes | Path) -> dict[str, np.ndarray]:
    try:
        z = np.load(io.BytesIO(data) if isinstance(data, bytes) else data, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - zipfile/numpy raise many types on corrupt archives
        raise ApiError(422, f"not a readable .npz archive ({exc.__class__.__name__})", field="body",
                       expected="a .npz with 'kspace' (and optional 'mask', 'maps')", code="unreadable") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ApiError(422, "expected a .npz archive, got a single array", field="body",
                       expected="a .npz with 'kspace' (and optional 'mask', 'maps')", code="invalid_input")
    with z:
        names = list(z.files)
        if "kspace" not in names:
            raise ApiError(422, f"the .npz holds no 'kspace' array (found {sorted(names)[:10]})", field="kspace",
                           expected="an array named 'kspace' in the .npz", code="missing_field")
        unknown = sorted(set(names) - {"kspace", "mask", "maps"})
        if unknown:
            raise ApiError(422, f"unknown array(s) {unknown[:5]} in the .npz", field=unknown[0],
                           expected="only 'kspace', 'mask', 'maps'", code="invalid_input")
        out = {}
        for name in names:
            try:
                out[name] = z[name]
            except ValueError as exc:
                msg = "object arrays (pickles) are not accepted" if "pickle" in str(exc).lower() else "unreadable"
                raise ApiError(422, f"{name}: {msg}", field=name, expected="a numeric array",
                               code="unreadable") from None
            except Exception as exc:  # noqa: BLE001 - corrupt member
                raise ApiError(422, f"{name}: unreadable array in the .npz ({exc.__class__.__name__})", field=name,
                               expected="a numeric array", code="unreadable") from None
        return out


# --------------------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------------------
def _check_limits_volume(s: int, rows: int, cols: int, limits: LimitSettings, sync: bool, field_name: str, *,
                         minimum: int = 16) -> None:
    if s > limits.max_slices:
        raise ApiError(413, f"{field_name}: {s} slices exceed the limit of {limits.max_slices}", field=field_name,
                       expected=f"at most {limits.max_slices} slices", got=str(s), code="too_many_slices")
    if sync and s > limits.sync_max_slices:
        raise ApiError(413, f"{field_name}: {s} slices exceed the limit of a synchronous request "
                            f"({limits.sync_max_slices}); submit a job (POST /v1/jobs/...)", field=field_name,
                       expected=f"at most {limits.sync_max_slices} slices, or job mode", got=str(s),
                       code="too_many_slices")
    if min(rows, cols) < minimum or max(rows, cols) > limits.max_matrix:
        raise ApiError(422, f"{field_name}: matrix {rows}x{cols} is outside {minimum}..{limits.max_matrix}",
                       field=field_name, expected=f"rows and columns between {minimum} and {limits.max_matrix}",
                       got=f"{rows}x{cols}", code="invalid_shape")


def check_kspace(k: np.ndarray, limits: LimitSettings, *, sync: bool) -> np.ndarray:
    """complex64 [S, C, ky, kx] from a [C, ky, kx] / [S, C, ky, kx] complex array: the k-space contract
    (:func:`mrcore.contract.check_kspace`) plus this server's limits; ContractError or ApiError."""
    s, c, ky, kx = kspace_layout(k).shape
    _check_limits_volume(s, ky, kx, limits, sync, "kspace", minimum=0)  # the contract's minimum comes next
    if c > limits.max_coils:
        raise ApiError(422, f"kspace has {c} coils, more than {limits.max_coils}", field="kspace",
                       expected=f"at most {limits.max_coils} coils", got=_fmt(k), code="invalid_shape")
    return contract_kspace(k)


def check_maps(maps, kspace: np.ndarray) -> np.ndarray:
    s, c, ky, kx = kspace.shape
    expected = f"complex coil maps [coils, y, x] = [{c}, {ky}, {kx}] or [slices, coils, y, x] = [{s}, {c}, {ky}, {kx}]"
    if not isinstance(maps, np.ndarray) or maps.dtype.kind != "c":
        got = _fmt(maps) if isinstance(maps, np.ndarray) else type(maps).__name__
        raise ApiError(422, f"maps must be complex, got {got}", field="maps", expected=expected, got=got,
                       code="invalid_dtype")
    if maps.shape not in ((c, ky, kx), (s, c, ky, kx)):
        raise ApiError(422, f"maps shape {list(maps.shape)} does not match kspace {list(kspace.shape)}", field="maps",
                       expected=expected, got=_fmt(maps), code="shape_mismatch")
    maps = maps.astype(np.complex64, copy=False)
    if not np.isfinite(maps).all():
        raise ApiError(422, "maps hold NaN/Inf values", field="maps", expected="finite values", got=_fmt(maps),
                       code="not_finite")
    return np.ascontiguousarray(maps)


def check_images(x: np.ndarray, limits: LimitSettings, *, sync: bool, field_name: str = "body") -> np.ndarray:
    """float32 [S, rows, cols] from a real [S, H, W] / [H, W] array, or ApiError."""
    expected = "real float [slices, rows, cols] or [rows, cols]"
    if not isinstance(x, np.ndarray) or x.dtype.kind not in "biuf":
        got = _fmt(x) if isinstance(x, np.ndarray) else type(x).__name__
        raise ApiError(422, f"images must be real numbers, got {got}", field=field_name, expected=expected, got=got,
                       code="invalid_dtype")
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ApiError(422, f"images must have rank 2 or 3, got rank {x.ndim}", field=field_name, expected=expected,
                       got=_fmt(x), code="invalid_rank")
    if x.size == 0:
        raise ApiError(422, "images have an empty axis", field=field_name, expected=expected, got=_fmt(x),
                       code="empty_array")
    _check_limits_volume(x.shape[0], x.shape[1], x.shape[2], limits, sync, field_name)
    x = x.astype(np.float32, copy=False)
    finite = np.isfinite(x)
    if not finite.all():
        raise ApiError(422, f"images hold {int(finite.size - finite.sum())} NaN/Inf values", field=field_name,
                       expected="finite values", got=_fmt(x), code="not_finite")
    return np.ascontiguousarray(x)


# --------------------------------------------------------------------------------------------------
# reconstruction
# --------------------------------------------------------------------------------------------------
def parse_recon(upload: Upload, declared: str | None, limits: LimitSettings, *, contrast: str | None = None,
                sync: bool = True, scratch: Path | None = None) -> ReconInput:
    """Validated k-space (+ mask, maps, geometry when the format has them) from a request body; a refusal of
    the k-space / mask contract (:mod:`mrcore.contract`) becomes its 422 here, whatever the format."""
    try:
        return _parse_recon(upload, declared, limits, contrast=contrast, sync=sync, scratch=scratch)
    except ContractError as exc:
        raise ApiError.from_contract(exc) from None


def _parse_recon(upload: Upload, declared: str | None, limits: LimitSettings, *, contrast: str | None,
                 sync: bool, scratch: Path | None) -> ReconInput:
    fmt = detect_recon_format(upload, declared)
    if len(upload.files) > 1 and fmt != "dicom":
        raise ApiError(422, f"{len(upload.files)} files uploaded; {fmt} input is one file", field="file",
                       expected="one 'file' part (several only for DICOM instances)", code="invalid_input")
    maps = mask = None
    geometry = sources = description = None
    spacing = None
    if fmt == "npy":
        kspace = check_kspace(_load_npy(upload.main, "kspace"), limits, sync=sync)
    elif fmt == "npz":
        arrays = _load_npz(upload.main)
        kspace = check_kspace(arrays["kspace"], limits, sync=sync)
        mask = arrays.get("mask")
        maps = arrays.get("maps")
    elif fmt in ("fastmri", "mrd"):
        kspace, mask, found, description, spacing = _read_hdf5(upload.main, fmt, contrast, scratch)
        kspace = check_kspace(kspace, limits, sync=sync)
        contrast = contrast or found
    else:  # dicom raw data
        kv = _read_dicom_kspace(upload, limits)
        kspace = check_kspace(kv.kspace, limits, sync=sync)
        mask, geometry, sources = kv.mask, kv.geometry, kv.datasets
        contrast = contrast or kv.contrast
        description = str(sources[0].get("SeriesDescription", "") or "")[:64] or None
    if "mask" in upload.parts:
        if mask is not None:
            raise ApiError(422, "two masks given (in the file and as a 'mask' part)", field="mask",
                           expected="at most one mask", code="invalid_input")
        mask = _load_npy(upload.parts["mask"], "mask")
    if "maps" in upload.parts:
        if maps is not None:
            raise ApiError(422, "two sets of coil maps given (in the .npz and as a 'maps' part)", field="maps",
                           expected="at most one set of maps", code="invalid_input")
        maps = _load_npy(upload.parts["maps"], "maps")
    if mask is not None:
        mask = check_mask(np.asarray(mask), kspace.shape)
    if maps is not None:
        maps = check_maps(np.asarray(maps), kspace)
    return ReconInput(kspace, mask, maps, fmt, contrast, geometry, sources, description, spacing)


def _as_path(data: bytes | Path, scratch: Path | None, suffix: str) -> tuple[Path, bool]:
    if isinstance(data, Path):
        return data, False
    fd, name = tempfile.mkstemp(prefix="mri-api-", suffix=suffix, dir=scratch)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return Path(name), True


def _clean(msg: str, path: Path) -> str:
    return msg.replace(str(path), "upload").replace(path.name, "upload")[:300]


def _read_hdf5(data: bytes | Path, fmt: str, contrast: str | None, scratch: Path | None):
    """(kspace, mask, contrast, description, pixel_spacing) of a fastMRI or MRD file (serving.dicom.kspace_files)."""
    label = "fastMRI" if fmt == "fastmri" else "ISMRMRD/MRD"
    expected = ("fastMRI HDF5 with a complex 'kspace' dataset [slices, coils, ky, kx]" if fmt == "fastmri"
                else "ISMRMRD/MRD HDF5 (Cartesian 2-D, XML header + acquisitions)")
    if not _head(data, 8).startswith(_HDF5_MAGIC):
        raise ApiError(422, f"not an HDF5 file (input_format={fmt})", field="body", expected=expected,
                       code="unreadable")
    path, temporary = _as_path(data, scratch, ".h5")
    try:
        found = description = spacing = None
        try:
            if fmt == "fastmri":
                with h5py.File(path, "r") as f:
                    if not isinstance(f.get("kspace"), h5py.Dataset):
                        raise ApiError(422, "the HDF5 file has no 'kspace' dataset", field="kspace",
                                       expected=expected, code="missing_field")
                    acq = f.attrs.get("acquisition")
                    acq = acq.decode("utf-8", "replace") if isinstance(acq, bytes) else acq
                found = contrast_of_acquisition(acq if isinstance(acq, str) else None)
            else:
                found, description, spacing = _mrd_facts(path)
            kf = read_kspace_file(path, contrast=found or contrast or "T2w")  # contrast only labels the file
        except (ApiError, ContractError):
            raise
        except Exception as exc:  # noqa: BLE001 - h5py/ismrmrd/xsdata raise many types on corrupt input
            raise ApiError(422, f"unreadable {label} file: {_clean(str(exc) or exc.__class__.__name__, path)}",
                           field="body", expected=expected, code="unreadable") from None
    finally:
        if temporary:
            path.unlink(missing_ok=True)
    return kf.kspace, kf.mask, found, description, spacing


def _mrd_facts(path: Path) -> tuple[str | None, str | None, tuple[float, float] | None]:
    """(contrast from the header, protocol name, pixel spacing (row, col) mm of the recon space) of an MRD file.
    Patient/study fields of the header are never read."""
    header, _ = read_header(path)
    contrast = contrast_from_header(header)
    info = getattr(header, "measurementInformation", None)
    protocol = getattr(info, "protocolName", None) if info is not None else None
    spacing = None
    try:
        rs = header.encoding[0].reconSpace
        fov, mat = rs.fieldOfView_mm, rs.matrixSize
        if float(fov.x) > 0 and float(fov.y) > 0 and int(mat.x) > 0 and int(mat.y) > 0:
            spacing = (float(fov.y) / int(mat.y), float(fov.x) / int(mat.x))
    except (AttributeError, IndexError, TypeError, ValueError):
        pass
    return contrast, (str(protocol)[:64] if protocol else None), spacing


def _check_zip(data: bytes | Path, limits: LimitSettings) -> None:
    """Refuse zips whose members would inflate beyond the body limit (zip bombs) before they are read."""
    head = _head(data, 4)
    if head != _ZIP_MAGIC:
        return
    try:
        with zipfile.ZipFile(io.BytesIO(data) if isinstance(data, bytes) else data) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ApiError(422, f"not a readable zip ({exc.__class__.__name__})", field="body",
                       expected="a zip of DICOM files", code="unreadable") from None
    total = sum(i.file_size for i in infos)
    cap = 4 * limits.max_job_body_bytes
    if total > cap or len(infos) > 100_000:
        raise ApiError(413, f"the zip inflates to {total} bytes in {len(infos)} members", field="body",
                       expected=f"at most {cap} bytes uncompressed", code="too_large")


def _load_dicom(upload: Upload, limits: LimitSettings):
    for f in upload.files:
        _check_zip(f, limits)
    try:
        return load_datasets([f if isinstance(f, bytes) else str(f) for f in upload.files]
                             if len(upload.files) > 1 else
                             (upload.main if isinstance(upload.main, bytes) else str(upload.main)))
    except DicomInputError as exc:
        raise _dicom_error(exc) from None


def _dicom_error(exc, what: str = "an MR image series (MR / Enhanced MR Image Storage, grey-scale)") -> ApiError:
    """ApiError 422 of a DicomInputError; the message names the attribute (no patient values: the shared module's
    messages carry keywords, shapes and UIDs). k-space or a mask that breaks the contract is answered as the same
    arrays sent as .npy are."""
    if exc.contract is not None:
        return ApiError.from_contract(exc.contract)
    return ApiError(422, str(exc)[:500], field=exc.attribute or "body",
                    expected={"unreadable": "readable DICOM (Part 10 files, or a zip of them)",
                              "missing": f"the attribute to be present ({what})",
                              "mismatch": "instances of one series with consistent attributes",
                              }.get(exc.kind, what), code=f"dicom_{exc.kind}")


def _read_dicom_kspace(upload: Upload, limits: LimitSettings):
    datasets = _load_dicom(upload, limits)
    try:
        return decode_kspace(datasets)
    except DicomInputError as exc:
        raise _dicom_error(exc, "DICOM Raw Data Storage instances with the k-space block (serving.dicom.rawdata)") \
            from None
    except ValueError as exc:
        raise ApiError(422, str(exc)[:300], field="body", expected="DICOM Raw Data instances with k-space",
                       code="invalid_input") from None


# --------------------------------------------------------------------------------------------------
# synthesis
# --------------------------------------------------------------------------------------------------
def parse_synth(upload: Upload, declared: str | None, limits: LimitSettings, *, sync: bool = True) -> SynthInput:
    """Validated magnitude volume (+ the DICOM series or NIfTI image it came from)."""
    fmt = detect_synth_format(upload, declared)
    if len(upload.files) > 1 and fmt != "dicom":
        raise ApiError(422, f"{len(upload.files)} files uploaded; {fmt} input is one file", field="file",
                       expected="one 'file' part (several only for DICOM instances)", code="invalid_input")
    if fmt == "npy":
        return SynthInput(check_images(_load_npy(upload.main, "body"), limits, sync=sync), "npy")
    if fmt == "nifti":
        img = _load_nifti(upload.main, limits)
        try:
            data = np.asanyarray(img.dataobj)
        except Exception as exc:  # noqa: BLE001 - truncated data block
            raise ApiError(422, f"NIfTI data block is unreadable ({exc.__class__.__name__})", field="body",
                           expected="a complete NIfTI image", code="unreadable") from None
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if data.ndim == 2:
            data = data[..., None]
        if data.ndim != 3:
            raise ApiError(422, f"NIfTI image must be 3-D, got shape {list(data.shape)}", field="body",
                           expected="a 3-D NIfTI volume [x, y, slices]", got=str(list(data.shape)),
                           code="invalid_rank")
        if data.dtype.kind == "c":
            raise ApiError(422, f"NIfTI data must be real, got {data.dtype}", field="body",
                           expected="a real-valued magnitude volume", code="invalid_dtype")
        vol = data.astype(np.float32)  # dataobj applies scl_slope / scl_inter
        vol = check_images(np.ascontiguousarray(vol.transpose(2, 1, 0)), limits, sync=sync)
        return SynthInput(vol, "nifti", nifti=img)
    datasets = _load_dicom(upload, limits)
    try:
        series = read_series(datasets)
    except DicomInputError as exc:
        raise _dicom_error(exc) from None
    vol = check_images(series.volume, limits, sync=sync)
    try:
        source = guess_contrast(series.datasets[0])
    except Exception:  # noqa: BLE001 - heuristics on odd headers
        source = None
    return SynthInput(vol, "dicom", source=source, series=series)


def _gunzip(data: bytes, cap: int) -> bytes:
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(data, cap + 1)
    except zlib.error as exc:
        raise ApiError(422, f"corrupt gzip stream ({exc})", field="body", expected="a .nii.gz file",
                       code="unreadable") from None
    if len(out) > cap or d.unconsumed_tail:
        raise ApiError(413, "the .nii.gz inflates beyond the size limit", field="body",
                       expected=f"at most {cap} bytes uncompressed", code="too_large")
    if not d.eof:
        raise ApiError(422, "truncated gzip stream", field="body", expected="a complete .nii.gz file",
                       code="unreadable")
    return out


def _load_nifti(data: bytes | Path, limits: LimitSettings):
    raw = data if isinstance(data, bytes) else Path(data).read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        raw = _gunzip(raw, 4 * limits.max_job_body_bytes)
    if not _nifti_header(raw[:348]):
        raise ApiError(422, "not a NIfTI-1/2 file (header size is not 348 or 540)", field="body",
                       expected="a .nii or .nii.gz file", code="unreadable")
    errors = []
    for cls in (nib.Nifti1Image, nib.Nifti2Image):
        try:
            img = cls.from_bytes(raw)
            shape = img.shape
            needed = int(np.prod(shape)) * img.get_data_dtype().itemsize + int(img.header["vox_offset"])
            if len(raw) < needed:
                raise ApiError(422, f"NIfTI file is truncated ({len(raw)} bytes, header says {needed})",
                               field="body", expected="a complete NIfTI file", code="unreadable")
            return img
        except ApiError:
            raise
        except Exception as exc:  # noqa: BLE001 - nibabel raises several types
            errors.append(exc.__class__.__name__)
    raise ApiError(422, f"unreadable NIfTI header ({', '.join(errors)})", field="body",
                   expected="a valid NIfTI-1 or NIfTI-2 image", code="unreadable")
