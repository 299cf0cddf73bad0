"""No partial series, patient data at rest, logs without UIDs and one clear line per failed delivery: the real
node process over TCP, dcmtk's storescu as the scanner, Orthanc as the PACS. Inference is the TEST DOUBLE
backend (tests/dicom_node/doubles.py).

* SIGKILL of the node three times while a series that says its size (ImagesInAcquisition) is sent in pieces,
  each followed by a pause longer than the quiet time: nothing is delivered from the partial series; after the
  full resend exactly one complete derived series is in the PACS.
* A series still short of its size after ``incomplete_timeout_seconds``: delivered, marked INCOMPLETE.
* Instances that arrive after the series was delivered: a version 2 that names the series it supersedes.
* The storage (spool, results, queue, audit log) after a run: no file or directory readable by other users
  (``find -perm``), and with ``storage_group`` the group's modes 2750 / 0640.
* The node's log and audit file after an accepted and a rejected C-STORE: no UID of the datasets.
* A destination port nobody listens on: ``last_error`` says "connection refused", one log line per attempt, no
  pynetdicom ERROR line, no unclosed-socket ResourceWarning.
"""

from __future__ import annotations

import grp
import os
import re
import stat
import subprocess
import time
from pathlib import Path

import pytest

from dicom_node.queue import JobQueue
from tests.conftest import free_port
from tests.dicom_node.data import ellipse_volume, mr_series, write_series
from tests.dicom_node.peers import node_config, storescu, wait_for
from tests.dicom_node.test_e2e_orthanc import SYNTH_ROUTE, check_no_phi, pacs_destination

pytestmark = pytest.mark.e2e


def find(root: Path, *args: str) -> list[str]:
    """``find root args...`` (the real tool, as an operator would check)."""
    r = subprocess.run(["find", str(root), *args], capture_output=True, text=True, timeout=60, check=True)
    return r.stdout.split()


def assert_private(root: Path, group: str | None = None) -> None:
    """Nothing under ``root`` readable by other users; without a group nothing group-readable either."""
    assert find(root, "-type", "f") and find(root, "-type", "d")
    assert find(root, "-perm", "/o+rwx") == []
    if group is None:
        assert find(root, "-perm", "/g+rwx") == []
        modes = {stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*")}
        assert modes <= {0o700, 0o600}, sorted(oct(m) for m in modes)
    else:
        gid = grp.getgrnam(group).gr_gid
        for p in [root, *root.rglob("*")]:
            assert p.stat().st_gid == gid, p
            assert stat.S_IMODE(p.stat().st_mode) == (0o2750 if p.is_dir() else 0o640), (p, oct(p.stat().st_mode))


def sized_series(n: int, **kw):
    """An MR series whose instances say how many images it has (ImagesInAcquisition)."""
    sources = mr_series(ellipse_volume(n, 32, 32), **kw)
    for ds in sources:
        ds.ImagesInAcquisition = n
    return sources


def uids_of(datasets) -> set[str]:
    return {str(ds.get(k)) for ds in datasets for k in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID",
                                                        "FrameOfReferenceUID")}


def test_sigkill_mid_series_three_times_never_delivers_a_partial_series(
        tmp_path, orthanc_factory, node_factory, node_port):
    orthanc = orthanc_factory()
    cfg = node_config(tmp_path, port=node_port, destinations=pacs_destination(orthanc), routes=[SYNTH_ROUTE],
                      quiet_seconds=1.0, incomplete_timeout_seconds=300)
    node = node_factory(cfg)
    sources = sized_series(12)
    files = write_series(sources, tmp_path / "src")
    uid = str(sources[0].SeriesInstanceUID)
    for piece in (files[0:3], files[2:6], files[6:9]):  # each piece resends one instance of the one before
        r = storescu(node.port, piece, aec="SYNTH_T2")
        assert r.returncode == 0, r.stderr
        time.sleep(2.5)  # the scanner pauses for longer than the quiet time
        assert [j["state"] for j in node.jobs()] == ["receiving"]
        node.kill()
        node.start()
    time.sleep(2.0)  # well past the quiet time after the restart: still waiting for 3 of 12 images
    assert [j["state"] for j in node.jobs()] == ["receiving"] and orthanc.derived_series(uid) == []
    assert node.jobs()[0]["instances"] == 9
    r = storescu(node.port, files, aec="SYNTH_T2")  # the scanner resends the whole series
    assert r.returncode == 0, r.stderr
    derived = wait_for(lambda: orthanc.derived_series(uid), 60, "the derived series")
    wait_for(lambda: [j["state"] for j in node.jobs()] == ["done"], 30, "job done")
    assert len(orthanc.derived_series(uid)) == 1
    series = orthanc.get(f"/series/{derived[0]['ID']}")
    assert len(series["Instances"]) == 12
    refs = {str(d.SourceImageSequence[0].ReferencedSOPInstanceUID) for d in orthanc.datasets(series)}
    assert refs == {str(s.SOPInstanceUID) for s in sources}
    first = orthanc.datasets(series)[0]
    assert "INCOMPLETE" not in str(first.SeriesDescription) and not str(first.SeriesDescription).endswith(" v2")
    node.stop()
    assert_private(tmp_path / "node")


def test_late_instances_make_a_version_that_names_what_it_supersedes_and_storage_is_group_private(
        tmp_path, orthanc_factory, node_factory, node_port):
    group = grp.getgrgid(os.getgid()).gr_name
    orthanc = orthanc_factory()
    cfg = node_config(tmp_path, port=node_port, destinations=pacs_destination(orthanc), routes=[SYNTH_ROUTE],
                      quiet_seconds=1.0, storage_group=group)
    node = node_factory(cfg)
    sources = mr_series(ellipse_volume(5, 32, 32))
    files = write_series(sources, tmp_path / "src")
    uid = str(sources[0].SeriesInstanceUID)
    assert storescu(node.port, files[:4], aec="SYNTH_T2").returncode == 0
    wait_for(lambda: [j["state"] for j in node.jobs()] == ["done"], 60, "version 1 delivered")
    v1 = orthanc.derived_series(uid)
    assert len(v1) == 1
    v1_uid = v1[0]["MainDicomTags"]["SeriesInstanceUID"]
    assert storescu(node.port, files, aec="SYNTH_T2").returncode == 0  # 4 duplicates and the late 5th
    wait_for(lambda: [j["state"] for j in node.jobs()] == ["done", "done"], 60, "version 2 delivered")
    derived = orthanc.derived_series(uid)
    assert len(derived) == 2
    (v2,) = [s for s in derived if s["MainDicomTags"]["SeriesInstanceUID"] != v1_uid]
    datasets = orthanc.datasets(orthanc.get(f"/series/{v2['ID']}"))
    assert len(datasets) == 5
    for ds in datasets:
        assert str(ds.SeriesDescription).endswith(" v2")
        assert f"supersedes derived series {v1_uid}" in str(ds.DerivationDescription)
        assert f"supersedes derived series {v1_uid}" in str(ds.ImageComments)
        refs = {str(r.SeriesInstanceUID): r for r in ds.ReferencedSeriesSequence}
        assert uid in refs and v1_uid in refs and len(refs[v1_uid].ReferencedInstanceSequence) == 4
    q = JobQueue(tmp_path / "node" / "queue.sqlite")
    try:
        second = q.job(2)
        assert second.version == 2 and second.supersedes_series_uid == v1_uid and q.job(1).version == 1
    finally:
        q.close()
    node.stop()
    assert_private(tmp_path / "node", group)


def test_a_series_still_short_after_the_timeout_is_delivered_marked_incomplete(
        tmp_path, orthanc_factory, node_factory, node_port):
    orthanc = orthanc_factory()
    cfg = node_config(tmp_path, port=node_port, destinations=pacs_destination(orthanc), routes=[SYNTH_ROUTE],
                      quiet_seconds=0.5, incomplete_timeout_seconds=3)
    node = node_factory(cfg)
    sources = sized_series(6)
    assert storescu(node.port, write_series(sources, tmp_path / "src")[:4], aec="SYNTH_T2").returncode == 0
    time.sleep(1.5)  # past the quiet time, not past the timeout: still waiting for 2 of 6
    assert [j["state"] for j in node.jobs()] == ["receiving"]
    derived = wait_for(lambda: orthanc.derived_series(str(sources[0].SeriesInstanceUID)), 60, "the derived series")
    wait_for(lambda: [j["state"] for j in node.jobs()] == ["done"], 30, "job done")
    datasets = orthanc.datasets(orthanc.get(f"/series/{derived[0]['ID']}"))
    assert len(datasets) == 4
    for ds in datasets:
        assert str(ds.SeriesDescription).endswith(" INCOMPLETE")
        assert "INCOMPLETE source series: 4 of 6 images/slices received" in str(ds.DerivationDescription)
        assert "INCOMPLETE source series: 4 of 6" in str(ds.ImageComments)
    table = node.cli("jobs")
    assert "INCOMPLETE: 4 of 6 images/slices received" in table.stdout, table.stdout
    assert "incomplete after 3 s without a new instance" in node.log()


def test_logs_carry_no_uid_of_an_accepted_or_a_rejected_instance(tmp_path, orthanc_factory, node_factory,
                                                                 node_port):
    orthanc = orthanc_factory()
    cfg = node_config(tmp_path, port=node_port, destinations=pacs_destination(orthanc), routes=[SYNTH_ROUTE])
    node = node_factory(cfg)
    good = mr_series(ellipse_volume(3, 32, 32))
    bad = mr_series(ellipse_volume(1, 32, 32))
    del bad[0].Rows  # rejected by the node's checks (0xA900), the reason logged
    assert storescu(node.port, write_series(good, tmp_path / "good"), aec="SYNTH_T2").returncode == 0
    storescu(node.port, write_series(bad, tmp_path / "bad"), aec="SYNTH_T2")
    wait_for(lambda: [j["state"] for j in node.jobs()] == ["done"], 60, "the accepted series delivered")
    wait_for(lambda: "rejected with 0x" in node.log(), 10, "the rejection logged")
    node.stop()
    logs = node.log() + (tmp_path / "node" / "audit.log").read_text()
    check_no_phi(logs)
    derived = orthanc.derived_series(str(good[0].SeriesInstanceUID))
    uids = uids_of(good) | uids_of(bad) | uids_of(orthanc.datasets(orthanc.get(f"/series/{derived[0]['ID']}")))
    for u in uids:
        assert u not in logs and u[-12:] not in logs, f"UID {u} (or its last 12 digits) in the logs"
    assert re.search(r"instance [0-9a-f]{12}: .*Rows", logs)  # the rejection names the hashed UID and why


def test_a_destination_nobody_listens_on_is_connection_refused_in_one_line(tmp_path, node_factory, node_port):
    dead = free_port()
    cfg = node_config(tmp_path, port=node_port, routes=[SYNTH_ROUTE],
                      destinations={"pacs": {"ae_title": "NOBODY", "host": "127.0.0.1", "port": dead}},
                      delivery={"max_attempts": 3, "retry_base_seconds": 0.2, "retry_max_seconds": 0.3})
    node = node_factory(cfg, env={"PYTHONWARNINGS": "always::ResourceWarning", "PYTHONTRACEMALLOC": "0"})
    sources = mr_series(ellipse_volume(2, 32, 32))
    assert storescu(node.port, write_series(sources, tmp_path / "src"), aec="SYNTH_T2").returncode == 0
    wait_for(lambda: [j["state"] for j in node.jobs()] == ["failed"], 60, "the failed state")
    job = node.jobs()[0]
    assert job["deliveries"] == {"pacs": "failed(3)"}
    assert "connection refused" in job["last_error"] and "aborted" not in job["last_error"]
    node.stop()
    lines = [ln for ln in node.log().splitlines() if "delivery to pacs" in ln]
    assert len(lines) == 3 and all("connection refused" in ln for ln in lines), lines
    assert "pynetdicom" not in node.log() and "TCP Initialisation Error" not in node.log()
    assert "ResourceWarning" not in node.log() and "unclosed" not in node.log()
