"""Keep a set of services running: a service that exits is logged and restarted with exponential back-off.

Used by ``make run`` (:mod:`serving.stack`) for Orthanc, Triton, the REST API and the DICOM node. Each service
runs in its own process group (``start_new_session``), so a signal to one (even SIGKILL) never reaches the
others, and one watcher thread per service waits for its exit and restarts it without holding up the rest.

    sup = Supervisor([ChildProcess("REST API", ["python", "-m", "serving.api", "serve"])])
    sup.start()          # first start: a failure stops what was started and raises
    ...                  # a crash -> "REST API (pid 123) exited with code -9 (SIGKILL); restarting in 1 s"
    sup.stop()           # SIGTERM every process group, SIGKILL after a timeout

Back-off: a service that crashed after running fine is restarted at once; if it exits again within
``stable_s`` seconds, the next restarts wait ``min(base * 2**(n-1), max)`` seconds (1, 2, 4 ... 30 s by
default); a service that ran at least ``stable_s`` seconds before it exited starts again at once.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

log = logging.getLogger("mri-stack")


@dataclass
class Service:
    """A supervised service: ``start()`` launches it, waits until it is up and returns its process (raising
    when it does not come up); ``stop()`` stops what ``start`` launched and is idempotent."""

    name: str
    start: Callable[[], subprocess.Popen]
    stop: Callable[[], None]


class ChildProcess(Service):
    """A command run as a child in its own process group (``start`` returns once it is launched)."""

    def __init__(self, name: str, command: Sequence[str], env: dict[str, str] | None = None,
                 stop_timeout_s: float = 15.0) -> None:
        super().__init__(name, self._start, self._stop)
        self.command, self.env, self.stop_timeout_s = list(command), env, stop_timeout_s
        self.process: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        log.info("starting %s: %s", self.name, " ".join(self.command))
        self.process = subprocess.Popen(self.command, env=self.env, start_new_session=True)
        return self.process

    def _stop(self) -> None:
        stop_process_group(self.process, self.stop_timeout_s)


def stop_process_group(proc: subprocess.Popen | None, timeout_s: float = 15.0) -> None:
    """SIGTERM the process group led by ``proc``, SIGKILL it after ``timeout_s`` seconds (no-op if it ended)."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def kill_leftovers(proc: subprocess.Popen) -> None:
    """SIGKILL what is left of the process group of ``proc``, whose leader has just exited (for example the
    python backend stubs of a killed tritonserver), so that a restart does not find them holding ports."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def describe_exit(code: int | None) -> str:
    """``"code 1"`` or ``"code -9 (SIGKILL)"``: how a process ended, for the log."""
    if code is not None and code < 0:
        try:
            return f"code {code} ({signal.Signals(-code).name})"
        except ValueError:
            pass
    return f"code {code}"


class Supervisor:
    """Start services in order, restart any that exits, stop them all in reverse order."""

    def __init__(self, services: Sequence[Service], backoff_base_s: float = 1.0, backoff_max_s: float = 30.0,
                 stable_s: float = 60.0, first_start_attempts: int = 3) -> None:
        if backoff_base_s <= 0 or backoff_max_s < backoff_base_s:
            raise ValueError(f"back-off needs 0 < base <= max, got base {backoff_base_s}, max {backoff_max_s}")
        self.services = list(services)
        self.backoff_base_s, self.backoff_max_s, self.stable_s = backoff_base_s, backoff_max_s, stable_s
        self.first_start_attempts = max(1, first_start_attempts)
        self.restarts: dict[str, int] = {s.name: 0 for s in self.services}
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def delay(self, failures: int) -> float:
        """Seconds to wait before restart number ``failures`` (>= 1) of a run of consecutive failures."""
        return min(self.backoff_base_s * 2 ** (failures - 1), self.backoff_max_s)

    def restart_delay(self, failures: int) -> float:
        """Seconds to wait before restarting a service that exited, ``failures`` (>= 1) times in a row: at once
        after a crash of a service that was running fine, then :meth:`delay` of the previous count
        (0, 1, 2, 4 ... s)."""
        return 0.0 if failures <= 1 else self.delay(failures - 1)

    def start(self) -> None:
        """Start every service in order, then watch them. A service whose start fails is tried again with
        back-off up to ``first_start_attempts`` times (Triton can fail to come up on an overloaded machine);
        then the services already started are stopped and the last error is raised."""
        started: list[tuple[Service, subprocess.Popen]] = []
        try:
            for svc in self.services:
                started.append((svc, self._first_start(svc)))
        except BaseException:  # even Ctrl-C: stop what was started, re-raise
            for svc, _ in reversed(started):
                svc.stop()
            raise
        for svc, proc in started:
            t = threading.Thread(target=self._watch, args=(svc, proc), name=f"supervise-{svc.name}", daemon=True)
            t.start()
            self._threads.append(t)

    def _first_start(self, svc: Service) -> subprocess.Popen:
        for attempt in range(1, self.first_start_attempts + 1):
            try:
                return svc.start()
            except Exception as exc:  # any failure: logged, retried, re-raised after the last attempt
                svc.stop()
                if attempt == self.first_start_attempts:
                    raise
                log.error("%s did not start: %s; trying again in %.1f s (attempt %d of %d)", svc.name, exc,
                          self.delay(attempt), attempt, self.first_start_attempts)
                time.sleep(self.delay(attempt))
        raise AssertionError("unreachable: the loop returns or raises")

    def _watch(self, svc: Service, proc: subprocess.Popen) -> None:
        failures = 0
        while True:
            up_since = time.monotonic()
            while proc.poll() is None:
                if self._stopping.wait(0.2):
                    return
            if self._stopping.is_set():
                return
            kill_leftovers(proc)
            failures = 1 if time.monotonic() - up_since >= self.stable_s else failures + 1
            log.error("%s (pid %d) exited with %s; restarting in %.1f s", svc.name, proc.pid,
                      describe_exit(proc.returncode), self.restart_delay(failures))
            restarted = self._restart(svc, failures)
            if restarted is None:
                return
            proc = restarted

    def _restart(self, svc: Service, failures: int) -> subprocess.Popen | None:
        """Wait the back-off, start ``svc`` again (retrying with longer waits); ``None`` once stopping."""
        wait = self.restart_delay(failures)
        while not self._stopping.wait(wait):
            svc.stop()  # what is left of the old process group (children of a killed leader)
            try:
                proc = svc.start()
            except Exception as exc:  # noqa: BLE001 - any failure to start is logged and retried with back-off
                failures += 1
                wait = self.restart_delay(failures)
                log.error("%s did not start again: %s; next try in %.1f s", svc.name, exc, wait)
                continue
            if self._stopping.is_set():
                svc.stop()
                return None
            self.restarts[svc.name] += 1
            log.warning("%s restarted (pid %d; restart %d)", svc.name, proc.pid, self.restarts[svc.name])
            return proc
        return None

    def stop(self) -> None:
        """Stop watching and stop every service (reverse order); idempotent."""
        self._stopping.set()
        for svc in reversed(self.services):
            svc.stop()
        for t in self._threads:
            t.join(timeout=180)
        for svc in reversed(self.services):  # one that a watcher started while we were stopping
            svc.stop()
