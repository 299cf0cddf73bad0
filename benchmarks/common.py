"""Helpers shared by the benchmarks: timing, machine description, markdown tables."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for servers the benchmarks start)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def family_from_card(repo: Path, model: str):
    """The training family of a shipped model, rebuilt from the configuration in its model card
    (``<repo>/<model>/1/model_card.json``): its ``new_generator`` is the served architecture."""
    import json

    from training.federation.registry import family_from_config

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


def machine_line() -> str:
    """One line describing where the numbers were measured."""
    import numpy as np
    import torch

    cpu = platform.processor() or platform.machine()
    return (
        f"{platform.node()} · {os.cpu_count()} CPU cores ({cpu}) · Python {sys.version.split()[0]} · "
        f"numpy {np.__version__} · torch {torch.__version__} · {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
    )


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table."""
    def fmt(v: object) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(out: Path, title: str, command: str, body: str) -> None:
    """Write a markdown report with the command that produced it and the machine it ran on."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# {title}\n\nProduced by `{command}` on {machine_line()}.\n\n{body}\n")
