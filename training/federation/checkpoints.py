"""The run directory's checkpoints and metrics, read by everything that looks at a run (the coordinator
resuming, export, evaluation, publishing pretrained weights).

``run_dir/checkpoints/round_NNN.npz`` holds the shared weights after round NNN (``round_NNN.json`` that
round's metrics record); ``run_dir/metrics.jsonl`` one JSON record per round. See
:mod:`training.federation.coordinator` for the whole layout.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

__all__ = ["checkpoint_path", "latest_checkpoint", "read_metrics"]

_CKPT = re.compile(r"round_(\d{3,})\.npz$")


def checkpoint_path(run_dir: Path, server_round: int, suffix: str = ".npz") -> Path:
    """``run_dir/checkpoints/round_NNN.npz`` (the shared weights after ``server_round``; ``suffix=".json"``: its
    metrics record)."""
    return Path(run_dir) / "checkpoints" / f"round_{int(server_round):03d}{suffix}"


def latest_checkpoint(run_dir: Path) -> tuple[int, Path] | None:
    """(round, path) of the newest checkpoint in ``run_dir/checkpoints``, or None."""
    found = []
    for p in (Path(run_dir) / "checkpoints").glob("round_*.npz"):
        m = _CKPT.search(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return max(found) if found else None


def read_metrics(run_dir: Path) -> list[dict]:
    """All round records of ``run_dir/metrics.jsonl`` (empty if none)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
