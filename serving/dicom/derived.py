"""The derived-series builder shared by the REST API and the DICOM node: float volume -> MR Image Storage.

What every derived instance carries
-----------------------------------
* Same patient and study as the source (Patient and General Study attributes copied), a new
  ``SeriesInstanceUID`` and new ``SOPInstanceUID`` s (deterministic from the series UID and slice index).
* ``ImageType`` ``DERIVED\\SECONDARY\\OTHER`` (MR needs a third value), ``DerivationDescription`` naming
  model and version,
  ``SourceImageSequence`` (the source instance of the slice; its frame for Enhanced MR) and
  ``ReferencedSeriesSequence`` (the source series).
* Geometry preserved: ``ImagePositionPatient``, ``ImageOrientationPatient``, ``PixelSpacing``,
  ``SliceThickness``, ``FrameOfReferenceUID``.
* ``SeriesDescription`` configurable, ``SeriesNumber`` = source series number + offset.
* A synthesized series (another contrast than its source: ``synthetic``, the default when ``same_contrast`` is
  False) carries **Synthetic Data (0008,001C) = YES** on every instance and a ``DerivationCodeSequence`` with
  :data:`SYNTHESIS_CODE` (no DICOM-defined code in CID 7203 names contrast synthesis; a local coding scheme
  ``99MRISVC`` says it), next to the ``DerivationDescription`` naming model and version.
* Pixels: one linear float -> uint16 mapping for the whole series, ``stored = round((v - lo) / slope)`` with
  ``lo = min(0, min(volume))`` and ``slope = (max(volume) - lo) / 65535``; the inverse is recorded in
  ``RealWorldValueMappingSequence`` (``RealWorldValueIntercept = lo``, ``RealWorldValueSlope = slope``) so
  ``value = stored * slope + lo`` recovers the model output to within ``slope / 2``.

The instances are built module by module (:mod:`serving.dicom.modules`, the same functions as the raw-data
instances of :mod:`serving.dicom.rawdata`); the result passes dicom3tools' ``dciodvfy`` without errors (tested).
"""

from __future__ import annotations

import copy
import datetime as _dt
import io
import zipfile
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

from serving.dicom.modules import (
    UINT16_MAX,
    code_item,
    file_meta,
    frame_of_reference,
    general_equipment,
    general_series,
    image_plane,
    mr_image,
    patient_study,
    real_world_value_mapping,
    sop_common,
)
from serving.dicom.series import ENHANCED_MR_IMAGE_STORAGE, MR_IMAGE_STORAGE, geometry_of

if TYPE_CHECKING:
    from serving.dicom.geometry import SeriesGeometry

__all__ = ["SYNTHESIS_CODE", "UINT16_MAX", "build_derived_series", "dataset_bytes", "datasets_zip",
           "derivation_description", "intensity_mapping", "mark_series_version", "real_world_values"]

#: (Code Value, Coding Scheme Designator, Code Meaning) of the Derivation Code Sequence item of a synthesized
#: series. Local ("99" prefix) coding scheme: DICOM's CID 7203 (Image Derivation) has no code for it.
SYNTHESIS_CODE = ("SYNTH-CONTRAST", "99MRISVC", "Contrast synthesized by a generative model")


def derivation_description(model_name: str, model_version: str | int) -> str:
    """``DerivationDescription`` of a derived instance (and the REST header of the same content)."""
    return f"{model_name} version {model_version} (mri-service)"[:1024]

def intensity_mapping(volume: np.ndarray) -> tuple[float, float]:
    """The series-wide float -> uint16 mapping ``(lo, slope)``: ``stored = round((v - lo) / slope)``.

    Parameters
    ----------
    volume : float32 [slices, rows, cols], finite.
    """
    v = np.asarray(volume, dtype=np.float64)
    lo = min(0.0, float(v.min()))
    hi = float(v.max())
    slope = (hi - lo) / UINT16_MAX if hi > lo else 1.0
    return lo, slope


def real_world_values(ds: Dataset) -> np.ndarray:
    """Float values of a derived instance: ``stored * RealWorldValueSlope + RealWorldValueIntercept``.

    Returns
    -------
    float32 [rows, cols]
    """
    item = ds.RealWorldValueMappingSequence[0]
    stored = ds.pixel_array.astype(np.float64)
    return (stored * float(item.RealWorldValueSlope) + float(item.RealWorldValueIntercept)).astype(np.float32)


def build_derived_series(
    source_datasets: Sequence[Dataset],
    volume: np.ndarray,
    *,
    model_name: str,
    model_version: str | int,
    series_description: str | None = None,
    series_number_offset: int = 1000,
    geometry: SeriesGeometry | None = None,
    source_frames: Sequence[int] | None = None,
    same_contrast: bool = True,
    series_instance_uid: str | None = None,
    now: _dt.datetime | None = None,
    synthetic: bool | None = None,
) -> list[Dataset]:
    """Build a derived MR series (MR Image Storage, one instance per slice) from a float volume.

    Parameters
    ----------
    source_datasets : sequence of pydicom.Dataset
        The source instances in volume order: one per slice (``SeriesVolume.datasets``) or a single one for
        every slice (one per-volume Raw Data instance). Patient, study and references come from them.
    volume : float32 [slices, rows, cols]
        Model output (magnitude, finite).
    model_name, model_version : str
        Recorded in ``DerivationDescription``, ``ManufacturerModelName`` and ``SoftwareVersions``.
    series_description : str, optional
        Default ``"<source SeriesDescription> <model_name>"``; truncated to 64 characters.
    series_number_offset : int
        ``SeriesNumber = source SeriesNumber + offset`` (source without a number counts as 0).
    geometry : SeriesGeometry, optional
        Plane geometry of the slices (required for Raw Data sources); default: read from the MR sources.
    source_frames : sequence of int, optional
        1-based frame of each slice inside an Enhanced MR source (``SeriesVolume.frames``).
    same_contrast : bool
        Copy the MR acquisition parameters (TR, TE, sequence...) of an MR source; ``False`` for synthesis,
        where the output has another contrast than its source.
    series_instance_uid : str, optional
        UID of the new series (default: generated). SOP Instance UIDs derive from it deterministically.
    now : datetime, optional
        Content / instance creation time (default: now).
    synthetic : bool, optional
        Mark every instance as synthetic data (``SyntheticData = YES``, ``DerivationCodeSequence``); default:
        ``not same_contrast`` (a synthesized contrast).

    Returns
    -------
    list of pydicom.Dataset, one per slice, with ``file_meta`` (Explicit VR Little Endian), ready for
    ``dcmwrite`` or C-STORE.
    """
    vol = np.asarray(volume)
    if vol.ndim != 3 or vol.shape[0] < 1 or np.iscomplexobj(vol) or not np.issubdtype(vol.dtype, np.number):
        raise ValueError(f"volume must be real float32 [slices, rows, cols], got {vol.dtype} {vol.shape}")
    if not np.all(np.isfinite(vol)):
        raise ValueError(f"volume contains {int(np.size(vol) - np.isfinite(vol).sum())} NaN/Inf values")
    n, rows, cols = vol.shape
    sources = list(source_datasets)
    if len(sources) not in (1, n):
        raise ValueError(f"source_datasets must hold 1 or {n} (one per slice) datasets, got {len(sources)}")
    if len(sources) == 1:
        sources = sources * n
    frames = [1] * n if source_frames is None else [int(f) for f in source_frames]
    if len(frames) != n:
        raise ValueError(f"source_frames must have {n} entries (one per slice), got {len(frames)}")
    if geometry is None:
        if any(str(s.SOPClassUID) not in (MR_IMAGE_STORAGE, ENHANCED_MR_IMAGE_STORAGE) for s in sources):
            raise ValueError("geometry is required when the sources are not MR images (e.g. Raw Data)")
        geometry = geometry_of(sources, frames)
    if geometry.num_slices != n:
        raise ValueError(f"geometry has {geometry.num_slices} slice positions, volume has {n} slices")

    first = sources[0]
    now = now or _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")
    series_uid = series_instance_uid or generate_uid()
    lo, slope = intensity_mapping(vol)
    stored = np.clip(np.rint((vol.astype(np.float64) - lo) / slope), 0, UINT16_MAX).astype(np.uint16)
    p_lo, p_hi = np.percentile(stored, [0.5, 99.5]) if stored.size else (0, UINT16_MAX)
    width = max(float(p_hi - p_lo), 1.0)
    source_number = int(first.get("SeriesNumber") or 0) if str(first.get("SeriesNumber", "")).strip() else 0
    if series_description is None:
        series_description = f"{first.get('SeriesDescription', '') or ''} {model_name}".strip()
    description = derivation_description(model_name, model_version)
    if synthetic is None:
        synthetic = not same_contrast
    for_uid = geometry.frame_of_reference_uid or first.get("FrameOfReferenceUID") \
        or generate_uid(entropy_srcs=[series_uid, "for"])
    acquisition_source = first if same_contrast and str(first.SOPClassUID) == MR_IMAGE_STORAGE else None
    references = _referenced_series(sources)

    out = []
    for i in range(n):
        ds = Dataset()
        patient_study(ds, first)
        general_series(ds, series_instance_uid=series_uid, series_number=source_number + int(series_number_offset),
                       description=series_description, source=first, date=date, time=time)
        frame_of_reference(ds, for_uid, first.get("PositionReferenceIndicator", ""))
        general_equipment(ds, "mri-service", model_name=model_name, software_versions=str(model_version))
        _general_image(ds, i, sources[i], frames[i], references, description, first, date, time)
        image_plane(ds, geometry, i)
        mr_image(ds, stored[i], source=acquisition_source, window=(float(p_lo + width / 2), width))
        real_world_value_mapping(ds, lo, slope, f"{model_name} output")
        if synthetic:
            ds.SyntheticData = "YES"
            ds.DerivationCodeSequence = DicomSequence([code_item(*SYNTHESIS_CODE)])
        sop_common(ds, MR_IMAGE_STORAGE, generate_uid(entropy_srcs=[series_uid, str(i)]), date=date, time=time)
        file_meta(ds)
        out.append(ds)
    return out


def _suffixed(description: str, suffix: str) -> str:
    """``description`` + ``suffix`` within SeriesDescription's 64 characters (the description is cut, not the
    suffix)."""
    return (description[:64 - len(suffix)].rstrip() + suffix).strip()


def mark_series_version(datasets: Sequence[Dataset], *, version: int = 1, supersedes: str | None = None,
                        superseded_instances: Sequence[tuple[str, str]] = (), incomplete: str | None = None) -> None:
    """Say in a derived series (in place) that it replaces an earlier one and/or that its source was incomplete.

    version, supersedes : version ``n`` >= 2 of the derived series of one source series replaces the derived series
        ``supersedes`` (its SeriesInstanceUID): ``SeriesDescription`` ends with `` v<n>``, ``DerivationDescription``
        and ``ImageComments`` name the superseded series, and ``ReferencedSeriesSequence`` gets an item for it
        (with ``superseded_instances``, its (SOPClassUID, SOPInstanceUID) pairs, when known).
    incomplete : a note such as ``"13 of 32 images received"``: ``SeriesDescription`` ends with `` INCOMPLETE``
        and ``DerivationDescription`` / ``ImageComments`` carry the note.
    """
    if version < 1 or (version > 1) != (supersedes is not None):
        raise ValueError(f"version {version} with supersedes={supersedes!r}: version >= 2 names what it supersedes")
    suffix = (f" v{version}" if version > 1 else "") + (" INCOMPLETE" if incomplete else "")
    notes = []
    if incomplete:
        notes.append(f"INCOMPLETE source series: {incomplete}")
    if supersedes:
        notes.append(f"version {version}, supersedes derived series {supersedes}")
    if not notes:
        return
    item = None
    if supersedes:
        item = Dataset()
        item.SeriesInstanceUID = supersedes
        refs = []
        for cls, uid in superseded_instances:
            r = Dataset()
            r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID = cls, uid
            refs.append(r)
        item.ReferencedInstanceSequence = DicomSequence(refs)
    for ds in datasets:
        ds.SeriesDescription = _suffixed(str(ds.get("SeriesDescription", "") or ""), suffix)
        ds.DerivationDescription = "; ".join([str(ds.get("DerivationDescription", "") or ""), *notes]).strip("; ")[
            :1024]
        ds.ImageComments = "; ".join([*notes, str(ds.get("ImageComments", "") or "")]).strip("; ")[:10240]
        if item is not None:
            refs_seq = ds.get("ReferencedSeriesSequence") or DicomSequence([])
            refs_seq.append(copy.deepcopy(item))
            ds.ReferencedSeriesSequence = refs_seq


def _referenced_series(sources: Sequence[Dataset]) -> DicomSequence:
    """``ReferencedSeriesSequence``: every source series with its instances (each once)."""
    by_series: dict[str, dict[str, Dataset]] = {}
    for s in sources:
        by_series.setdefault(str(s.SeriesInstanceUID), {}).setdefault(str(s.SOPInstanceUID), s)
    items = []
    for uid, members in by_series.items():
        item = Dataset()
        item.SeriesInstanceUID = uid
        refs = []
        for m in members.values():
            r = Dataset()
            r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID = m.SOPClassUID, m.SOPInstanceUID
            refs.append(r)
        item.ReferencedInstanceSequence = DicomSequence(refs)
        items.append(item)
    return DicomSequence(items)


def _general_image(ds: Dataset, index: int, source: Dataset, frame: int, references: DicomSequence,
                   description: str, first: Dataset, date: str, time: str) -> None:
    """General Image module of a derived slice: ``DERIVED\\SECONDARY``, what derived it, and its source image
    (the frame of an Enhanced MR source) and series."""
    ds.InstanceNumber = index + 1
    ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]  # MR images need value 3 (dciodvfy)
    ds.ContentDate, ds.ContentTime = date, time
    ds.DerivationDescription = description
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if str(source.SOPClassUID) == ENHANCED_MR_IMAGE_STORAGE:
        ref.ReferencedFrameNumber = frame
    ref.PurposeOfReferenceCodeSequence = DicomSequence(
        [code_item("121322", "DCM", "Source image for image processing operation")])
    ds.SourceImageSequence = DicomSequence([ref])
    ds.ReferencedSeriesSequence = copy.deepcopy(references)
    if str(first.get("LossyImageCompression", "")) == "01":
        ds.LossyImageCompression = "01"


def dataset_bytes(ds: Dataset) -> bytes:
    """A dataset as a DICOM Part 10 file (preamble, file meta, data set)."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def datasets_zip(datasets: Sequence[Dataset]) -> bytes:
    """A zip of Part 10 files ``0001.dcm``, ``0002.dcm``... (e.g. a derived series for a REST answer)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for i, ds in enumerate(datasets, start=1):
            z.writestr(f"{i:04d}.dcm", dataset_bytes(ds))
    return buf.getvalue()
