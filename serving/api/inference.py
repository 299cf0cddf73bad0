"""The API's side of Triton: one :class:`serving.client.TritonClient` per worker thread, a concurrency limit,
model facts.

Every call here blocks (network I/O to Triton): the routes run them in a worker thread
(``anyio.to_thread.run_sync``), so the event loop keeps serving other clients (health, metrics, job
polls) while a volume is being reconstructed. At most ``limits.inference_concurrency`` Triton calls are
in flight from this process; volumes are sent in chunks of ``jobs.chunk_slices`` slices, each chunk
taking the limit once, so a small synchronous request is not stuck behind a whole 200-slice job.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mrcore.intensity import robust_scale
from serving.client import InferenceUnavailable, ModelStatus, TritonClient, UnknownModel

if TYPE_CHECKING:
    from serving.quality import QualitySettings, SliceQuality

log = logging.getLogger("serving.api.inference")

__all__ = ["Inference"]

Progress = Callable[[int], None]


class Inference:
    """Triton access for the API.

    Parameters
    ----------
    url, protocol, timeout_s : of :class:`serving.client.TritonClient`
    concurrency : Triton calls in flight at once
    chunk_slices : slices per Triton call
    model_repository : directory with ``<name>/<version>/model_card.json`` (optional)
    metrics : :class:`serving.api.metrics.Metrics` or None
    quality : the reconstruction self-check (:mod:`serving.quality`); None or ``enabled: false``: off
    """

    def __init__(self, url: str, protocol: str = "http", timeout_s: float = 300.0, *,
                 concurrency: int = 2, chunk_slices: int = 8, model_repository: Path | None = None,
                 metrics=None, quality: QualitySettings | None = None) -> None:
        self.url, self.protocol, self.timeout_s = url, protocol, float(timeout_s)
        self.chunk_slices = int(chunk_slices)
        self.model_repository = Path(model_repository) if model_repository else None
        self.metrics = metrics
        self.quality = quality if quality is not None and quality.enabled else None
        self._local = threading.local()
        self._clients: list[TritonClient] = []
        self._limit = threading.BoundedSemaphore(int(concurrency))
        self._lock = threading.Lock()
        self._index: tuple[float, list[ModelStatus]] | None = None
        self._info: dict[str, tuple[float, dict]] = {}

    # -- clients ----------------------------------------------------------------------------------
    @contextmanager
    def client(self) -> Iterator[TritonClient]:
        """This thread's client (created on first use). tritonclient's HTTP client runs on gevent and must stay
        in the thread that created it ("Cannot switch to a different thread"), so clients are per thread, not
        pooled across threads; anyio reuses its worker threads, so they live as long as the threads."""
        c = getattr(self._local, "client", None)
        if c is None:
            c = self._local.client = TritonClient(self.url, self.protocol, self.timeout_s)
            with self._lock:
                self._clients.append(c)
        try:
            yield c
        except InferenceUnavailable:
            self._local.client = None  # the connection may be half-closed: the next call makes a new client
            with self._lock:
                if c in self._clients:
                    self._clients.remove(c)
            try:
                c.close()
            except Exception:  # noqa: BLE001 - closing a broken client
                pass
            raise

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for c in clients:
            try:
                c.close()
            except Exception:  # noqa: BLE001 - closing at shutdown; a connection already gone is fine
                pass

    # -- models -----------------------------------------------------------------------------------
    def models(self, max_age_s: float = 2.0) -> list[ModelStatus]:
        """Triton's repository index (cached for ``max_age_s``)."""
        with self._lock:
            if self._index is not None and time.monotonic() - self._index[0] < max_age_s:
                return self._index[1]
        with self.client() as c:
            index = c.models()
        with self._lock:
            self._index = (time.monotonic(), index)
        return index

    def require_model(self, name: str, version: str | None = None) -> None:
        """UnknownModel when Triton's repository holds no model ``name`` (or no such ``version`` of it);
        InferenceUnavailable when it is not ready."""
        states = [m for m in self.models() if m.name == name]
        if not states or (version and not any(m.version == version for m in states)):
            states = [m for m in self.models(max_age_s=0) if m.name == name]
        if not states:
            raise UnknownModel(f"model {name!r} is not in the model repository")
        if version:
            known = sorted({m.version for m in states if m.version}, key=lambda v: (len(v), v))
            states = [m for m in states if m.version == version]
            if not states:
                raise UnknownModel(f"model {name!r} has no version {version}; the repository holds version(s) "
                                   f"{', '.join(known) or 'none'}")
        if not any(m.state == "READY" for m in states):
            what = f"model {name!r}" + (f" version {version}" if version else "")
            raise InferenceUnavailable(f"{what} is not ready ({states[0].state})")

    def model_info(self, name: str, max_age_s: float = 60.0) -> dict:
        with self._lock:
            hit = self._info.get(name)
            if hit and time.monotonic() - hit[0] < max_age_s:
                return hit[1]
        with self.client() as c:
            info = c.model_info(name)
        with self._lock:
            self._info[name] = (time.monotonic(), info)
        return info

    def version(self, name: str) -> str:
        versions = [str(v) for v in self.model_info(name).get("versions", [])]
        return max(versions, key=lambda v: (len(v), v)) if versions else "unknown"

    def card(self, name: str, version: str | int) -> dict | None:
        """The model card ``<repository>/<name>/<version>/model_card.json`` or None."""
        if self.model_repository is None:
            return None
        path = self.model_repository / name / str(version) / "model_card.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def readiness(self, required: tuple[str, ...]) -> tuple[bool, dict]:
        """(ready, detail): Triton ready, each required model READY, no model in another state."""
        try:
            with self.client() as c:
                server = c.is_ready()
            index = self.models(max_age_s=0)  # raises InferenceUnavailable when Triton cannot be reached
        except InferenceUnavailable:
            return False, {"triton": "unreachable", "models": []}
        except Exception:  # noqa: BLE001 - a half-started server answers the index with errors
            index = []
        models = [{"name": m.name, "version": m.version, "state": m.state} for m in index]
        names = {m.name for m in index if m.state == "READY"}
        missing = [m for m in required if m not in names]
        failed = [m["name"] for m in models if m["state"] != "READY"]
        ok = bool(server) and not missing and not failed
        detail: dict[str, object] = {"triton": "ready" if server else "not ready", "models": models}
        if missing:
            detail["missing_models"] = missing
        if failed:
            detail["models_not_ready"] = failed
        return ok, detail

    # -- inference (blocking: run in a worker thread) ---------------------------------------------
    def _timed(self, task: str, model: str, n: int, fn):
        with self._limit:
            t0 = time.perf_counter()
            out = fn()
            dt = time.perf_counter() - t0
        if self.metrics is not None:
            self.metrics.inferred(task, model, n, dt)
        return out

    def reconstruct(self, kspace: np.ndarray, mask: np.ndarray | None, model: str,
                    maps: np.ndarray | None = None, progress: Progress | None = None,
                    version: str | None = None) -> tuple[np.ndarray, bool, list[SliceQuality] | None]:
        """kspace complex64 [S, C, ky, kx], mask float32 [ky, kx] / [S, ky, kx] / None -> (float32 [S, ky, kx],
        maps_used, per-slice self-check or None when off or the model takes uploaded maps). Maps (complex64 [S, C, ky, kx] or [C, ky, kx]) are sent only to a model with a ``maps``
        input; the shipped models estimate coil maps themselves. ``version`` pins a model version."""
        self.require_model(model, version)
        takes_maps = maps is not None and any(i.get("name") == "maps" for i in self.model_info(model)["inputs"])
        s = kspace.shape[0]
        out = []
        quality: list[SliceQuality] | None = None if self.quality is None or takes_maps else []
        for start in range(0, s, self.chunk_slices):
            stop = min(s, start + self.chunk_slices)
            k = kspace[start:stop]
            m = mask if mask is None or mask.ndim == 2 else mask[start:stop]
            with self.client() as c:
                if takes_maps and maps is not None:
                    mp = maps if maps.ndim == 3 else maps[start:stop]
                    mp = np.broadcast_to(mp, k.shape)
                    mm = m if m is not None else np.stack([(x != 0).any(0) for x in k]).astype(np.float32)
                    mm = np.ascontiguousarray(np.broadcast_to(mm, (k.shape[0], *k.shape[-2:])), np.float32)
                    feed = {"kspace": np.stack([k.real, k.imag], -1).astype(np.float32), "mask": mm,
                            "maps": np.stack([mp.real, mp.imag], -1).astype(np.float32)}
                    img = self._timed("reconstruction", model, stop - start,
                                      lambda: c.infer(model, feed, ["magnitude"], version=version or "")["magnitude"])  # noqa: B023 - called at once, inside this iteration
                elif quality is not None:
                    img, checked = self._timed("reconstruction", model, stop - start, lambda: c.reconstruct_checked(
                        k, m, model=model, version=version or "", settings=self.quality, first_slice=start))  # noqa: B023 - called at once, inside this iteration
                    quality.extend(checked)
                else:
                    img = self._timed("reconstruction", model, stop - start,
                                      lambda: c.reconstruct(k, m, model=model, version=version or ""))  # noqa: B023 - called at once, inside this iteration
            out.append(np.asarray(img, dtype=np.float32))
            if progress:
                progress(stop)
        return np.concatenate(out), takes_maps, quality

    def synthesize(self, volume: np.ndarray, source: str, target: str, model: str,
                   progress: Progress | None = None) -> np.ndarray:
        """volume float32 [S, H, W] -> float32 [S, H, W] through ``model``; the whole series is normalised with
        one robust scale (:func:`mrcore.intensity.robust_scale`) whatever the chunking."""
        self.require_model(model)
        scale = robust_scale(volume)
        s = volume.shape[0]
        out = []
        for start in range(0, s, self.chunk_slices):
            stop = min(s, start + self.chunk_slices)
            with self.client() as c:
                img = self._timed("synthesis", model, stop - start,
                                  lambda: c.synthesize(volume[start:stop], source, target, model=model, scale=scale))  # noqa: B023 - called at once, inside this iteration
            out.append(np.asarray(img, dtype=np.float32))
            if progress:
                progress(stop)
        return np.concatenate(out)
