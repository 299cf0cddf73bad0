"""A site's randomised reconstruction training data as torch batches (:mod:`mrcore.data.randomize`).

Every item is a whole batch: ``batch_size`` examples that share one acquisition geometry (matrix, coil count,
mask kind and phase-encode axis, so they stack), drawn deterministically from ``(seed, epoch, item)``. The
data is made on the fly, so a site never sees the same example twice across epochs, and nothing is cached.

Items are dicts of tensors, as :class:`~training.recon.data.ReconSlices` gives::

    kspace  float32 [B, V, H, W, 2]  undersampled k-space, coil-compressed to V = min(coils, virtual_coils)
                                     exactly as the serving client does (mrcore.coils.compress_coils)
    mask    float32 [B, 1, H, W, 1]
    target  float32 [B, H, W]         RSS of the fully sampled (uncompressed) coil images
    subject int64 [B]                 example number (for per-volume metrics: every example its own volume)

Each example is scaled so that its target's 99th percentile is 1: the generator is scale-equivariant, so the
scale only balances the loss across examples.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mrcore.coils import compress_coils
from mrcore.data.randomize import Example, RandomizationConfig, draw_example, draw_geometry, draw_mask


def _to_tensors(examples: list[Example], virtual_coils: int) -> dict[str, torch.Tensor]:
    kspaces, masks, targets = [], [], []
    for ex in examples:
        mask = ex.mask
        scale = float(np.percentile(ex.target, 99)) or 1.0
        undersampled = (ex.kspace * mask / scale).astype(np.complex64)
        kspaces.append(compress_coils(undersampled, virtual_coils, mask))
        masks.append(mask)
        targets.append(ex.target / scale)
    k = torch.view_as_real(torch.from_numpy(np.stack(kspaces)))
    return {"kspace": k.contiguous(), "mask": torch.from_numpy(np.stack(masks))[:, None, :, :, None],
            "target": torch.from_numpy(np.stack(targets).astype(np.float32)),
            "subject": torch.arange(len(examples))}


class RandomizedBatches(Dataset):
    """``batches`` items per epoch of ``batch_size`` randomised examples each (see the module docstring).

    Parameters
    ----------
    cfg : the ranges
    seed : the site's seed (distinct per site)
    batches : items per epoch
    batch_size : examples per item
    virtual_coils : coil-compression target of the served model
    fixed : True for evaluation sets (the same items every epoch)
    """

    def __init__(self, cfg: RandomizationConfig, seed: int, batches: int, batch_size: int, virtual_coils: int,
                 fixed: bool = False) -> None:
        if batches < 1 or batch_size < 1 or virtual_coils < 1:
            raise ValueError(f"batches, batch_size and virtual_coils must be >= 1, got {batches}, {batch_size}, "
                             f"{virtual_coils}")
        self.cfg, self.seed, self.batches, self.batch_size = cfg, int(seed), int(batches), int(batch_size)
        self.virtual_coils, self.fixed, self.epoch = int(virtual_coils), bool(fixed), 0

    def __len__(self) -> int:
        return self.batches

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < self.batches:
            raise IndexError(i)
        epoch = 0 if self.fixed else self.epoch
        geometry = draw_geometry(self.cfg, np.random.default_rng(np.random.SeedSequence((self.seed, epoch, i))))
        # a 2-D Poisson mask takes up to seconds to draw: one per batch (line masks differ per example)
        shared = draw_mask(geometry, self.seed + i) if geometry.mask_kind == "poisson" else None
        examples = [draw_example(self.cfg, geometry, (self.seed, epoch, i, j), shared) for j in range(self.batch_size)]
        batch = _to_tensors(examples, self.virtual_coils)
        batch["subject"] = batch["subject"] + i * self.batch_size
        return batch


def site_loader(ds: Dataset, batch_size: int, generator: torch.Generator | None = None) -> DataLoader:
    """Batches of a site's dataset: randomised datasets are already batches (one per item); slice datasets
    are batched by ``batch_size`` and shuffled with ``generator`` when one is given."""
    if isinstance(ds, RandomizedBatches):
        return DataLoader(ds, batch_size=None)
    return DataLoader(ds, batch_size=batch_size, shuffle=generator is not None, generator=generator)
