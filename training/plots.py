"""PNG plots of federated runs: metric curves per site and image grids with error maps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def save_figure(fig, out: Path, dpi: int = 90) -> Path:
    """Lay out ``fig``, write it to ``out`` (PNG; parent folders created) and close it."""
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def plot_curves(rows: Sequence[dict], out: Path, metrics: Sequence[str] = ("psnr", "ssim")) -> Path:
    """One panel per metric: validation curve of every site and the held-out curve, against round."""
    fig, axes = plt.subplots(1, len(metrics) + 1, figsize=(4.2 * (len(metrics) + 1), 3.4))
    rounds = [r["round"] for r in rows]
    for ax, name in zip(axes, metrics):
        sites = sorted({s for r in rows for s in r.get("val", {})})
        for s in sites:
            ax.plot(rounds, [r.get("val", {}).get(s, {}).get(name, np.nan) for r in rows], marker=".", label=f"{s} (val)")
        if any(name in r.get("heldout", {}) for r in rows):
            ax.plot(rounds, [r.get("heldout", {}).get(name, np.nan) for r in rows], "k--", marker="o", label="held-out")
        ax.set_xlabel("round")
        ax.set_title(name.upper())
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    ax = axes[-1]
    sites = sorted({s for r in rows for s in r.get("train", {})})
    for s in sites:
        key = "loss"
        ax.plot(rounds, [r.get("train", {}).get(s, {}).get(key, np.nan) for r in rows], marker=".", label=s)
    ax.set_title("local training loss")
    ax.set_xlabel("round")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, out)


def plot_image_grid(columns: dict[str, np.ndarray], reference: str, out: Path, title: str = "") -> Path:
    """Rows = samples; columns = the named image stacks ``[N, H, W]`` followed by ``|x - reference|`` error
    maps of every non-reference column (same colour scale for all error maps)."""
    names = list(columns)
    ref = columns[reference]
    errs = {f"|{n} - {reference}|": np.abs(columns[n] - ref) for n in names if n != reference}
    n = ref.shape[0]
    ncols = len(names) + len(errs)
    fig, axes = plt.subplots(n, ncols, figsize=(2.1 * ncols, 2.2 * n), squeeze=False)
    emax = max(float(np.percentile(e, 99.5)) for e in errs.values()) if errs else 1.0
    for i in range(n):
        vmax = float(np.percentile(ref[i], 99.5))
        for j, name in enumerate(names):
            axes[i, j].imshow(columns[name][i], cmap="gray", vmin=0, vmax=vmax)
            axes[i, j].set_title(name, fontsize=8)
        for j, (name, e) in enumerate(errs.items(), start=len(names)):
            axes[i, j].imshow(e[i], cmap="magma", vmin=0, vmax=emax)
            axes[i, j].set_title(name, fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, out)
