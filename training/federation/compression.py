"""Compression of the updates a site sends (FedAvg weight deltas or generator gradients), with error feedback.

Pure numpy, no I/O. Every update is a dict ``name -> float32 array`` (any shapes). A compressor turns it into
a *payload* (again ``name -> array``, what is serialised and sent) and back:

* ``none``: the update as float32;
* ``float16``: each array cast to float16 (half the bytes; relative rounding error <= 2**-11 per element);
* ``topk``: per array, the ``ceil(ratio * size)`` entries of largest magnitude, sent as ``<name>/idx`` (int32,
  flat indices) and ``<name>/val`` (float32 values); the others count as zero.

Error feedback (Seide et al. 2014; Karimireddy et al. 2019, "EF-SGD"): the site keeps a residual ``r`` (what
compression has dropped so far), compresses ``e = update + r`` and keeps ``r' = e - decompress(compress(e))``.
Nothing is lost for good, only delayed, so the sum of what the centre receives over many rounds tracks the
sum of the true updates (within one residual).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from mrcore.config import ConfigError

Arrays = dict[str, np.ndarray]
KINDS = ("none", "float16", "topk")
MIN_RATIO = 0.01


@dataclass(frozen=True)
class CompressionConfig:
    """``federation.compression``: what a site does to its update before sending it.

    kind : 'none' | 'float16' | 'topk'.
    ratio : top-k only: share of each array's entries that is sent, in [0.01, 1].
    error_feedback : keep at each site what compression dropped and add it to the next update.
    """

    kind: Literal["none", "float16", "topk"] = "none"
    ratio: float = 0.1
    error_feedback: bool = True

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"federation.compression.kind must be one of {KINDS}, got {self.kind!r}")
        ratio = float(self.ratio)
        if not (math.isfinite(ratio) and MIN_RATIO <= ratio <= 1.0):
            raise ConfigError(f"federation.compression.ratio must be in [{MIN_RATIO}, 1], got {self.ratio!r}")


def topk_count(size: int, ratio: float) -> int:
    """Number of entries top-k keeps of an array of ``size`` entries: ``ceil(ratio * size)``, at least 1."""
    return max(1, min(size, math.ceil(ratio * size)))


def compress(update: Arrays, cfg: CompressionConfig) -> Arrays:
    """The payload of ``update`` (name -> float array) under ``cfg`` (see the module docstring)."""
    out: Arrays = {}
    for name, value in update.items():
        flat = np.asarray(value, np.float32).ravel()
        if cfg.kind == "none":
            out[name] = flat.reshape(np.shape(value))
        elif cfg.kind == "float16":
            out[name] = flat.astype(np.float16).reshape(np.shape(value))
        else:
            k = topk_count(flat.size, cfg.ratio)
            idx = np.argpartition(np.abs(flat), flat.size - k)[flat.size - k:] if k < flat.size else np.arange(flat.size)
            idx = np.sort(idx).astype(np.int32)
            out[f"{name}/idx"], out[f"{name}/val"] = idx, flat[idx]
    return out


def decompress(payload: Arrays, shapes: dict[str, tuple[int, ...]], cfg: CompressionConfig) -> Arrays:
    """Dense float32 arrays (``shapes``: name -> shape) back from a :func:`compress` payload.

    Raises ValueError when the payload does not hold exactly what ``cfg`` sends for ``shapes`` (a site that
    sent something else)."""
    want = set(shapes) if cfg.kind != "topk" else {f"{n}/{p}" for n in shapes for p in ("idx", "val")}
    if set(payload) != want:
        raise ValueError(f"payload arrays differ from the expected {cfg.kind} update: extra "
                         f"{sorted(set(payload) - want)[:5]}, missing {sorted(want - set(payload))[:5]}")
    out: Arrays = {}
    for name, shape in shapes.items():
        size = int(np.prod(shape))
        if cfg.kind != "topk":
            arr = np.asarray(payload[name])
            if tuple(arr.shape) != tuple(shape) or arr.dtype != (np.float16 if cfg.kind == "float16" else np.float32):
                raise ValueError(f"payload array {name!r} is {arr.dtype} {arr.shape}, expected {tuple(shape)}")
            out[name] = arr.astype(np.float32)
            continue
        idx, val = np.asarray(payload[f"{name}/idx"]), np.asarray(payload[f"{name}/val"])
        k = topk_count(size, cfg.ratio)
        if idx.shape != (k,) or val.shape != (k,) or idx.dtype != np.int32 or (k and (idx.min() < 0 or idx.max() >= size)):
            raise ValueError(f"payload of {name!r}: expected {k} int32 indices in [0, {size}) and {k} values")
        dense = np.zeros(size, np.float32)
        dense[idx] = val
        out[name] = dense.reshape(shape)
    return out


def shapes_of(arrays: Arrays) -> dict[str, tuple[int, ...]]:
    """name -> shape of ``arrays``."""
    return {k: tuple(np.shape(v)) for k, v in arrays.items()}


def encode_with_feedback(update: Arrays, residual: Arrays | None, cfg: CompressionConfig) -> tuple[Arrays, Arrays | None]:
    """Compress ``update`` plus the site's ``residual``; returns ``(payload, new residual)``.

    Without ``cfg.error_feedback`` (or with kind 'none') the residual is None and ``update`` is compressed
    as it is. With it: ``e = update + residual``, payload ``= compress(e)``, new residual
    ``= e - decompress(payload)`` (float32, same names and shapes as ``update``)."""
    if cfg.kind == "none" or not cfg.error_feedback:
        return compress(update, cfg), None
    e = {k: np.asarray(v, np.float32) + (residual[k] if residual is not None else 0.0) for k, v in update.items()}
    payload = compress(e, cfg)
    sent = decompress(payload, shapes_of(e), cfg)
    return payload, {k: e[k] - sent[k] for k in e}


def weighted_mean(updates: list[tuple[Arrays, float]]) -> Arrays:
    """Average of dense updates weighted by their second element (number of examples), float32."""
    total = float(sum(w for _, w in updates))
    if not updates or total <= 0:
        raise ValueError("weighted_mean needs at least one update with a positive weight")
    keys = updates[0][0].keys()
    return {k: sum(np.asarray(u[k], np.float64) * (w / total) for u, w in updates).astype(np.float32) for k in keys}
