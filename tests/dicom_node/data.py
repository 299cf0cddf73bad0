"""Synthetic test data: MR series built with pydicom (fake patient values) and multi-coil k-space.

Images are smooth ellipse phantoms (fast, deterministic); k-space is ``fft2c`` of the image times simple
coil maps, undersampled with an equispaced line mask (mrcore conventions).
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from mrcore.fft import fft2c

PATIENT_NAME = "Zzyzx^Quintessa"
PATIENT_ID = "PID-7734-XQ"
BIRTH_DATE = "19311231"


def ellipse_volume(slices: int = 4, rows: int = 64, cols: int = 64, seed: int = 0) -> np.ndarray:
    """float32 [slices, rows, cols] in [0, 1000): nested ellipses varying with the slice."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[-1:1:rows * 1j, -1:1:cols * 1j]
    out = np.zeros((slices, rows, cols), np.float32)
    for s in range(slices):
        f = 1 - 0.3 * abs(s - slices / 2) / max(slices, 1)
        img = 600.0 * ((x / (0.8 * f)) ** 2 + (y / (0.9 * f)) ** 2 < 1)
        img += 300.0 * (((x - 0.2) / 0.25) ** 2 + ((y + 0.1) / 0.35) ** 2 < 1)
        img += 80.0 * rng.random((rows, cols))
        out[s] = img
    return out


def mr_series(volume: np.ndarray, *, description: str = "T1w axial SE", tr: float = 500.0, te: float = 12.0,
              study_uid: str | None = None, series_uid: str | None = None, spacing: float = 5.0,
              bits_stored: int = 12) -> list[Dataset]:
    """Single-frame MR Image Storage instances of ``volume`` (rounded to uint16), fake patient."""
    vol = np.clip(np.rint(volume), 0, 2 ** bits_stored - 1).astype(np.uint16)
    n, rows, cols = vol.shape
    study_uid, series_uid, frame_uid = study_uid or generate_uid(), series_uid or generate_uid(), generate_uid()
    today = datetime.date.today().strftime("%Y%m%d")
    out = []
    for i in range(n):
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = PATIENT_NAME, PATIENT_ID, BIRTH_DATE, "O"
        ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = study_uid, today, "101500"
        ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber = "", "S1", "ACC-1"
        ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = "MR", series_uid, 3, description
        ds.PatientPosition, ds.Laterality = "HFS", ""
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_uid, ""
        ds.Manufacturer = "TEST SCANNER"
        ds.InstanceNumber = n - i  # deliberately reversed: sorting must use positions
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.ImagePositionPatient = [-120.0, -110.0, -20.0 + spacing * i]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [round(240 / rows, 6), round(220 / cols, 6)]
        ds.SliceThickness = spacing
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "SE", "NONE", "", "2D"
        ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = tr, te, 1
        ds.PixelData = vol[i].astype("<u2").tobytes()
        ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.4", generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        out.append(ds)
    return out


def write_series(datasets, directory: Path, prefix: str = "img") -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(datasets):
        p = directory / f"{prefix}_{i:04d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def coil_maps(coils: int, rows: int, cols: int) -> np.ndarray:
    """complex64 [coils, rows, cols], smooth, normalised so that sum_c |S_c|^2 = 1."""
    y, x = np.mgrid[-1:1:rows * 1j, -1:1:cols * 1j]
    maps = []
    for c in range(coils):
        a = 2 * np.pi * c / coils
        maps.append(np.exp(-((x - 1.2 * np.cos(a)) ** 2 + (y - 1.2 * np.sin(a)) ** 2) / 2) * np.exp(1j * a))
    m = np.stack(maps)
    return (m / np.sqrt((np.abs(m) ** 2).sum(0))).astype(np.complex64)


def undersampled_kspace(slices: int = 4, coils: int = 4, rows: int = 64, cols: int = 64, acceleration: int = 4,
                        seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(kspace complex64 [S, C, ky, kx] undersampled, mask float32 [ky, kx]) of an ellipse volume."""
    vol = ellipse_volume(slices, rows, cols, seed) / 1000.0
    k = fft2c(vol[:, None] * coil_maps(coils, rows, cols)[None]).astype(np.complex64)
    mask = np.zeros((rows, cols), np.float32)
    mask[::acceleration] = 1
    c = max(2, rows // 12)
    mask[rows // 2 - c // 2: rows // 2 - c // 2 + c] = 1
    return (k * mask).astype(np.complex64), mask
