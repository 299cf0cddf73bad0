"""Read an MR series (datasets, files, a directory or a zip) into a sorted float32 volume plus its geometry.

Used by the REST API (uploaded files / zip) and the DICOM node (instances from its spool). Every problem is
a :class:`~serving.dicom.errors.DicomInputError` naming the attribute at fault.

Conventions
-----------
* ``volume``: float32 ``[slices, rows, cols]``, stored values with the modality rescale applied
  (``RescaleSlope`` / ``RescaleIntercept`` or, for Enhanced MR, the per-frame Pixel Value Transformation).
* Slices are sorted by the position of each slice along the slice normal ``row_cosines x col_cosines``
  (ascending), i.e. ``dot(ImagePositionPatient, normal)``; ``InstanceNumber`` is not used for ordering.
* Single-frame MR Image Storage and multi-frame Enhanced MR Image Storage (one instance, per-frame plane
  positions) are both accepted; every slice of a series has the same orientation, matrix and pixel spacing.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import UID

from mrcore.contrast import contrast_from_protocol, contrast_from_sequence
from serving.dicom.errors import DicomInputError
from serving.dicom.geometry import SeriesGeometry
from serving.dicom.rawdata import RAW_DATA_STORAGE, kspace_contrast, kspace_slices
from serving.logs import uid_hash

__all__ = [
    "ENHANCED_MR_IMAGE_STORAGE",
    "IMAGE_SOP_CLASSES",
    "MR_IMAGE_STORAGE",
    "SeriesVolume",
    "check_image",
    "geometry_of",
    "guess_contrast",
    "load_datasets",
    "read_series",
    "series_extent",
]

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
#: image SOP classes a series may consist of (single-frame MR and Enhanced MR).
IMAGE_SOP_CLASSES = (MR_IMAGE_STORAGE, ENHANCED_MR_IMAGE_STORAGE)

_REQUIRED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Rows", "Columns",
             "BitsAllocated", "BitsStored", "PixelRepresentation", "SamplesPerPixel", "PhotometricInterpretation")
_ORIENT_TOL = 1e-3


@dataclass(frozen=True)
class SeriesVolume:
    """A sorted MR series.

    Attributes
    ----------
    volume : float32 [slices, rows, cols]
    geometry : SeriesGeometry (positions in the same order as ``volume``)
    datasets : list of pydicom.Dataset
        Source instance of each slice, in volume order (an Enhanced MR instance repeats, once per frame).
    frames : list of int
        1-based frame number inside ``datasets[i]`` (always 1 for single-frame instances).
    """

    volume: np.ndarray
    geometry: SeriesGeometry
    datasets: list[Dataset]
    frames: list[int]

    @property
    def series_instance_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)

    @property
    def study_instance_uid(self) -> str:
        return str(self.datasets[0].StudyInstanceUID)


# --------------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------------
def _parse(data, name: str) -> Dataset:
    try:
        return pydicom.dcmread(data, force=False)
    except (InvalidDicomError, EOFError, ValueError, TypeError, KeyError, OSError) as e:
        raise DicomInputError(f"{name}: not a readable DICOM file ({e.__class__.__name__}: {e})",
                              kind="unreadable") from None


def load_datasets(source) -> list[Dataset]:
    """Parse DICOM input into datasets.

    Parameters
    ----------
    source : Dataset, bytes, path (file, directory read recursively, or ``.zip``), file object, or a
        sequence of these.

    Returns
    -------
    list of pydicom.Dataset (input order; directories and zips in sorted member order).
    """
    if isinstance(source, Dataset):
        return [source]
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if data[:4] == b"PK\x03\x04":
            return _load_zip(io.BytesIO(data), "zip upload")
        return [_parse(io.BytesIO(data), "upload")]
    if isinstance(source, (str, Path)):
        p = Path(source)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
            if not files:
                raise DicomInputError(f"{p}: directory holds no files", kind="missing")
            return [ds for f in files for ds in load_datasets(f)]
        if not p.is_file():
            raise DicomInputError(f"{p}: no such file", kind="missing")
        if zipfile.is_zipfile(p):
            return _load_zip(p, str(p))
        return [_parse(p, str(p))]
    if hasattr(source, "read"):
        return load_datasets(source.read())
    if isinstance(source, Iterable):
        out = [ds for item in source for ds in load_datasets(item)]
        if not out:
            raise DicomInputError("no DICOM instances given", kind="missing")
        return out
    raise DicomInputError(f"cannot read DICOM from {type(source).__name__}", kind="unreadable")


def _load_zip(src, name: str) -> list[Dataset]:
    try:
        with zipfile.ZipFile(src) as z:
            members = sorted(i.filename for i in z.infolist() if not i.is_dir() and not i.filename.endswith("/"))
            members = [m for m in members if not Path(m).name.startswith(".") and "__MACOSX" not in m]
            if not members:
                raise DicomInputError(f"{name}: the zip holds no files", kind="missing")
            return [_parse(io.BytesIO(z.read(m)), f"{name}:{m}") for m in members]
    except zipfile.BadZipFile as e:
        raise DicomInputError(f"{name}: not a readable zip ({e})", kind="unreadable") from None


# --------------------------------------------------------------------------------------------------
# per-instance checks
# --------------------------------------------------------------------------------------------------
def _require(ds: Dataset, keyword: str, where: str):
    value = ds.get(keyword)
    if value is None or (not isinstance(value, (int, float, bytes)) and len(str(value)) == 0):
        raise DicomInputError(f"{where}: required attribute {keyword} is missing or empty", attribute=keyword,
                              kind="missing")
    return value


def _floats(ds: Dataset, keyword: str, n: int, where: str) -> np.ndarray:
    value = _require(ds, keyword, where)
    items = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    try:
        arr = np.array([float(v) for v in items], dtype=np.float64)
    except (TypeError, ValueError):
        raise DicomInputError(f"{where}: {keyword} must be {n} numbers, got {value!r}", attribute=keyword) from None
    if arr.size != n or not np.all(np.isfinite(arr)):
        raise DicomInputError(f"{where}: {keyword} must be {n} finite numbers, got {list(arr)}", attribute=keyword)
    return arr


def series_extent(ds: Dataset) -> tuple[int, int | None]:
    """What one instance adds to its series and how much the whole series holds, in one unit (images or k-space
    slices), for deciding that a series is complete.

    Raw Data k-space: ``(slices it carries, total slices of its KSpaceSliceRange)``. An image: ``(frames,
    ImagesInAcquisition (0020,1002))``, frames = NumberOfFrames (1 when absent); the total is None when the
    instance does not say it (or says 0). Of an instance the node's checks accepted.
    """
    if str(ds.get("SOPClassUID", "")) == RAW_DATA_STORAGE:
        return kspace_slices(ds)
    total = ds.get("ImagesInAcquisition")
    try:
        expected = int(total) if total not in (None, "") else None
    except (TypeError, ValueError):
        expected = None
    return _num_frames(ds), (expected if expected and expected > 0 else None)


def _where(ds: Dataset) -> str:
    return f"instance {uid_hash(ds.get('SOPInstanceUID'))}"


def _num_frames(ds: Dataset) -> int:
    try:
        n = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        raise DicomInputError(f"{_where(ds)}: NumberOfFrames must be an integer, got {ds.NumberOfFrames!r}",
                              attribute="NumberOfFrames") from None
    if n < 1:
        raise DicomInputError(f"{_where(ds)}: NumberOfFrames must be >= 1, got {n}", attribute="NumberOfFrames")
    return n


def check_image(ds: Dataset, *, decode: bool = True) -> None:
    """Validate one MR image instance (required attributes, pixel data size, decodability).

    Raises
    ------
    DicomInputError
        ``missing`` for an absent required attribute, ``mismatch`` when the pixel data length does not
        match ``Rows x Columns x NumberOfFrames x BitsAllocated / 8``, ``unsupported`` for colour or
        1-bit images, ``unreadable`` when compressed pixel data cannot be decoded.
    """
    where = _where(ds)
    for kw in _REQUIRED:
        _require(ds, kw, where)
    if "PixelData" not in ds:
        raise DicomInputError(f"{where}: required attribute PixelData is missing", attribute="PixelData",
                              kind="missing")
    rows, cols, bits = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated)
    if rows < 1 or cols < 1:
        raise DicomInputError(f"{where}: Rows x Columns must be positive, got {rows} x {cols}", attribute="Rows")
    if int(ds.SamplesPerPixel) != 1 or str(ds.PhotometricInterpretation) not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomInputError(f"{where}: expected a grey-scale image (SamplesPerPixel 1, MONOCHROME2), got "
                              f"{ds.SamplesPerPixel} / {ds.PhotometricInterpretation}",
                              attribute="PhotometricInterpretation", kind="unsupported")
    if bits not in (8, 16, 32):
        raise DicomInputError(f"{where}: BitsAllocated must be 8, 16 or 32, got {bits}", attribute="BitsAllocated",
                              kind="unsupported")
    frames = _num_frames(ds)
    if str(ds.SOPClassUID) == MR_IMAGE_STORAGE:
        _floats(ds, "ImagePositionPatient", 3, where)
        _floats(ds, "ImageOrientationPatient", 6, where)
        _floats(ds, "PixelSpacing", 2, where)
    if not _encapsulated(ds):
        expected = rows * cols * frames * bits // 8
        got = len(ds.PixelData)
        if got not in (expected, expected + 1):
            raise DicomInputError(
                f"{where}: PixelData has {got} bytes, expected Rows x Columns x NumberOfFrames x BitsAllocated/8 = "
                f"{rows} x {cols} x {frames} x {bits // 8} = {expected}", attribute="PixelData", kind="mismatch")
    elif decode:
        _decode(ds)


def _encapsulated(ds: Dataset) -> bool:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    return bool(ts) and UID(str(ts)).is_encapsulated


def _decode(ds: Dataset) -> np.ndarray:
    try:
        arr = ds.pixel_array
    except Exception as e:  # noqa: BLE001 - decoders raise many types
        ts = ds.file_meta.get("TransferSyntaxUID", "?") if hasattr(ds, "file_meta") else "?"
        raise DicomInputError(f"{_where(ds)}: PixelData cannot be decoded (transfer syntax {ts}): "
                              f"{e.__class__.__name__}: {e}", attribute="PixelData", kind="unreadable") from None
    frames = _num_frames(ds)
    shape = (frames, int(ds.Rows), int(ds.Columns))
    if arr.size != np.prod(shape):
        raise DicomInputError(f"{_where(ds)}: decoded PixelData has shape {arr.shape}, expected "
                              f"NumberOfFrames x Rows x Columns = {shape}", attribute="PixelData", kind="mismatch")
    return arr.reshape(shape)


# --------------------------------------------------------------------------------------------------
# frames and geometry
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Frame:
    ds: Dataset
    number: int  # 1-based
    position: np.ndarray
    orientation: np.ndarray
    spacing: np.ndarray
    thickness: float | None
    slope: float
    intercept: float


def _item(seq_owner, keyword: str):
    seq = seq_owner.get(keyword) if seq_owner is not None else None
    return seq[0] if seq else None


def _fg(ds: Dataset, index: int, keyword: str):
    """Functional-group macro ``keyword`` for frame ``index`` (per-frame first, then shared)."""
    per = ds.get("PerFrameFunctionalGroupsSequence")
    if per is not None and index < len(per):
        item = _item(per[index], keyword)
        if item is not None:
            return item
    return _item(_item(ds, "SharedFunctionalGroupsSequence"), keyword)


def _opt_float(value) -> float | None:
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def _frames(ds: Dataset) -> list[_Frame]:
    where = _where(ds)
    if str(ds.SOPClassUID) != ENHANCED_MR_IMAGE_STORAGE:
        return [_Frame(ds, 1, _floats(ds, "ImagePositionPatient", 3, where),
                       _floats(ds, "ImageOrientationPatient", 6, where), _floats(ds, "PixelSpacing", 2, where),
                       _opt_float(ds.get("SliceThickness")), _opt_float(ds.get("RescaleSlope")) or 1.0,
                       _opt_float(ds.get("RescaleIntercept")) or 0.0)]
    out = []
    for i in range(_num_frames(ds)):
        fw = f"{where} frame {i + 1}"
        pos, ori, meas = (_fg(ds, i, k) for k in ("PlanePositionSequence", "PlaneOrientationSequence",
                                                  "PixelMeasuresSequence"))
        for name, item in (("PlanePositionSequence", pos), ("PlaneOrientationSequence", ori),
                           ("PixelMeasuresSequence", meas)):
            if item is None:
                raise DicomInputError(f"{fw}: functional group {name} is missing", attribute=name, kind="missing")
        pvt = _fg(ds, i, "PixelValueTransformationSequence")
        out.append(_Frame(ds, i + 1, _floats(pos, "ImagePositionPatient", 3, fw),
                          _floats(ori, "ImageOrientationPatient", 6, fw), _floats(meas, "PixelSpacing", 2, fw),
                          _opt_float(meas.get("SliceThickness")),
                          (_opt_float(pvt.get("RescaleSlope")) if pvt is not None else None) or 1.0,
                          (_opt_float(pvt.get("RescaleIntercept")) if pvt is not None else None) or 0.0))
    return out


def geometry_of(datasets: Sequence[Dataset], frames: Sequence[int] | None = None) -> SeriesGeometry:
    """Geometry of image instances in the order given (no sorting; see :func:`read_series` for that).

    Parameters
    ----------
    datasets : one MR / Enhanced MR instance per slice (an Enhanced MR instance may repeat).
    frames : 1-based frame number per slice (default: 1 for every slice).
    """
    frames = [1] * len(datasets) if frames is None else list(frames)
    if len(frames) != len(datasets):
        raise ValueError(f"frames must have one entry per dataset ({len(datasets)}), got {len(frames)}")
    cache: dict[int, list[_Frame]] = {}
    chosen = []
    for ds, n in zip(datasets, frames):
        if id(ds) not in cache:
            cache[id(ds)] = _frames(ds)
        fr = cache[id(ds)]
        if not 1 <= n <= len(fr):
            raise DicomInputError(f"{_where(ds)}: frame {n} does not exist ({len(fr)} frames)",
                                  attribute="NumberOfFrames", kind="mismatch")
        chosen.append(fr[n - 1])
    return SeriesGeometry(
        positions=np.stack([f.position for f in chosen]),
        orientation=chosen[0].orientation.copy(),
        pixel_spacing=(float(chosen[0].spacing[0]), float(chosen[0].spacing[1])),
        slice_thickness=chosen[0].thickness,
        frame_of_reference_uid=str(datasets[0].get("FrameOfReferenceUID", "")) or None,
    )


def _same(name: str, values: list, key=lambda v: v) -> None:
    first = key(values[0])
    for v in values[1:]:
        if key(v) != first:
            raise DicomInputError(f"mixed series: {name} differs between instances ({first!r} vs {key(v)!r})",
                                  attribute=name, kind="mismatch")


def read_series(source, *, sop_classes: Sequence[str] = IMAGE_SOP_CLASSES) -> SeriesVolume:
    """Read one MR series into a sorted volume.

    Parameters
    ----------
    source : anything :func:`load_datasets` accepts (datasets, files, a directory, a zip, bytes).
    sop_classes : accepted SOP Class UIDs (default: MR Image and Enhanced MR Image Storage).

    Returns
    -------
    SeriesVolume with ``volume`` float32 [slices, rows, cols].

    Raises
    ------
    DicomInputError
        Unreadable input, missing attributes, pixel data of the wrong size, instances of more than one
        series / study / SOP class, different matrix, orientation or pixel spacing, or two slices at the
        same position.
    """
    datasets = load_datasets(source)
    # deduplicate by SOPInstanceUID (a retransmitted instance is the same instance)
    unique: dict[str, Dataset] = {}
    for ds in datasets:
        _require(ds, "SOPInstanceUID", _where(ds))
        unique.setdefault(str(ds.SOPInstanceUID), ds)
    datasets = list(unique.values())
    for ds in datasets:
        check_image(ds, decode=False)
        if str(ds.SOPClassUID) not in sop_classes:
            raise DicomInputError(f"{_where(ds)}: SOPClassUID {ds.SOPClassUID} is not an accepted image class "
                                  f"({', '.join(sop_classes)})", attribute="SOPClassUID", kind="unsupported")
    for kw in ("SeriesInstanceUID", "StudyInstanceUID", "SOPClassUID", "Rows", "Columns"):
        _same(kw, datasets, key=lambda d, kw=kw: str(d.get(kw)))
    frames = [f for ds in datasets for f in _frames(ds)]
    _same("ImageOrientationPatient", frames, key=lambda f: tuple(np.round(f.orientation / _ORIENT_TOL).astype(int)))
    _same("PixelSpacing", frames, key=lambda f: tuple(np.round(f.spacing, 4)))
    ori = frames[0].orientation
    normal = np.cross(ori[:3], ori[3:])
    if np.linalg.norm(normal) < 0.5:
        raise DicomInputError(f"ImageOrientationPatient {list(ori)} has parallel row and column directions",
                              attribute="ImageOrientationPatient")
    normal /= np.linalg.norm(normal)
    loc = np.array([float(f.position @ normal) for f in frames])
    order = np.argsort(loc, kind="stable")
    if len(loc) > 1 and np.min(np.diff(loc[order])) < 1e-3:
        i = int(np.argmin(np.diff(loc[order])))
        raise DicomInputError(f"two slices at the same position along the slice normal ({loc[order][i]:.3f} mm): "
                              "a series must be one stack of distinct slices", attribute="ImagePositionPatient",
                              kind="mismatch")
    frames = [frames[i] for i in order]

    decoded: dict[int, np.ndarray] = {}
    slices = []
    for f in frames:
        key = id(f.ds)
        if key not in decoded:
            check_image(f.ds, decode=False)
            decoded[key] = _decode(f.ds)
        img = decoded[key][f.number - 1].astype(np.float32)
        if f.slope != 1.0 or f.intercept != 0.0:
            img = img * np.float32(f.slope) + np.float32(f.intercept)
        if str(f.ds.PhotometricInterpretation) == "MONOCHROME1":
            img = img.max() - img
        slices.append(img)
    volume = np.stack(slices).astype(np.float32)
    geometry = SeriesGeometry(
        positions=np.stack([f.position for f in frames]),
        orientation=frames[0].orientation.copy(),
        pixel_spacing=(float(frames[0].spacing[0]), float(frames[0].spacing[1])),
        slice_thickness=frames[0].thickness,
        frame_of_reference_uid=str(datasets[0].get("FrameOfReferenceUID", "")) or None,
    )
    return SeriesVolume(volume, geometry, [f.ds for f in frames], [f.number for f in frames])


def guess_contrast(ds: Dataset) -> str | None:
    """Contrast of an MR image or k-space instance (``T1w``/``T2w``/``PD``/``FLAIR``), or None.

    Order: the k-space private block's contrast; ``SeriesDescription``, ``ProtocolName``, ``SequenceName``
    name heuristics; ``RepetitionTime`` / ``EchoTime`` / ``InversionTime`` (ms) heuristics (those of
    :mod:`mrcore.contrast`).
    """
    try:
        c = kspace_contrast(ds)
    except DicomInputError:
        c = None
    if c:
        return c
    for kw in ("SeriesDescription", "ProtocolName", "SequenceName"):
        c = contrast_from_protocol(str(ds.get(kw, "") or ""))
        if c:
            return c
    tr, te, ti = (_opt_float(ds.get(k)) for k in ("RepetitionTime", "EchoTime", "InversionTime"))
    if str(ds.get("SOPClassUID", "")) == ENHANCED_MR_IMAGE_STORAGE:  # Enhanced MR: functional groups
        timing, echo = _fg(ds, 0, "MRTimingAndRelatedParametersSequence"), _fg(ds, 0, "MREchoSequence")
        tr = tr if tr is not None else _opt_float(timing.get("RepetitionTime")) if timing is not None else None
        te = te if te is not None else _opt_float(echo.get("EffectiveEchoTime")) if echo is not None else None
        mod = _fg(ds, 0, "MRModifierSequence")
        ti = ti if ti is not None else _opt_float(mod.get("InversionTimes", [None])[0]) if mod is not None and \
            mod.get("InversionTimes") else ti
    return contrast_from_sequence(tr, te, ti)
