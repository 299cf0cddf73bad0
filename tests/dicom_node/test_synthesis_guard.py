"""The synthesis input check through the real DICOM node over TCP (dcmtk storescu in, storescp as destination):
a T2w series sent to the T1w->T2w route is answered with the warning in ImageComments of every instance; a
series with no head in it fails the job with the reason and sends nothing.

The inference backend is the node tests' TEST DOUBLE (tests/dicom_node/doubles.py); the check, the node, the
derived-series builder and the delivery are the production ones."""

from __future__ import annotations

import time

import numpy as np
import pydicom

from dicom_node.config import parse_config
from dicom_node.node import DicomNode
from dicom_node.processing import InferenceProcessor, is_retryable
from mrcore.data.randomize import natural_image
from mrcore.synthesis_input import Finding, SynthesisInputError
from serving.synthesis_check import COMMENT_PREFIX
from tests.conftest import free_port
from tests.dicom_node.data import mr_series, write_series
from tests.dicom_node.doubles import DoubleBackend
from tests.dicom_node.peers import storescu, wait_for
from tests.mrcore.test_synthesis_input import phantom_series


def _node(tmp_path, dest_port) -> DicomNode:
    cfg = parse_config({
        "storage_dir": str(tmp_path / "node"), "listen": {"host": "127.0.0.1", "port": free_port()},
        "quiet_seconds": 0.5, "destinations": {"d": {"ae_title": "DEST", "host": "127.0.0.1", "port": dest_port}},
        "routes": [{"called_ae_title": "SYNTH_T2", "task": "synthesis", "source": "T1w", "target": "T2w",
                    "destinations": ["d"]}],
        "processing": {"max_attempts": 3, "retry_base_seconds": 0.2, "retry_max_seconds": 0.5}})
    node = DicomNode(cfg, processor_factory=lambda: InferenceProcessor(DoubleBackend()), poll_seconds=0.05)
    node.start()
    return node


def _send(tmp_path, node, volume: np.ndarray) -> None:
    vol = volume / float(volume.max()) * 3000.0  # 12-bit stored values
    files = write_series(mr_series(vol, description="axial"), tmp_path / "src")
    r = storescu(node.address[1], files, aec="SYNTH_T2")
    assert r.returncode == 0, r.stderr


def test_t2w_sent_to_the_t1w_route_is_answered_with_the_warning_in_every_instance(tmp_path, destination):
    node = _node(tmp_path, destination[0])
    try:
        _send(tmp_path, node, phantom_series("T2w"))
        wait_for(lambda: bool(node.queue.jobs()) and node.queue.jobs()[0].state == "done", 60, "job done")
        received = [pydicom.dcmread(p) for p in sorted(destination[1].iterdir())]
        assert len(received) == 4
        for ds in received:
            comment = str(ds.ImageComments)
            assert comment.startswith(COMMENT_PREFIX) and "looks T2w, not T1w" in comment
            assert ds.SyntheticData == "YES"
    finally:
        node.stop()


def test_a_series_with_no_head_fails_the_job_with_the_reason_and_sends_nothing(tmp_path, destination):
    node = _node(tmp_path, destination[0])
    try:
        grass = natural_image("grass")
        _send(tmp_path, node, np.stack([grass, grass, grass]).astype(np.float32))
        wait_for(lambda: bool(node.queue.jobs()) and node.queue.jobs()[0].state == "failed", 60, "job failed")
        job = node.queue.jobs()[0]
        assert job.attempts == 1 and job.result_dir is None  # refused at once, not retried
        assert job.last_error.startswith("SynthesisInputError: no head in the source series")
        time.sleep(0.5)
        assert list(destination[1].iterdir()) == []
    finally:
        node.stop()


def test_a_refusal_is_permanent():
    assert not is_retryable(SynthesisInputError(Finding("no_head", True, "no head")))
