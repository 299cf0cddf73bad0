"""Shared DICOM layer of the REST API and the DICOM node (write once, import from both).

* :mod:`serving.dicom.geometry`: :class:`SeriesGeometry`, the plane geometry every module below shares.
* :mod:`serving.dicom.series`: MR series (datasets, files, directory, zip) -> sorted float32 volume + geometry.
* :mod:`serving.dicom.derived`: float volume -> derived MR series (same patient/study, new UIDs, references).
* :mod:`serving.dicom.rawdata`: undersampled k-space <-> Raw Data Storage instances (documented private block).
* :mod:`serving.dicom.kspace_files`: k-space from ``.npy`` / ``.npz`` / fastMRI HDF5 / ISMRMRD files.

Every input problem raises :class:`DicomInputError` (a ``ValueError``) naming the attribute and what was
expected: REST answers 4xx, the DICOM node a DIMSE failure status.
"""

from serving.dicom.derived import (
    SYNTHESIS_CODE,
    UINT16_MAX,
    build_derived_series,
    dataset_bytes,
    datasets_zip,
    derivation_description,
    intensity_mapping,
    mark_series_version,
    real_world_values,
)
from serving.dicom.errors import DicomInputError
from serving.dicom.geometry import SeriesGeometry
from serving.dicom.kspace_files import KSpaceFile, read_kspace_file
from serving.dicom.rawdata import (
    KSPACE_GROUP,
    KSPACE_PRIVATE_CREATOR,
    RAW_DATA_STORAGE,
    KSpaceVolume,
    check_kspace_instance,
    decode_kspace,
    encode_kspace,
    has_kspace,
    kspace_slices,
)
from serving.dicom.series import (
    ENHANCED_MR_IMAGE_STORAGE,
    IMAGE_SOP_CLASSES,
    MR_IMAGE_STORAGE,
    SeriesVolume,
    check_image,
    geometry_of,
    guess_contrast,
    load_datasets,
    read_series,
    series_extent,
)

__all__ = [
    "ENHANCED_MR_IMAGE_STORAGE",
    "IMAGE_SOP_CLASSES",
    "KSPACE_GROUP",
    "KSPACE_PRIVATE_CREATOR",
    "MR_IMAGE_STORAGE",
    "RAW_DATA_STORAGE",
    "SYNTHESIS_CODE",
    "UINT16_MAX",
    "DicomInputError",
    "KSpaceFile",
    "KSpaceVolume",
    "SeriesGeometry",
    "SeriesVolume",
    "build_derived_series",
    "derivation_description",
    "check_image",
    "check_kspace_instance",
    "dataset_bytes",
    "datasets_zip",
    "decode_kspace",
    "encode_kspace",
    "geometry_of",
    "guess_contrast",
    "has_kspace",
    "intensity_mapping",
    "kspace_slices",
    "load_datasets",
    "mark_series_version",
    "read_kspace_file",
    "read_series",
    "real_world_values",
    "series_extent",
]
