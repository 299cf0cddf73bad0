"""Load: 8 scanners (storescu processes) send 32-instance series at once; every series is delivered to Orthanc.
Inference: the TEST DOUBLE backend (the load is on the SCP, the spool, the queue and delivery)."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.dicom_node.data import ellipse_volume, mr_series, write_series
from tests.dicom_node.peers import node_config, wait_for
from tests.dicom_node.test_e2e_orthanc import SYNTH_ROUTE, pacs_destination

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_eight_concurrent_associations_of_32_instances(tmp_path, orthanc_factory, node_factory, node_port):
    orthanc = orthanc_factory()
    cfg = node_config(tmp_path, port=node_port, destinations=pacs_destination(orthanc), routes=[SYNTH_ROUTE],
                      quiet_seconds=2.0)
    node = node_factory(cfg)
    series = [mr_series(ellipse_volume(32, 64, 64, seed=s)) for s in range(8)]
    dirs = []
    for s, dss in enumerate(series):
        write_series(dss, tmp_path / f"scanner{s}")
        dirs.append(tmp_path / f"scanner{s}")
    t0 = time.time()
    procs = [subprocess.Popen(["storescu", "-aet", "SCANNER", "-aec", "SYNTH_T2", "+sd", "+r", "127.0.0.1",
                               str(node.port), str(d)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for d in dirs]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, outputs
    sent = time.time() - t0
    uids = [str(dss[0].SeriesInstanceUID) for dss in series]

    def delivered() -> bool:
        jobs = node.jobs()
        return len(jobs) == 8 and all(j["state"] == "done" for j in jobs)

    wait_for(delivered, 240, "8 delivered series", interval=0.5)
    total = time.time() - t0
    for uid in uids:
        (d,) = orthanc.derived_series(uid)
        assert len(d["Instances"]) == 32
    assert len(orthanc.series()) == 8  # only the derived series: the sources went to the node, not Orthanc
    print(f"\n8 x 32 instances: sent in {sent:.1f} s, all derived series stored in Orthanc after {total:.1f} s")
