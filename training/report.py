"""Markdown reports of measured numbers: the machine line, tables, and the report file with its command.

Training's evaluation commands (``mri-train evaluate-recon``, the synthesis experiments) and the benchmarks
(:mod:`benchmarks.common` re-exports these) write their tables with these helpers, so every table in
``docs/`` names the command that produced it and the machine it ran on.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

__all__ = ["machine_line", "markdown_table", "write_report"]


def machine_line() -> str:
    """One line describing where the numbers were measured (host, cores, Python, numpy, torch, UTC time)."""
    cpu = platform.processor() or platform.machine()
    return (
        f"{platform.node()} · {os.cpu_count()} CPU cores ({cpu}) · Python {sys.version.split()[0]} · "
        f"numpy {version('numpy')} · torch {version('torch')} · {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table (floats with 4 significant digits)."""
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
