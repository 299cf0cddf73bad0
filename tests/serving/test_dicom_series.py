"""serving.dicom.series: MR series -> sorted float32 volume + geometry, with precise errors."""

from __future__ import annotations

import copy
import io
import zipfile

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import JPEGLSLossless, RLELossless, generate_uid

from serving.dicom import DicomInputError, check_image, load_datasets, read_series
from serving.dicom.series import guess_contrast
from tests.dicom_node.data import ellipse_volume, mr_series, write_series


@pytest.fixture
def series():
    vol = ellipse_volume(5, 32, 24)
    return vol, mr_series(vol)


def test_sorts_by_position_not_instance_number_and_keeps_values(series):
    vol, dss = series
    shuffled = [dss[i] for i in (3, 0, 4, 2, 1)]
    sv = read_series(shuffled)
    assert sv.volume.dtype == np.float32 and sv.volume.shape == (5, 32, 24)
    np.testing.assert_array_equal(sv.volume, np.rint(vol))
    np.testing.assert_allclose(sv.geometry.positions[:, 2], [-20, -15, -10, -5, 0])
    assert [str(d.SOPInstanceUID) for d in sv.datasets] == [str(d.SOPInstanceUID) for d in dss]
    assert sv.geometry.pixel_spacing == (pytest.approx(7.5), pytest.approx(220 / 24, rel=1e-5))
    assert sv.geometry.slice_thickness == 5.0 and sv.frames == [1] * 5


def test_reads_files_directories_zips_and_bytes_and_deduplicates(series, tmp_path):
    vol, dss = series
    paths = write_series(dss, tmp_path / "d")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in paths:
            z.write(p, f"series/{p.name}")
    for source in (tmp_path / "d", paths, buf.getvalue(), [*paths, paths[0]]):
        sv = read_series(source)
        np.testing.assert_array_equal(sv.volume, np.rint(vol))


def test_rescale_slope_and_intercept_are_applied(series):
    _, dss = series
    for d in dss:
        d.RescaleSlope, d.RescaleIntercept = 0.5, -10
    sv = read_series(dss)
    raw = np.stack([d.pixel_array for d in dss]).astype(np.float32)
    np.testing.assert_allclose(sv.volume, raw * 0.5 - 10)


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless])
def test_compressed_series_are_decoded(series, syntax):
    vol, dss = series
    for d in dss:
        d.compress(syntax)
    buf = [io.BytesIO() for _ in dss]
    for d, b in zip(dss, buf):
        d.save_as(b, enforce_file_format=True)
    sv = read_series([b.getvalue() for b in buf])
    np.testing.assert_array_equal(sv.volume, np.rint(vol))


def test_pixel_data_that_does_not_match_rows_and_columns(series):
    _, dss = series
    dss[2].PixelData = dss[2].PixelData[:-64]
    with pytest.raises(DicomInputError, match=r"PixelData has 1472 bytes, expected Rows x Columns") as e:
        read_series(dss)
    assert e.value.attribute == "PixelData" and e.value.kind == "mismatch"
    dss[2].Rows = 31
    with pytest.raises(DicomInputError, match="Rows"):
        check_image(dss[2])


@pytest.mark.parametrize("keyword", ["ImagePositionPatient", "PixelSpacing", "SeriesInstanceUID", "Rows"])
def test_missing_required_attribute_is_named(series, keyword):
    _, dss = series
    delattr(dss[1], keyword)
    with pytest.raises(DicomInputError, match=keyword) as e:
        read_series(dss)
    assert e.value.attribute == keyword and e.value.kind == "missing"


def test_mixed_series_are_refused(series):
    vol, dss = series
    other = mr_series(vol[:2])
    with pytest.raises(DicomInputError, match="mixed series: SeriesInstanceUID") as e:
        read_series(dss + other)
    assert e.value.kind == "mismatch"
    d = copy.deepcopy(dss[0])
    d.SOPInstanceUID = generate_uid()
    with pytest.raises(DicomInputError, match="same position"):
        read_series(dss + [d])
    dss[1].ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    with pytest.raises(DicomInputError, match="ImageOrientationPatient"):
        read_series(dss)


def test_unreadable_input_and_colour_images():
    with pytest.raises(DicomInputError, match="not a readable DICOM") as e:
        load_datasets(b"this is not DICOM at all" * 10)
    assert e.value.kind == "unreadable"
    d = mr_series(ellipse_volume(1, 16, 16))[0]
    d.PhotometricInterpretation = "RGB"
    with pytest.raises(DicomInputError, match="grey-scale") as e:
        check_image(d)
    assert e.value.kind == "unsupported"


def enhanced_from(dss) -> Dataset:
    """One Enhanced MR instance (frames in reverse order) from single-frame instances."""
    first = dss[0]
    e = Dataset()
    for kw in ("SpecificCharacterSet", "PatientName", "PatientID", "StudyInstanceUID", "SeriesInstanceUID",
               "FrameOfReferenceUID", "Modality", "SeriesNumber", "SeriesDescription", "SamplesPerPixel",
               "PhotometricInterpretation",
               "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation"):
        setattr(e, kw, first.get(kw))
    e.SOPClassUID, e.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.4.1", generate_uid()
    order = list(reversed(range(len(dss))))
    e.NumberOfFrames = len(dss)
    shared = Dataset()
    ori, meas = Dataset(), Dataset()
    ori.ImageOrientationPatient = first.ImageOrientationPatient
    meas.PixelSpacing, meas.SliceThickness = first.PixelSpacing, first.SliceThickness
    shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = Sequence([ori]), Sequence([meas])
    e.SharedFunctionalGroupsSequence = Sequence([shared])
    per = []
    for i in order:
        f, pos = Dataset(), Dataset()
        pos.ImagePositionPatient = dss[i].ImagePositionPatient
        f.PlanePositionSequence = Sequence([pos])
        per.append(f)
    e.PerFrameFunctionalGroupsSequence = Sequence(per)
    e.PixelData = b"".join(dss[i].PixelData for i in order)
    e.file_meta = copy.deepcopy(first.file_meta)
    e.file_meta.MediaStorageSOPClassUID, e.file_meta.MediaStorageSOPInstanceUID = e.SOPClassUID, e.SOPInstanceUID
    return e


def test_enhanced_mr_frames_are_sorted_by_plane_position(series):
    vol, dss = series
    sv = read_series([enhanced_from(dss)])
    np.testing.assert_array_equal(sv.volume, np.rint(vol))
    assert sv.frames == [5, 4, 3, 2, 1]
    assert sv.geometry.pixel_spacing[0] == pytest.approx(7.5)


def test_contrast_guess_from_description_then_timing(series):
    _, dss = series
    assert guess_contrast(dss[0]) == "T1w"
    d = dss[0]
    d.SeriesDescription = "axial"
    d.RepetitionTime, d.EchoTime = 4000, 100
    assert guess_contrast(d) == "T2w"
    d.SeriesDescription = "FLAIR tra"
    assert guess_contrast(d) == "FLAIR"


def test_dataset_roundtrip_through_pydicom_keeps_file_meta(series, tmp_path):
    _, dss = series
    p = write_series(dss[:1], tmp_path)[0]
    assert pydicom.dcmread(p).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
