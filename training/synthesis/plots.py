"""PNG plots of synthesis runs: sample grids (source, synthesised, target, error) and privacy curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from torch.utils.data import DataLoader, Subset

from training.plots import plot_image_grid, save_figure
from training.synthesis.loop import synthesize


def plot_samples(family, arrays, out: Path, n: int = 3, title: str = "") -> Path:
    """Grid of ``n`` held-out slices: source A, synthesised B, target B and ``|synthesised - target|``,
    then the reverse direction (B -> A) in the same layout; normalised units."""
    ds = family.dataset("*", "heldout")
    pick = [int(i) for i in np.linspace(0, len(ds) - 1, min(n, len(ds))).round()]
    loader = DataLoader(Subset(ds, pick), batch_size=len(pick))
    gens = family.generators_from(arrays)
    a_name, b_name = family.contrasts
    fake_b, a, b, _ = synthesize(gens.g_ab, loader, "a", "b")
    fake_a = synthesize(gens.g_ba, loader, "b", "a")[0]
    out = Path(out)
    plot_image_grid({f"source {a_name}": a, f"synth. {b_name}": fake_b, f"target {b_name}": b}, f"target {b_name}", out, title=f"{a_name}->{b_name} {title}".strip())
    plot_image_grid({f"source {b_name}": b, f"synth. {a_name}": fake_a, f"target {a_name}": a}, f"target {a_name}",
                    out.with_name(out.stem + "_reverse.png"), title=f"{b_name}->{a_name} {title}".strip())
    return out


def plot_privacy(rows: Sequence[dict], out: Path) -> Path:
    """Two panels against round: each site's epsilon (if DP), and held-out PSNR of both directions with the
    identity baseline (target vs source)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    rounds = [r["round"] for r in rows]
    ax = axes[0]
    sites = sorted({s for r in rows for s, m in r.get("train", {}).items() if "epsilon" in m})
    for s in sites:
        ax.plot(rounds, [r.get("train", {}).get(s, {}).get("epsilon", np.nan) for r in rows], marker=".", label=s)
    ax.set_title("epsilon per site" if sites else "epsilon (DP off)")
    ax.set_xlabel("round")
    ax.grid(alpha=0.3)
    if sites:
        ax.legend(fontsize=7)
    ax = axes[1]
    for key, style in (("psnr", "o-"), ("psnr_rev", "s-"), ("identity_psnr", "k--")):
        vals = [r.get("heldout", {}).get(key, np.nan) for r in rows]
        if not np.all(np.isnan(vals)):
            ax.plot(rounds, vals, style, label={"psnr": "A->B", "psnr_rev": "B->A", "identity_psnr": "identity"}[key])
    ax.set_title("held-out PSNR (dB)")
    ax.set_xlabel("round")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, out)
