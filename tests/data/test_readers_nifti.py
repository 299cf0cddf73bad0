"""NiftiSource over tiny IXI-like and BraTS-like NIfTI files written with nibabel.

The volumes sample one synthetic object defined in world (RAS, mm) coordinates on each file's own grid,
so a T1 stored sagittal and a T2 stored axial show the same anatomy at the same place once the reader
has reoriented and resampled them.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mrcore.data.base import KSpaceSlice, SliceSource
from mrcore.data.readers import NiftiSource
from mrcore.fft import ifft2c

# object: an ellipsoid "head" and a small "marker" ball right-anterior-superior of its centre (mm, RAS)
_HEAD_RADII = np.array([60.0, 70.0, 35.0])
_MARKER_CENTRE = np.array([25.0, 30.0, 10.0])
_MARKER_RADIUS = 15.0
# per contrast: (head value, marker value); the marker is the brightest structure in every contrast
_VALUES = {"T1": (400.0, 1000.0), "T2": (300.0, 1000.0), "PD": (500.0, 1000.0)}


def _sample(shape, affine, contrast: str) -> np.ndarray:
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(float)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    head = (((xyz / _HEAD_RADII) ** 2).sum(-1)) <= 1
    marker = np.linalg.norm(xyz - _MARKER_CENTRE, axis=-1) <= _MARKER_RADIUS
    h, m = _VALUES[contrast]
    vol = np.where(marker & head, m, np.where(head, h, 0.0))
    return vol.astype(np.float32)


def _centred_affine(columns: np.ndarray, shape) -> np.ndarray:
    """Affine with the given voxel->mm direction columns and the volume centre at world (0, 0, 0)."""
    aff = np.eye(4)
    aff[:3, :3] = columns
    aff[:3, 3] = -columns @ ((np.asarray(shape) - 1) / 2)
    return aff


# axial, stored LAS (x flipped, as many scanners write it): 4 x 4 x 3.5 mm
AXIAL_SHAPE = (40, 48, 28)
AXIAL = _centred_affine(np.diag([-4.0, 4.0, 3.5]), AXIAL_SHAPE)
# sagittal like IXI T1: array axes = (A->P, S->I, L->R), 4 x 3 x 5 mm, a different shape
SAG_SHAPE = (48, 32, 36)
SAG = _centred_affine(np.array([[0, 0, 5.0], [-4.0, 0, 0], [0, -3.0, 0]]), SAG_SHAPE)


def _save(path: Path, shape, affine, contrast: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(_sample(shape, affine, contrast), affine), str(path))
    return path


@pytest.fixture(scope="module")
def ixi_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ixi")
    # Guys: T1 sagittal 48x32x36, T2/PD axial 40x48x16 (different orientation and shape)
    _save(root / "IXI-T1" / "IXI002-Guys-0828-T1.nii.gz", SAG_SHAPE, SAG, "T1")
    _save(root / "IXI-T2" / "IXI002-Guys-0828-T2.nii.gz", AXIAL_SHAPE, AXIAL, "T2")
    _save(root / "IXI-PD" / "IXI002-Guys-0828-PD.nii.gz", AXIAL_SHAPE, AXIAL, "PD")
    # HH: all axial; IXI014 has T2 only and is left out
    for c in ("T1", "T2", "PD"):
        _save(root / f"IXI-{c}" / f"IXI012-HH-1211-{c}.nii.gz", AXIAL_SHAPE, AXIAL, c)
    _save(root / "IXI-T2" / "IXI014-HH-1236-T2.nii.gz", AXIAL_SHAPE, AXIAL, "T2")
    # IOP: no T1 at this site
    _save(root / "IXI-T2" / "IXI013-IOP-0873-T2.nii.gz", AXIAL_SHAPE, AXIAL, "T2")
    _save(root / "IXI-PD" / "IXI013-IOP-0873-PD.nii.gz", AXIAL_SHAPE, AXIAL, "PD")
    # files that are not ours
    (root / "IXI-T1" / "IXI002-Guys-0828-MRA.nii.gz").write_bytes(b"")
    (root / "IXI.xls").write_text("demographics")
    return root


@pytest.fixture(scope="module")
def brats_root(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("brats") / "MICCAI_BraTS2020_TrainingData"
    shape = (32, 32, 12)
    affine = _centred_affine(np.diag([-5.0, -5.0, 6.0]), shape)  # LPS, like BraTS
    data = {}
    for subject, suffixes in (("BraTS20_Training_001", ("t1", "t1ce", "t2", "flair")),
                              ("BraTS20_Training_002", ("t1ce", "t2", "flair"))):
        for suffix in suffixes:
            contrast = {"t1": "T1", "t1ce": "T1", "t2": "T2", "flair": "PD"}[suffix]
            vol = _sample(shape, affine, contrast)
            if suffix == "t1ce":
                vol = vol * 1.5 + (vol > 0) * 100
            data[subject, suffix] = vol
            path = root / subject / f"{subject}_{suffix}.nii.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(vol, affine), str(path))
        seg = root / subject / f"{subject}_seg.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros(shape, np.uint8), affine), str(seg))
    return {"root": root, "data": data, "shape": shape}


# --------------------------------------------------------------------------------------------------
# IXI
# --------------------------------------------------------------------------------------------------
def test_ixi_sites_contrasts_subjects(ixi_root):
    src = NiftiSource(ixi_root, layout="ixi")
    assert isinstance(src, SliceSource)
    assert src.sites == ("Guys", "HH", "IOP")
    assert src.contrasts("Guys") == ("T1w", "T2w", "PD")
    assert src.contrasts("HH") == ("T1w", "T2w", "PD")
    assert src.contrasts("IOP") == ("T2w", "PD")
    assert src.subjects("Guys") == ["IXI002"]
    assert src.subjects("HH") == ["IXI012"]
    assert src.subjects("IOP") == ["IXI013"]
    assert ("HH", "IXI014", "missing T1w, PD") in src.skipped
    only_hh = NiftiSource(ixi_root, layout="ixi", site="HH", contrasts=["T2w"])
    assert only_hh.sites == ("HH",) and only_hh.subjects("HH") == ["IXI012", "IXI014"]
    assert only_hh.contrasts("HH") == ("T2w",)


def test_ixi_slice_counts_and_shapes(ixi_root):
    all_slices = NiftiSource(ixi_root, layout="ixi", min_foreground=0.0)
    # Guys: reference = T1 (sagittal) -> RAS grid 36 x 48 x 32: 32 axial slices of 48 (A-P) x 36 (R-L)
    assert all_slices.num_slices("Guys") == SAG_SHAPE[1]
    assert all_slices.image("Guys", 0, "T2w").shape == (48, 36)
    # HH: reference = T1 axial 40 x 48 x 16
    assert all_slices.num_slices("HH") == AXIAL_SHAPE[2]
    assert all_slices.image("HH", 0, "PD").shape == (48, 40)

    src = NiftiSource(ixi_root, layout="ixi")  # default: slices with >= 5% foreground
    n = src.num_slices("Guys")
    assert 0 < n < SAG_SHAPE[1]
    positions = [src.slice_position("Guys", i) for i in range(n)]
    assert positions == sorted(positions)
    for site in src.sites:
        for c in src.contrasts(site):
            img = src.image(site, 0, c)
            assert img.dtype == np.float32 and img.ndim == 2
            assert img.min() >= 0 and img.max() <= 1

    fixed = NiftiSource(ixi_root, layout="ixi", matrix=(64, 56))
    for site in fixed.sites:
        for c in fixed.contrasts(site):
            assert fixed.image(site, 0, c).shape == (64, 56)
    # padding only adds zeros around the native slice
    native = src.image("Guys", 3, "T1w")
    padded = fixed.image("Guys", 3, "T1w")
    np.testing.assert_array_equal(padded[8:56, 10:46], native)
    assert padded.sum() == pytest.approx(native.sum())

    # fit: the 192 x 180 mm field of view (4 x 5 mm pixels) fits 32 x 32 at 6 x 6 mm; areas in mm^2 are kept
    fit = NiftiSource(ixi_root, layout="ixi", matrix=(32, 32), matrix_mode="fit")
    assert fit.num_slices("Guys") == n
    img = fit.image("Guys", n // 2, "T1w")
    assert img.shape == (32, 32)
    native = src.image("Guys", n // 2, "T1w")
    assert (img > 0.2).sum() * 36 == pytest.approx((native > 0.2).sum() * 20, rel=0.1)
    assert not img[:, 0].any() and not img[:, -1].any()  # 180 mm -> 30 columns, padded to 32


def _mask_and_marker(img: np.ndarray):
    return img > 0.15, img > 0.7


def test_ixi_contrasts_of_a_subject_are_aligned(ixi_root):
    """T1 stored sagittal, T2/PD axial: after reading, slice i shows the object at the same place."""
    src = NiftiSource(ixi_root, layout="ixi")
    marker_slices = 0
    n = src.num_slices("Guys")
    largest = max(_mask_and_marker(src.image("Guys", i, "T1w"))[0].sum() for i in range(n))
    for i in range(n):
        t1_head, t1_marker = _mask_and_marker(src.image("Guys", i, "T1w"))
        for c in ("T2w", "PD"):
            head, marker = _mask_and_marker(src.image("Guys", i, c))
            if t1_head.sum() > largest / 2:  # away from the top and bottom of the head (partial volume)
                dice = 2 * (head & t1_head).sum() / (head.sum() + t1_head.sum())
                assert dice > 0.9, (i, c, dice)
            if t1_marker.sum() >= 6 and marker.sum() >= 6:
                c1 = np.argwhere(t1_marker).mean(axis=0)
                c2 = np.argwhere(marker).mean(axis=0)
                assert np.abs(c1 - c2).max() < 1.0, (i, c, c1, c2)
                marker_slices += 1
    assert marker_slices >= 4


def test_ixi_orientation_convention(ixi_root):
    """Rows run anterior->posterior, columns the patient's right->left; slices inferior->superior."""
    src = NiftiSource(ixi_root, layout="ixi", min_foreground=0.0)
    for site, contrast in (("Guys", "T1w"), ("HH", "T1w"), ("Guys", "T2w")):
        areas = [_mask_and_marker(src.image(site, i, contrast))[1].sum() for i in range(src.num_slices(site))]
        best = int(np.argmax(areas))
        # marker at z = +10 mm: above the middle slice
        assert best > src.num_slices(site) // 2
        img = src.image(site, best, contrast)
        _, marker = _mask_and_marker(img)
        row, col = np.argwhere(marker).mean(axis=0)
        ny, nx = img.shape
        assert row < (ny - 1) / 2  # anterior (+y) at the top
        assert col < (nx - 1) / 2  # patient's right (+x) on the image left


def test_ixi_kspace_simulation(ixi_root):
    src = NiftiSource(ixi_root, layout="ixi", matrix=(48, 48))
    ks = src.kspace("Guys", 2, "T2w", num_coils=4)
    assert isinstance(ks, KSpaceSlice)
    assert ks.kspace.dtype == np.complex64 and ks.kspace.shape == (4, 48, 48)
    assert ks.maps.dtype == np.complex64 and ks.maps.shape == (4, 48, 48)
    np.testing.assert_allclose((np.abs(ks.maps) ** 2).sum(0), 1.0, atol=1e-4)
    assert ks.target.dtype == np.float32 and ks.target.shape == (48, 48)
    rss = np.sqrt((np.abs(ifft2c(ks.kspace)) ** 2).sum(0))
    np.testing.assert_allclose(ks.target, rss, rtol=1e-5, atol=1e-6)
    # RSS of normalised maps gives back the magnitude image, up to the small noise
    np.testing.assert_allclose(ks.target, src.image("Guys", 2, "T2w"), atol=0.03)
    assert (ks.site, ks.subject, ks.contrast) == ("Guys", "IXI002", "T2w")
    # deterministic per (site, index); other slices and contrasts differ
    again = src.kspace("Guys", 2, "T2w", num_coils=4)
    np.testing.assert_array_equal(again.kspace, ks.kspace)
    other = NiftiSource(ixi_root, layout="ixi", matrix=(48, 48)).kspace("Guys", 2, "T2w", num_coils=4)
    np.testing.assert_array_equal(other.kspace, ks.kspace)
    assert not np.array_equal(src.kspace("Guys", 3, "T2w", num_coils=4).kspace, ks.kspace)
    t1 = src.kspace("Guys", 2, "T1w", num_coils=4)
    np.testing.assert_array_equal(t1.maps, ks.maps)  # same coils for every contrast of a slice
    noiseless = NiftiSource(ixi_root, layout="ixi", matrix=(48, 48), noise_sigma=0.0).kspace("Guys", 2, "T2w", 4)
    np.testing.assert_allclose(noiseless.target, src.image("Guys", 2, "T2w"), atol=1e-5)
    with pytest.raises(ValueError, match="num_coils"):
        src.kspace("Guys", 2, "T2w", num_coils=0)


def test_lazy_loading_and_bounded_cache(ixi_root):
    lazy = NiftiSource(ixi_root, layout="ixi", min_foreground=0.0)  # headers only
    assert len(lazy._cache) == 0
    lazy.image("HH", 3, "T2w")
    assert list(lazy._cache) == [("HH", "IXI012", "T2w")]
    src = NiftiSource(ixi_root, layout="ixi", cache_size=2)
    for site in src.sites:
        for c in src.contrasts(site):
            src.image(site, 0, c)
    assert len(src._cache) == 2


# --------------------------------------------------------------------------------------------------
# BraTS
# --------------------------------------------------------------------------------------------------
def test_brats_layout(brats_root):
    src = NiftiSource(brats_root["root"].parent, layout="brats", min_foreground=0.0)
    assert src.sites == ("brats",)
    assert src.contrasts("brats") == ("T1w", "T2w", "FLAIR")  # t1ce ignored
    assert src.subjects("brats") == ["BraTS20_Training_001"]  # 002 has no t1
    assert src.skipped == [("brats", "BraTS20_Training_002", "missing T1w")]
    assert src.num_slices("brats") == brats_root["shape"][2]
    # co-registered LPS volumes: image slice k is data[:, :, k].T scaled by the 99.5th percentile
    for contrast, suffix in (("T1w", "t1"), ("T2w", "t2"), ("FLAIR", "flair")):
        vol = brats_root["data"]["BraTS20_Training_001", suffix]
        scale = np.percentile(vol[vol > 0], 99.5)
        for k in (3, 6):
            expected = np.clip(vol[:, :, k].T / scale, 0, 1)
            np.testing.assert_allclose(src.image("brats", k, contrast), expected, rtol=1e-5, atol=1e-6)

    named = NiftiSource(brats_root["root"], layout="brats", site="hospital_b", contrasts=["T2w", "FLAIR"])
    assert named.sites == ("hospital_b",)
    assert named.subjects("hospital_b") == ["BraTS20_Training_001", "BraTS20_Training_002"]

    fallback = NiftiSource(brats_root["root"], layout="brats", t1ce_as_t1w=True, min_foreground=0.0)
    assert fallback.subjects("brats") == ["BraTS20_Training_001", "BraTS20_Training_002"]
    n = brats_root["shape"][2]
    vol = brats_root["data"]["BraTS20_Training_002", "t1ce"]
    expected = np.clip(vol[:, :, 5].T / np.percentile(vol[vol > 0], 99.5), 0, 1)
    np.testing.assert_allclose(fallback.image("brats", n + 5, "T1w"), expected, rtol=1e-5, atol=1e-6)
    # subject 001 keeps its plain t1
    vol = brats_root["data"]["BraTS20_Training_001", "t1"]
    expected = np.clip(vol[:, :, 5].T / np.percentile(vol[vol > 0], 99.5), 0, 1)
    np.testing.assert_allclose(fallback.image("brats", 5, "T1w"), expected, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------------
def test_bad_inputs(tmp_path, ixi_root, brats_root):
    with pytest.raises(FileNotFoundError, match="missing"):
        NiftiSource(tmp_path / "missing", layout="ixi")
    afile = tmp_path / "a.txt"
    afile.write_text("x")
    with pytest.raises(ValueError, match="is not a directory"):
        NiftiSource(afile)
    with pytest.raises(ValueError, match="unknown layout 'hcp'"):
        NiftiSource(ixi_root, layout="hcp")
    with pytest.raises(ValueError, match=r"no ixi files under .* \(expected names like IXI"):
        NiftiSource(brats_root["root"], layout="ixi")
    with pytest.raises(ValueError, match="no brats files under"):
        NiftiSource(ixi_root, layout="brats")
    with pytest.raises(ValueError, match="unknown contrast 'T1'"):
        NiftiSource(ixi_root, layout="ixi", contrasts=["T1"])
    with pytest.raises(ValueError, match="unknown IXI site 'Oxford'"):
        NiftiSource(ixi_root, layout="ixi", site="Oxford")
    with pytest.raises(ValueError, match="no ixi subject .* with contrasts FLAIR"):
        NiftiSource(ixi_root, layout="ixi", contrasts=["FLAIR"])

    src = NiftiSource(ixi_root, layout="ixi", site="IOP")
    with pytest.raises(ValueError, match="'T1w' is not available at site 'IOP'"):
        src.image("IOP", 0, "T1w")
    with pytest.raises(ValueError, match="unknown contrast 'flair'"):
        src.kspace("IOP", 0, "flair")
    with pytest.raises(ValueError, match="out of range"):
        src.image("IOP", src.num_slices("IOP"), "T2w")

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "IXI099-HH-0001-T2.nii.gz").write_bytes(b"this is not gzip")
    with pytest.raises(ValueError, match=r"IXI099-HH-0001-T2\.nii\.gz: not a readable NIfTI volume"):
        NiftiSource(bad, layout="ixi")
