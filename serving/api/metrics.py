"""Prometheus metrics of the API (``GET /metrics``, bearer token required like every non-health endpoint).

=======================================  =========  ============================================
metric                                   type       labels
=======================================  =========  ============================================
``mri_api_requests_total``               counter    method, route (template), status
``mri_api_request_duration_seconds``     histogram  method, route
``mri_api_errors_total``                 counter    route, code (``invalid_input``, ``unauthorized``...)
``mri_api_slices_processed_total``       counter    task (reconstruction / synthesis), model
``mri_api_inference_duration_seconds``   histogram  task, model (Triton round trip of one call)
``mri_api_jobs``                         gauge      state (queued, running, succeeded, failed)
``mri_api_request_bytes_total``          counter    route
=======================================  =========  ============================================

Each app has its own registry (several apps in one process do not collide). Uses ``prometheus_client``
when installed, else a minimal text exposition of the same metrics.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any

__all__ = ["Metrics"]

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class Metrics:
    """The API's metrics; ``render()`` gives ``(body, content_type)`` for ``GET /metrics``."""

    def __init__(self, job_counts: Callable[[], dict[str, int]] | None = None) -> None:
        self._job_counts = job_counts or (lambda: {})
        pc: Any
        try:
            import prometheus_client as pc  # deferred: optional at run time, /metrics falls back without it
        except ImportError:  # pragma: no cover - prometheus_client is a dependency; this is the fallback
            pc = None
        self._pc = pc
        if pc is not None:
            pc.disable_created_metrics()  # no *_created series (noise for dashboards)
            reg = self.registry = pc.CollectorRegistry(auto_describe=True)
            self.requests = pc.Counter("mri_api_requests_total", "HTTP requests", ["method", "route", "status"],
                                       registry=reg)
            self.latency = pc.Histogram("mri_api_request_duration_seconds", "HTTP request latency",
                                        ["method", "route"], buckets=_BUCKETS, registry=reg)
            self.errors = pc.Counter("mri_api_errors_total", "Answers with status >= 400", ["route", "code"],
                                     registry=reg)
            self.slices = pc.Counter("mri_api_slices_processed_total", "Slices sent through a model",
                                     ["task", "model"], registry=reg)
            self.inference = pc.Histogram("mri_api_inference_duration_seconds", "Triton round trip per call",
                                          ["task", "model"], buckets=_BUCKETS, registry=reg)
            self.body_bytes = pc.Counter("mri_api_request_bytes_total", "Request body bytes received", ["route"],
                                         registry=reg)
            self.checked_slices = pc.Counter(
                "mri_api_recon_selfcheck_slices_total", "Reconstructed slices by self-check verdict "
                "(ok, flagged, unavailable) and whether the policy replaced them", ["model", "version", "verdict",
                                                                                   "replaced"], registry=reg)
            jobs = pc.Gauge("mri_api_jobs", "Jobs by state", ["state"], registry=reg)
            self._jobs_gauge = jobs
        else:
            self._lock = threading.Lock()
            self._counters: dict[tuple, float] = defaultdict(float)
            self._sums: dict[tuple, list[float]] = defaultdict(lambda: [0.0, 0])

    # -- recording ------------------------------------------------------------------------------
    def request(self, method: str, route: str, status: int, seconds: float, code: str | None = None) -> None:
        if self._pc is not None:
            self.requests.labels(method, route, str(status)).inc()
            self.latency.labels(method, route).observe(seconds)
            if status >= 400:
                self.errors.labels(route, code or str(status)).inc()
            return
        with self._lock:
            self._counters[("mri_api_requests_total", ("method", method), ("route", route), ("status", str(status)))] += 1
            s = self._sums[("mri_api_request_duration_seconds", ("method", method), ("route", route))]
            s[0] += seconds
            s[1] += 1
            if status >= 400:
                self._counters[("mri_api_errors_total", ("route", route), ("code", code or str(status)))] += 1

    def received(self, route: str, nbytes: int) -> None:
        if self._pc is not None:
            self.body_bytes.labels(route).inc(nbytes)
        else:
            with self._lock:
                self._counters[("mri_api_request_bytes_total", ("route", route))] += nbytes

    def inferred(self, task: str, model: str, slices: int, seconds: float) -> None:
        if self._pc is not None:
            self.slices.labels(task, model).inc(slices)
            self.inference.labels(task, model).observe(seconds)
            return
        with self._lock:
            self._counters[("mri_api_slices_processed_total", ("task", task), ("model", model))] += slices
            s = self._sums[("mri_api_inference_duration_seconds", ("task", task), ("model", model))]
            s[0] += seconds
            s[1] += 1

    def checked(self, model: str, version: str, quality) -> None:
        """Count a reconstruction's self-check verdicts per model version (no patient data)."""
        counts: dict[tuple[str, str], int] = defaultdict(int)
        for q in quality:
            verdict = "flagged" if q.flag else ("unavailable" if q.holdout_nmse is None else "ok")
            counts[(verdict, "yes" if q.replaced else "no")] += 1
        for (verdict, replaced), n in counts.items():
            if self._pc is not None:
                self.checked_slices.labels(model, str(version), verdict, replaced).inc(n)
            else:
                with self._lock:
                    self._counters[("mri_api_recon_selfcheck_slices_total", ("model", model), ("version", str(version)),
                                    ("verdict", verdict), ("replaced", replaced))] += n

    # -- exposition -----------------------------------------------------------------------------
    def render(self) -> tuple[bytes, str]:
        counts = self._job_counts()
        if self._pc is not None:
            for state in ("queued", "running", "succeeded", "failed"):
                self._jobs_gauge.labels(state).set(counts.get(state, 0))
            return self._pc.generate_latest(self.registry), self._pc.CONTENT_TYPE_LATEST
        lines = []
        with self._lock:
            for key, v in sorted(self._counters.items()):
                lines.append(f"{key[0]}{_labels(key[1:])} {v}")
            for key, (total, n) in sorted(self._sums.items()):
                lines.append(f"{key[0]}_sum{_labels(key[1:])} {total}")
                lines.append(f"{key[0]}_count{_labels(key[1:])} {n}")
        for state in ("queued", "running", "succeeded", "failed"):
            lines.append(f'mri_api_jobs{{state="{state}"}} {counts.get(state, 0)}')
        return ("\n".join(lines) + "\n").encode(), "text/plain; version=0.0.4; charset=utf-8"


def _labels(pairs) -> str:
    inner = ",".join(f'{k}="{str(v).replace(chr(34), "")}"' for k, v in pairs)
    return "{" + inner + "}" if inner else ""
