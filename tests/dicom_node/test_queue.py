"""The durable job queue and the worker's retry / failure handling.

Queue tests use the SQLite queue directly (with a fake clock); worker tests run the node in-process over
TCP with dcmtk's storescu as the scanner and storescp as the destination. The processors here are plain
functions: TEST DOUBLES of the inference step (the real one is tested in test_triton_e2e.py)."""

from __future__ import annotations

import sqlite3
import time

import pytest

from dicom_node import queue as queue_module
from dicom_node.config import parse_config
from dicom_node.node import DicomNode
from dicom_node.processing import InferenceProcessor, TransientError
from dicom_node.queue import JobQueue
from serving.dicom import DicomInputError
from tests.conftest import free_port
from tests.dicom_node.data import ellipse_volume, mr_series, write_series
from tests.dicom_node.doubles import DoubleBackend
from tests.dicom_node.peers import storescu, wait_for


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def add(q, sop, series="1.2.3", route="r", expected=None, units=1):
    return q.add_instance(route=route, series_uid=series, study_uid="9", sop_uid=sop, path=f"/x/{sop}",
                          calling_ae="SCANNER", peer_host="127.0.0.1", units=units, expected_units=expected)


def test_series_spanning_associations_deduplicated_and_completed_after_quiet_time(tmp_path):
    clock = Clock()
    q = JobQueue(tmp_path / "q.sqlite", clock=clock)
    assert add(q, "1") == (1, True)
    clock.t += 3
    assert add(q, "2") == (1, True) and add(q, "1") == (1, False)  # duplicate SOP Instance UID
    assert q.complete_quiet(5) == []  # 0 s since the last instance
    clock.t += 5
    (job,) = q.complete_quiet(5)
    assert job.state == "complete" and job.num_instances == 2
    assert q.instance_paths(job) == ["/x/1", "/x/2"]
    # a late instance before processing started reopens the job
    assert add(q, "3") == (1, True) and q.job(1).state == "receiving"
    clock.t += 5
    (job,) = q.complete_quiet(5)
    assert job.id == 1 and job.num_instances == 3
    # once processed, a late instance starts a new job covering the whole series, which supersedes it
    job = q.claim_for_processing()
    q.processed(job.id, result_dir="/r/1", result_series_uid="7.1", result_count=3, model="m:1", destinations=["d"])
    assert add(q, "4") == (2, True)
    clock.t += 5
    (late,) = q.complete_quiet(5)
    assert late.id == 2 and q.instance_paths(late) == ["/x/1", "/x/2", "/x/3", "/x/4"]
    assert q.superseded(late).result_series_uid == "7.1" and q.superseded(q.job(1)) is None


def test_a_restart_starts_the_quiet_time_again(tmp_path):
    """13 instances acknowledged, the node down for longer than the quiet time: after the restart the series is
    not complete until it has been quiet for the quiet time as seen by the running node."""
    clock = Clock()
    q = JobQueue(tmp_path / "q.sqlite", clock=clock)
    for i in range(13):
        add(q, str(i))
    q.close()
    clock.t += 60  # the node was down for a minute
    q = JobQueue(tmp_path / "q.sqlite", clock=clock)
    q.recover()
    assert q.complete_quiet(5) == [] and q.job(1).state == "receiving"
    clock.t += 4
    assert q.complete_quiet(5) == []
    add(q, "13")  # the scanner resumes
    clock.t += 5
    (job,) = q.complete_quiet(5)
    assert job.num_instances == 14 and job.note is None


def test_a_series_that_says_its_size_waits_for_all_of_it_or_the_longer_timeout(tmp_path):
    clock = Clock()
    q = JobQueue(tmp_path / "q.sqlite", clock=clock)
    for i in range(13):
        add(q, str(i), expected=32)
    clock.t += 30
    assert q.complete_quiet(5, incomplete_after=60) == []  # quiet, but 19 images are missing
    for i in range(13, 32):
        add(q, str(i), expected=32)
    clock.t += 5
    (job,) = q.complete_quiet(5, incomplete_after=60)
    assert job.received_units == job.expected_units == 32 and job.note is None
    # k-space: slices are the unit; an instance carrying 2 of 6 slices, then silence past the timeout
    add(q, "k1", series="2.2", expected=6, units=2)
    clock.t += 59
    assert q.complete_quiet(5, incomplete_after=60) == []
    clock.t += 1
    (job,) = q.complete_quiet(5, incomplete_after=60)
    assert job.received_units == 2 and job.note == "2 of 6 images/slices received"
    q.close()


def test_a_database_of_the_previous_version_is_migrated(tmp_path):
    old_schema = queue_module._SCHEMA
    for column in ("quiet_from REAL", "received_units INTEGER NOT NULL DEFAULT 0", "expected_units INTEGER",
                   "note TEXT", "version INTEGER", "supersedes_series_uid TEXT"):
        old_schema = old_schema.replace(f",\n    {column}", "")
    old_schema = old_schema.replace(",\n    units INTEGER NOT NULL DEFAULT 1", "")
    assert "quiet_from" not in old_schema and "units INTEGER" not in old_schema
    db = sqlite3.connect(tmp_path / "q.sqlite")
    db.executescript(old_schema)
    db.execute("INSERT INTO jobs (route, series_uid, state, created_at, last_received_at, updated_at) "
               "VALUES ('r', '1.2.3', 'receiving', 900, 900, 900)")
    db.execute("INSERT INTO instances VALUES ('r', '1.2.3', '1', 1, '/x/1', 900)")
    db.commit()
    db.close()
    clock = Clock()
    q = JobQueue(tmp_path / "q.sqlite", clock=clock)
    assert add(q, "2") == (1, True)
    clock.t += 5
    (job,) = q.complete_quiet(5)
    assert job.num_instances == 2 and job.received_units == 2


def test_a_later_job_of_a_series_waits_for_the_earlier_one(tmp_path):
    clock = Clock()
    q = JobQueue(tmp_path / "q.sqlite", clock=clock)
    add(q, "1")
    clock.t += 5
    q.complete_quiet(5)
    first = q.claim_for_processing()
    add(q, "2")  # arrives while job 1 is being processed: a new job
    clock.t += 5
    (second,) = q.complete_quiet(5)
    assert second.id == 2 and q.claim_for_processing() is None  # not while job 1 is processing
    q.processed(first.id, result_dir="/r", result_series_uid="7.1", result_count=1, model="m:1", destinations=["d"])
    assert q.claim_for_processing().id == 2


def test_state_machine_retries_and_recovery(tmp_path):
    clock = Clock()
    q = JobQueue(tmp_path / "q.sqlite", clock=clock)
    add(q, "1")
    clock.t += 10
    q.complete_quiet(1)
    job = q.claim_for_processing()
    assert job.state == "processing" and job.attempts == 1 and q.claim_for_processing() is None
    assert q.processing_failed(job.id, "Unavailable", retry_in=4) == "complete"
    assert q.claim_for_processing() is None  # back-off
    clock.t += 4
    job = q.claim_for_processing()
    assert job.attempts == 2
    # the node dies while processing: recovery puts it back
    q2 = JobQueue(tmp_path / "q.sqlite", clock=clock)
    assert q2.recover() == 1 and q2.job(job.id).state == "complete"
    job = q2.claim_for_processing()
    q2.processed(job.id, result_dir=str(tmp_path), result_series_uid="5.6", result_count=1, model="m:1",
                 destinations=["a", "b"])
    assert q2.job(job.id).state == "delivering"
    d = q2.claim_delivery(set())
    assert q2.delivery_result(job.id, d.destination, ok=True) == "delivering"
    other = q2.claim_delivery({(job.id, d.destination)})
    assert other.destination != d.destination
    assert q2.delivery_result(job.id, other.destination, ok=False, error="refused", retry_in=None) == "failed"
    assert "refused" in q2.job(job.id).last_error
    assert q2.retry(job.id) == "delivering" and q2.deliveries(job.id)[1].state == "pending"
    assert q2.delivery_result(job.id, other.destination, ok=True) == "done"
    with pytest.raises(ValueError, match="only failed jobs"):
        q2.retry(job.id)


# --- worker behaviour, in-process node over TCP ---------------------------------------------------------


def start_node(tmp_path, dest_port, processor, **processing):
    cfg = parse_config({
        "storage_dir": str(tmp_path / "node"), "listen": {"host": "127.0.0.1", "port": free_port()},
        "quiet_seconds": 0.5, "destinations": {"d": {"ae_title": "DEST", "host": "127.0.0.1", "port": dest_port}},
        "routes": [{"called_ae_title": "SYNTH_T2", "task": "synthesis", "source": "T1w", "target": "T2w",
                    "destinations": ["d"]}],
        "processing": {"max_attempts": 3, "retry_base_seconds": 0.2, "retry_max_seconds": 0.5, **processing}})
    node = DicomNode(cfg, processor_factory=lambda: processor, poll_seconds=0.05)
    node.start()
    return node


def send_series(tmp_path, node, n=3):
    files = write_series(mr_series(ellipse_volume(n, 32, 32)), tmp_path / "src")
    r = storescu(node.address[1], files, aec="SYNTH_T2")
    assert r.returncode == 0, r.stderr


def test_inference_unavailable_is_retried_then_succeeds(tmp_path, destination):
    calls = []
    real = InferenceProcessor(DoubleBackend())

    def flaky(route, datasets, *, series_instance_uid):  # TEST DOUBLE: unavailable twice, then the real path
        calls.append(time.time())
        if len(calls) < 3:
            raise TransientError("inference server not ready")
        return real(route, datasets, series_instance_uid=series_instance_uid)

    node = start_node(tmp_path, destination[0], flaky)
    try:
        send_series(tmp_path, node)
        wait_for(lambda: node.queue.jobs()[0].state == "done" if node.queue.jobs() else False, 30, "job done")
        job = node.queue.jobs()[0]
        assert job.attempts == 3 and len(calls) == 3 and calls[2] - calls[1] >= 0.35  # back-off 0.2, then 0.4
        assert len(list(destination[1].iterdir())) == 3
        assert list((tmp_path / "node").rglob("*.part")) == []  # every durable write was renamed
        assert len(list((tmp_path / "node" / "spool").rglob("*.dcm"))) == 3
        assert len(list((tmp_path / "node" / "results").rglob("*.dcm"))) == 3
    finally:
        node.stop()


def test_inference_error_fails_the_job_visibly_and_sends_nothing(tmp_path, destination, caplog):
    def broken(route, datasets, *, series_instance_uid):  # TEST DOUBLE: the model rejects the input
        raise DicomInputError("volume too small for the model", attribute="Rows")

    node = start_node(tmp_path, destination[0], broken)
    try:
        send_series(tmp_path, node)
        wait_for(lambda: node.queue.jobs() and node.queue.jobs()[0].state == "failed", 30, "job failed")
        job = node.queue.jobs()[0]
        assert job.attempts == 1 and "volume too small" in job.last_error and job.result_dir is None
        time.sleep(0.5)
        assert list(destination[1].iterdir()) == []  # never half-sent
        assert "FAILED" in caplog.text
    finally:
        node.stop()


def test_attempts_exhausted_end_in_failed_state(tmp_path, destination):
    def down(route, datasets, *, series_instance_uid):  # TEST DOUBLE: inference never comes back
        raise TransientError("inference server unreachable")

    node = start_node(tmp_path, destination[0], down, max_attempts=2)
    try:
        send_series(tmp_path, node)
        wait_for(lambda: node.queue.jobs() and node.queue.jobs()[0].state == "failed", 30, "job failed")
        assert node.queue.jobs()[0].attempts == 2
        assert list(destination[1].iterdir()) == []
    finally:
        node.stop()


def test_which_failures_are_retried():
    from dicom_node.processing import is_retryable
    from serving.client import InferenceError, InferenceUnavailable, UnknownModel

    assert is_retryable(InferenceUnavailable("Triton down")) and is_retryable(TransientError("x"))
    assert is_retryable(ConnectionRefusedError()) and is_retryable(TimeoutError())
    assert not is_retryable(InferenceError("bad shape")) and not is_retryable(UnknownModel("no such model"))
    assert not is_retryable(DicomInputError("Rows missing", attribute="Rows", kind="missing"))
    assert not is_retryable(ValueError("model returned (2, 3)"))
