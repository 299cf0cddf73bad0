"""Undersampled multi-coil k-space over DICOM: Raw Data Storage instances with a documented private block.

A scanner gateway wraps k-space into Raw Data Storage (SOP class ``1.2.840.10008.5.1.4.1.1.66``)
instances, one per slice or one per volume, and sends them with any storage SCU (``storescu``). The
instances are ordinary DICOM (Patient, General Study, General Series, Frame of Reference, General
Equipment, Acquisition Context, Raw Data and SOP Common modules: they pass ``dciodvfy``); the k-space and
its geometry live in one private block.

Private block (group ``0x0071``, private creator ``"MRI-SERVICE KSPACE 1"`` in ``(0071,00xx)``; the
elements are ``(0071,xx01)`` ... where ``xx`` is the reserved block, ``0x10`` when written here). Numbers
are little endian (only little-endian transfer syntaxes are accepted).

====== ==== ===== ========================================================================================
elem   VR   VM    meaning
====== ==== ===== ========================================================================================
xx01   CS   1     layout version, ``"1"``
xx02   UL   4     k-space shape of THIS instance: ``slices, coils, ky, kx``
xx03   CS   1     sample type, ``"COMPLEX64"`` (float32 real, float32 imaginary, interleaved)
xx04   OF   1     k-space samples, C order ``[slices, coils, ky, kx]``, ``8 * prod(shape)`` bytes
xx05   UL   2-3   mask shape: ``ky, kx`` (one mask for every slice) or ``slices, ky, kx``; absent: no mask
xx06   OF   1     mask samples, float32 0/1, C order
xx07   UL   2     reconstruction matrix ``rows, columns`` of the image (equal to ``ky, kx`` today)
xx08   UL   2     slice range: index of this instance's first slice in the volume (0-based), slices in volume
xx09   DS   3-3n  ``ImagePositionPatient`` (mm) of each slice of this instance, concatenated
xx0A   DS   6     ``ImageOrientationPatient`` (row cosines, column cosines)
xx0B   DS   2     ``PixelSpacing`` (mm, between rows then between columns) of the reconstructed image
xx0C   DS   1     ``SliceThickness`` (mm)
xx0D   LO   1     contrast: ``T1w`` / ``T2w`` / ``PD`` / ``FLAIR`` (optional)
xx0E   CS   1     phase-encoding axis: ``ROW`` (lines along ky, axis -2) or ``COL`` (axis -1, fastMRI)
====== ==== ===== ========================================================================================

k-space follows the project's convention: centred orthonormal FFT, ``kspace: complex64 [coils, ky, kx]``
per slice, unsampled samples zero; ``ifft2c`` of a slice gives coil images ``[coils, rows, cols]``.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.datadict import add_private_dict_entries
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

from mrcore.contract import ContractError, check_kspace, check_mask, check_mask_shape, kspace_layout
from mrcore.data.base import CONTRASTS
from serving.dicom.errors import DicomInputError
from serving.dicom.geometry import SeriesGeometry
from serving.dicom.modules import (
    ds_str,
    file_meta,
    frame_of_reference,
    general_equipment,
    general_series,
    patient_study,
    sop_common,
)
from serving.logs import uid_hash

__all__ = [
    "KSPACE_GROUP",
    "KSPACE_PRIVATE_CREATOR",
    "RAW_DATA_STORAGE",
    "KSpaceVolume",
    "check_kspace_instance",
    "decode_kspace",
    "kspace_slices",
    "encode_kspace",
    "has_kspace",
]

RAW_DATA_STORAGE = "1.2.840.10008.5.1.4.1.1.66"
KSPACE_GROUP = 0x0071
KSPACE_PRIVATE_CREATOR = "MRI-SERVICE KSPACE 1"
LAYOUT_VERSION = "1"
#: Creator-Version UID of the Raw Data module: identifies this layout (version 1).
CREATOR_VERSION_UID = "1.2.826.0.1.3680043.8.498.1.71.1"

# element offset -> (VR, VM, keyword)
_FIELDS = {
    0x01: ("CS", "1", "KSpaceLayoutVersion"),
    0x02: ("UL", "4", "KSpaceShape"),
    0x03: ("CS", "1", "KSpaceSampleType"),
    0x04: ("OF", "1", "KSpaceData"),
    0x05: ("UL", "2-3", "KSpaceMaskShape"),
    0x06: ("OF", "1", "KSpaceMaskData"),
    0x07: ("UL", "2", "KSpaceReconMatrix"),
    0x08: ("UL", "2", "KSpaceSliceRange"),
    0x09: ("DS", "3-3n", "KSpaceSlicePositions"),
    0x0A: ("DS", "6", "KSpaceImageOrientation"),
    0x0B: ("DS", "2", "KSpacePixelSpacing"),
    0x0C: ("DS", "1", "KSpaceSliceThickness"),
    0x0D: ("LO", "1", "KSpaceContrast"),
    0x0E: ("CS", "1", "KSpacePhaseEncodingAxis"),
}
_OFFSET = {kw: off for off, (_, _, kw) in _FIELDS.items()}
# so that pydicom decodes implicit-VR instances with the right VRs
add_private_dict_entries(KSPACE_PRIVATE_CREATOR,
                         {(KSPACE_GROUP << 16) | (0x10 << 8) | off: (vr, vm, kw, "") for off, (vr, vm, kw) in
                          _FIELDS.items()})


@dataclass(frozen=True)
class KSpaceVolume:
    """k-space of one series, decoded and sorted by slice index.

    Attributes
    ----------
    kspace : complex64 [slices, coils, ky, kx]
    mask : float32 [ky, kx] (same for every slice), float32 [slices, ky, kx], or None
    geometry : SeriesGeometry of the reconstructed slices
    contrast : str or None
    phase_encoding_axis : int, -2 (ky rows) or -1 (kx columns)
    datasets : list of pydicom.Dataset, the source instance of each slice (repeats for per-volume instances)
    """

    kspace: np.ndarray
    mask: np.ndarray | None
    geometry: SeriesGeometry
    contrast: str | None
    phase_encoding_axis: int
    datasets: list[Dataset]


# --------------------------------------------------------------------------------------------------
# encoding
# --------------------------------------------------------------------------------------------------
def encode_kspace(
    kspace: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    per_slice: bool = True,
    geometry: SeriesGeometry | None = None,
    fov_mm: tuple[float, float] = (240.0, 240.0),
    slice_thickness: float = 5.0,
    contrast: str | None = None,
    phase_encoding_axis: int = -2,
    template: Dataset | None = None,
    patient_id: str | None = None,
    patient_name: str = "",
    series_description: str = "undersampled k-space",
    series_number: int = 1,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    now: _dt.datetime | None = None,
) -> list[Dataset]:
    """Wrap multi-coil k-space into Raw Data Storage instances.

    Parameters
    ----------
    kspace : complex64 [slices, coils, ky, kx] (or [coils, ky, kx] for one slice)
    mask : float32 [ky, kx] or [slices, ky, kx], optional
        Sampling mask (1 = sampled). Without one the receiver infers it from the non-zero samples.
    per_slice : bool
        One instance per slice (default) or one instance for the whole volume.
    geometry : SeriesGeometry, optional
        Plane geometry of the reconstructed slices; default: an axial stack centred on the origin with
        pixel spacing ``fov_mm / (ky, kx)`` and ``slice_thickness`` mm.
    contrast : one of ``T1w``, ``T2w``, ``PD``, ``FLAIR``, optional (routing rules may use it).
    phase_encoding_axis : -2 (lines along ky; default) or -1 (fastMRI raw data).
    template : pydicom.Dataset, optional
        Patient and study attributes are copied from it (e.g. an image of the same examination).
    patient_id, patient_name : used without a template (default id: generated, ``KSPACE-<8 hex>``).
    series_description, series_number : of the new raw-data series.
    study_instance_uid, series_instance_uid : default: the template's study / generated.

    Returns
    -------
    list of pydicom.Dataset with ``file_meta`` (Explicit VR Little Endian), one per slice or one in all.
    """
    shape = kspace_layout(kspace).shape  # the mask is checked against the layout before the values
    m = check_mask(np.asarray(mask), shape) if mask is not None else None
    k = check_kspace(kspace)
    ns, nc, ny, nx = k.shape
    if contrast is not None and contrast not in CONTRASTS:
        raise ValueError(f"unknown contrast {contrast!r}; expected one of {', '.join(CONTRASTS)}")
    if phase_encoding_axis not in (-2, -1):
        raise ValueError(f"phase_encoding_axis must be -2 or -1, got {phase_encoding_axis!r}")
    if geometry is None:
        geometry = SeriesGeometry.axial(ns, (ny, nx), pixel_spacing=(fov_mm[0] / ny, fov_mm[1] / nx),
                                        slice_thickness=slice_thickness)
    if geometry.num_slices != ns:
        raise ValueError(f"geometry has {geometry.num_slices} slices, kspace has {ns}")
    now = now or _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")
    series_uid = series_instance_uid or generate_uid()
    study_uid = study_instance_uid or (str(template.StudyInstanceUID) if template is not None and
                                       "StudyInstanceUID" in template else generate_uid())
    for_uid = geometry.frame_of_reference_uid or (str(template.FrameOfReferenceUID) if template is not None and
                                                  "FrameOfReferenceUID" in template else
                                                  generate_uid(entropy_srcs=[study_uid, "for"]))
    if patient_id is None:
        patient_id = "KSPACE-" + generate_uid(entropy_srcs=[study_uid])[-8:]
    ranges = [(s, s + 1) for s in range(ns)] if per_slice else [(0, ns)]
    out = []
    for number, (a, b) in enumerate(ranges, start=1):
        ds = Dataset()
        patient_study(ds, template, defaults={"PatientName": patient_name, "PatientID": patient_id,
                                              "StudyDate": date, "StudyTime": time})
        ds.StudyInstanceUID = study_uid
        general_series(ds, series_instance_uid=series_uid, series_number=series_number,
                       description=series_description, source=template)
        frame_of_reference(ds, for_uid)
        general_equipment(ds, "mri-service wrap-kspace")
        _raw_data_module(ds, number, date, time)
        sop_common(ds, RAW_DATA_STORAGE, generate_uid(entropy_srcs=[series_uid, str(a), str(b)]))
        _kspace_block(ds, k[a:b], None if m is None else (m if m.ndim == 2 else m[a:b]), first=a, total=ns,
                      geometry=geometry, contrast=contrast, phase_encoding_axis=phase_encoding_axis)
        file_meta(ds)
        out.append(ds)
    return out


def _raw_data_module(ds: Dataset, number: int, date: str, time: str) -> None:
    """Acquisition Context and Raw Data modules (the samples themselves are in the private block)."""
    ds.AcquisitionContextSequence = DicomSequence()
    ds.InstanceNumber = number
    ds.ContentDate, ds.ContentTime = date, time
    ds.CreatorVersionUID = CREATOR_VERSION_UID


def _kspace_block(ds: Dataset, part: np.ndarray, mask: np.ndarray | None, *, first: int, total: int,
                  geometry: SeriesGeometry, contrast: str | None, phase_encoding_axis: int) -> None:
    """The private block of one instance, every element written through :data:`_FIELDS` (its VR and offset).

    part : complex64 [slices, coils, ky, kx] of this instance; mask : float32 [ky, kx] or [slices, ky, kx]
    """
    block = ds.private_block(KSPACE_GROUP, KSPACE_PRIVATE_CREATOR, create=True)

    def put(name: str, value) -> None:
        offset = _OFFSET[name]
        block.add_new(offset, _FIELDS[offset][0], value)

    s = slice(first, first + part.shape[0])
    put("KSpaceLayoutVersion", LAYOUT_VERSION)
    put("KSpaceShape", list(part.shape))
    put("KSpaceSampleType", "COMPLEX64")
    put("KSpaceData", part.astype("<c8").tobytes())
    if mask is not None:
        put("KSpaceMaskShape", list(mask.shape))
        put("KSpaceMaskData", mask.astype("<f4").tobytes())
    put("KSpaceReconMatrix", list(part.shape[-2:]))
    put("KSpaceSliceRange", [first, total])
    put("KSpaceSlicePositions", [ds_str(float(v)) for v in geometry.positions[s].reshape(-1)])
    put("KSpaceImageOrientation", [ds_str(float(v)) for v in geometry.orientation])
    put("KSpacePixelSpacing", [ds_str(float(v)) for v in geometry.pixel_spacing])
    if geometry.slice_thickness:
        put("KSpaceSliceThickness", ds_str(float(geometry.slice_thickness)))
    if contrast:
        put("KSpaceContrast", contrast)
    put("KSpacePhaseEncodingAxis", "ROW" if phase_encoding_axis == -2 else "COL")


# --------------------------------------------------------------------------------------------------
# decoding
# --------------------------------------------------------------------------------------------------
def _where(ds: Dataset) -> str:
    return f"raw data instance {uid_hash(ds.get('SOPInstanceUID'))}"


def _block(ds: Dataset):
    try:
        return ds.private_block(KSPACE_GROUP, KSPACE_PRIVATE_CREATOR)
    except KeyError:
        return None


def has_kspace(ds: Dataset) -> bool:
    """True when ``ds`` is a Raw Data instance carrying the k-space private block."""
    return str(ds.get("SOPClassUID", "")) == RAW_DATA_STORAGE and _block(ds) is not None


def kspace_contrast(ds: Dataset) -> str | None:
    """The private block's contrast field of a Raw Data instance, or None."""
    block = _block(ds) if str(ds.get("SOPClassUID", "")) == RAW_DATA_STORAGE else None
    return _field(ds, block, "KSpaceContrast", required=False) or None if block is not None else None


def _field(ds: Dataset, block, name: str, *, required: bool = True):
    """Value of private field ``name`` converted by its VR (also when read as UN from implicit VR)."""
    off = _OFFSET[name]
    vr, _, _ = _FIELDS[off]
    tag = block.get_tag(off)
    if tag not in ds:
        if required:
            raise DicomInputError(f"{_where(ds)}: private field {name} {_tagstr(tag)} is missing", attribute=name,
                                  kind="missing")
        return None
    value = ds[tag].value
    if vr == "OF":
        return bytes(value) if value is not None else b""
    if isinstance(value, (bytes, bytearray)):  # UN: decode ourselves
        if vr == "UL":
            return [int(v) for v in np.frombuffer(value, "<u4")] if len(value) % 4 == 0 else value
        value = value.decode("ascii", "replace").strip(" \x00")
        if vr == "DS":
            value = value.split("\\")
    if vr == "UL":
        return [int(v) for v in (value if isinstance(value, (list, MultiValue)) else [value])]
    if vr == "DS":
        items = value if isinstance(value, (list, MultiValue)) else [value]
        try:
            return [float(v) for v in items]
        except (TypeError, ValueError):
            raise DicomInputError(f"{_where(ds)}: {name} must be numbers, got {value!r}", attribute=name) from None
    return str(value).strip()


def _tagstr(tag) -> str:
    return f"({int(tag) >> 16:04X},{int(tag) & 0xFFFF:04X})"


def _ints(ds, name, value, n: tuple[int, ...]) -> list[int]:
    if not isinstance(value, list) or len(value) not in n or any(v < 1 for v in value):
        raise DicomInputError(f"{_where(ds)}: {name} must be {' or '.join(map(str, n))} positive integers, got "
                              f"{value!r}", attribute=name)
    return value


@dataclass(frozen=True)
class _Part:
    ds: Dataset
    kspace: np.ndarray  # [s, c, ky, kx]
    mask: np.ndarray | None
    first: int
    total: int
    positions: np.ndarray
    orientation: np.ndarray
    spacing: tuple[float, float]
    thickness: float | None
    contrast: str | None
    axis: int


def _decode_one(ds: Dataset) -> _Part:
    where = _where(ds)
    if str(ds.get("SOPClassUID", "")) != RAW_DATA_STORAGE:
        raise DicomInputError(f"{where}: SOPClassUID must be Raw Data Storage {RAW_DATA_STORAGE}, got "
                              f"{ds.get('SOPClassUID')}", attribute="SOPClassUID", kind="unsupported")
    for kw in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
        if not str(ds.get(kw, "")):
            raise DicomInputError(f"{where}: required attribute {kw} is missing", attribute=kw, kind="missing")
    block = _block(ds)
    if block is None:
        raise DicomInputError(f"{where}: no k-space private block (private creator {KSPACE_PRIVATE_CREATOR!r} in "
                              f"group {KSPACE_GROUP:04X})", attribute="KSpacePrivateCreator", kind="missing")
    version = _field(ds, block, "KSpaceLayoutVersion")
    if version != LAYOUT_VERSION:
        raise DicomInputError(f"{where}: KSpaceLayoutVersion {version!r} is not supported (expected "
                              f"{LAYOUT_VERSION!r})", attribute="KSpaceLayoutVersion", kind="unsupported")
    stype = _field(ds, block, "KSpaceSampleType")
    if stype != "COMPLEX64":
        raise DicomInputError(f"{where}: KSpaceSampleType must be COMPLEX64, got {stype!r}",
                              attribute="KSpaceSampleType", kind="unsupported")
    shape = _ints(ds, "KSpaceShape", _field(ds, block, "KSpaceShape"), (4,))
    data = _field(ds, block, "KSpaceData")
    expected = 8 * int(np.prod(shape))
    if len(data) != expected:
        raise DicomInputError(f"{where}: KSpaceData has {len(data)} bytes, expected 8 x slices x coils x ky x kx = "
                              f"8 x {' x '.join(map(str, shape))} = {expected}", attribute="KSpaceData",
                              kind="mismatch")
    k = _contract(where, "KSpaceData", check_kspace, np.frombuffer(data, "<c8").reshape(shape),
                  require_samples=False)  # one instance of a volume may hold only zeros; the volume may not
    ns, _, ny, nx = shape
    mask = None
    mshape = _field(ds, block, "KSpaceMaskShape", required=False)
    if mshape is not None:
        mshape = _ints(ds, "KSpaceMaskShape", mshape, (2, 3))
        _contract(where, "KSpaceMaskShape", check_mask_shape, tuple(mshape), k.shape, kind="mismatch",
                  got=f"float32 {tuple(mshape)}")  # the block's masks are float32
        mdata = _field(ds, block, "KSpaceMaskData")
        if len(mdata) != 4 * int(np.prod(mshape)):
            raise DicomInputError(f"{where}: KSpaceMaskData has {len(mdata)} bytes, expected 4 x "
                                  f"{' x '.join(map(str, mshape))} = {4 * int(np.prod(mshape))}",
                                  attribute="KSpaceMaskData", kind="mismatch")
        mask = _contract(where, "KSpaceMaskData", check_mask, np.frombuffer(mdata, "<f4").reshape(mshape), k.shape)
        if mask.ndim == 2:
            mask = np.broadcast_to(mask, (ns, ny, nx))
    matrix = _ints(ds, "KSpaceReconMatrix", _field(ds, block, "KSpaceReconMatrix"), (2,))
    if tuple(matrix) != (ny, nx):
        raise DicomInputError(f"{where}: KSpaceReconMatrix {tuple(matrix)} must equal (ky, kx) = {(ny, nx)}",
                              attribute="KSpaceReconMatrix", kind="mismatch")
    rng = _field(ds, block, "KSpaceSliceRange")
    if not isinstance(rng, list) or len(rng) != 2 or rng[1] < 1 or not 0 <= rng[0] <= rng[1] - ns:
        raise DicomInputError(f"{where}: KSpaceSliceRange must be (first, total) with 0 <= first <= total - {ns}, "
                              f"got {rng!r}", attribute="KSpaceSliceRange", kind="mismatch")
    pos = np.asarray(_field(ds, block, "KSpaceSlicePositions"), dtype=np.float64)
    if pos.size != 3 * ns:
        raise DicomInputError(f"{where}: KSpaceSlicePositions has {pos.size} numbers, expected 3 x {ns} slices",
                              attribute="KSpaceSlicePositions", kind="mismatch")
    ori = np.asarray(_field(ds, block, "KSpaceImageOrientation"), dtype=np.float64)
    if ori.size != 6:
        raise DicomInputError(f"{where}: KSpaceImageOrientation must be 6 numbers, got {ori.size}",
                              attribute="KSpaceImageOrientation")
    spacing = _field(ds, block, "KSpacePixelSpacing")
    if len(spacing) != 2 or min(spacing) <= 0:
        raise DicomInputError(f"{where}: KSpacePixelSpacing must be 2 positive numbers, got {spacing!r}",
                              attribute="KSpacePixelSpacing")
    thick = _field(ds, block, "KSpaceSliceThickness", required=False)
    contrast = _field(ds, block, "KSpaceContrast", required=False) or None
    if contrast is not None and contrast not in CONTRASTS:
        raise DicomInputError(f"{where}: KSpaceContrast {contrast!r} is not one of {', '.join(CONTRASTS)}",
                              attribute="KSpaceContrast")
    axis = _field(ds, block, "KSpacePhaseEncodingAxis", required=False) or "ROW"
    if axis not in ("ROW", "COL"):
        raise DicomInputError(f"{where}: KSpacePhaseEncodingAxis must be ROW or COL, got {axis!r}",
                              attribute="KSpacePhaseEncodingAxis")
    return _Part(ds, k, mask, int(rng[0]), int(rng[1]), pos.reshape(ns, 3), ori, (spacing[0], spacing[1]),
                 thick[0] if thick else None, contrast, -2 if axis == "ROW" else -1)


def _contract(where: str, attribute: str, check, *args, kind: str = "invalid", **kwargs):
    """``check(*args, **kwargs)`` of :mod:`mrcore.contract`; its refusal as a DicomInputError naming the private
    field and carrying the contract's verdict."""
    try:
        return check(*args, **kwargs)
    except ContractError as exc:
        raise DicomInputError(f"{where}: {attribute}: {exc}", attribute=attribute, kind=kind, contract=exc) from None


def kspace_slices(ds: Dataset) -> tuple[int, int]:
    """``(slices this Raw Data instance carries, slices of its whole series)``: ``KSpaceShape[0]`` and the total of
    ``KSpaceSliceRange`` of the k-space block (of an instance :func:`check_kspace_instance` accepted)."""
    block = _block(ds)
    if block is None:
        raise DicomInputError(f"{_where(ds)}: no k-space private block", attribute="KSpacePrivateCreator",
                              kind="missing")
    shape = _ints(ds, "KSpaceShape", _field(ds, block, "KSpaceShape"), (4,))
    rng = _field(ds, block, "KSpaceSliceRange")
    return int(shape[0]), int(rng[1])


def check_kspace_instance(ds: Dataset) -> None:
    """Validate one Raw Data instance (private block present, sizes consistent); raises DicomInputError."""
    _decode_one(ds)


def decode_kspace(datasets: Sequence[Dataset] | Dataset) -> KSpaceVolume:
    """Decode the Raw Data instances of one series into one k-space volume.

    Parameters
    ----------
    datasets : one or more Raw Data Storage instances of the same series (any order, duplicates allowed).

    Returns
    -------
    KSpaceVolume with ``kspace`` complex64 [slices, coils, ky, kx] sorted by slice index.

    Raises
    ------
    DicomInputError
        Missing private block or field, data of the wrong size, instances of different series or with
        different coils / matrix / geometry, slices missing or given twice.
    """
    items = [datasets] if isinstance(datasets, Dataset) else list(datasets)
    if not items:
        raise DicomInputError("no Raw Data instances given", kind="missing")
    unique: dict[str, Dataset] = {}
    for ds in items:
        unique.setdefault(str(ds.get("SOPInstanceUID", id(ds))), ds)
    parts = sorted((_decode_one(ds) for ds in unique.values()), key=lambda p: p.first)
    p0 = parts[0]
    for p in parts[1:]:
        for name, a, b in (("SeriesInstanceUID", p.ds.SeriesInstanceUID, p0.ds.SeriesInstanceUID),
                           ("KSpaceShape (coils, ky, kx)", p.kspace.shape[1:], p0.kspace.shape[1:]),
                           ("KSpaceSliceRange (total)", p.total, p0.total),
                           ("KSpaceImageOrientation", tuple(np.round(p.orientation, 4)),
                            tuple(np.round(p0.orientation, 4))),
                           ("KSpacePixelSpacing", p.spacing, p0.spacing),
                           ("KSpaceMaskShape (present)", p.mask is None, p0.mask is None)):
            if a != b:
                raise DicomInputError(f"mixed series: {name} differs between instances ({b!r} vs {a!r})",
                                      attribute=name.split()[0], kind="mismatch")
    covered = np.zeros(p0.total, dtype=int)
    for p in parts:
        covered[p.first:p.first + p.kspace.shape[0]] += 1
    if np.any(covered != 1):
        missing = np.flatnonzero(covered == 0).tolist()
        twice = np.flatnonzero(covered > 1).tolist()
        raise DicomInputError(f"k-space series incomplete or overlapping: {p0.total} slices expected, missing "
                              f"{missing[:10]}, given twice {twice[:10]}", attribute="KSpaceSliceRange",
                              kind="mismatch")
    kspace = _contract(f"series {uid_hash(p0.ds.SeriesInstanceUID)}", "KSpaceData", check_kspace,
                       np.concatenate([p.kspace for p in parts]))
    mask = None
    if p0.mask is not None:
        mask = np.concatenate([p.mask for p in parts]).astype(np.float32)
        if np.all(mask == mask[:1]):
            mask = np.ascontiguousarray(mask[0])
    geometry = SeriesGeometry(
        positions=np.concatenate([p.positions for p in parts]), orientation=p0.orientation,
        pixel_spacing=p0.spacing, slice_thickness=p0.thickness,
        frame_of_reference_uid=str(p0.ds.get("FrameOfReferenceUID", "")) or None)
    datasets_out = [p.ds for p in parts for _ in range(p.kspace.shape[0])]
    return KSpaceVolume(kspace, mask, geometry, p0.contrast, p0.axis, datasets_out)
