"""A PNG montage of a data source, so a person can look at the data before training on it.

Top: one row per site, one column per contrast (the magnitude images a scanner would deliver).
Bottom: for one slice, the first coil images, the k-space (log magnitude), the undersampling mask, the
zero-filled reconstruction and the fully sampled reference.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from mrcore.data.base import CONTRASTS, SliceSource
from mrcore.fft import ifft2c
from mrcore.masks import make_mask
from mrcore.sense import zero_filled
from training.plots import save_figure


def write_preview(
    source: SliceSource,
    out: Path,
    *,
    slice_fraction: float = 0.5,
    contrast: str = "T2w",
    num_coils: int = 8,
    mask_kind: str = "equispaced",
    acceleration: float = 4.0,
    center_fraction: float = 0.08,
) -> Path:
    """Write the montage to ``out`` (PNG) and return the path.

    ``slice_fraction`` picks the slice ``int(fraction * num_slices)`` of each site; the k-space panel
    uses ``contrast`` at the first site, ``num_coils`` simulated coils and the given mask.
    """
    if not 0.0 <= slice_fraction < 1.0:
        raise ValueError(f"slice_fraction must be in [0, 1), got {slice_fraction}")
    sites = source.sites
    n_top = len(CONTRASTS)
    n_bottom = 7
    ncols = max(n_top, n_bottom)
    fig, axes = plt.subplots(len(sites) + 1, ncols, figsize=(2.0 * ncols, 2.1 * (len(sites) + 1)), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for r, site in enumerate(sites):
        index = int(slice_fraction * source.num_slices(site))
        for c, name in enumerate(CONTRASTS):
            ax = axes[r, c]
            if name not in source.contrasts(site):
                ax.set_title(f"{name}: n/a", fontsize=8)
                continue
            img = source.image(site, index, name)
            ax.imshow(img, cmap="gray", vmin=0, vmax=np.percentile(img, 99.5))
            ax.set_title(f"{site} {name}", fontsize=8)

    site = sites[0]
    index = int(slice_fraction * source.num_slices(site))
    if contrast not in source.contrasts(site):
        contrast = source.contrasts(site)[0]
    sample = source.kspace(site, index, contrast, num_coils=num_coils)
    kspace = sample.kspace
    mask = make_mask(mask_kind, kspace.shape[-2:], acceleration, center_fraction, seed=0)
    coil_images = np.abs(ifft2c(kspace))
    row = axes[len(sites)]
    for c in range(min(3, kspace.shape[0])):
        row[c].imshow(coil_images[c], cmap="gray")
        row[c].set_title(f"coil {c + 1}/{kspace.shape[0]}", fontsize=8)
    row[3].imshow(np.log1p(np.abs(kspace[0]) / (np.abs(kspace[0]).max() + 1e-12) * 1e4), cmap="gray")
    row[3].set_title("k-space coil 1 (log)", fontsize=8)
    row[4].imshow(mask, cmap="gray", vmin=0, vmax=1)
    row[4].set_title(f"{mask_kind} mask R={acceleration:g}", fontsize=8)
    zf = zero_filled(kspace, mask)
    vmax = np.percentile(sample.target, 99.5)
    row[5].imshow(zf, cmap="gray", vmin=0, vmax=vmax)
    row[5].set_title("zero-filled", fontsize=8)
    row[6].imshow(sample.target, cmap="gray", vmin=0, vmax=vmax)
    row[6].set_title(f"reference ({contrast})", fontsize=8)
    return save_figure(fig, out)
