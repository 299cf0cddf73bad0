"""serving.quality and serving.dicom.quality without Triton: the policy and the DICOM annotation."""

import json

import numpy as np
import pytest
from pydicom.dataset import Dataset

from mrcore.fft import ifft2c
from mrcore.quality import SliceEstimate
from serving.dicom.quality import FLAG_SUFFIX, annotate_quality, read_quality
from serving.quality import QualitySettings, SliceQuality, apply_policy, header_value, verdict


def _volume(slices=4, coils=3, n=32, seed=0):
    rng = np.random.default_rng(seed)
    k = (rng.standard_normal((slices, coils, n, n)) + 1j * rng.standard_normal((slices, coils, n, n))).astype(np.complex64)
    mask = np.zeros((n, n), np.float32)
    mask[::3] = 1
    return k * mask, mask


def test_verdict_uses_every_threshold_that_is_set():
    s = QualitySettings(ratio_threshold=1.4, holdout_threshold=0.5, dc_threshold=0.05)
    assert verdict(0, SliceEstimate(0.6, 0.0), s).flag and verdict(0, SliceEstimate(0.1, 0.06), s).flag
    assert verdict(0, SliceEstimate(0.1, 0.0, 0.03, 0.02), s).flag            # 1.5x zero-filled's estimate
    assert not verdict(0, SliceEstimate(0.4, 0.04, 0.02, 0.02), s).flag
    assert not verdict(0, SliceEstimate(None, None), s, "no lines").flag
    default = QualitySettings()
    assert default.holdout_threshold is None and default.dc_threshold is None
    assert not verdict(0, SliceEstimate(5.0, 0.5), default).flag              # only the ratio by default
    q = verdict(3, SliceEstimate(0.4, 0.01, 0.012, 0.04), default)
    assert q.public()["est_nmse"] == 0.012 and q.public()["est_nmse_zero_filled"] == 0.04 and not q.flag


def test_thresholds_may_be_null_but_not_negative():
    from mrcore.config import ConfigError
    assert QualitySettings.parse({"ratio_threshold": None}).ratio_threshold is None
    with pytest.raises(ConfigError, match="quality.ratio_threshold"):
        QualitySettings.parse({"ratio_threshold": -1})


@pytest.mark.parametrize("policy", ["report", "flag", "fallback"])
def test_fallback_replaces_exactly_the_flagged_slices(policy):
    k, mask = _volume()
    image = np.full((4, 32, 32), 7.0, np.float32)
    s = QualitySettings(policy=policy)
    quality = [verdict(0, SliceEstimate(0.1, 0.0, 0.01, 0.05), s), verdict(1, SliceEstimate(2.0, 0.0, 0.2, 0.05), s),
               verdict(2, SliceEstimate(None, None), s, "x"), verdict(3, SliceEstimate(0.2, 0.5, 0.3, 0.05), s)]
    out, q = apply_policy(image, k, mask, quality, s)
    replaced = [x.slice for x in q if x.replaced]
    if policy != "fallback":
        assert replaced == [] and np.array_equal(out, image)
        return
    assert replaced == [1, 3]
    zf = np.sqrt((np.abs(ifft2c(k * mask)) ** 2).sum(axis=1))
    np.testing.assert_allclose(out[[1, 3]], zf[[1, 3]], rtol=1e-6)
    assert np.array_equal(out[[0, 2]], image[[0, 2]])
    assert image[1].max() == 7.0  # the input is not modified


def test_header_and_dicom_block_carry_the_same_numbers():
    s = QualitySettings(policy="flag")
    quality = [SliceQuality(0, 0.123456, 0.001, False, est_nmse=0.004, est_nmse_zero_filled=0.03),
               SliceQuality(1, 1.5, 0.002, True, est_nmse=0.09, est_nmse_zero_filled=0.03),
               SliceQuality(2, None, 0.003, False, "no acquired line outside the calibration region")]
    header = json.loads(header_value(quality))
    datasets = []
    for _ in quality:
        ds = Dataset()
        ds.SeriesDescription = "T2w axial " * 6
        ds.DerivationDescription = "recon_unrolled version 2 (mri-service)"
        datasets.append(ds)
    annotate_quality(datasets, quality, s, "zero-filled RSS")
    for ds, h in zip(datasets, header):
        assert read_quality(ds) == h
        assert len(str(ds.SeriesDescription)) <= 64 and str(ds.SeriesDescription).endswith(FLAG_SUFFIX)
    assert "FLAGGED" in str(datasets[1].ImageComments) and "ok" in str(datasets[0].ImageComments)
    assert "unavailable" in str(datasets[2].ImageComments)
    block = datasets[2].private_block(0x0071, "MRI-SERVICE QUALITY")
    assert block[0x04].value == "UNAVAILABLE" and block[0x02].value in ("", None)
    first = datasets[0].private_block(0x0071, "MRI-SERVICE QUALITY")
    assert float(first[0x0A].value) == header[0]["est_nmse"] and float(first[0x0B].value) == header[0]["est_nmse_zero_filled"]
    assert float(first[0x0C].value) == s.ratio_threshold and first[0x01].value == "kspace-holdout-2"
    assert "estimated NMSE 0.0040 (zero-filled 0.0300" in str(datasets[0].ImageComments)
    report = [Dataset() for _ in quality]
    for ds in report:
        ds.SeriesDescription = "T2w"
    annotate_quality(report, quality, QualitySettings(policy="report"))
    assert all(str(ds.SeriesDescription) == "T2w" for ds in report)
