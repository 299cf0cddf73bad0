"""The storage SCP against real peers (dcmtk echoscu/storescu, a pynetdicom SCU for undecodable data):
association policy, bad input answered with the right status, and the node keeps serving everyone else.
The node runs in-process over TCP with the TEST DOUBLE inference backend (tests/dicom_node/doubles.py)."""

from __future__ import annotations

import struct

import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLSLossless, RLELossless
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config

from dicom_node.config import parse_config
from dicom_node.node import DicomNode
from serving.dicom import encode_kspace
from serving.dicom.rawdata import KSPACE_PRIVATE_CREATOR
from tests.conftest import free_port
from tests.dicom_node.data import ellipse_volume, mr_series, undersampled_kspace, write_series
from tests.dicom_node.doubles import processor
from tests.dicom_node.peers import echoscu, need, storescu, wait_for
from tests.serving.test_dicom_series import enhanced_from


@pytest.fixture
def node(tmp_path):
    need("storescu", "echoscu")
    cfg = parse_config({
        "storage_dir": str(tmp_path / "node"), "listen": {"host": "127.0.0.1", "port": free_port()},
        "quiet_seconds": 0.5, "allowed_peers": [{"ae_title": "SCANNER"}, {"ae_title": "HOSTBOUND",
                                                                         "hosts": ["10.1.2.3"]}],
        "destinations": {"d": {"ae_title": "NOBODY", "host": "127.0.0.1", "port": free_port()}},
        "delivery": {"max_attempts": 1},
        "routes": [
            {"called_ae_title": "SYNTH_T2", "task": "synthesis", "source": "T1w", "target": "T2w",
             "destinations": ["d"], "rules": {"contrast": "T1w", "Modality": "MR"}},
            {"called_ae_title": "RECON", "task": "reconstruction", "destinations": ["d"]},
            {"called_ae_title": "PRIVATE", "task": "reconstruction", "destinations": ["d"],
             "allowed_peers": [{"ae_title": "OTHER"}]}]})
    n = DicomNode(cfg, processor_factory=processor, poll_seconds=0.05)
    n.start()
    try:
        yield n
    finally:
        n.stop()


def port(node) -> int:
    return node.address[1]


def assert_still_serving(node):
    r = echoscu(port(node), aec="SYNTH_T2")
    assert r.returncode == 0, r.stderr


def test_echo_and_association_policy(node, caplog):
    assert echoscu(port(node), aec="SYNTH_T2").returncode == 0
    assert echoscu(port(node), aec="RECON").returncode == 0
    r = echoscu(port(node), aec="NOSUCH")
    assert r.returncode != 0 and "Called AE Title Not Recognized" in r.stdout + r.stderr
    r = echoscu(port(node), aet="INTRUDER", aec="RECON")
    assert r.returncode != 0 and "Calling AE Title Not Recognized" in r.stdout + r.stderr
    r = echoscu(port(node), aet="HOSTBOUND", aec="RECON")  # allowed only from 10.1.2.3
    assert r.returncode != 0 and "Calling AE Title Not Recognized" in r.stdout + r.stderr
    r = echoscu(port(node), aet="SCANNER", aec="PRIVATE")  # the route's own peer list overrides
    assert r.returncode != 0
    assert echoscu(port(node), aet="OTHER", aec="PRIVATE").returncode == 0
    assert "association rejected: calling AE 'INTRUDER'" in caplog.text
    assert "association rejected: called AE 'NOSUCH'" in caplog.text
    assert_still_serving(node)


def test_sop_class_without_route_is_refused_in_negotiation(node, tmp_path):
    ds = mr_series(ellipse_volume(1, 16, 16))[0]
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    ds.Modality = "CT"
    files = write_series([ds], tmp_path / "ct")
    r = storescu(port(node), files, aec="SYNTH_T2")
    assert r.returncode != 0 and "no presentation context" in (r.stdout + r.stderr).lower()
    # raw data is not offered on the synthesis AE, images are not offered on the recon AE
    raw = write_series(encode_kspace(undersampled_kspace(1, 2, 16, 16)[0]), tmp_path / "raw")
    assert storescu(port(node), raw, aec="SYNTH_T2").returncode != 0
    assert storescu(port(node), raw, aec="RECON").returncode == 0
    assert_still_serving(node)


def status_of(result) -> str:
    """The failure status storescu -v reports (it names them, e.g. 'Error: DataSetDoesNotMatchSOPClass')."""
    text = result.stdout + result.stderr
    for name, code in (("DataSetDoesNotMatchSOPClass", "0xa900"), ("CannotUnderstand", "0xc000"),
                       ("OutOfResources", "0xa700"), ("SOPClassNotSupported", "0x0122")):
        if f"Error: {name}" in text or f"Refused: {name}" in text:
            return code
    return text


@pytest.mark.parametrize("breakage, status", [
    ("missing_position", "0xa900"),
    ("short_pixels", "0xa900"),
    ("rule_mismatch", "0xa900"),
    ("corrupt_rle", "0xc000"),
])
def test_bad_images_get_failure_statuses_and_the_node_keeps_serving(node, tmp_path, breakage, status, caplog):
    dss = mr_series(ellipse_volume(2, 32, 32))
    bad = dss[0]
    if breakage == "missing_position":
        del bad.ImagePositionPatient
    elif breakage == "short_pixels":
        bad.PixelData = bad.PixelData[:-100]
    elif breakage == "rule_mismatch":
        bad.SeriesDescription, bad.RepetitionTime, bad.EchoTime = "T2 TSE", 4000, 100
    else:
        bad.compress(RLELossless)  # then a frame whose RLE segments decode to far too few bytes
        bad.PixelData = encapsulate([struct.pack("<16L", 2, 64, 66, *([0] * 13)) + b"\x00\x05"])
    files = write_series([bad], tmp_path / "bad")
    r = storescu(port(node), files, aec="SYNTH_T2", extra=["-xr"])  # -xr: send RLE as it is
    assert status_of(r) == status, r.stdout + r.stderr
    assert r.returncode != 0
    assert "rejected with" in caplog.text or "no route accepts" in caplog.text
    # a good series from the same scanner is still stored
    good = write_series(mr_series(ellipse_volume(2, 32, 32)), tmp_path / "good")
    assert storescu(port(node), good, aec="SYNTH_T2").returncode == 0
    wait_for(lambda: node.queue.jobs(), 10, "a job for the good series")
    assert all(j.num_instances == 2 for j in node.queue.jobs())


def test_kspace_with_the_wrong_size_is_refused(node, tmp_path, caplog):
    k, mask = undersampled_kspace(2, 2, 16, 16)
    dss = encode_kspace(k, mask)
    block = dss[0].private_block(0x0071, KSPACE_PRIVATE_CREATOR)
    block[0x02].value = [1, 2, 16, 17]  # shape says 17 columns, data has 16
    files = write_series(dss, tmp_path / "raw")
    r = storescu(port(node), files, aec="RECON", extra=["-nh"])  # -nh: go on after the failure
    assert status_of(r) == "0xa900"
    assert "KSpaceData has 4096 bytes" in caplog.text
    wait_for(lambda: node.queue.jobs(), 10, "the valid instance's job")
    assert node.queue.jobs()[0].num_instances == 1


def test_undecodable_dataset_gets_c000(node, tmp_path, monkeypatch):
    monkeypatch.setattr(pynetdicom_config, "STORE_SEND_CHUNKED_DATASET", True)  # send the file bytes as they are
    ds = mr_series(ellipse_volume(1, 16, 16))[0]
    path = write_series([ds], tmp_path / "x")[0]
    raw = path.read_bytes()
    meta_end = raw.index(b"\x08\x00\x05\x00")  # first data set element after the file meta
    path.write_bytes(raw[:meta_end] + b"\x08\x00\x05\x00CS\x40\x00" + b"ISO" + b"\xff" * 64)  # length beyond EOF
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port(node), ae_title="SYNTH_T2")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(path)
        assert status.Status == 0xC000
        # the same association goes on: a good instance is stored
        assert assoc.send_c_store(mr_series(ellipse_volume(1, 16, 16))[0]).Status == 0x0000
    finally:
        assoc.release()


def test_compressed_transfer_syntaxes_and_enhanced_mr_are_accepted(node, tmp_path):
    vol = ellipse_volume(3, 32, 32)
    rle, jls = mr_series(vol), mr_series(vol)
    for d in rle:
        d.compress(RLELossless)
    for d in jls:
        d.compress(JPEGLSLossless)
    enh = enhanced_from(mr_series(vol))
    for name, dss, option, syntax in (("rle", rle, "-xr", "RLE Lossless"), ("jls", jls, "-xt", "JPEG-LS Lossless"),
                                      ("enh", [enh], "-xe", "Little Endian Explicit")):
        files = write_series(dss, tmp_path / name)
        r = storescu(port(node), files, aec="SYNTH_T2", extra=[option])
        assert r.returncode == 0, (name, r.stdout + r.stderr)
        assert "Converting transfer syntax" not in r.stderr or f"{syntax} -> {syntax}" in r.stderr, r.stderr
    wait_for(lambda: len(node.queue.jobs()) == 3 and all(j.state in ("delivering", "failed")
                                                         for j in node.queue.jobs()), 30, "3 processed jobs")
    assert all(j.result_count == 3 for j in node.queue.jobs())


def test_resent_instances_are_acknowledged_once(node, tmp_path):
    dss = mr_series(ellipse_volume(3, 16, 16))
    files = write_series(dss, tmp_path / "s")
    assert storescu(port(node), files[:2], aec="SYNTH_T2").returncode == 0
    assert storescu(port(node), files, aec="SYNTH_T2").returncode == 0  # 2 duplicates + 1 new
    wait_for(lambda: node.queue.jobs() and node.queue.jobs()[0].state != "receiving", 10, "complete")
    assert [j.num_instances for j in node.queue.jobs()] == [3]


def test_transfer_syntax_pydicom_cannot_decode_is_refused_in_negotiation(node):
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.1.2.4.70")  # JPEG Lossless SV1 only
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port(node), ae_title="SYNTH_T2")
    try:
        assert assoc.is_established
        accepted = {cx.transfer_syntax[0] for cx in assoc.accepted_contexts}
        rejected = {cx.transfer_syntax[0] for cx in assoc.rejected_contexts}
        assert accepted == {"1.2.840.10008.1.2.1"} and rejected == {"1.2.840.10008.1.2.4.70"}
    finally:
        assoc.release()


def test_deflated_transfer_syntax_for_images_and_raw_data(node, tmp_path):
    images = write_series(mr_series(ellipse_volume(2, 32, 32)), tmp_path / "img")
    raw = write_series(encode_kspace(undersampled_kspace(2, 2, 16, 16)[0]), tmp_path / "raw")
    for aec, files in (("SYNTH_T2", images), ("RECON", raw)):
        r = storescu(port(node), files, aec=aec, extra=["-xd"])
        assert r.returncode == 0 and "-> Deflated Explicit VR Little Endian" in r.stderr, r.stderr
    wait_for(lambda: len(node.queue.jobs()) == 2 and all(j.result_count == 2 for j in node.queue.jobs()), 30,
             "both series processed")
