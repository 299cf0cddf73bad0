"""What a site sends, as bytes: compressed updates (:mod:`.compression`) in Flower's wire format, their size,
and each site's error-feedback residual in its private state directory.

* :func:`to_bytes` / :func:`from_bytes`: a payload (name -> array) as the protobuf of a Flower ``ArrayRecord``
  (``flwr.common.serde``), the encoding Flower puts on the wire; ``len(to_bytes(p))`` is what the metrics
  call ``bytes_sent``.
* :func:`site_encode`: at a site, an update (FedAvg weight delta or generator gradient) -> payload with error
  feedback; the residual is read from and written to ``state_dir/compression/residual_NNN.npz`` (keyed by
  round, so a resumed round starts from the residual it started from the first time).
* :func:`centre_decode`: at the centre, a payload -> dense float32 update (refused when it is not exactly
  what the configured compression sends).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flwr.common import serde
from flwr.proto.recorddict_pb2 import ArrayRecord as ProtoArrayRecord

from training.federation.compression import (
    Arrays,
    CompressionConfig,
    decompress,
    encode_with_feedback,
    shapes_of,
)
from training.federation.records import from_record, load_arrays, save_arrays, to_record


def to_bytes(payload: Arrays) -> bytes:
    """``payload`` serialised as Flower serialises an ``ArrayRecord`` for the wire."""
    return serde.array_record_to_proto(to_record(payload)).SerializeToString()


def from_bytes(data: bytes) -> Arrays:
    """Inverse of :func:`to_bytes`."""
    proto = ProtoArrayRecord()
    proto.ParseFromString(data)
    return from_record(serde.array_record_from_proto(proto))


def _residual_path(state_dir: Path, step: int) -> Path:
    return Path(state_dir) / "compression" / f"residual_{step:06d}.npz"


def site_encode(update: Arrays, cfg: CompressionConfig, state_dir: Path, step: int) -> tuple[bytes, Arrays]:
    """Compress ``update`` at a site for send number ``step`` (1-based: round or sync step).

    Returns ``(wire bytes, payload)``. With error feedback the residual left by send ``step - 1`` is added
    first and the new one saved as ``residual_<step>.npz`` (older files removed, the previous one kept)."""
    previous = _residual_path(state_dir, step - 1)
    residual = load_arrays(previous) if cfg.error_feedback and previous.exists() else None
    payload, new_residual = encode_with_feedback(update, residual, cfg)
    if new_residual is not None:
        save_arrays(new_residual, _residual_path(state_dir, step))
        for old in _residual_path(state_dir, step).parent.glob("residual_*.npz"):
            if int(old.stem.split("_")[-1]) < step - 1:
                old.unlink()
    return to_bytes(payload), payload


def centre_decode(data: bytes, shapes: dict[str, tuple[int, ...]], cfg: CompressionConfig) -> Arrays:
    """Dense float32 update from a site's wire bytes (ValueError if the payload is not the expected one)."""
    return decompress(from_bytes(data), shapes, cfg)


def delta(new: Arrays, old: Arrays) -> Arrays:
    """``new - old`` per array, float32 (a FedAvg site's update)."""
    return {k: np.asarray(new[k], np.float32) - np.asarray(old[k], np.float32) for k in old}


def site_send_weights(new: Arrays, old: Arrays, cfg: CompressionConfig, state_dir: Path,
                      server_round: int) -> tuple[bytes, Arrays]:
    """A FedAvg site's reply: its weights ``new`` as they are (kind 'none'), else the compressed delta
    ``new - old`` from the round's global weights ``old``. Returns ``(wire bytes, payload)``."""
    if cfg.kind == "none":
        return to_bytes(new), new
    return site_encode(delta(new, old), cfg, state_dir, server_round)


def centre_receive_weights(payload: Arrays, old: Arrays, cfg: CompressionConfig) -> Arrays:
    """The site's weights back from its reply ``payload`` (see :func:`site_send_weights`): the payload itself
    (kind 'none'), else ``old`` + the decompressed delta, in ``old``'s dtypes."""
    if cfg.kind == "none":
        return payload
    d = decompress(payload, shapes_of(old), cfg)
    return {k: (np.asarray(old[k], np.float32) + d[k]).astype(np.asarray(old[k]).dtype) for k in old}


__all__ = ["centre_decode", "centre_receive_weights", "delta", "from_bytes", "shapes_of", "site_encode",
           "site_send_weights", "to_bytes"]
