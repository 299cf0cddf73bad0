"""Job mode: ``202 Accepted`` + job URL, then poll and download; for volumes that would outlive an HTTP timeout.

One directory per job under ``jobs.directory``::

    <id>/state.json      status, progress, parameters, error or result description (written atomically)
    <id>/input/          the uploaded body (file-0 ... file-N, mask, maps) exactly as received
    <id>/result.<ext>    the answer, once the job succeeded

States: ``queued`` -> ``running`` -> ``succeeded`` | ``failed`` (a failed job keeps its error: the JSON body a
synchronous request would have got, e.g. ``{"error", "field", "expected"}``). The input is validated when
the job is submitted (bad input: an immediate 4xx, no job), so jobs fail only for reasons found later
(the model rejects the input, Triton stays unavailable after retries).

After a restart the runner re-queues ``queued`` and ``running`` jobs from their saved input (at most
``MAX_ATTEMPTS`` starts per job) and marks an upload that never completed as failed. Finished jobs and
their files are removed ``jobs.keep_seconds`` after they finished. A job is visible only to the token that
submitted it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio

from mrcore.durable import Permissions, make_dirs, write_json_durable
from serving.api.errors import ApiError
from serving.api.inputs import Upload, parse_recon, parse_synth
from serving.api.outputs import write_result
from serving.api.pipeline import ReconOptions, SynthOptions, reconstruct, synthesize
from serving.client import InferenceError, InferenceUnavailable, UnknownModel

log = logging.getLogger("serving.api.jobs")

__all__ = ["Job", "JobRunner", "JobStore"]

MAX_ATTEMPTS = 3
UNAVAILABLE_RETRIES = 3
_ID = re.compile(r"^[0-9a-f]{32}$")
EXTENSIONS = {"npy": "npy", "nifti": "nii", "png": "png", "dicom": "zip", "dicom-multipart": "multipart"}


@dataclass
class Job:
    id: str
    kind: str                          # "reconstruct" or "synthesize"
    owner: str
    status: str = "receiving"
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    params: dict = field(default_factory=dict)
    input: dict = field(default_factory=dict)
    slices_total: int | None = None
    slices_done: int = 0
    attempts: int = 0
    result: dict | None = None
    error: dict | None = None
    quality: list[dict] | None = None  # the reconstruction self-check per slice (serving.quality)
    synthesis_warnings: list[dict] | None = None  # the synthesis input check's warnings (serving.synthesis_check)

    def public(self) -> dict:
        out: dict[str, Any] = {"id": self.id, "kind": self.kind, "status": self.status, "created_at": _iso(self.created_at),
               "started_at": _iso(self.started_at), "finished_at": _iso(self.finished_at),
               "slices_total": self.slices_total, "slices_done": self.slices_done, "params": self.params,
               "links": {"self": f"/v1/jobs/{self.id}"}}
        if self.status == "succeeded" and self.result:
            out["result"] = {"media_type": self.result["media_type"], "bytes": self.result["bytes"]}
            out["links"]["result"] = f"/v1/jobs/{self.id}/result"
        if self.error:
            out["error"] = self.error
        if self.quality is not None:
            out["quality"] = self.quality
        if self.synthesis_warnings is not None:
            out["synthesis_warnings"] = self.synthesis_warnings
        return out


def _iso(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class JobStore:
    """Jobs on disk (``directory/<id>/state.json``)."""

    def __init__(self, directory: Path, permissions: Permissions | None = None) -> None:
        self.directory = Path(directory)  # created by the first job (or JobRunner.start)
        self.permissions = permissions or Permissions()  # job files hold patient data: never world-readable

    def path(self, job_id: str) -> Path:
        if not _ID.match(job_id):
            raise ApiError(404, "no such job", field="job_id", expected="a job id returned by POST /v1/jobs/...",
                           code="unknown_job")
        return self.directory / job_id

    def new(self, kind: str, owner: str, params: dict) -> Job:
        job = Job(uuid.uuid4().hex, kind, owner, params=params)
        make_dirs(self.path(job.id) / "input", mode=self.permissions.dir_mode)
        self.save(job)
        return job

    def save(self, job: Job) -> None:
        write_json_durable(self.path(job.id) / "state.json", asdict(job), mode=self.permissions.file_mode,
                           dir_mode=self.permissions.dir_mode)

    def load(self, job_id: str) -> Job | None:
        try:
            data = json.loads((self.path(job_id) / "state.json").read_text())
        except (OSError, ValueError):
            return None
        try:
            return Job(**data)
        except TypeError:
            return None

    def get(self, job_id: str, owner: str) -> Job:
        job = self.load(job_id)
        if job is None or job.owner != owner:
            raise ApiError(404, "no such job", field="job_id", expected="a job id returned by POST /v1/jobs/...",
                           code="unknown_job")
        return job

    def all(self) -> list[Job]:
        jobs: list[Job] = []
        if not self.directory.is_dir():
            return jobs
        for d in sorted(self.directory.iterdir()):
            if d.is_dir() and _ID.match(d.name):
                job = self.load(d.name)
                if job is not None:
                    jobs.append(job)
        return jobs

    def delete(self, job_id: str) -> None:
        shutil.rmtree(self.path(job_id), ignore_errors=True)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for job in self.all():
            out[job.status] = out.get(job.status, 0) + 1
        return out

    def cleanup(self, keep_seconds: float) -> int:
        """Remove finished jobs older than ``keep_seconds`` and directories without a readable state."""
        now, removed = time.time(), 0
        if not self.directory.is_dir():
            return 0
        for d in list(self.directory.iterdir()):
            if not d.is_dir() or not _ID.match(d.name):
                continue
            job = self.load(d.name)
            stale = job is None and now - d.stat().st_mtime > 3600
            old = job is not None and job.finished_at is not None and now - job.finished_at > keep_seconds
            if stale or old:
                shutil.rmtree(d, ignore_errors=True)
                removed += 1
        return removed

    def upload_of(self, job: Job) -> Upload:
        d = self.path(job.id) / "input"
        info = job.input
        files = [d / name for name in info["files"]]
        parts = {name: d / name for name in info.get("parts", [])}
        return Upload(files, info.get("content_type"), parts=parts, multipart_related=info.get("related", False))


class JobRunner:
    """Background workers (asyncio tasks) that run queued jobs in worker threads."""

    def __init__(self, store: JobStore, inference, settings) -> None:
        self.store, self.inference, self.settings = store, inference, settings
        self.queue: asyncio.Queue | None = None
        self._tasks: list[asyncio.Task] = []
        self._pending = 0

    def _queue(self) -> asyncio.Queue:
        if self.queue is None:
            raise RuntimeError("JobRunner.start() has not run: no queue yet")
        return self.queue

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.store.permissions.prepare(self.store.directory)
        self.store.cleanup(self.settings.jobs.keep_seconds)
        for job in self.store.all():
            if job.status == "receiving":
                self._fail(job, ApiError(422, "the upload of this job did not complete (server restarted)",
                                         field="body", expected="resubmit the job", code="interrupted").body())
            elif job.status in ("queued", "running"):
                if job.attempts >= MAX_ATTEMPTS:
                    self._fail(job, {"error": f"the job was interrupted {job.attempts} times", "field": None,
                                     "expected": None, "code": "interrupted"})
                    continue
                job.status = "queued"
                self.store.save(job)
                self._pending += 1
                self.queue.put_nowait((job.id, None))
                log.info("job re-queued after restart", extra={"job_id": job.id, "attempts": job.attempts})
        self._tasks = [asyncio.create_task(self._worker(i)) for i in range(self.settings.jobs.workers)]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down: a worker's last error is moot
                pass
        self._tasks = []

    def check_capacity(self) -> None:
        if self._pending >= self.settings.jobs.max_queued:
            raise ApiError(429, f"{self._pending} jobs are waiting; retry later", field=None,
                           expected=f"at most {self.settings.jobs.max_queued} queued jobs",
                           headers={"Retry-After": "30"}, code="too_many_jobs")

    def submit(self, job: Job, parsed) -> None:
        """Queue a job whose input was validated (``parsed``: the ReconInput / SynthInput, kept in memory)."""
        self.check_capacity()
        job.status = "queued"
        job.slices_total = int((parsed.kspace if job.kind == "reconstruct" else parsed.volume).shape[0])
        self.store.save(job)
        self._pending += 1
        self._queue().put_nowait((job.id, parsed))

    async def _worker(self, n: int) -> None:
        while True:
            job_id, parsed = await self._queue().get()
            self._pending = max(0, self._pending - 1)
            try:
                await anyio.to_thread.run_sync(self._process, job_id, parsed)
            except Exception:  # _process records failures; this is a last resort
                log.exception("job worker error", extra={"job_id": job_id})
            finally:
                parsed = None

    # -- one job (blocking, in a worker thread) --------------------------------------------------
    def _fail(self, job: Job, error: dict) -> None:
        job.status, job.error, job.finished_at = "failed", error, time.time()
        self.store.save(job)
        log.warning("job failed", extra={"job_id": job.id, "code": error.get("code"), "field": error.get("field")})

    def _process(self, job_id: str, parsed) -> None:
        job = self.store.load(job_id)
        if job is None or job.status not in ("queued", "running"):
            return
        job.status, job.started_at, job.attempts, job.slices_done = "running", time.time(), job.attempts + 1, 0
        self.store.save(job)
        p = job.params
        limits = self.settings.limits
        last = [0.0]

        def progress(done: int) -> None:
            job.slices_done = done
            if time.monotonic() - last[0] > 0.5 or done == job.slices_total:
                last[0] = time.monotonic()
                self.store.save(job)

        try:
            if parsed is None:  # re-queued after a restart: parse the saved input again
                upload = self.store.upload_of(job)
                if job.kind == "reconstruct":
                    parsed = parse_recon(upload, p.get("input_format"), limits, contrast=p.get("contrast"),
                                         sync=False, scratch=self.store.path(job.id))
                else:
                    parsed = parse_synth(upload, p.get("input_format"), limits, sync=False)
                job.slices_total = int((parsed.kspace if job.kind == "reconstruct" else parsed.volume).shape[0])
            for attempt in range(UNAVAILABLE_RETRIES + 1):
                try:
                    if job.kind == "reconstruct":
                        recon = ReconOptions(p["model"], p["format"], p.get("slice"), p.get("pixel_spacing_mm"),
                                             p.get("slice_thickness_mm"), p.get("contrast"), p.get("version"))
                        rendered = reconstruct(self.inference, parsed, recon, progress)
                    else:
                        synth = SynthOptions(p["model"], p["format"], p["source"], p["target"], p.get("slice"))
                        rendered = synthesize(self.inference, parsed, synth, progress)
                    break
                except InferenceUnavailable:
                    if attempt == UNAVAILABLE_RETRIES:
                        raise
                    time.sleep(2.0 * 2 ** attempt)
            name = f"result.{EXTENSIONS[p['format']]}"
            write_result(rendered, self.store.path(job.id) / name, mode=self.store.permissions.file_mode)
            job.result = {"file": name, "media_type": rendered.media_type, "filename": rendered.filename,
                          "bytes": len(rendered.body), "headers": rendered.headers}
            job.quality = rendered.quality
            job.synthesis_warnings = rendered.warnings
            job.status, job.finished_at, job.slices_done = "succeeded", time.time(), job.slices_total or 0
            self.store.save(job)
            log.info("job succeeded", extra={"job_id": job.id, "kind": job.kind, "slices": job.slices_total,
                                             "seconds": round(job.finished_at - job.started_at, 3)})
        except ApiError as exc:
            self._fail(job, exc.body() | {"request_id": None})
        except InferenceUnavailable:
            self._fail(job, {"error": "the inference server stayed unavailable; resubmit later", "field": None,
                             "expected": None, "status": 503, "code": "inference_unavailable"})
        except Exception as exc:  # any other failure is reported in the job, not lost
            if isinstance(exc, UnknownModel):
                err = {"error": f"unknown model: {exc}", "field": "model", "expected": "a model listed by "
                       "GET /v1/models", "status": 404, "code": "unknown_model"}
            elif isinstance(exc, InferenceError):
                err = {"error": f"the model rejected the input: {exc}", "field": "body", "expected": None,
                       "status": 422, "code": "inference_rejected"}
            else:
                log.exception("job failed with an internal error", extra={"job_id": job.id})
                err = {"error": "internal error", "field": None, "expected": None, "status": 500,
                       "code": "internal_error"}
            self._fail(job, err)
        finally:
            inp = self.store.path(job.id) / "input"
            if job.status in ("succeeded", "failed") and inp.exists():
                shutil.rmtree(inp, ignore_errors=True)  # the input is not needed any more (result or error kept)
