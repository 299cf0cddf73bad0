"""`make run`'s command as a subprocess on free ports with the shipped model_repository: Orthanc (the embedded
PACS, authenticated), Triton, the REST API and the DICOM node start together and answer; a SIGKILLed API,
node, Triton or Orthanc is restarted within 10 s while the others keep answering; a series uploaded to the embedded Orthanc and
sent from it to the node comes back as a derived series in the same study, which the web viewer shows in
headless Chromium; SIGTERM stops everything."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, free_port
from tests.dicom_node.data import ellipse_volume, mr_series, write_series
from tests.dicom_node.peers import Orthanc, echoscu, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: Where the browser screenshots are kept after the run for a person to look at (git-ignored); also in tmp_path.
ARTEFACTS = ROOT / "tests" / "artefacts"


class Stack:
    """``python -m serving.stack`` in its own session with every port free and every state path in ``tmp``."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ports = {k: free_port() for k in ("http", "grpc", "metrics", "api", "dicom", "orthanc_http",
                                               "orthanc_dicom", "dicomweb")}
        self.token_file, self.orthanc_dir = tmp / "token", tmp / "orthanc"
        self.log_path = tmp / "stack.log"
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        p = self.ports
        return [sys.executable, "-m", "serving.stack", "--triton-http-port", str(p["http"]),
                "--triton-grpc-port", str(p["grpc"]), "--triton-metrics-port", str(p["metrics"]),
                "--api-port", str(p["api"]), "--dicom-port", str(p["dicom"]), "--token-file", str(self.token_file),
                "--dicom-storage", str(self.tmp / "node"), "--orthanc-dir", str(self.orthanc_dir),
                "--state-dir", str(self.tmp / "state"), "--backoff-max", "4",
                "--dicomweb-port", str(p["dicomweb"])]

    def start(self, *extra: str, wait: bool = True) -> Stack:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MRI_API_TOKENS")}
        # the Orthanc ports by environment variable (the rest by option): both ways are supported
        env.update(MRI_ORTHANC_HTTP_PORT=str(self.ports["orthanc_http"]),
                   MRI_ORTHANC_DICOM_PORT=str(self.ports["orthanc_dicom"]))
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([*self.command(), *extra], cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        if wait:
            wait_for(self._ready, 180, "the stack's REST API to be ready")
            wait_for(lambda: "MRI service running" in self.output(), 30, "the stack's banner")
        return self

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the stack exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
        return self.api_ready()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def api_ready(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.ports['api']}/health/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def node_echo(self) -> bool:
        return echoscu(self.ports["dicom"], aec="RECON").returncode == 0

    def orthanc(self) -> Orthanc:
        password = (self.orthanc_dir / "password").read_text().strip()
        return Orthanc(self.tmp / "orthanc-client", http_port=self.ports["orthanc_http"],
                       dicom_port=self.ports["orthanc_dicom"], auth=("mri", password))

    def pid_of(self, pattern: str) -> int:
        out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
        assert len(out) == 1, f"expected one process matching {pattern!r}, found {out}"
        return int(out[0])

    def leftovers(self) -> str:
        """Processes of this stack still running (by their ports and Orthanc's directory)."""
        p = self.ports
        return subprocess.run(
            ["pgrep", "-af", f"--port {p['api']}|--http-port={p['http']}|--port {p['dicom']}|{self.orthanc_dir}"],
            capture_output=True, text=True).stdout.strip()

    def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        finally:
            self.proc = None
            self._log.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("stack"))
    try:
        yield s.start()
    finally:
        s.stop()


def test_every_component_answers_and_secrets_stay_private(stack):
    output = stack.output()
    p = stack.ports
    assert f"127.0.0.1:{p['dicom']}" in output
    assert f"http://127.0.0.1:{p['orthanc_http']}/app/explorer.html" in output, "the Orthanc Explorer URL is printed"
    for secret in (stack.token_file, stack.orthanc_dir / "password", stack.orthanc_dir / "orthanc.json"):
        assert secret.stat().st_mode & 0o077 == 0, f"{secret} must be private (0600)"
    assert stack.orthanc_dir.stat().st_mode & 0o077 == 0
    token, password = stack.token_file.read_text().strip(), (stack.orthanc_dir / "password").read_text().strip()
    assert token not in output and password not in output, "no secret is printed"
    api = f"http://127.0.0.1:{p['api']}"
    models = httpx.get(f"{api}/v1/models", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert models.status_code == 200 and "recon_unrolled" in models.text
    assert httpx.get(f"{api}/v1/models", timeout=10).status_code == 401
    assert stack.node_echo()
    # the node's DICOMweb listener: on, behind the same bearer token
    stow = f"http://127.0.0.1:{p['dicomweb']}/studies"
    assert f"DICOMweb STOW-RS {stow}" in output
    assert httpx.post(stow, content=b"", timeout=10).status_code == 401
    bad_type = httpx.post(stow, content=b"x", headers={"Authorization": f"Bearer {token}",
                                                         "Content-Type": "application/json"}, timeout=10)
    assert bad_type.status_code == 415, bad_type.text
    # Orthanc: authentication on, the plugins loaded, DICOM only from registered modalities
    orthanc_url = f"http://127.0.0.1:{p['orthanc_http']}"
    assert httpx.get(f"{orthanc_url}/system", timeout=10).status_code == 401
    assert httpx.get(f"{orthanc_url}/system", auth=("mri", "wrong"), timeout=10).status_code == 401
    assert {"web-viewer", "dicom-web"} <= set(stack.orthanc().get("/plugins"))
    assert echoscu(p["orthanc_dicom"], aet="SCANNER", aec="ORTHANC").returncode != 0, "unknown AE titles are refused"
    assert echoscu(p["orthanc_dicom"], aet="MRI_NODE", aec="ORTHANC").returncode == 0, "the node may associate"


VICTIMS = {"REST API": "serving.api serve .*--port {api}", "DICOM node": "dicom_node serve .*--port {dicom}",
           "Triton": "tritonserver .*--http-port={http}", "Orthanc": "Orthanc {orthanc_dir}"}


def answering(stack) -> dict:
    """Per service, a check that it answers now: REST liveness, the node's C-ECHO, Triton's readiness (models
    loaded), Orthanc's ``/system`` with the password."""
    return {"REST API": lambda: http_ok(f"http://127.0.0.1:{stack.ports['api']}/health/live"),
            "DICOM node": stack.node_echo,
            "Triton": lambda: http_ok(f"http://127.0.0.1:{stack.ports['http']}/v2/health/ready"),
            "Orthanc": lambda: orthanc_alive(stack)}


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.parametrize("victim", list(VICTIMS))
def test_a_killed_service_is_restarted_while_the_others_keep_serving(stack, victim):
    pattern = VICTIMS[victim].format(**stack.ports, orthanc_dir=stack.orthanc_dir)
    pid = stack.pid_of(pattern)
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    checks = answering(stack)
    for name, check in checks.items():
        if name != victim:
            assert check(), f"{name} stopped answering after a SIGKILL of {victim}"
    wait_for(checks[victim], 10, f"{victim} to answer again", interval=0.2)
    back_in = time.monotonic() - killed_at
    assert back_in <= 10
    assert stack.pid_of(pattern) != pid
    assert re.search(rf"{victim} \(pid {pid}\) exited with code -9 \(SIGKILL\); restarting in", stack.output())
    wait_for(lambda: f"{victim} restarted" in stack.output(), 5, f"the stack to log that {victim} restarted")
    assert stack.proc.poll() is None, "the stack keeps running"
    if victim == "REST API":
        wait_for(stack.api_ready, 10, "the REST API to be ready (Triton reachable)")
    print(f"{victim} answered again {back_in:.1f} s after SIGKILL")


def orthanc_alive(stack) -> bool:
    try:
        return bool(stack.orthanc().get("/system"))
    except OSError:
        return False


def test_orthanc_sends_to_the_node_and_the_viewer_shows_both_series(stack, tmp_path):
    pacs = stack.orthanc()
    sources = mr_series(ellipse_volume(), description="T1w axial SE")
    ids = [pacs.upload(p) for p in write_series(sources, tmp_path / "t1w")]
    source = pacs.get(f"/instances/{ids[0]}/series")
    pacs.send_to("SYNTH_T2", [source["ID"]])
    derived = wait_for(lambda: pacs.derived_series(str(sources[0].SeriesInstanceUID)), 120,
                       "the derived series in the embedded Orthanc", interval=1.0)
    assert len(derived) == 1 and len(derived[0]["Instances"]) == len(sources)
    assert derived[0]["ParentStudy"] == source["ParentStudy"], "the derived series belongs to the source's study"
    study = pacs.get(f"/studies/{source['ParentStudy']}")
    assert sorted(study["Series"]) == sorted([source["ID"], derived[0]["ID"]])
    descriptions = [source["MainDicomTags"]["SeriesDescription"], derived[0]["MainDicomTags"]["SeriesDescription"]]
    assert "synthetic T2w" in descriptions[1]
    # patient data at rest, after a series went through: nothing the node or Orthanc stored is readable by others
    for store in (stack.tmp / "node", stack.orthanc_dir, stack.tmp / "state"):
        found = subprocess.run(["find", str(store), "-perm", "/o+r"], capture_output=True, text=True, check=True)
        assert found.stdout == "", f"readable by other users under {store}: {found.stdout[:500]}"
    # Orthanc Explorer's page of the study lists both series (each links to the web viewer) ...
    dom, shot = browse(stack, f"app/explorer.html#study?uuid={source['ParentStudy']}", tmp_path / "study.png")
    for d in descriptions:
        assert d in dom, f"the study page does not list the series {d!r}"
    # ... and the web viewer shows each (here the derived series: its images and description)
    dom, shot = browse(stack, f"web-viewer/app/viewer.html?series={derived[0]['ID']}", tmp_path / "viewer.png")
    assert descriptions[1] in dom and "Not for diagnostic purpose" in dom


def browse(stack, page: str, shot: Path) -> tuple[str, Path]:
    """An Orthanc page in headless Chromium, logged in as the stack's user: the DOM after its scripts ran, and a
    screenshot (``shot`` in the test's tmp_path, copied to tests/artefacts/)."""
    if CHROMIUM is None:
        pytest.fail("chromium is not installed (make system-deps installs it)")
    password = (stack.orthanc_dir / "password").read_text().strip()
    url = f"http://mri:{password}@127.0.0.1:{stack.ports['orthanc_http']}/{page}"
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={shot.parent / 'chromium'}", "--window-size=1280,800", "--virtual-time-budget=20000"]
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    snap = subprocess.run([*base, f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120)
    assert snap.returncode == 0 and shot.is_file() and shot.stat().st_size > 5_000, snap.stderr[-2000:]
    ARTEFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTEFACTS / f"stack_{shot.name}")
    return dom.stdout, shot


def test_sigterm_stops_every_service(stack):
    """Last of the tests on the module's stack: SIGTERM ends it with code 0 and leaves no process behind."""
    assert stack.stop() == 0
    assert stack.leftovers() == "", "processes left behind"


def test_sigterm_during_the_start_stops_what_was_started(tmp_path):
    s = Stack(tmp_path).start(wait=False)
    try:
        wait_for(lambda: "starting tritonserver" in s.output(), 60, "Triton's start")  # Orthanc is up by then
    finally:
        code = s.stop()
    assert code == 0, s.output()[-2000:]
    assert s.leftovers() == "", "processes left behind"


def test_a_service_that_cannot_start_at_all_stops_the_stack_with_the_cause(tmp_path):
    s = Stack(tmp_path).start("--repository", str(tmp_path / "no-models"), wait=False)
    try:
        code = s.proc.wait(timeout=120)
    finally:
        s.stop()
    assert code == 1
    assert "error: the stack did not start" in s.output() and "no-models" in s.output()
    assert s.leftovers() == "", "Orthanc, started first, is stopped again"
