"""Helpers shared by the benchmarks: timing, free ports, the family of a shipped model; the report helpers
(machine line, markdown tables, report files) are :mod:`training.report` 's, re-exported here."""

from __future__ import annotations

import json
import socket
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from training.federation.registry import family_from_config
from training.report import machine_line, markdown_table, write_report

__all__ = ["family_from_card", "free_port", "machine_line", "markdown_table", "time_call", "write_report"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for servers the benchmarks start)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def family_from_card(repo: Path, model: str):
    """The training family of a shipped model, rebuilt from the configuration in its model card
    (``<repo>/<model>/1/model_card.json``): its ``new_generator`` is the served architecture."""
    path = Path(repo) / model / "1" / "model_card.json"
    if not path.is_file():
        raise FileNotFoundError(f"no model card {path}: --repo must be a model repository holding model {model!r} version 1")
    card = json.loads(path.read_text())
    return family_from_config(card["training"]["config"])


def time_call(fn: Callable[[], object], repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times; return (median seconds, all seconds)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times
