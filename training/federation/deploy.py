"""Flower deployment mode on one machine: a SuperLink and one SuperNode per hospital, as real processes.

Hospitals run the same commands on their own hosts (see ``docs/federation.md``); this module starts them
all on localhost for an integration test or a dry run::

    with LocalDeployment(workdir, {"hospital-a": state_a, "hospital-b": state_b}) as dep:
        dep.run(Path("configs/recon.yaml"), ["federation.rounds=1"])

Every connection is TLS with the federation's private CA and every SuperNode authenticates with its
site key (:mod:`training.federation.pki`): the SuperLink runs with ``--enable-supernode-auth`` and knows only
the public keys registered with ``flwr supernode register``; a site with another key is refused. Plain
text only with ``insecure=True`` (logged as a warning).

Offline settings: no telemetry, no update check, and no runtime dependency installation (which would run
``uv sync`` and could pull an unpinned CUDA torch). Every process is started in its own process group and
the whole group is stopped on exit, including the SuperExec helpers Flower spawns.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from training.federation.pki import Pki, PkiError, check_server_certificate, create_pki, public_key_fingerprint

log = logging.getLogger(__name__)
APP_DIR = Path(__file__).resolve().parents[2] / "deploy" / "flwr-app"
CONNECTION = "mri-local"


class DeploymentError(RuntimeError):
    """A Flower process failed to start, or a run did not complete."""


def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class LocalDeployment:
    """Start a SuperLink and SuperNodes (``sites``: site name -> private state directory) under ``workdir``.

    Parameters
    ----------
    pki : directory of :func:`training.federation.pki.create_pki` (created for ``sites`` under
        ``workdir/pki`` when None). Ignored with ``insecure``.
    insecure : plain text and no SuperNode authentication (a warning is logged); loopback tests only.
    register : the sites whose public keys the SuperLink is given (default: all); a site left out is
        refused when it connects (to test exactly that).
    site_ca : the CA certificate the SuperNodes trust (default: the PKI's); another CA's makes every site
        refuse the SuperLink's certificate (to test exactly that).
    """

    def __init__(self, workdir: Path, sites: dict[str, Path], start_timeout_s: float = 60.0, *,
                 pki: Path | None = None, insecure: bool = False, register: list[str] | None = None,
                 site_ca: Path | None = None) -> None:
        self.workdir = Path(workdir)
        self.sites = {k: Path(v) for k, v in sites.items()}
        self.start_timeout_s = start_timeout_s
        self.insecure = insecure
        self.pki = Pki(Path(pki) if pki is not None else self.workdir / "pki")
        self.register_sites = list(self.sites) if register is None else list(register)
        self.site_ca = Path(site_ca) if site_ca is not None else self.pki.ca_cert
        self.node_ids: dict[str, int] = {}
        self.bin = Path(sys.executable).parent
        self.procs: list[subprocess.Popen] = []
        self.env = dict(os.environ)
        self.env.update({
            "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "RAY_USAGE_STATS_ENABLED": "0",
            "FLWR_HOME": str(self.workdir / "flwr-home"), "PYTHONUNBUFFERED": "1",
            "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
        })

    # -- processes ----------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        logf = open(self.workdir / f"{name}.log", "w")
        proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=self.env, start_new_session=True, cwd=self.workdir)
        self.procs.append(proc)
        return proc

    def _check_pki(self) -> None:
        """Refuse to start with a server certificate that is expired, for another host or from another CA,
        or with a site that has no key (DeploymentError naming the file or the site)."""
        if self.insecure:
            log.warning("federation without TLS and without SuperNode authentication (insecure=True): any "
                        "process that reaches the SuperLink can join, and all traffic is plain text")
            return
        if not self.pki.ca_cert.exists():
            create_pki(self.pki.root, list(self.sites))
        try:
            check_server_certificate(self.pki.server_cert, self.pki.ca_cert, "127.0.0.1")
        except PkiError as exc:
            raise DeploymentError(f"SuperLink certificate refused: {exc}") from exc
        for site in self.sites:
            if not self.pki.site_key(site).exists():
                raise DeploymentError(f"site {site!r} has no authentication key {self.pki.site_key(site)}; "
                                      f"create it with mri-train federation-certs --out {self.pki.root} --sites {site}")

    def _connection_toml(self, port: int) -> str:
        tls = "insecure = true" if self.insecure else f'root-certificates = "{self.pki.ca_cert}"'
        return (f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
                f'address = "127.0.0.1:{port}"\n{tls}\n')

    def start(self) -> LocalDeployment:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "flwr-home").mkdir(exist_ok=True)
        self._check_pki()
        for stale in self.workdir.glob("superlink.db*"):  # a previous deployment's nodes and keys
            stale.unlink()
        link_port, *node_ports = _free_ports(1 + len(self.sites))
        self.link_port = link_port
        (self.workdir / "flwr-home" / "config.toml").write_text(self._connection_toml(link_port))
        security = ["--insecure"] if self.insecure else [
            "--ssl-certfile", str(self.pki.server_cert), "--ssl-keyfile", str(self.pki.server_key),
            "--ssl-ca-certfile", str(self.pki.ca_cert), "--enable-supernode-auth"]
        link = self._spawn("superlink", [
            str(self.bin / "flower-superlink"), *security, "--database", str(self.workdir / "superlink.db"),
            "--host", "127.0.0.1", "--port", str(link_port), "--isolation", "subprocess",
            "--disable-runtime-dependency-installation",
        ])
        self._wait(lambda: self._healthy(link_port), link, "superlink")
        if not self.insecure:
            for site in self.register_sites:
                self.node_ids[site] = self.register(site)
        for (site, state_dir), port in zip(self.sites.items(), node_ports):
            self._start_node(site, state_dir, port, link_port)
        return self

    def register(self, site: str) -> int:
        """Give the SuperLink ``site``'s public key (``flwr supernode register``); returns its node id."""
        out = self._flwr(["supernode", "register", str(self.pki.site_public_key(site)), CONNECTION,
                          "--name", site, "--format", "json"])
        info = _json_in(out.stdout)
        if not info.get("success"):
            raise DeploymentError(f"could not register site {site!r}: {out.stdout.strip()[-300:]} {out.stderr[-300:]}")
        return int(info["node-id"])

    def unregister(self, site: str) -> None:
        """Revoke ``site``: the SuperLink forgets its key (``flwr supernode unregister``)."""
        out = self._flwr(["supernode", "unregister", str(self.node_ids.pop(site)), CONNECTION])
        if out.returncode != 0:
            raise DeploymentError(f"could not unregister site {site!r}: {out.stdout[-300:]} {out.stderr[-300:]}")

    def _final_status(self, run_id: str, deadline: float) -> str:
        """The run's status once it has finished (``flwr run --stream`` can return earlier on a loaded host)."""
        status = "unknown"
        while True:
            ls = self._flwr(["ls", CONNECTION, "--run-id", str(run_id), "--format", "json"])
            runs = _json_in(ls.stdout).get("runs", [])
            status = runs[0]["status"] if runs else "unknown"
            if status.startswith("finished") or time.monotonic() > deadline:
                return status
            time.sleep(2.0)

    def _flwr(self, args: list[str], timeout_s: float = 60.0) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bin / "flwr"), *args], capture_output=True, text=True, env=self.env,
                              cwd=self.workdir, timeout=timeout_s)

    def _start_node(self, site: str, state_dir: Path, port: int, link_port: int) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        security = ["--insecure"] if self.insecure else [
            "--root-certificates", str(self.site_ca),
            "--auth-supernode-private-key", str(self.pki.site_key(site))]
        node = self._spawn(f"supernode-{site}", [
            str(self.bin / "flower-supernode"), *security, "--superlink", f"127.0.0.1:{link_port}",
            "--port", str(port), "--isolation", "subprocess",
            "--node-config", f'site="{site}" state-dir="{state_dir}"',
        ])
        logfile = self.workdir / f"supernode-{site}.log"
        try:
            self._wait(lambda f=logfile: "SuperNode ID:" in f.read_text(), node, f"supernode {site}")
        except DeploymentError as exc:
            raise DeploymentError(self._refusal(site, logfile) or str(exc)) from exc

    def _refusal(self, site: str, logfile: Path) -> str | None:
        """Why the SuperLink refused ``site`` (unknown key, certificate), from the SuperNode's log."""
        text = logfile.read_text() if logfile.exists() else ""
        if self.insecure:
            return None
        key = f"key {public_key_fingerprint(self.pki.site_public_key(site))} ({self.pki.site_public_key(site)})"
        # Flower reports an unregistered key either way, depending on the stage it reaches: the activation
        # message, or a connection error carrying FLEET_NODE_ACTIVATION_FAILED (code 2004)
        if "Failed to activate SuperNode" in text or "[code: 2004]" in text:
            return f"site {site!r} refused by the SuperLink: its {key} is not registered (unknown key)"
        if "CERTIFICATE_VERIFY_FAILED" in text or "handshake" in text:
            detail = next((ln for ln in text.splitlines() if "CERTIFICATE_VERIFY_FAILED" in ln), "TLS handshake failed")
            return (f"site {site!r} refused the SuperLink's certificate (not issued by {self.site_ca}, expired "
                    f"or for another host): {detail.strip()}")
        return None

    def _healthy(self, port: int) -> bool:
        try:
            if self.insecure:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            else:
                ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
                urllib.request.urlopen(f"https://127.0.0.1:{port}/health", timeout=1, context=ctx)
            return True
        except OSError:
            return False

    def _wait(self, ready, proc: subprocess.Popen, what: str) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if ready():
                return
            if proc.poll() is not None:
                raise DeploymentError(f"{what} exited with code {proc.returncode}; see {self.workdir}")
            time.sleep(0.2)
        raise DeploymentError(f"{what} not ready within {self.start_timeout_s:.0f} s; see {self.workdir}")

    def stop(self) -> None:
        """SIGTERM every process group we started (and the SuperExec groups they spawned), then SIGKILL."""
        groups = set()
        for p in self.procs:
            groups.add(p.pid)
            out = subprocess.run(["pgrep", "-f", f"--parent-pid {p.pid}$"], capture_output=True, text=True)
            groups.update(int(x) for x in out.stdout.split())
        for g in groups:
            try:
                os.killpg(g, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + 15
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for g in groups:
            try:
                os.killpg(g, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.procs.clear()

    def __enter__(self) -> LocalDeployment:
        try:
            return self.start()
        except BaseException:  # any failure, even Ctrl-C: stop what started, then re-raise
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- runs -----------------------------------------------------------------------------------
    def run(self, config_file: Path, overrides: list[str] = (), timeout_s: float = 900.0) -> str:
        """Submit the run, wait until it ends, and return its final status (raises unless completed)."""
        flwr = str(self.bin / "flwr")
        override_text = ";".join(overrides).replace('"', '\\"')
        args = [flwr, "run", str(APP_DIR), CONNECTION, "--format", "json", "--stream",
                "--run-config", f'config-file="{Path(config_file).resolve()}" overrides="{override_text}"']
        try:
            res = subprocess.run(args, capture_output=True, text=True, env=self.env, timeout=timeout_s, cwd=self.workdir)
        except subprocess.TimeoutExpired as exc:
            raise DeploymentError(f"flwr run did not finish within {timeout_s:.0f} s") from exc
        text = res.stdout
        info = _json_in(text)
        if not info.get("success"):
            raise DeploymentError(f"flwr run was refused: {text.strip()[:500]} {res.stderr.strip()[:500]}")
        run_id = info["run-id"]
        status = self._final_status(run_id, deadline=time.monotonic() + timeout_s)
        logs = subprocess.run([flwr, "log", str(run_id), CONNECTION, "--show"], capture_output=True, text=True,
                              env=self.env, cwd=self.workdir)
        (self.workdir / f"run-{run_id}.log").write_text(logs.stdout + logs.stderr)
        if status != "finished:completed":
            raise DeploymentError(f"run {run_id} ended with status {status}; log: {self.workdir}/run-{run_id}.log")
        return status


def _json_in(text: str) -> dict:
    """The first JSON object printed in ``text`` (Flower's CLI prints banners around it), or {}."""
    start = text.find("{")
    try:
        return json.JSONDecoder().raw_decode(text[start:])[0] if start >= 0 else {}
    except json.JSONDecodeError:
        return {}
