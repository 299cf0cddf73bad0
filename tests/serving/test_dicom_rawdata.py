"""serving.dicom.rawdata (k-space in Raw Data Storage) and serving.dicom.kspace_files (.npy/.npz/fastMRI/MRD)."""

from __future__ import annotations

import io
import shutil

import h5py
import numpy as np
import pydicom
import pytest
from pydicom.uid import ImplicitVRLittleEndian

from mrcore.data.readers import write_mrd
from serving.dicom import (
    DicomInputError,
    check_kspace_instance,
    decode_kspace,
    encode_kspace,
    has_kspace,
    read_kspace_file,
)
from serving.dicom.rawdata import KSPACE_PRIVATE_CREATOR
from tests.dicom_node.data import ellipse_volume, mr_series, undersampled_kspace
from tests.dicom_node.peers import dciodvfy_errors


def roundtrip(ds, syntax=None) -> pydicom.Dataset:
    if syntax is not None:
        ds.file_meta.TransferSyntaxUID = syntax
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


@pytest.mark.parametrize("per_slice", [True, False])
def test_roundtrip_per_slice_and_per_volume(per_slice):
    k, mask = undersampled_kspace(4, 3, 24, 20)
    dss = encode_kspace(k, mask, per_slice=per_slice, contrast="T2w", phase_encoding_axis=-1)
    assert len(dss) == (4 if per_slice else 1)
    assert all(has_kspace(d) for d in dss)
    back = [roundtrip(d) for d in reversed(dss)]  # any order, through bytes
    kv = decode_kspace(back)
    np.testing.assert_array_equal(kv.kspace, k)
    np.testing.assert_array_equal(kv.mask, mask)
    assert kv.contrast == "T2w" and kv.phase_encoding_axis == -1
    assert kv.geometry.pixel_spacing == (pytest.approx(10.0), pytest.approx(12.0))
    np.testing.assert_allclose(kv.geometry.positions[:, 2], [-7.5, -2.5, 2.5, 7.5])
    assert len(kv.datasets) == 4


def test_implicit_vr_and_template_patient():
    tpl = mr_series(ellipse_volume(1, 16, 16))[0]
    k, _ = undersampled_kspace(2, 2, 16, 16)
    dss = encode_kspace(k, template=tpl)
    assert dss[0].PatientID == tpl.PatientID and dss[0].StudyInstanceUID == tpl.StudyInstanceUID
    back = [roundtrip(d, ImplicitVRLittleEndian) for d in dss]
    kv = decode_kspace(back)
    np.testing.assert_array_equal(kv.kspace, k)
    assert kv.mask is None
    assert dss[0].private_block(0x0071, KSPACE_PRIVATE_CREATOR)[0x02].value == [1, 2, 16, 16]


def test_wrong_sizes_and_missing_fields_are_named():
    k, mask = undersampled_kspace(2, 2, 16, 16)
    d = encode_kspace(k, mask)[0]
    block = d.private_block(0x0071, KSPACE_PRIVATE_CREATOR)
    block[0x04].value = block[0x04].value[:-8]
    with pytest.raises(DicomInputError, match=r"KSpaceData has 4088 bytes, expected 8 x slices x coils") as e:
        check_kspace_instance(d)
    assert e.value.attribute == "KSpaceData" and e.value.kind == "mismatch"
    d = encode_kspace(k, mask)[0]
    d.private_block(0x0071, KSPACE_PRIVATE_CREATOR)[0x05].value = [16, 15]
    with pytest.raises(DicomInputError, match="KSpaceMaskShape"):
        check_kspace_instance(d)
    d = encode_kspace(k, mask)[0]
    del d[d.private_block(0x0071, KSPACE_PRIVATE_CREATOR).get_tag(0x09)]
    with pytest.raises(DicomInputError, match="KSpaceSlicePositions .* is missing") as e:
        check_kspace_instance(d)
    assert e.value.kind == "missing"
    d = encode_kspace(k)[0]
    del d[0x00710010]
    with pytest.raises(DicomInputError, match="no k-space private block"):
        check_kspace_instance(d)


def test_incomplete_or_mixed_kspace_series():
    k, _ = undersampled_kspace(3, 2, 16, 16)
    dss = encode_kspace(k)
    with pytest.raises(DicomInputError, match=r"missing \[1\]"):
        decode_kspace([dss[0], dss[2]])
    other = encode_kspace(undersampled_kspace(3, 3, 16, 16)[0])
    with pytest.raises(DicomInputError, match="mixed series"):
        decode_kspace([dss[0], other[1], dss[2]])


def test_encode_refuses_bad_arrays():
    with pytest.raises(ValueError, match=r"kspace must be complex64 \[slices, coils, ky, kx\]"):
        encode_kspace(np.ones((2, 2, 8, 8), np.float32))
    with pytest.raises(ValueError, match="mask must be float32"):
        encode_kspace(np.ones((2, 2, 8, 8), np.complex64), np.ones((8, 7)))


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed (make system-deps)")
def test_raw_data_instances_pass_dciodvfy(tmp_path):
    k, mask = undersampled_kspace(2, 2, 16, 16)
    for i, d in enumerate(encode_kspace(k, mask, contrast="PD")):
        p = tmp_path / f"{i}.dcm"
        d.save_as(p, enforce_file_format=True)
        assert dciodvfy_errors(p) == []


# --- k-space from files ------------------------------------------------------------------------------
def test_npy_and_npz_with_masks(tmp_path):
    k, mask = undersampled_kspace(2, 3, 16, 16)
    full = np.fft.fft2(np.ones((2, 3, 16, 16))).astype(np.complex64)
    np.save(tmp_path / "k.npy", full)
    kf = read_kspace_file(tmp_path / "k.npy", acceleration=4)
    assert kf.mask.shape == (16, 16) and 3 < 16 * 16 / kf.mask.sum() < 5
    np.testing.assert_array_equal(kf.kspace, full * kf.mask)
    np.savez(tmp_path / "k.npz", kspace=k, mask=mask)
    kf = read_kspace_file(tmp_path / "k.npz")
    np.testing.assert_array_equal(kf.mask, mask)
    np.save(tmp_path / "one.npy", k[0])
    assert read_kspace_file(tmp_path / "one.npy").kspace.shape == (1, 3, 16, 16)
    np.save(tmp_path / "bad.npy", np.ones((3, 16, 16)))
    with pytest.raises(ValueError, match="complex"):
        read_kspace_file(tmp_path / "bad.npy")


def test_fastmri_and_mrd_files_through_the_project_readers(tmp_path):
    k, mask = undersampled_kspace(3, 2, 16, 20)
    with h5py.File(tmp_path / "file_brain.h5", "w") as f:
        f["kspace"] = k
        f["mask"] = np.ones(20, np.float32)
        f.attrs["acquisition"] = "AXT2"
    kf = read_kspace_file(tmp_path / "file_brain.h5")
    assert kf.contrast == "T2w" and kf.phase_encoding_axis == -1 and kf.mask.shape == (16, 20)
    np.testing.assert_array_equal(kf.kspace, k)
    write_mrd(tmp_path / "scan.h5", k, protocol_name="t1_se_tra")
    kf = read_kspace_file(tmp_path / "scan.h5")
    assert kf.contrast == "T1w" and kf.phase_encoding_axis == -2
    np.testing.assert_allclose(kf.kspace, k, atol=1e-6)
    np.testing.assert_array_equal(kf.mask, np.repeat(mask[:, :1], 20, axis=1))
