"""serving.dicom.derived: the derived-series builder shared by REST and the DICOM node (dciodvfy-clean)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from serving.dicom import (
    SYNTHESIS_CODE,
    build_derived_series,
    datasets_zip,
    decode_kspace,
    derivation_description,
    encode_kspace,
    intensity_mapping,
    read_series,
    real_world_values,
)
from tests.dicom_node.data import PATIENT_ID, ellipse_volume, mr_series, undersampled_kspace
from tests.dicom_node.peers import dciodvfy_errors
from tests.serving.test_dicom_series import enhanced_from

needs_dciodvfy = pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed "
                                    "(make system-deps)")


@pytest.fixture
def source():
    return read_series(mr_series(ellipse_volume(4, 32, 24), description="T1w tra"))


def test_identity_references_geometry_and_one_mapping(source, tmp_path):
    out_vol = (source.volume / 1000.0 - 0.1).astype(np.float32)  # negative values too
    out = build_derived_series(source.datasets, out_vol, model_name="synth_t1w_to_t2w", model_version="3",
                               series_description="T1w tra synthetic T2w", series_number_offset=2000,
                               same_contrast=False)
    assert len(out) == 4
    src_uids = {str(d.SOPInstanceUID) for d in source.datasets}
    slopes = {float(d.RealWorldValueMappingSequence[0].RealWorldValueSlope) for d in out}
    assert len(slopes) == 1  # one mapping for the whole series
    lo, slope = intensity_mapping(out_vol)
    assert lo == pytest.approx(float(out_vol.min())) and slopes.pop() == pytest.approx(slope)
    for i, (d, s) in enumerate(zip(out, source.datasets)):
        assert d.PatientID == PATIENT_ID and d.StudyInstanceUID == s.StudyInstanceUID
        assert d.SeriesInstanceUID != s.SeriesInstanceUID and str(d.SOPInstanceUID) not in src_uids
        assert list(d.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert "synth_t1w_to_t2w version 3" in d.DerivationDescription
        assert d.SeriesNumber == 3 + 2000 and d.SeriesDescription == "T1w tra synthetic T2w"
        assert d.SourceImageSequence[0].ReferencedSOPInstanceUID == s.SOPInstanceUID
        assert d.ReferencedSeriesSequence[0].SeriesInstanceUID == s.SeriesInstanceUID
        assert len(d.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == 4
        assert [float(v) for v in d.ImagePositionPatient] == [float(v) for v in s.ImagePositionPatient]
        assert [float(v) for v in d.PixelSpacing] == pytest.approx([float(v) for v in s.PixelSpacing])
        assert d.FrameOfReferenceUID == s.FrameOfReferenceUID
        assert d.ScanningSequence == "RM"  # synthesis: the source's TR/TE do not describe the output
        assert d.SyntheticData == "YES" and d[0x0008, 0x001C].value == "YES"  # Synthetic Data (0008,001C)
        code = d.DerivationCodeSequence[0]
        assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == SYNTHESIS_CODE
        assert d.pixel_array.dtype == np.uint16
        np.testing.assert_allclose(real_world_values(d), out_vol[i], atol=slope / 2 + 1e-7)
    assert len({str(d.SOPInstanceUID) for d in out}) == 4


def test_only_a_synthesized_series_is_marked_synthetic(source):
    recon = build_derived_series(source.datasets, source.volume, model_name="recon_unrolled", model_version="2")
    assert all("SyntheticData" not in d and "DerivationCodeSequence" not in d for d in recon)
    forced = build_derived_series(source.datasets, source.volume, model_name="m", model_version="1", synthetic=True)
    assert all(d.SyntheticData == "YES" for d in forced)
    assert derivation_description("synth_t1w_to_flair", 2) == "synth_t1w_to_flair version 2 (mri-service)"


def test_uids_are_deterministic_for_a_given_series_uid(source):
    a = build_derived_series(source.datasets, source.volume, model_name="m", model_version="1",
                             series_instance_uid="1.2.3.4")
    b = build_derived_series(source.datasets, source.volume, model_name="m", model_version="1",
                             series_instance_uid="1.2.3.4")
    assert [d.SOPInstanceUID for d in a] == [d.SOPInstanceUID for d in b]
    assert a[0].RepetitionTime == source.datasets[0].RepetitionTime  # same contrast: acquisition copied


@needs_dciodvfy
def test_every_instance_passes_dciodvfy(source, tmp_path):
    out = build_derived_series(source.datasets, source.volume * 1.5, model_name="recon_unrolled",
                               model_version="1")
    for i, d in enumerate(out):
        p = tmp_path / f"{i}.dcm"
        d.save_as(p, enforce_file_format=True)
        assert dciodvfy_errors(p) == []


@needs_dciodvfy
def test_derived_from_raw_data_and_from_enhanced_mr(tmp_path):
    k, mask = undersampled_kspace(3, 2, 32, 32)
    kv = decode_kspace(encode_kspace(k, mask, per_slice=False, contrast="T2w"))
    img = np.abs(k).sum(1).astype(np.float32)
    out = build_derived_series(kv.datasets, img, model_name="recon_unrolled", model_version="1",
                               geometry=kv.geometry)
    assert len(out) == 3 and all(d.SourceImageSequence[0].ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.66"
                                 for d in out)
    np.testing.assert_allclose([float(d.ImagePositionPatient[2]) for d in out], kv.geometry.positions[:, 2])
    sv = read_series([enhanced_from(mr_series(ellipse_volume(3, 16, 16)))])
    out2 = build_derived_series(sv.datasets, sv.volume, model_name="m", model_version="1", source_frames=sv.frames)
    assert [int(d.SourceImageSequence[0].ReferencedFrameNumber) for d in out2] == [3, 2, 1]
    for i, d in enumerate(out + out2):
        p = tmp_path / f"{i}.dcm"
        d.save_as(p, enforce_file_format=True)
        assert dciodvfy_errors(p) == []


def test_bad_arguments(source):
    with pytest.raises(ValueError, match=r"volume must be real float32 \[slices, rows, cols\]"):
        build_derived_series(source.datasets, source.volume[0], model_name="m", model_version="1")
    with pytest.raises(ValueError, match="NaN"):
        build_derived_series(source.datasets, source.volume * np.nan, model_name="m", model_version="1")
    with pytest.raises(ValueError, match="1 or 4"):
        build_derived_series(source.datasets[:2], source.volume, model_name="m", model_version="1")
    k, _ = undersampled_kspace(2, 2, 16, 16)
    kv = decode_kspace(encode_kspace(k))
    with pytest.raises(ValueError, match="geometry is required"):
        build_derived_series(kv.datasets, np.abs(k[:, 0]), model_name="m", model_version="1")


def test_zip_of_a_derived_series_reads_back(source):
    out = build_derived_series(source.datasets, source.volume, model_name="m", model_version="1")
    back = read_series(datasets_zip(out))
    assert [str(d.SOPInstanceUID) for d in back.datasets] == [str(d.SOPInstanceUID) for d in out]
    np.testing.assert_allclose(np.stack([real_world_values(d) for d in back.datasets]), source.volume,
                               atol=float(out[0].RealWorldValueMappingSequence[0].RealWorldValueSlope))
