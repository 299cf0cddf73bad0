"""DICOM builders by IOD module: one function per module, shared by derived series and raw-data instances.

Each function fills the attributes of one module (PS3.3) into a dataset and nothing else, so an IOD is the
list of its modules: :func:`serving.dicom.derived.build_derived_series` (MR Image) and
:func:`serving.dicom.rawdata.encode_kspace` (Raw Data) both call them.

=============================  ============================================================================
module (PS3.3 section)         function
=============================  ============================================================================
Patient, General Study         :func:`patient_study` (copied from a source instance, type 2 filled empty)
General Series                 :func:`general_series`
Frame of Reference             :func:`frame_of_reference`
General Equipment              :func:`general_equipment`
Image Plane                    :func:`image_plane`
MR Image                       :func:`mr_image`
Real World Value Mapping       :func:`real_world_value_mapping`
SOP Common                     :func:`sop_common`
File Meta Information (PS3.10) :func:`file_meta`
=============================  ============================================================================
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

if TYPE_CHECKING:
    from serving.dicom.geometry import SeriesGeometry

__all__ = ["PATIENT", "STUDY", "UINT16_MAX", "code_item", "ds_str", "file_meta", "frame_of_reference",
           "general_equipment", "general_series", "image_plane", "mr_image", "patient_study",
           "real_world_value_mapping", "sop_common"]

UINT16_MAX = 65535

#: Patient module attributes copied from the source instance
PATIENT = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "PatientAge",
           "PatientSize", "PatientWeight", "OtherPatientIDsSequence", "PatientComments")
#: General Study module attributes copied from the source instance
STUDY = ("StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
         "StudyDescription", "IssuerOfAccessionNumberSequence")
#: type 2 attributes of the two modules: present, empty when the source has no value
_PATIENT_STUDY_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                        "ReferringPhysicianName", "StudyID", "AccessionNumber")
#: MR acquisition attributes of an MR Image source (copied for a derived image of the same contrast)
_ACQUISITION = ("ScanningSequence", "SequenceVariant", "ScanOptions", "MRAcquisitionType", "RepetitionTime",
                "EchoTime", "EchoTrainLength", "InversionTime", "FlipAngle", "MagneticFieldStrength",
                "ImagingFrequency", "ImagedNucleus", "SequenceName")
#: MR Image module attributes that must be present: (keyword, value when the source gives none)
_MR_DEFAULTS = (("ScanningSequence", "RM"), ("SequenceVariant", "NONE"), ("ScanOptions", ""),
                ("MRAcquisitionType", "2D"), ("RepetitionTime", ""), ("EchoTime", ""), ("EchoTrainLength", ""))


def ds_str(x: float) -> str:
    """A DS (decimal string) value of at most 16 characters."""
    s = f"{x:.10g}"
    if len(s) > 16:
        s = f"{x:.8e}" if abs(x) >= 1e10 or (x != 0 and abs(x) < 1e-4) else f"{x:.6f}"
    return s[:16]


def code_item(value: str, scheme: str, meaning: str) -> Dataset:
    """One item of a code sequence (Code Value, Coding Scheme Designator, Code Meaning)."""
    c = Dataset()
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
    return c


def _copy(dst: Dataset, src: Dataset, keywords: Sequence[str]) -> None:
    for kw in keywords:
        if kw in src:
            dst[kw] = copy.deepcopy(src[kw])


def patient_study(ds: Dataset, source: Dataset | None, *, defaults: Mapping[str, object] = {}) -> None:
    """Patient and General Study modules: copied from ``source`` (the same patient and study), the type 2
    attributes the source lacks from ``defaults`` or empty. ``SpecificCharacterSet`` goes with the names."""
    if source is not None:
        if "SpecificCharacterSet" in source:
            ds.SpecificCharacterSet = source.SpecificCharacterSet
        _copy(ds, source, PATIENT + STUDY)
    for kw in _PATIENT_STUDY_TYPE2:
        if kw not in ds:
            setattr(ds, kw, defaults.get(kw, ""))
    if "StudyInstanceUID" not in ds:
        ds.StudyInstanceUID = defaults.get("StudyInstanceUID") or generate_uid()


def general_series(ds: Dataset, *, series_instance_uid: str, series_number: int, description: str,
                   source: Dataset | None = None, date: str | None = None, time: str | None = None) -> None:
    """General Series module of a new series (``Modality`` MR); ``BodyPartExamined``, ``PatientPosition`` and
    ``Laterality`` come from ``source`` (type 2C: present and empty without one, as dciodvfy wants)."""
    ds.Modality = "MR"
    ds.SeriesInstanceUID = series_instance_uid
    ds.SeriesNumber = int(series_number)
    ds.SeriesDescription = description[:64]
    if date is not None:
        ds.SeriesDate, ds.SeriesTime = date, time
    if source is not None:
        _copy(ds, source, ("BodyPartExamined", "PatientPosition", "Laterality"))
    for kw in ("Laterality", "PatientPosition"):
        if kw not in ds:
            setattr(ds, kw, "")


def frame_of_reference(ds: Dataset, uid: str, indicator: str = "") -> None:
    """Frame of Reference module."""
    ds.FrameOfReferenceUID = uid
    ds.PositionReferenceIndicator = indicator


def general_equipment(ds: Dataset, manufacturer: str, model_name: str | None = None,
                      software_versions: str | None = None) -> None:
    """General Equipment module: who made the instance (this service), not the scanner."""
    ds.Manufacturer = manufacturer
    if model_name is not None:
        ds.ManufacturerModelName = str(model_name)[:64]
    if software_versions is not None:
        ds.SoftwareVersions = str(software_versions)[:64]


def image_plane(ds: Dataset, geometry: SeriesGeometry, index: int) -> None:
    """Image Plane module of slice ``index`` of ``geometry`` (plus ``SliceLocation`` along the slice normal)."""
    pos = geometry.positions[index]
    ds.PixelSpacing = [ds_str(geometry.pixel_spacing[0]), ds_str(geometry.pixel_spacing[1])]
    ds.ImageOrientationPatient = [ds_str(float(v)) for v in geometry.orientation]
    ds.ImagePositionPatient = [ds_str(float(v)) for v in pos]
    ds.SliceThickness = ds_str(geometry.slice_thickness) if geometry.slice_thickness else ""
    ds.SliceLocation = ds_str(float(pos @ geometry.normal))


def mr_image(ds: Dataset, stored: np.ndarray, *, source: Dataset | None = None, window: tuple[float, float]) -> None:
    """Image Pixel and MR Image modules of one uint16 slice ``stored`` [rows, cols] (MONOCHROME2, 16 bits),
    the MR acquisition attributes of an MR ``source`` of the same contrast (defaults otherwise) and a VOI
    LUT window ``(center, width)`` over the stored values."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(stored.shape[0]), int(stored.shape[1])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if source is not None:
        _copy(ds, source, _ACQUISITION)
    for kw, default in _MR_DEFAULTS:
        if kw not in ds:
            setattr(ds, kw, default)
    ds.WindowCenter = ds_str(float(window[0]))
    ds.WindowWidth = ds_str(float(window[1]))
    ds.PixelData = np.ascontiguousarray(stored).astype("<u2").tobytes()


def real_world_value_mapping(ds: Dataset, intercept: float, slope: float, explanation: str) -> None:
    """Real World Value Mapping module: ``value = stored * slope + intercept`` over the whole uint16 range."""
    rwv = Dataset()
    rwv.add(DataElement(0x00409216, "US", 0))  # RealWorldValueFirstValueMapped
    rwv.add(DataElement(0x00409211, "US", UINT16_MAX))  # RealWorldValueLastValueMapped
    rwv.RealWorldValueIntercept = float(intercept)
    rwv.RealWorldValueSlope = float(slope)
    rwv.LUTExplanation = explanation[:64]
    rwv.LUTLabel = "MODEL_OUTPUT"
    rwv.MeasurementUnitsCodeSequence = DicomSequence([code_item("1", "UCUM", "no units")])
    ds.RealWorldValueMappingSequence = DicomSequence([rwv])


def sop_common(ds: Dataset, sop_class_uid: str, sop_instance_uid: str, *, date: str | None = None,
               time: str | None = None) -> None:
    """SOP Common module (with the instance creation date and time when given)."""
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    if date is not None:
        ds.InstanceCreationDate, ds.InstanceCreationTime = date, time


def file_meta(ds: Dataset) -> None:
    """PS3.10 File Meta Information for ``ds`` (Explicit VR Little Endian), ready for ``dcmwrite`` or C-STORE."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(str(ds.SOPClassUID))
    meta.MediaStorageSOPInstanceUID = UID(str(ds.SOPInstanceUID))
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
