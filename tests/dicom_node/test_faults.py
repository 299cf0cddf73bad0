"""Fault tests with real processes: SIGKILL of the node mid-series and mid-delivery, the PACS down for a
while, inference unavailable, deliveries that give up and the `retry` command. Inference is the TEST DOUBLE
backend (tests/dicom_node/doubles.py); the Triton-unavailable case with a real tritonserver is in
test_triton_e2e.py."""

from __future__ import annotations

import pytest

from tests.dicom_node.data import ellipse_volume, mr_series, write_series
from tests.dicom_node.peers import Orthanc, node_config, storescu, wait_for
from tests.dicom_node.test_e2e_orthanc import SYNTH_ROUTE, pacs_destination

pytestmark = pytest.mark.e2e


def job_states(node) -> list[str]:
    return [j["state"] for j in node.jobs()]


def derived_sources(orthanc: Orthanc, series: dict) -> set[str]:
    return {str(d.SourceImageSequence[0].ReferencedSOPInstanceUID) for d in orthanc.datasets(series)}


def test_sigkill_mid_series_every_acknowledged_instance_is_processed_and_delivered(
        tmp_path, orthanc_factory, node_factory, node_port):
    orthanc = orthanc_factory()
    cfg = node_config(tmp_path, port=node_port, destinations=pacs_destination(orthanc), routes=[SYNTH_ROUTE],
                      quiet_seconds=4.0)
    node = node_factory(cfg)
    sources = mr_series(ellipse_volume(10, 32, 32))
    files = write_series(sources, tmp_path / "src")
    r = storescu(node.port, files[:6], aec="SYNTH_T2")
    assert r.returncode == 0, r.stderr  # 6 instances acknowledged
    node.kill()  # SIGKILL: no clean shutdown
    node.start()
    r = storescu(node.port, files[4:], aec="SYNTH_T2")  # the scanner resends 2 and sends the rest
    assert r.returncode == 0, r.stderr

    uid = str(sources[0].SeriesInstanceUID)
    derived = wait_for(lambda: orthanc.derived_series(uid), 60, "the derived series")
    wait_for(lambda: len(orthanc.get(f"/series/{derived[0]['ID']}")["Instances"]) == 10, 20, "10 instances")
    assert len(orthanc.derived_series(uid)) == 1  # one series, not two halves
    series = orthanc.get(f"/series/{derived[0]['ID']}")
    assert derived_sources(orthanc, series) == {str(s.SOPInstanceUID) for s in sources}
    wait_for(lambda: job_states(node) == ["done"], 20, "job done")


def test_pacs_down_then_up_with_a_node_crash_while_delivering(tmp_path, orthanc_factory, node_factory, node_port):
    orthanc = Orthanc(tmp_path / "pacs")  # ports chosen, not started yet: the PACS is down
    cfg = node_config(tmp_path, port=node_port, destinations=pacs_destination(orthanc), routes=[SYNTH_ROUTE])
    node = node_factory(cfg)
    sources = mr_series(ellipse_volume(4, 32, 32))
    assert storescu(node.port, write_series(sources, tmp_path / "src"), aec="SYNTH_T2").returncode == 0
    wait_for(lambda: (j := node.jobs()) and j[0]["state"] == "delivering"
             and j[0]["deliveries"]["pacs"] != "pending(0)", 30, "failed delivery attempts")
    jobs = node.jobs()
    assert "association with pacs" in jobs[0]["last_error"]
    node.kill()  # results are on disk, the delivery row is pending
    node.start()
    try:
        orthanc.start()  # the PACS comes back
        derived = wait_for(lambda: orthanc.derived_series(str(sources[0].SeriesInstanceUID)), 60, "delivery")
        wait_for(lambda: len(orthanc.get(f"/series/{derived[0]['ID']}")["Instances"]) == 4, 20, "4 instances")
        wait_for(lambda: job_states(node) == ["done"], 20, "job done")
        assert "AUDIT sent" in node.log()
    finally:
        orthanc.stop()


def test_inference_unavailable_then_back(tmp_path, orthanc_factory, node_factory, node_port):
    orthanc = orthanc_factory()
    flag = tmp_path / "inference-down"
    flag.touch()
    cfg = node_config(tmp_path, port=node_port, destinations=pacs_destination(orthanc), routes=[SYNTH_ROUTE],
                      processing={"max_attempts": 50, "retry_base_seconds": 0.3, "retry_max_seconds": 0.6})
    node = node_factory(cfg, env={"DICOM_NODE_TEST_UNAVAILABLE": str(flag)})
    sources = mr_series(ellipse_volume(3, 32, 32))
    assert storescu(node.port, write_series(sources, tmp_path / "src"), aec="SYNTH_T2").returncode == 0
    wait_for(lambda: (j := node.jobs()) and j[0]["attempts"] >= 2, 30, "retried processing attempts")
    job = node.jobs()[0]
    assert job["state"] in ("complete", "processing") and "unavailable" in (job["last_error"] or "")
    assert orthanc.derived_series() == []  # nothing half-sent
    flag.unlink()
    wait_for(lambda: orthanc.derived_series(str(sources[0].SeriesInstanceUID)), 30, "the derived series")
    wait_for(lambda: job_states(node) == ["done"], 20, "job done")


def test_delivery_gives_up_in_a_visible_failed_state_and_retry_delivers(tmp_path, node_factory, node_port):
    orthanc = Orthanc(tmp_path / "pacs")
    cfg = node_config(tmp_path, port=node_port, destinations=pacs_destination(orthanc), routes=[SYNTH_ROUTE],
                      delivery={"max_attempts": 2, "retry_base_seconds": 0.2, "retry_max_seconds": 0.2})
    node = node_factory(cfg)
    sources = mr_series(ellipse_volume(2, 32, 32))
    assert storescu(node.port, write_series(sources, tmp_path / "src"), aec="SYNTH_T2").returncode == 0
    wait_for(lambda: job_states(node) == ["failed"], 30, "the failed state")
    job = node.jobs()[0]
    assert job["deliveries"] == {"pacs": "failed(2)"} and "association with pacs" in job["last_error"]
    table = node.cli("jobs")
    assert table.returncode == 0 and "failed" in table.stdout and "failed(2)" in table.stdout
    assert "FAILED after 2 attempt(s)" in node.log() and "status=failed" in node.log()
    try:
        orthanc.start()
        r = node.cli("retry", str(job["id"]))
        assert r.returncode == 0 and "delivering" in r.stdout, r.stderr
        wait_for(lambda: job_states(node) == ["done"], 30, "job done after retry")
        assert len(orthanc.derived_series(str(sources[0].SeriesInstanceUID))) == 1
        assert node.cli("retry", str(job["id"])).returncode == 1  # not failed any more
    finally:
        orthanc.stop()
