"""The running node: SCP + assembler + processing workers + delivery workers around one job queue.

Threads (all in one process, so a restart resumes everything from the queue and the spool):

* the SCP's association threads store instances (:mod:`dicom_node.scp`);
* the assembler marks series ``complete`` after ``quiet_seconds`` without a new instance (counted from the node's
  start too) once the size the instances state has arrived, or after ``incomplete_timeout_seconds`` marked
  INCOMPLETE (:meth:`dicom_node.queue.JobQueue.complete_quiet`), writes the ``received`` audit line and purges
  files of jobs done longer than ``retention.keep_seconds`` ago;
* ``processing.workers`` threads run the :class:`~dicom_node.processing.Processor` on complete series, mark a
  derived series that supersedes an earlier one of the same source (``v2``...) or comes from an incomplete one
  (:func:`serving.dicom.mark_series_version`) and write the derived instances to ``results/<job>/`` (fsync,
  rename, mode 0600) before the job enters ``delivering``;
* ``delivery.workers`` threads send results to each destination (C-STORE or STOW-RS), with exponential
  back-off, and write a ``sent`` audit line per series and destination;
* with ``dicomweb.enabled``, uvicorn's thread serves STOW-RS (:mod:`dicom_node.dicomweb`) into the same
  store path as the SCP.
"""

from __future__ import annotations

import io
import logging
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom

from dicom_node.audit import audit, uid_hash
from dicom_node.delivery import DeliveryError, deliver
from dicom_node.processing import Processor, is_retryable, make_processor, new_series_uid
from dicom_node.queue import Job, JobQueue
from dicom_node.scp import StorageSCP
from mrcore.durable import write_durable
from serving.dicom import mark_series_version

if TYPE_CHECKING:
    from dicom_node.config import NodeConfig
    from dicom_node.dicomweb import DicomWebServer

__all__ = ["DicomNode"]

log = logging.getLogger("dicom_node")


def _instances_of(job: Job | None) -> list[tuple[str, str]]:
    """(SOPClassUID, SOPInstanceUID) of a job's derived instances while its result files are kept, else []."""
    if job is None or not job.result_dir or not Path(job.result_dir).is_dir():
        return []
    out = []
    for f in sorted(Path(job.result_dir).glob("*.dcm")):
        ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"])
        out.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
    return out


class DicomNode:
    """The DICOM node.

    Parameters
    ----------
    config : NodeConfig
    processor_factory : callable() -> Processor, optional
        Called once per processing thread; default: the Triton client processor
        (:func:`dicom_node.processing.make_processor` with ``inference.url`` / ``inference.protocol``).
    poll_seconds : how often idle loops look at the queue.
    """

    def __init__(self, config: NodeConfig, processor_factory: Callable[[], Processor] | None = None,
                 poll_seconds: float = 0.1) -> None:
        self.config = config
        config.storage.prepare(config.storage_dir)
        self.queue = JobQueue(config.db_path, permissions=config.storage)
        self.results = config.storage_dir / "results"
        self._factory = processor_factory or (lambda: make_processor(config.inference_url,
                                                                     config.inference_protocol, config.quality))
        self._poll = poll_seconds
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._busy: set[tuple[int, str]] = set()
        self._busy_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.scp = StorageSCP(config, self.queue, on_stored=self._wake.set)
        self.dicomweb: DicomWebServer | None = None
        if config.dicomweb.enabled:
            from dicom_node.dicomweb import DicomWebServer  # deferred: uvicorn, serving.api (~2.5 s): listener on only

            self.dicomweb = DicomWebServer(config, self.scp)
        self.address: tuple[str, int] | None = None

    # --- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> tuple[str, int]:
        """Recover interrupted work, start the workers and the listener; returns (host, port)."""
        n = self.queue.recover()
        if n:
            log.warning("recovered %d interrupted job(s): they will be processed again", n)
        self._spawn("assembler", self._assembler_loop)
        for i in range(self.config.processing.workers):
            self._spawn(f"process-{i}", self._processing_loop)
        for i in range(self.config.delivery.workers):
            self._spawn(f"deliver-{i}", self._delivery_loop)
        self.address = self.scp.start()
        if self.dicomweb is not None:
            self.dicomweb.start()
        return self.address

    def _spawn(self, name: str, target) -> None:
        t = threading.Thread(target=target, name=f"dicom-node-{name}", daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self.dicomweb is not None:
            self.dicomweb.stop()
        self.scp.stop()
        for t in self._threads:
            t.join(timeout=30)
        self.queue.close()

    def run_forever(self) -> None:
        """Serve until SIGTERM / SIGINT."""
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
        while not done.wait(0.5):
            pass
        log.info("stopping")
        self.stop()

    def describe(self) -> str:
        host, port = self.address or (self.config.host, self.config.port)
        lines = [f"DICOM node listening on {host}:{port} ({'TLS' if self.config.tls else 'no TLS'}), "
                 f"storage {self.config.storage_dir}"]
        if self.dicomweb is not None:
            lines.append(self.dicomweb.describe())
        for r in self.config.routes:
            what = (f"reconstruction [{r.model}]" if r.task == "reconstruction"
                    else f"synthesis {r.source}->{r.target} [{r.model_name}]")
            lines.append(f"  called AE {r.called_ae_title}: {what} -> "
                         + ", ".join(self.config.destinations[d].describe() for d in r.destinations))
        return "\n".join(lines)

    # --- assembler -----------------------------------------------------------------------------------
    def _assembler_loop(self) -> None:
        last_purge = 0.0
        while not self._stop.is_set():
            try:
                for job in self.queue.complete_quiet(self.config.quiet_seconds, self.config.incomplete_timeout):
                    audit("received", job=job.id, route=job.route, calling_ae=job.calling_ae, host=job.peer_host,
                          study=uid_hash(job.study_uid), series=uid_hash(job.series_uid),
                          instances=job.num_instances, units=job.received_units,
                          expected=job.expected_units if job.expected_units is not None else "-",
                          complete="no" if job.note else "yes")
                    if job.note:
                        log.warning("job %d: series %s incomplete after %.0f s without a new instance (%s); processed "
                                    "as it is, marked INCOMPLETE", job.id, uid_hash(job.series_uid),
                                    self.config.incomplete_timeout, job.note)
                    self._wake.set()
                if time.time() - last_purge > 60:
                    last_purge = time.time()
                    self._purge()
            except Exception:  # keep the loop alive, the error is logged
                log.exception("assembler loop error")
            self._stop.wait(self._poll)

    def _purge(self) -> None:
        for job, paths in self.queue.purgeable(time.time() - self.config.keep_seconds):
            if job.result_dir:
                shutil.rmtree(job.result_dir, ignore_errors=True)
            for p in paths:
                Path(p).unlink(missing_ok=True)
            self.queue.forget_files(job)
            log.info("job %d: files removed after retention", job.id)

    # --- processing ----------------------------------------------------------------------------------
    def _processing_loop(self) -> None:
        processor = None
        try:  # create it up front (the client imports take seconds), not when the first series is waiting
            processor = self._factory()
        except Exception as e:  # noqa: BLE001 - retried per job below, where the failure is recorded
            log.warning("processor could not be created yet (%s: %s); retrying per job", e.__class__.__name__, e)
        while not self._stop.is_set():
            job = self.queue.claim_for_processing()
            if job is None:
                self._wake.wait(self._poll)
                self._wake.clear()
                continue
            try:
                if processor is None:
                    processor = self._factory()
                self._process(job, processor)
            except Exception as e:  # noqa: BLE001 - every failure ends in a recorded state
                self._processing_failed(job, e)

    def _process(self, job: Job, processor: Processor) -> None:
        route = self.config.route(job.route)
        paths = self.queue.instance_paths(job)
        if not paths:
            raise FileNotFoundError(f"job {job.id}: no instance files left in the spool")
        datasets = [pydicom.dcmread(p) for p in paths]
        t0 = time.time()
        result = processor(route, datasets, series_instance_uid=new_series_uid(job.id, job.route, job.series_uid, 0))
        earlier = self.queue.superseded(job)
        version = 1 if earlier is None else (earlier.version or 1) + 1
        mark_series_version(result.datasets, version=version,
                            supersedes=earlier.result_series_uid if earlier is not None else None,
                            superseded_instances=_instances_of(earlier), incomplete=job.note)
        out_dir = self.results / str(job.id)
        if out_dir.exists():
            shutil.rmtree(out_dir)  # a previous attempt died while writing
        perms = self.config.storage
        for i, ds in enumerate(result.datasets):
            buf = io.BytesIO()
            pydicom.dcmwrite(buf, ds, enforce_file_format=True)
            write_durable(out_dir / f"{i + 1:05d}.dcm", buf.getvalue(), mode=perms.file_mode, dir_mode=perms.dir_mode)
        series_uid = str(result.datasets[0].SeriesInstanceUID)
        self.queue.processed(job.id, result_dir=str(out_dir), result_series_uid=series_uid,
                             result_count=len(result.datasets), model=f"{result.model}:{result.model_version}",
                             destinations=route.destinations, version=version,
                             supersedes_series_uid=earlier.result_series_uid if earlier is not None else None)
        if earlier is not None:
            log.warning("job %d: new instances for series %s after job %d made its derived series: version %d "
                        "supersedes series %s", job.id, uid_hash(job.series_uid), earlier.id, version,
                        uid_hash(earlier.result_series_uid))
        log.info("job %d: %s processed %d instance(s) of series %s with %s version %s in %.2f s -> %d derived",
                 job.id, job.route, len(datasets), uid_hash(job.series_uid), result.model, result.model_version,
                 time.time() - t0, len(result.datasets))
        self._wake.set()

    def _processing_failed(self, job: Job, e: Exception) -> None:
        policy = self.config.processing
        retry = is_retryable(e) and job.attempts < policy.max_attempts
        delay = policy.delay(job.attempts) if retry else None
        msg = f"{e.__class__.__name__}: {e}"
        state = self.queue.processing_failed(job.id, msg, retry_in=delay)
        if state == "failed":
            log.error("job %d: %s series %s FAILED after %d attempt(s): %s", job.id, job.route,
                      uid_hash(job.series_uid), job.attempts, msg)
            audit("failed", job=job.id, route=job.route, series=uid_hash(job.series_uid), stage="processing",
                  attempts=job.attempts)
        else:
            log.warning("job %d: attempt %d/%d failed (%s); retrying in %.1f s", job.id, job.attempts,
                        policy.max_attempts, msg, delay)

    # --- delivery ------------------------------------------------------------------------------------
    def _delivery_loop(self) -> None:
        while not self._stop.is_set():
            with self._busy_lock:
                d = self.queue.claim_delivery(self._busy)
                if d is not None:
                    self._busy.add((d.job_id, d.destination))
            if d is None:
                self._wake.wait(self._poll)
                self._wake.clear()
                continue
            try:
                self._deliver(d)
            except Exception:  # keep the delivery loop alive, the error is logged
                log.exception("delivery loop error (job %d)", d.job_id)
            finally:
                with self._busy_lock:
                    self._busy.discard((d.job_id, d.destination))

    def _deliver(self, d) -> None:
        job = self.queue.job(d.job_id)
        dest = self.config.destinations.get(d.destination)
        policy = self.config.delivery
        attempt = d.attempts + 1
        files = sorted(Path(job.result_dir).glob("*.dcm")) if job.result_dir else []
        try:
            if dest is None:
                raise KeyError(f"destination {d.destination!r} is no longer configured")
            if len(files) != job.result_count:
                raise FileNotFoundError(f"results of job {job.id}: {len(files)} files, expected {job.result_count}")
            n = deliver(dest, files, calling_ae_title=self.config.ae_title, timeout=self.config.network_timeout)
        except Exception as e:  # noqa: BLE001 - every failure of a delivery is recorded and retried
            msg = str(e) if isinstance(e, DeliveryError) else f"{e.__class__.__name__}: {e}"
            retry = attempt < policy.max_attempts and not isinstance(e, KeyError)
            state = self.queue.delivery_result(job.id, d.destination, ok=False, error=msg,
                                               retry_in=policy.delay(attempt) if retry else None)
            if retry:
                log.warning("job %d: delivery to %s attempt %d/%d failed (%s); retrying in %.1f s", job.id,
                            d.destination, attempt, policy.max_attempts, msg, policy.delay(attempt))
            else:
                log.error("job %d: delivery to %s FAILED after %d attempt(s): %s (job %s)", job.id, d.destination,
                          attempt, msg, state)
                audit("sent", job=job.id, route=job.route, destination=d.destination, status="failed",
                      series=uid_hash(job.result_series_uid), source_series=uid_hash(job.series_uid),
                      attempts=attempt)
            return
        state = self.queue.delivery_result(job.id, d.destination, ok=True)
        audit("sent", job=job.id, route=job.route, destination=dest.describe(), status="ok",
              series=uid_hash(job.result_series_uid), source_series=uid_hash(job.series_uid), instances=n,
              attempts=attempt)
        if state == "done":
            log.info("job %d: done", job.id)
