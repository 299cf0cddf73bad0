"""Fixtures of the DICOM node tests: Orthanc as the PACS, the node as a subprocess, free ports."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.conftest import free_port
from tests.dicom_node.peers import ORTHANC, NodeProcess, Orthanc, need


@pytest.fixture
def node_port() -> int:
    return free_port()


@pytest.fixture
def orthanc_factory(tmp_path):
    """Start Orthanc instances (stopped at teardown): ``orthanc_factory(modalities={...})``."""
    started: list[Orthanc] = []

    def make(modalities=None, name="pacs", **kwargs) -> Orthanc:
        need(ORTHANC)
        o = Orthanc(tmp_path / name, modalities, **kwargs)
        started.append(o)
        return o.start()

    try:
        yield make
    finally:
        for o in started:
            o.stop()


@pytest.fixture
def node_factory():
    """Start node subprocesses (stopped at teardown): ``node_factory(config_path, processor=...)``."""
    started: list[NodeProcess] = []

    def make(config, **kwargs) -> NodeProcess:
        need("storescu", "echoscu")
        n = NodeProcess(config, **kwargs)
        started.append(n)
        return n.start()

    try:
        yield make
    finally:
        for n in started:
            n.stop()


@pytest.fixture
def destination(tmp_path):
    """dcmtk's storescp as a destination AE ``DEST`` on a free port: ``(port, received_dir)``."""
    need("storescp", "storescu")
    port = free_port()
    out = tmp_path / "received"
    out.mkdir()
    proc = subprocess.Popen(["storescp", "-aet", "DEST", "+xa", "-od", str(out), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        yield port, out
    finally:
        proc.terminate()
        proc.wait(10)
