"""Compression of the updates a site sends (FedAvg weight deltas or generator gradients), with error feedback.

Pure numpy, no I/O. Every update is a dict ``name -> float32 array`` (any shapes). A compressor turns it into
a *payload* (again ``name -> array``, what is serialised and sent) and back:

* ``none``: the update as float32;
* ``float16``: cast to float16 (half the bytes; relative rounding error <= 2**-11 per element);
* ``topk``: per array, the ``ceil(ratio * size)`` entries of largest magnitude, sent as int32 indices and
  float32 values; the others count as zero.

The arrays travel concatenated (sorted by name) in one vector, so per-array serialisation headers do not
swamp a small model's payload.

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


def _flat(update: Arrays) -> tuple[list[str], np.ndarray]:
    """The arrays' names in sorted order and their entries concatenated in that order (float32)."""
    names = sorted(update)
    return names, np.concatenate([np.asarray(update[n], np.float32).ravel() for n in names]) if names else np.zeros(0, np.float32)


def compress(update: Arrays, cfg: CompressionConfig) -> Arrays:
    """The payload of ``update`` (name -> float array) under ``cfg``.

    The arrays are concatenated in sorted-name order into one vector, so the payload is one or two arrays
    whatever the number of layers (a serialised array carries a header of about 100-200 bytes):
    ``{"values": float32 [N]}`` (none), ``{"values": float16 [N]}`` (float16), or ``{"idx": int32 [K],
    "val": float32 [K]}`` (topk: per array the ``ceil(ratio * size)`` largest-magnitude entries, so every layer
    is represented; indices into the concatenated vector, increasing)."""
    names, flat = _flat(update)
    if cfg.kind == "none":
        return {"values": flat}
    if cfg.kind == "float16":
        return {"values": flat.astype(np.float16)}
    chosen, offset = [], 0
    for n in names:
        part = flat[offset:offset + np.size(update[n])]
        k = topk_count(part.size, cfg.ratio)
        idx = np.argpartition(np.abs(part), part.size - k)[part.size - k:] if k < part.size else np.arange(part.size)
        chosen.append(np.sort(idx) + offset)
        offset += part.size
    idx = np.concatenate(chosen).astype(np.int32)
    return {"idx": idx, "val": flat[idx]}


def decompress(payload: Arrays, shapes: dict[str, tuple[int, ...]], cfg: CompressionConfig) -> Arrays:
    """Dense float32 arrays (``shapes``: name -> shape) back from a :func:`compress` payload.

    Raises ValueError when the payload is not exactly what ``cfg`` sends for ``shapes`` (a site that sent
    something else: other arrays, another dtype or length, indices out of range or not increasing)."""
    want = {"values"} if cfg.kind != "topk" else {"idx", "val"}
    if set(payload) != want:
        raise ValueError(f"payload arrays differ from the expected {cfg.kind} update: extra "
                         f"{sorted(set(payload) - want)[:5]}, missing {sorted(want - set(payload))[:5]}")
    names = sorted(shapes)
    sizes = [int(np.prod(shapes[n])) for n in names]
    total = sum(sizes)
    if cfg.kind != "topk":
        flat = np.asarray(payload["values"])
        dtype = np.float16 if cfg.kind == "float16" else np.float32
        if flat.shape != (total,) or flat.dtype != dtype:
            raise ValueError(f"payload 'values' is {flat.dtype} {flat.shape}, expected {np.dtype(dtype)} ({total},)")
        flat = flat.astype(np.float32)
    else:
        idx, val = np.asarray(payload["idx"]), np.asarray(payload["val"])
        k = sum(topk_count(n, cfg.ratio) for n in sizes)
        if (idx.shape != (k,) or val.shape != (k,) or idx.dtype != np.int32 or val.dtype != np.float32
                or (k and (idx[0] < 0 or idx[-1] >= total or np.any(np.diff(idx) <= 0)))):
            raise ValueError(f"top-k payload: expected {k} increasing int32 indices in [0, {total}) and {k} float32 "
                             f"values, got {idx.dtype} {idx.shape} and {val.dtype} {val.shape}")
        flat = np.zeros(total, np.float32)
        flat[idx] = val
    out: Arrays = {}
    offset = 0
    for n, size in zip(names, sizes, strict=True):
        out[n] = flat[offset:offset + size].reshape(shapes[n])
        offset += size
    return {n: out[n] for n in shapes}


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
