"""MRDSource over MRD files written by write_mrd and, independently, with the ismrmrd package's own API."""

from __future__ import annotations

from pathlib import Path

import h5py
import ismrmrd
import ismrmrd.xsd as xsd
import numpy as np
import pytest

from mrcore.data.base import KSpaceSlice, SliceSource
from mrcore.data.readers import MRDSource, write_mrd
from mrcore.data.readers.mrd import contrast_from_protocol, contrast_from_sequence
from mrcore.fft import fft2c, ifft2c


def _rss(k: np.ndarray) -> np.ndarray:
    return np.sqrt((np.abs(ifft2c(k)) ** 2).sum(axis=0)).astype(np.float32)


def _random_kspace(seed: int, shape) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def _undersample(k: np.ndarray) -> np.ndarray:
    """Every other line plus the 4 central lines; the rest exactly zero."""
    ny = k.shape[-2]
    keep = np.zeros(ny, bool)
    keep[::2] = True
    keep[ny // 2 - 2 : ny // 2 + 2] = True
    out = k.copy()
    out[..., ~keep, :] = 0
    return out


# --------------------------------------------------------------------------------------------------
# write_mrd round trips
# --------------------------------------------------------------------------------------------------
def test_round_trip_undersampled_multislice(tmp_path):
    k = _undersample(_random_kspace(0, (2, 3, 16, 20)))
    path = write_mrd(tmp_path / "scan_t2.h5", k, protocol_name="t2_tse_tra", noise_scan=True)
    src = MRDSource(tmp_path)
    assert isinstance(src, SliceSource)
    assert src.sites == ("mrd",)
    assert src.contrasts("mrd") == ("T2w",)
    assert src.num_slices("mrd") == 2
    assert src.subjects("mrd") == ["scan_t2"]
    assert src.phase_encode_axis == -2
    for s in range(2):
        ks = src.kspace("mrd", s, "T2w")
        assert isinstance(ks, KSpaceSlice)
        assert ks.kspace.dtype == np.complex64 and ks.kspace.shape == (3, 16, 20)
        np.testing.assert_array_equal(ks.kspace, k[s])  # exact, including the unsampled zeros
        assert ks.maps is None and ks.subject == "scan_t2" and ks.contrast == "T2w" and ks.site == "mrd"
        assert ks.target.dtype == np.float32 and ks.target.shape == (16, 20)
        np.testing.assert_allclose(ks.target, _rss(k[s]), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(src.image("mrd", s, "T2w"), ks.target)
    np.testing.assert_array_equal(src.sampled_lines("mrd", 0), np.any(k[0] != 0, axis=(0, 2)))

    # the written file is valid MRD: header parses, noise scan flagged, one acquisition per sampled line
    with ismrmrd.Dataset(str(path), "dataset", create_if_needed=False) as ds:
        header = xsd.CreateFromDocument(ds.read_xml_header())
        assert header.encoding[0].encodedSpace.matrixSize.x == 20
        assert header.encoding[0].encodedSpace.matrixSize.y == 16
        assert header.encoding[0].encodingLimits.slice.maximum == 1
        assert header.measurementInformation.protocolName == "t2_tse_tra"
        n_lines = int(np.any(k != 0, axis=(1, 3)).sum())
        assert ds.number_of_acquisitions() == 1 + n_lines
        assert ds.read_acquisition(0).is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
        first = ds.read_acquisition(1)
        assert first.is_flag_set(ismrmrd.ACQ_FIRST_IN_SLICE) and first.active_channels == 3
        assert ds.read_acquisition(n_lines).is_flag_set(ismrmrd.ACQ_LAST_IN_MEASUREMENT)


def test_explicit_sampled_mask_keeps_zero_lines_and_drops_others(tmp_path):
    k = _random_kspace(1, (1, 2, 8, 8))
    k[0, :, 1, :] = 0  # a genuinely zero, but sampled, line
    mask = np.ones(8, bool)
    mask[5] = False
    write_mrd(tmp_path / "m.h5", k, protocol_name="pd_tse", sampled=mask)
    src = MRDSource(tmp_path / "m.h5")
    got = src.kspace("mrd", 0, "PD").kspace
    expected = k[0].copy()
    expected[:, 5, :] = 0
    np.testing.assert_array_equal(got, expected)
    assert src.sampled_lines("mrd", 0).tolist() == mask.tolist()


def test_readout_oversampling_is_cropped(tmp_path):
    rng = np.random.default_rng(4)
    ny, rx = 16, 12
    coil_images = np.zeros((2, ny, 2 * rx), np.complex64)  # object inside the central half of the readout FOV
    coil_images[:, :, rx // 2 : rx // 2 + rx] = rng.standard_normal((2, ny, rx)) + 1j * rng.standard_normal((2, ny, rx))
    k = fft2c(coil_images)[None]  # [1, 2, 16, 24], 2x oversampled readout
    write_mrd(tmp_path / "os.h5", k, protocol_name="T1_SE", recon_matrix=(ny, rx))
    src = MRDSource(tmp_path)
    got = src.kspace("mrd", 0, "T1w")
    assert got.kspace.shape == (2, ny, rx)
    np.testing.assert_allclose(ifft2c(got.kspace), coil_images[:, :, rx // 2 : rx // 2 + rx], atol=1e-5)
    np.testing.assert_allclose(got.target, _rss(k[0])[:, rx // 2 : rx // 2 + rx], rtol=1e-4, atol=1e-5)
    # without cropping the encoded readout is returned as written
    raw = MRDSource(tmp_path, crop_readout=False).kspace("mrd", 0, "T1w").kspace
    np.testing.assert_array_equal(raw, k[0])


def test_contrast_from_header_heuristics_and_argument(tmp_path):
    k = _random_kspace(2, (1, 1, 4, 4))
    write_mrd(tmp_path / "a.h5", k, sequence_parameters={"TR": 500.0, "TE": 10.0})
    write_mrd(tmp_path / "b.h5", k, sequence_parameters={"TR": 9000.0, "TE": 90.0, "TI": 2500.0})
    write_mrd(tmp_path / "c.h5", k, protocol_name="AXFLAIR")
    src = MRDSource(tmp_path, site="hospital_a")
    assert src.sites == ("hospital_a",)
    assert src.contrasts("hospital_a") == ("T1w", "FLAIR")
    assert [src.slice_contrast("hospital_a", i) for i in range(3)] == ["T1w", "FLAIR", "FLAIR"]
    with pytest.raises(ValueError, match="is 'T1w', not 'FLAIR'"):
        src.kspace("hospital_a", 0, "FLAIR")
    assert MRDSource(tmp_path, contrasts=["FLAIR"]).num_slices("mrd") == 2
    forced = MRDSource(tmp_path, contrast="PD", contrast_from_header=False)
    assert forced.contrasts("mrd") == ("PD",)

    d = tmp_path / "unknown"
    d.mkdir()
    write_mrd(d / "x.h5", k, protocol_name="localizer")
    with pytest.raises(ValueError, match=r"x\.h5: no contrast in the MRD header"):
        MRDSource(d)
    assert MRDSource(d, contrast="T2w").contrasts("mrd") == ("T2w",)
    with pytest.raises(ValueError, match="unknown contrast 'T2'"):
        MRDSource(d, contrast="T2")


def test_contrast_name_heuristics():
    assert contrast_from_protocol("t2_tse_tra_p2") == "T2w"
    assert contrast_from_protocol("T1_MPRAGE_sag") == "T1w"
    assert contrast_from_protocol("t2_tirm_tra_dark-fluid") == "FLAIR"
    assert contrast_from_protocol("t1_flair_tra") == "T1w"
    assert contrast_from_protocol("CORPDFS_FBK") == "PD"
    assert contrast_from_protocol("pd_tse_cor") == "PD"
    assert contrast_from_protocol("localizer") is None
    assert contrast_from_sequence(2300.0, 3.0, 900.0) == "T1w"
    assert contrast_from_sequence(4000.0, 100.0, None) == "T2w"
    assert contrast_from_sequence(3000.0, 15.0, None) == "PD"
    assert contrast_from_sequence(1200.0, 45.0, None) is None


# --------------------------------------------------------------------------------------------------
# a file built directly with the ismrmrd package (not with write_mrd)
# --------------------------------------------------------------------------------------------------
def _ismrmrd_file(path: Path, lines: dict[int, np.ndarray], extra: list[ismrmrd.Acquisition], nx: int, rx: int, ny: int,
                  coils: int, protocol: str, center: int) -> None:
    header = xsd.ismrmrdHeader(
        experimentalConditions=xsd.experimentalConditionsType(H1resonanceFrequency_Hz=127_000_000),
        measurementInformation=xsd.measurementInformationType(
            protocolName=protocol, patientPosition=xsd.patientPositionType.HFS
        ),
        subjectInformation=xsd.subjectInformationType(patientName="Doe^Jane"),
        acquisitionSystemInformation=xsd.acquisitionSystemInformationType(
            receiverChannels=coils, institutionName="Some Hospital"
        ),
        encoding=[
            xsd.encodingType(
                encodedSpace=xsd.encodingSpaceType(
                    matrixSize=xsd.matrixSizeType(x=nx, y=ny, z=1), fieldOfView_mm=xsd.fieldOfViewMm(x=440, y=220, z=5)
                ),
                reconSpace=xsd.encodingSpaceType(
                    matrixSize=xsd.matrixSizeType(x=rx, y=ny, z=1), fieldOfView_mm=xsd.fieldOfViewMm(x=220, y=220, z=5)
                ),
                encodingLimits=xsd.encodingLimitsType(
                    kspace_encoding_step_1=xsd.limitType(minimum=0, maximum=ny - 1, center=center),
                    slice=xsd.limitType(minimum=0, maximum=0, center=0),
                ),
                trajectory=xsd.trajectoryType.CARTESIAN,
            )
        ],
    )
    ds = ismrmrd.Dataset(str(path), "dataset", create_if_needed=True)
    ds.write_xml_header(ismrmrd.xsd.ToXML(header))
    for acq in extra[:2]:
        ds.append_acquisition(acq)
    for ky, data in lines.items():
        acq = ismrmrd.Acquisition.from_array(data)
        acq.idx.kspace_encode_step_1 = ky
        acq.center_sample = nx // 2
        ds.append_acquisition(acq)
    for acq in extra[2:]:
        ds.append_acquisition(acq)
    ds.close()


def test_file_written_with_the_ismrmrd_api(tmp_path):
    rng = np.random.default_rng(5)
    coils, ny, nx, rx = 2, 8, 16, 8

    def line():
        return (rng.standard_normal((coils, nx)) + 1j * rng.standard_normal((coils, nx))).astype(np.complex64)

    imaging = {ky: line() for ky in (0, 2, 4, 6)}
    second_average = line()
    noise = ismrmrd.Acquisition.from_array(line())
    noise.set_flag(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
    nav = ismrmrd.Acquisition.from_array(line() * 100)
    nav.set_flag(ismrmrd.ACQ_IS_NAVIGATION_DATA)
    nav.idx.kspace_encode_step_1 = 1
    calib_new = ismrmrd.Acquisition.from_array(line())  # fills ky=3, no imaging line there
    calib_new.set_flag(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION)
    calib_new.idx.kspace_encode_step_1 = 3
    calib_new.center_sample = nx // 2
    calib_dup = ismrmrd.Acquisition.from_array(line() * 50)  # duplicate of imaging ky=4: ignored
    calib_dup.set_flag(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION)
    calib_dup.idx.kspace_encode_step_1 = 4
    avg = ismrmrd.Acquisition.from_array(second_average)  # second average of ky=6
    avg.idx.kspace_encode_step_1 = 6
    avg.idx.average = 1
    avg.center_sample = nx // 2
    phasecorr = ismrmrd.Acquisition.from_array(line() * 100)
    phasecorr.set_flag(ismrmrd.ACQ_IS_PHASECORR_DATA)
    phasecorr.idx.kspace_encode_step_1 = 5

    path = tmp_path / "meas_MID00042_FID01234_AX_FLAIR.h5"
    _ismrmrd_file(path, imaging, [noise, nav, calib_new, calib_dup, avg, phasecorr], nx, rx, ny, coils,
                  "AX FLAIR", center=ny // 2)

    expected_full = np.zeros((coils, ny, nx), np.complex128)
    for ky, data in imaging.items():
        expected_full[:, ky] = data
    expected_full[:, 3] = calib_new.data
    expected_full[:, 6] = (imaging[6].astype(np.complex128) + second_average) / 2
    # readout oversampling removed: centred orthonormal ifft along x, keep the central rx, fft back
    x = np.fft.fftshift(np.fft.ifft(np.fft.ifftshift(expected_full, axes=-1), axis=-1, norm="ortho"), axes=-1)
    x = x[..., (nx - rx) // 2 : (nx - rx) // 2 + rx]
    expected = np.fft.fftshift(np.fft.fft(np.fft.ifftshift(x, axes=-1), axis=-1, norm="ortho"), axes=-1)

    src = MRDSource(tmp_path, site="siteB")
    assert src.sites == ("siteB",)
    assert src.contrasts("siteB") == ("FLAIR",)
    assert src.num_slices("siteB") == 1
    assert src.subject("siteB", 0) == path.stem
    ks = src.kspace("siteB", 0, "FLAIR")
    assert ks.kspace.shape == (coils, ny, rx) and ks.kspace.dtype == np.complex64
    np.testing.assert_allclose(ks.kspace, expected, atol=1e-5)
    for ky in (1, 5, 7):  # navigator / phase-correction lines and the never-acquired line stay zero
        assert not np.any(ks.kspace[:, ky])
    np.testing.assert_allclose(ks.target, _rss(ks.kspace), rtol=1e-5, atol=1e-6)
    # uncropped readout: exact values
    raw = MRDSource(tmp_path, crop_readout=False).kspace("mrd", 0, "FLAIR").kspace
    np.testing.assert_array_equal(raw[:, 0], imaging[0])
    np.testing.assert_array_equal(raw[:, 3], calib_new.data)
    np.testing.assert_allclose(raw[:, 6], expected_full[:, 6], rtol=1e-6)


def test_encode_step_centre_shift(tmp_path):
    """kspace_encode_step_1 is placed so that the header's centre line lands on ky // 2."""
    rng = np.random.default_rng(6)
    coils, ny, nx = 1, 8, 8
    lines = {ky: (rng.standard_normal((coils, nx)) + 0j).astype(np.complex64) for ky in range(6)}  # partial Fourier
    _ismrmrd_file(tmp_path / "pf.h5", lines, [], nx, nx, ny, coils, "T2 TSE", center=2)
    k = MRDSource(tmp_path).kspace("mrd", 0, "T2w").kspace
    for ky, data in lines.items():
        np.testing.assert_array_equal(k[:, ky + ny // 2 - 2], data)
    assert not np.any(k[:, :2])


# --------------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------------
def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        MRDSource(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"no \*\.h5"):
        MRDSource(empty)

    txt = tmp_path / "t.mrd"
    txt.write_text("plain text")
    with pytest.raises(ValueError, match=r"t\.mrd: not an HDF5 file"):
        MRDSource(txt)

    fastmri_like = tmp_path / "f.h5"
    with h5py.File(fastmri_like, "w") as f:
        f.create_dataset("kspace", data=np.zeros((1, 2, 4, 4), np.complex64))
    with pytest.raises(ValueError, match=r"f\.h5: no MRD XML header"):
        MRDSource(fastmri_like)

    no_data = tmp_path / "nodata.h5"
    ds = ismrmrd.Dataset(str(no_data), "dataset", create_if_needed=True)
    ds.write_xml_header(b"<ismrmrdHeader><broken>")
    ds.close()
    with pytest.raises(ValueError, match=r"nodata\.h5: the MRD XML header does not parse"):
        MRDSource(no_data)

    only_noise = tmp_path / "noise.h5"
    write_mrd(only_noise, np.zeros((1, 1, 4, 4), np.complex64), protocol_name="t1", noise_scan=True)
    with pytest.raises(ValueError, match=r"noise\.h5: no imaging acquisitions"):
        MRDSource(only_noise)


def test_3d_encoding_refused(tmp_path):
    path = write_mrd(tmp_path / "v.h5", _random_kspace(7, (1, 1, 4, 4)), protocol_name="t1")
    with h5py.File(path, "r+") as f:
        xml = f["dataset/xml"][0]
        xml = xml.decode() if isinstance(xml, bytes) else xml
        f["dataset/xml"][0] = xml.replace("<z>1</z>", "<z>4</z>", 1).encode()
    with pytest.raises(ValueError, match=r"v\.h5: 3-D encoding"):
        MRDSource(path)


def test_write_mrd_checks(tmp_path):
    with pytest.raises(ValueError, match=r"kspace must be \[slices, coils, ky, kx\]"):
        write_mrd(tmp_path / "a.h5", _random_kspace(0, (2, 4, 4)))
    with pytest.raises(ValueError, match="kspace must be complex64"):
        write_mrd(tmp_path / "a.h5", np.zeros((1, 1, 4, 4), np.float32))
    with pytest.raises(ValueError, match="sampled must be"):
        write_mrd(tmp_path / "a.h5", _random_kspace(0, (1, 1, 4, 4)), sampled=np.ones(3, bool))
    write_mrd(tmp_path / "a.h5", _random_kspace(0, (1, 1, 4, 4)))
    with pytest.raises(FileExistsError, match=r"a\.h5 exists"):
        write_mrd(tmp_path / "a.h5", _random_kspace(0, (1, 1, 4, 4)))
    write_mrd(tmp_path / "a.h5", _random_kspace(1, (1, 1, 4, 4)), protocol_name="t2", overwrite=True)
    assert MRDSource(tmp_path / "a.h5").contrasts("mrd") == ("T2w",)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        write_mrd(tmp_path / "nope" / "a.h5", _random_kspace(0, (1, 1, 4, 4)))
