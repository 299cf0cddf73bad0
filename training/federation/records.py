"""Conversions between numpy weight dicts and Flower records, and the audit of what leaves a site."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord

from mrcore.durable import durable_path
from training.federation.family import Arrays

#: name of the record carrying FL-MRCM's target latents (the target's reply, then the sources' train messages)
TARGET_LATENTS = "target-latents"


def to_record(arrays: Arrays) -> ArrayRecord:
    """numpy dict -> ArrayRecord (names kept, order kept)."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def from_record(record: ArrayRecord) -> Arrays:
    """ArrayRecord -> numpy dict."""
    return {k: v.numpy() for k, v in record.items()}


def save_arrays(arrays: Arrays, path: Path) -> None:
    """Write ``arrays`` to ``path`` (.npz) crash-safely (:mod:`mrcore.durable`)."""
    with durable_path(path) as tmp:
        np.savez(tmp, **arrays)


def load_arrays(path: Path) -> Arrays:
    """Read a dict of arrays written by :func:`save_arrays`."""
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def audit_outgoing(state_dir: Path, site: str, global_round: int, arrays: Arrays, num_examples: int) -> None:
    """Append one line per reply to ``state_dir/outgoing.jsonl``: which tensors left the site.

    Hospitals can read this file to see that only generator weights were ever sent; the tests read it
    to check the same.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    line = {
        "time": time.time(),
        "site": site,
        "round": global_round,
        "num_examples": num_examples,
        "arrays": {k: [list(v.shape), str(v.dtype)] for k, v in arrays.items()},
    }
    with open(state_dir / "outgoing.jsonl", "a") as fh:
        fh.write(json.dumps(line) + "\n")
