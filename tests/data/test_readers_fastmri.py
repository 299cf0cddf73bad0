"""FastMRISource over files written with h5py in the fastMRI layout."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from mrcore.data.base import KSpaceSlice, SliceSource
from mrcore.data.readers import FastMRISource
from mrcore.data.readers.fastmri import contrast_of_acquisition
from mrcore.fft import ifft2c

_XML = b'<?xml version="1.0"?><ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"></ismrmrdHeader>'


def _rss(k: np.ndarray) -> np.ndarray:
    return np.sqrt((np.abs(ifft2c(k)) ** 2).sum(axis=0)).astype(np.float32)


def _write(path: Path, kspace: np.ndarray, acquisition: str | None, *, rss: bool = True, **attrs) -> Path:
    """A file laid out like fastMRI's (kspace, reconstruction_rss, ismrmrd_header, attrs)."""
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=kspace)
        f.create_dataset("ismrmrd_header", data=_XML)
        if rss:
            n = kspace.shape[0]
            f.create_dataset("reconstruction_rss", data=np.random.default_rng(1).random((n, 320, 320), np.float32))
        if acquisition is not None:
            f.attrs["acquisition"] = acquisition
        f.attrs["max"] = 1.0
        f.attrs["norm"] = 1.0
        f.attrs["patient_id"] = "secret-patient-id-0001"
        for k, v in attrs.items():
            f.attrs[k] = v
    return path


def _kspace(rng: np.random.Generator, shape) -> np.ndarray:
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


@pytest.fixture()
def fastmri_dir(tmp_path: Path) -> dict:
    rng = np.random.default_rng(0)
    root = tmp_path / "multicoil_train"
    root.mkdir()
    k_knee = _kspace(rng, (3, 4, 32, 24))
    k_brain = _kspace(rng, (2, 4, 28, 20))
    k_single = _kspace(rng, (2, 32, 24))
    _write(root / "file1000001.h5", k_knee, "CORPDFS_FBK")
    _write(root / "file_brain_AXT2_200_6002.h5", k_brain, "AXT2", rss=False)
    _write(root / "file1000002.h5", k_single, "CORPD_FBK")
    (root / "README.txt").write_text("not data")
    return {"root": root, "knee": k_knee, "brain": k_brain, "single": k_single}


def test_parses_sites_contrasts_subjects_and_counts(fastmri_dir):
    src = FastMRISource(fastmri_dir["root"])
    assert isinstance(src, SliceSource)
    assert src.sites == ("fastmri",)
    assert src.contrasts("fastmri") == ("T2w", "PD")
    assert src.num_slices("fastmri") == 3 + 2 + 2
    # files in name order: file1000001 (3), file1000002 (2), file_brain... (2)
    assert src.subjects("fastmri") == ["file1000001", "file1000002", "file_brain_AXT2_200_6002"]
    assert [src.slice_contrast("fastmri", i) for i in range(7)] == ["PD"] * 5 + ["T2w"] * 2
    assert src.phase_encode_axis == -1


def test_kspace_round_trip_and_rss_target(fastmri_dir):
    src = FastMRISource(fastmri_dir["root"])
    ks = src.kspace("fastmri", 1, "PD")
    assert isinstance(ks, KSpaceSlice)
    assert ks.kspace.dtype == np.complex64 and ks.kspace.shape == (4, 32, 24)
    np.testing.assert_array_equal(ks.kspace, fastmri_dir["knee"][1])
    assert ks.maps is None and ks.site == "fastmri" and ks.subject == "file1000001" and ks.contrast == "PD"
    assert ks.target.dtype == np.float32 and ks.target.shape == (32, 24)  # k-space size, not 320x320
    np.testing.assert_allclose(ks.target, _rss(fastmri_dir["knee"][1]), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(src.image("fastmri", 1, "PD"), ks.target)
    # num_coils does not change stored data
    assert src.kspace("fastmri", 1, "PD", num_coils=16).kspace.shape == (4, 32, 24)

    brain = src.kspace("fastmri", 6, "T2w")
    np.testing.assert_array_equal(brain.kspace, fastmri_dir["brain"][1])


def test_single_coil_is_one_coil(fastmri_dir):
    src = FastMRISource(fastmri_dir["root"])
    ks = src.kspace("fastmri", 3, "PD")  # file1000002 slice 0
    assert ks.kspace.shape == (1, 32, 24)
    np.testing.assert_array_equal(ks.kspace[0], fastmri_dir["single"][0])
    np.testing.assert_allclose(ks.target, np.abs(ifft2c(fastmri_dir["single"][0])), rtol=1e-5, atol=1e-6)


def test_reconstruction_rss_exposed_separately(fastmri_dir):
    src = FastMRISource(fastmri_dir["root"])
    ref = src.reconstruction_rss("fastmri", 2)
    with h5py.File(fastmri_dir["root"] / "file1000001.h5", "r") as f:
        np.testing.assert_array_equal(ref, f["reconstruction_rss"][2])
    assert ref.shape == (320, 320) and ref.dtype == np.float32
    assert src.reconstruction_rss("fastmri", 5) is None  # brain file written without it


def test_contrast_filter_site_mapping_and_maps(fastmri_dir, tmp_path):
    only_t2 = FastMRISource(fastmri_dir["root"], contrasts=["T2w"], site="nyu")
    assert only_t2.sites == ("nyu",)
    assert only_t2.contrasts("nyu") == ("T2w",)
    assert only_t2.num_slices("nyu") == 2

    mapping = {"file1000001": "A", "file1000002.h5": "B", "file_brain_AXT2_200_6002": "A"}
    src = FastMRISource(fastmri_dir["root"], site=mapping)
    assert src.sites == ("A", "B")
    assert src.num_slices("A") == 5 and src.num_slices("B") == 2
    assert src.contrasts("A") == ("T2w", "PD")

    with pytest.raises(ValueError, match="no entry in the site mapping"):
        FastMRISource(fastmri_dir["root"], site={"file1000001": "A"})

    # one file, and a list of files
    one = FastMRISource(fastmri_dir["root"] / "file1000001.h5")
    assert one.num_slices("fastmri") == 3
    two = FastMRISource([fastmri_dir["root"] / "file1000002.h5", fastmri_dir["root"] / "file1000001.h5"])
    assert two.subjects("fastmri") == ["file1000001", "file1000002"]


def test_wrong_contrast_for_a_slice_is_an_error(fastmri_dir):
    src = FastMRISource(fastmri_dir["root"])
    with pytest.raises(ValueError, match="is 'PD', not 'T2w'"):
        src.kspace("fastmri", 0, "T2w")
    with pytest.raises(ValueError, match="unknown contrast 'T3'"):
        src.image("fastmri", 0, "T3")
    with pytest.raises(ValueError, match="not available"):
        src.image("fastmri", 0, "FLAIR")
    with pytest.raises(ValueError, match="out of range"):
        src.kspace("fastmri", 7, "T2w")
    with pytest.raises(ValueError, match="unknown site"):
        src.num_slices("elsewhere")


def test_acquisition_mapping():
    assert contrast_of_acquisition("AXT1POST") == "T1w"
    assert contrast_of_acquisition("AXT1PRE") == "T1w"
    assert contrast_of_acquisition("AXT1") == "T1w"
    assert contrast_of_acquisition("AXFLAIR") == "FLAIR"
    assert contrast_of_acquisition("CORPD_FBK") == "PD"
    assert contrast_of_acquisition("AXT2") == "T2w"
    assert contrast_of_acquisition("SAGT2") is None
    assert contrast_of_acquisition("SAGT2", default="T2w") == "T2w"
    assert contrast_of_acquisition("sagt2", contrast_map={"SAGT2": "T2w"}) == "T2w"


def test_unknown_acquisition(tmp_path):
    rng = np.random.default_rng(2)
    _write(tmp_path / "a.h5", _kspace(rng, (1, 2, 8, 8)), "SAGSTIR")
    with pytest.raises(ValueError, match=r"a\.h5: unknown acquisition 'SAGSTIR'") as e:
        FastMRISource(tmp_path)
    assert "secret-patient" not in str(e.value)
    src = FastMRISource(tmp_path, default_contrast="T2w")
    assert src.contrasts("fastmri") == ("T2w",)
    src = FastMRISource(tmp_path, contrast_map={"SAGSTIR": "FLAIR"})
    assert src.contrasts("fastmri") == ("FLAIR",)
    with pytest.raises(ValueError, match="unknown contrast_map"):
        FastMRISource(tmp_path, contrast_map={"SAGSTIR": "STIR"})
    with pytest.raises(ValueError, match="unknown contrast 'T1'"):
        FastMRISource(tmp_path, contrasts=["T1"])


def test_bad_inputs(tmp_path):
    rng = np.random.default_rng(3)
    with pytest.raises(FileNotFoundError, match="missing"):
        FastMRISource(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"no \*\.h5"):
        FastMRISource(empty)

    text = tmp_path / "text.h5"
    text.write_text("hello")
    with pytest.raises(ValueError, match=r"text\.h5: not an HDF5 file"):
        FastMRISource(text)

    nok = tmp_path / "nok.h5"
    with h5py.File(nok, "w") as f:
        f.create_dataset("image", data=np.zeros((2, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"nok\.h5: no 'kspace' dataset"):
        FastMRISource(nok)

    rank = _write(tmp_path / "rank.h5", _kspace(rng, (4, 4)), "AXT2")
    with pytest.raises(ValueError, match=r"rank\.h5: 'kspace' must be \[slices, coils, ky, kx\]"):
        FastMRISource(rank)

    real = _write(tmp_path / "real.h5", np.zeros((1, 2, 4, 4), np.float32), "AXT2")
    with pytest.raises(ValueError, match=r"real\.h5: 'kspace' must be complex64"):
        FastMRISource(real)

    with pytest.raises(FileNotFoundError, match="nothere"):
        FastMRISource([tmp_path / "nothere.h5"])
