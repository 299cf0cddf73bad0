"""The embedded PACS: Orthanc (Debian package ``orthanc``) with its own configuration and storage.

One definition of "an Orthanc configuration" for the whole project: ``make run`` (:mod:`serving.stack`)
starts Orthanc with it as the DICOM node's default destination and as a source that sends to the node, and
the tests' PACS (``tests/dicom_node/peers.py``) writes its throw-away configuration with it too.

    settings = OrthancSettings(directory=Path(".cache/orthanc"), users={"mri": password},
                               modalities={"RECON": Modality("RECON", "127.0.0.1", 11112)},
                               plugins=available_plugins())
    with OrthancServer(settings) as pacs:
        print(pacs.explorer_url)       # http://127.0.0.1:8042/app/explorer.html

Orthanc 1.10 has no option to bind to one address: ``RemoteAccessAllowed: false`` makes its HTTP server
refuse every client that is not on the loopback interface, ``AuthenticationEnabled`` with
``RegisteredUsers`` asks for HTTP basic credentials, and with ``restrict_dicom`` (the default) only the
registered modalities, from their registered host, may C-ECHO or C-STORE (``DicomAlwaysAllowEcho/Store``
false, ``DicomCheckModalityHost`` true). The configuration file holds the password: it is written 0600 in a
0700 directory, and Orthanc runs with umask 077 so that its storage (patient data) is private as well.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.supervisor import stop_process_group

log = logging.getLogger(__name__)

#: The ``Orthanc`` binary of the Debian package (``/usr/sbin`` is not on every user's PATH).
ORTHANC_BINARY = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
#: Where Debian's ``orthanc-*`` plugin packages install their shared libraries.
PLUGIN_DIRECTORY = Path("/usr/share/orthanc/plugins")
#: The plugins of the embedded PACS: the web viewer (``orthanc-webviewer``) and DICOMweb (``orthanc-dicomweb``).
PLUGINS = ("libOrthancWebViewer.so", "libOrthancDicomWeb.so")


class OrthancStartError(RuntimeError):
    """Orthanc did not answer on its REST API; the message carries the end of its log."""


@dataclass(frozen=True)
class Modality:
    """A DICOM peer Orthanc knows by name: ``POST /modalities/<name>/store`` sends to it, and with
    ``restrict_dicom`` only these peers (AE title and host) may associate with Orthanc."""

    ae_title: str
    host: str
    port: int


@dataclass(frozen=True)
class OrthancSettings:
    """How to run one Orthanc.

    ``directory``: configuration (``orthanc.json``), storage and index (``db/``) and log (``orthanc.log``).
    ``users``: HTTP basic-auth users (name -> password); ``None`` turns authentication off (a test PACS).
    ``plugins``: paths of plugin shared libraries (:func:`available_plugins`).
    ``stable_age``: seconds without a new instance before Orthanc calls a series stable.
    """

    directory: Path
    http_port: int = 8042
    dicom_port: int = 4242
    ae_title: str = "ORTHANC"
    name: str = "mri-pacs"
    modalities: Mapping[str, Modality] = field(default_factory=dict)
    users: Mapping[str, str] | None = None
    restrict_dicom: bool = True
    plugins: tuple[str, ...] = ()
    stable_age: int = 1
    startup_timeout_s: float = 30.0


def available_plugins(names: tuple[str, ...] = PLUGINS, directory: Path = PLUGIN_DIRECTORY) -> tuple[str, ...]:
    """Paths of the plugins in ``names`` installed in ``directory``; raises ``FileNotFoundError`` naming the
    Debian package of a missing one (``orthanc-webviewer``, ``orthanc-dicomweb``)."""
    missing = [n for n in names if not (directory / n).is_file()]
    if missing:
        packages = {"libOrthancWebViewer.so": "orthanc-webviewer", "libOrthancDicomWeb.so": "orthanc-dicomweb"}
        raise FileNotFoundError(f"Orthanc plugin(s) {missing} not in {directory}: install the Debian package(s) "
                                f"{sorted(packages.get(n, n) for n in missing)} (make system-deps)")
    return tuple(str(directory / n) for n in names)


def orthanc_config(s: OrthancSettings) -> dict[str, Any]:
    """The JSON configuration Orthanc reads (see the module docstring for the security options)."""
    storage = Path(s.directory).resolve() / "db"
    cfg: dict[str, Any] = {
        "Name": s.name, "StorageDirectory": str(storage), "IndexDirectory": str(storage),
        "HttpPort": s.http_port, "DicomPort": s.dicom_port, "DicomAet": s.ae_title,
        "RemoteAccessAllowed": False, "AuthenticationEnabled": s.users is not None,
        "DicomCheckCalledAet": True, "DicomModalitiesInDatabase": False,
        "DicomModalities": {k: [m.ae_title, m.host, m.port] for k, m in s.modalities.items()},
        "Plugins": list(s.plugins), "StableAge": s.stable_age, "DicomScuTimeout": 30, "HttpTimeout": 60,
    }
    if s.users is not None:
        cfg["RegisteredUsers"] = dict(s.users)
    if s.restrict_dicom:
        cfg.update({"DicomAlwaysAllowEcho": False, "DicomAlwaysAllowStore": False, "DicomCheckModalityHost": True})
    return cfg


def write_config(s: OrthancSettings) -> Path:
    """Write ``<directory>/orthanc.json`` (0600; the directory 0700) and return its path."""
    directory = Path(s.directory)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    path = directory / "orthanc.json"
    tmp = path.with_name(f".orthanc.json.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(orthanc_config(s), fh, indent=1)
    tmp.replace(path)
    return path


class OrthancServer:
    """A running Orthanc process in its own process group (context manager; :meth:`stop` is idempotent)."""

    def __init__(self, settings: OrthancSettings, binary: str = ORTHANC_BINARY) -> None:
        self.settings = settings
        self.binary = binary
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """Base URL of the REST API, e.g. ``http://127.0.0.1:8042``."""
        return f"http://127.0.0.1:{self.settings.http_port}"

    @property
    def explorer_url(self) -> str:
        """Orthanc Explorer, the browser entry point (studies, series, the web viewer)."""
        return f"{self.url}/app/explorer.html"

    @property
    def log_path(self) -> Path:
        return Path(self.settings.directory) / "orthanc.log"

    def headers(self) -> dict[str, str]:
        """HTTP headers of an authenticated request (the first registered user), or none."""
        if not self.settings.users:
            return {}
        user, password = next(iter(self.settings.users.items()))
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}

    def start(self) -> OrthancServer:
        """Write the configuration, start Orthanc (umask 077) and wait until ``GET /system`` answers."""
        config = write_config(self.settings)
        with open(self.log_path, "ab") as out:
            os.chmod(self.log_path, 0o600)
            self.process = subprocess.Popen([self.binary, str(config)], stdout=out, stderr=subprocess.STDOUT,
                                            cwd=self.settings.directory, start_new_session=True, umask=0o077)
        try:
            self._wait_ready()
        except BaseException:  # any failure, even Ctrl-C: stop the process, re-raise
            self.stop()
            raise
        log.info("Orthanc ready: %s (DICOM %s:%d)", self.url, self.settings.ae_title, self.settings.dicom_port)
        return self

    def alive(self) -> bool:
        """Whether ``GET /system`` answers 200 now."""
        req = urllib.request.Request(f"{self.url}/system", headers=self.headers())
        try:
            with urllib.request.urlopen(req, timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.settings.startup_timeout_s
        proc = self.process
        assert proc is not None, "start() launches the process before it waits"
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise OrthancStartError(f"Orthanc exited with code {proc.returncode} before it answered: "
                                        f"{self.log_path.read_text(errors='replace')[-2000:]}")
            if self.alive():
                return
            time.sleep(0.1)
        raise OrthancStartError(f"Orthanc did not answer on {self.url} within {self.settings.startup_timeout_s:.0f} "
                                f"s: {self.log_path.read_text(errors='replace')[-2000:]}")

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM its process group, SIGKILL after ``timeout_s``."""
        proc, self.process = self.process, None
        stop_process_group(proc, timeout_s)

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
