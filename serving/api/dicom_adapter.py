"""Adapter over :mod:`serving.dicom` for answers that have no source DICOM series.

``serving.dicom.build_derived_series`` builds a series *from a source series* (patient, study and references
copied). A reconstruction posted as ``.npy`` / HDF5, or a synthesis posted as NIfTI, has no source
instances, so :func:`new_mr_series` gives the builder a placeholder source (new study, placeholder patient,
nothing else) and then removes the references to it (there is no such instance anywhere):

* ``ImageType``: ``ORIGINAL\\PRIMARY\\OTHER`` for a reconstruction of uploaded raw data (what a scanner's own
  reconstruction is), ``DERIVED\\SECONDARY\\OTHER`` for a synthesis;
* new ``StudyInstanceUID``, ``SeriesInstanceUID``, ``FrameOfReferenceUID`` (or the caller's study);
* ``PatientName`` ``Anonymous^Unknown``, ``PatientID`` ``MRI-SERVICE-<8 hex>`` unless given; no other patient data;
* no ``SourceImageSequence`` / ``ReferencedSeriesSequence``.

Everything else (modules, float -> uint16 mapping with ``RealWorldValueMappingSequence``, geometry) is the
shared builder's. If ``serving.dicom`` gains a "new series" builder, this module should call it instead.
"""

from __future__ import annotations

import datetime as _dt

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from serving.dicom import RAW_DATA_STORAGE, SeriesGeometry, build_derived_series

__all__ = ["new_mr_series"]


def new_mr_series(volume: np.ndarray, geometry: SeriesGeometry, *, model_name: str, model_version: str,
                  series_description: str, original: bool, patient_name: str = "Anonymous^Unknown",
                  patient_id: str | None = None, study_instance_uid: str | None = None, series_number: int = 1,
                  study_description: str = "", extra: dict | None = None,
                  now: _dt.datetime | None = None) -> list[Dataset]:
    """MR Image Storage instances (one per slice) of float32 ``volume`` [slices, rows, cols] in a new series.

    Parameters
    ----------
    geometry : slice positions / orientation / spacing (one position per slice).
    original : ORIGINAL\\PRIMARY (reconstruction of raw data) or DERIVED\\SECONDARY (synthesis).
    extra : attributes set on every instance afterwards (e.g. ``{"RepetitionTime": 500}``), keyword -> value.
    """
    now = now or _dt.datetime.now()
    series_uid = generate_uid()
    placeholder = Dataset()
    placeholder.SOPClassUID = RAW_DATA_STORAGE  # not MR: the builder takes the given geometry, copies no MR parameters
    placeholder.SOPInstanceUID = generate_uid()
    placeholder.SeriesInstanceUID = generate_uid()
    placeholder.StudyInstanceUID = study_instance_uid or generate_uid()
    placeholder.PatientName = patient_name
    placeholder.PatientID = patient_id or f"MRI-SERVICE-{series_uid.replace('.', '')[-8:]}"
    placeholder.StudyDate, placeholder.StudyTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    placeholder.StudyID = ""
    placeholder.AccessionNumber = ""
    placeholder.ReferringPhysicianName = ""
    if study_description:
        placeholder.StudyDescription = study_description[:64]
    placeholder.PatientPosition = "HFS"
    out = build_derived_series([placeholder], volume, model_name=model_name, model_version=model_version,
                               series_description=series_description, series_number_offset=series_number,
                               geometry=geometry, same_contrast=False, series_instance_uid=series_uid, now=now,
                               synthetic=not original)
    for ds in out:
        for kw in ("SourceImageSequence", "ReferencedSeriesSequence"):
            if kw in ds:
                delattr(ds, kw)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"] if original else ["DERIVED", "SECONDARY", "OTHER"]
        if original and "DerivationDescription" in ds:
            ds.DerivationDescription = f"reconstructed by {model_name} version {model_version} (mri-service)"
        for kw, value in (extra or {}).items():
            setattr(ds, kw, value)
    return out
