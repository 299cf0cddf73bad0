"""The stack's pieces without Triton: the supervisor on real child processes (restart after SIGKILL, back-off,
process groups), the embedded Orthanc's configuration, and the node configuration the stack derives."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from mrcore.config import ConfigError
from serving.orthanc import Modality, OrthancServer, OrthancSettings, available_plugins, orthanc_config, write_config
from serving.stack import node_config_for, orthanc_modalities, secret_file
from serving.supervisor import ChildProcess, Service, Supervisor
from tests.conftest import ROOT, free_port
from tests.dicom_node.peers import ORTHANC, echoscu, need, wait_for

SLEEP = [sys.executable, "-c", "import time; time.sleep(120)"]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_backoff_doubles_up_to_the_cap():
    sup = Supervisor([], backoff_base_s=1, backoff_max_s=30)
    assert [sup.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    with pytest.raises(ValueError, match="back-off"):
        Supervisor([], backoff_base_s=0)


def test_a_killed_child_is_restarted_and_the_other_keeps_running(caplog):
    a, b = ChildProcess("a", SLEEP), ChildProcess("b", SLEEP)
    sup = Supervisor([a, b], backoff_base_s=0.1)
    caplog.set_level(logging.INFO, logger="mri-stack")
    sup.start()
    try:
        first_a, pid_b = a.process.pid, b.process.pid
        os.kill(first_a, signal.SIGKILL)
        wait_for(lambda: a.process.pid != first_a and a.process.poll() is None, 10, "a restarted")
        assert b.process.pid == pid_b and b.process.poll() is None, "b was not touched"
        assert sup.restarts == {"a": 1, "b": 0}
        assert f"a (pid {first_a}) exited with code -9 (SIGKILL); restarting in 0.0 s" in caplog.text
    finally:
        sup.stop()
    assert a.process.poll() is not None and b.process.poll() is not None


def test_a_crash_loop_backs_off(caplog):
    crash = ChildProcess("crash", ["sh", "-c", "exit 3"])
    sup = Supervisor([crash], backoff_base_s=0.1, backoff_max_s=0.4)
    caplog.set_level(logging.INFO, logger="mri-stack")
    sup.start()
    wait_for(lambda: sup.restarts["crash"] >= 4, 20, "four restarts")
    sup.stop()
    waits = [float(w) for w in re.findall(r"exited with code 3; restarting in ([0-9.]+) s", caplog.text)]
    assert waits[:4] == [0.0, 0.1, 0.2, 0.4], "at once, then the wait doubles up to the cap"


def test_stop_ends_whole_process_groups():
    shell = ChildProcess("shell", ["sh", "-c", "sleep 120 & wait"])
    sup = Supervisor([shell])
    sup.start()
    out = wait_for(lambda: subprocess.run(["pgrep", "-g", str(shell.process.pid)], capture_output=True,
                                          text=True).stdout.split()[1:], 10, "the shell's child")
    sup.stop()
    wait_for(lambda: not alive(int(out[0])), 10, "the grandchild to end")


def test_a_failed_first_start_is_retried_then_stops_what_was_started_and_raises():
    ok = ChildProcess("ok", SLEEP)
    tries = []

    def fail():
        tries.append(time.monotonic())
        raise RuntimeError("no such model")

    sup = Supervisor([ok, Service("bad", fail, lambda: None)], backoff_base_s=0.1, first_start_attempts=3)
    with pytest.raises(RuntimeError, match="no such model"):
        sup.start()
    assert len(tries) == 3 and ok.process.poll() is not None


def test_a_first_start_that_fails_once_is_retried():
    flaky = ChildProcess("flaky", SLEEP)
    calls = []

    def start():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("tritonserver exited with code -6 before it was ready")
        return flaky.start()

    sup = Supervisor([Service("flaky", start, flaky.stop)], backoff_base_s=0.1)
    sup.start()
    try:
        assert len(calls) == 2 and flaky.process.poll() is None
    finally:
        sup.stop()


# --- the embedded Orthanc -----------------------------------------------------------------------------
def test_orthanc_config_is_authenticated_local_and_private(tmp_path):
    s = OrthancSettings(directory=tmp_path / "o", users={"mri": "pw"}, modalities={"RECON": Modality("RECON", "127.0.0.1", 11112)})
    cfg = orthanc_config(s)
    assert cfg["RemoteAccessAllowed"] is False and cfg["AuthenticationEnabled"] is True
    assert cfg["RegisteredUsers"] == {"mri": "pw"}
    assert cfg["DicomAlwaysAllowStore"] is False and cfg["DicomCheckModalityHost"] is True
    assert cfg["DicomModalities"] == {"RECON": ["RECON", "127.0.0.1", 11112]}
    path = write_config(s)
    assert json.loads(path.read_text()) == cfg
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    assert orthanc_config(OrthancSettings(directory=tmp_path))["AuthenticationEnabled"] is False
    with pytest.raises(FileNotFoundError, match="orthanc-webviewer"):
        available_plugins(directory=tmp_path)


def test_orthanc_server_starts_with_authentication_and_private_storage(tmp_path):
    need(ORTHANC)
    s = OrthancSettings(directory=tmp_path / "o", http_port=free_port(), dicom_port=free_port(),
                        users={"mri": "secret"}, modalities={"NODE": Modality("MRI_NODE", "127.0.0.1", 1)})
    with OrthancServer(s) as pacs:
        assert pacs.alive()
        assert echoscu(s.dicom_port, aet="SCANNER", aec="ORTHANC").returncode != 0
        assert echoscu(s.dicom_port, aet="MRI_NODE", aec="ORTHANC").returncode == 0
        pid = pacs.process.pid
    assert not alive(pid)
    readable = subprocess.run(["find", str(tmp_path / "o"), "-perm", "/o+r"], capture_output=True, text=True)
    assert readable.stdout.split() == [], "nothing of Orthanc's is readable by others"


def test_secret_file_is_created_once_private(tmp_path):
    path = secret_file(tmp_path / "x" / "password")
    assert path.stat().st_mode & 0o777 == 0o600
    first = path.read_text()
    assert len(first.strip()) >= 32 and secret_file(path).read_text() == first


# --- the node configuration the stack runs --------------------------------------------------------------
def test_the_node_config_points_its_pacs_at_the_embedded_orthanc():
    raw = yaml.safe_load((ROOT / "configs" / "dicom_node.yaml").read_text())
    s = OrthancSettings(directory=ROOT, dicom_port=4343, ae_title="PACS")
    cfg = node_config_for(raw, "pacs", s)
    assert cfg["destinations"]["pacs"] == {"ae_title": "PACS", "host": "127.0.0.1", "port": 4343}
    assert {"ae_title": "PACS", "hosts": ["127.0.0.1"]} in cfg["allowed_peers"]
    assert raw["destinations"]["pacs"]["port"] == 4242, "the given configuration is not modified"
    with pytest.raises(ConfigError, match="no destination 'archive'"):
        node_config_for(raw, "archive", s)
    mods = orthanc_modalities(raw, "0.0.0.0", 11112)
    assert set(mods) == {"RECON", "SYNTH_T2", "RECON_V1", "MRI_NODE"}
    assert mods["SYNTH_T2"] == Modality("SYNTH_T2", "127.0.0.1", 11112)
