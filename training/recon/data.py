"""Per-site reconstruction data: undersampled multi-coil slices held in memory as torch tensors.

Each site reads only its own slices from the :class:`~mrcore.data.base.SliceSource`. Subjects are split
into training and validation subjects (never slices of one subject on both sides).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from mrcore.data.base import SliceSource
from mrcore.masks import make_mask
from training.recon.config import MaskConfig
from training.splits import split_subjects, spread  # noqa: F401  (spread: re-exported)


@dataclass(frozen=True)
class SiteSplit:
    """Slice indices of one site: ``train`` and ``val`` come from disjoint subjects."""

    train: tuple[int, ...]
    val: tuple[int, ...]


def split_by_subject(source: SliceSource, site: str, val_subjects: int) -> SiteSplit:
    """The last ``val_subjects`` subjects of ``site`` are validation subjects, the others train."""
    parts = split_subjects(source, site, val_subjects)
    return SiteSplit(parts["train"], parts["val"])


class ReconSlices(Dataset):
    """Undersampled slices of one site.

    Items are dicts of tensors:

    * ``kspace``: float32 [C, H, W, 2] — masked k-space (real, imag)
    * ``mask``: float32 [1, H, W, 1]
    * ``target``: float32 [H, W] — RSS of the fully sampled coil images
    * ``subject``: int — position of the slice's subject in this dataset (for per-volume metrics)

    Masks are drawn per item from ``mask_cfg`` with a seed of (seed, epoch, item) during training
    (``set_epoch``) and of (seed, item) for evaluation, so runs are reproducible.
    """

    def __init__(self, source: SliceSource, site: str, indices: tuple[int, ...], contrasts: tuple[str, ...],
                 num_coils: int, mask_cfg: MaskConfig, seed: int, train: bool) -> None:
        if not indices:
            raise ValueError(f"site {site!r} has no slices for this split")
        self.mask_cfg = mask_cfg
        self.seed = seed
        self.train = train
        self.epoch = 0
        kspaces, targets, subjects = [], [], []
        subject_ids: dict[str, int] = {}
        for idx in indices:
            for contrast in contrasts:
                s = source.kspace(site, idx, contrast, num_coils=num_coils)
                kspaces.append(s.kspace.astype(np.complex64))
                targets.append(s.target.astype(np.float32))
                subjects.append(subject_ids.setdefault(f"{s.subject}/{contrast}", len(subject_ids)))
        self.kspace = torch.view_as_real(torch.from_numpy(np.stack(kspaces)))  # [N, C, H, W, 2]
        self.target = torch.from_numpy(np.stack(targets))                      # [N, H, W]
        self.subject = torch.tensor(subjects)
        self.shape = tuple(self.kspace.shape[2:4])
        self.axis = int(getattr(source, "phase_encode_axis", -2))  # fastMRI raw data: -1
        self._fixed_masks: dict[int, torch.Tensor] = {}

    @classmethod
    def concat(cls, parts: list[ReconSlices]) -> ReconSlices:
        """One dataset holding all ``parts`` (centralized training, the 'Mix' upper bound)."""
        if not parts:
            raise ValueError("nothing to concatenate")
        shapes = {tuple(p.kspace.shape[1:]) for p in parts}
        if len(shapes) != 1:
            raise ValueError(f"cannot pool sites with different k-space shapes {sorted(shapes)}")
        out = cls.__new__(cls)
        first = parts[0]
        out.mask_cfg, out.seed, out.train, out.epoch, out.shape, out.axis = (
            first.mask_cfg, first.seed, first.train, 0, first.shape, first.axis)
        out.kspace = torch.cat([p.kspace for p in parts])
        out.target = torch.cat([p.target for p in parts])
        offsets = np.cumsum([0] + [int(p.subject.max()) + 1 for p in parts[:-1]])
        out.subject = torch.cat([p.subject + int(o) for p, o in zip(parts, offsets)])
        out._fixed_masks = {}
        return out

    def __len__(self) -> int:
        return int(self.kspace.shape[0])

    def set_epoch(self, epoch: int) -> None:
        """Select the masks of training epoch ``epoch``."""
        self.epoch = int(epoch)

    def mask(self, i: int) -> torch.Tensor:
        """float32 [1, H, W, 1] mask of item ``i`` for the current epoch."""
        if not self.train and i in self._fixed_masks:
            return self._fixed_masks[i]
        seed = int(np.random.SeedSequence((self.seed, self.epoch if self.train else 0, i, 1 if self.train else 0)).generate_state(1)[0])
        m = make_mask(self.mask_cfg.kind, self.shape, self.mask_cfg.acceleration, self.mask_cfg.center_fraction, seed=seed,
                      axis=self.axis)
        t = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))[None, :, :, None]
        if not self.train:
            self._fixed_masks[i] = t
        return t

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        mask = self.mask(i)
        return {"kspace": self.kspace[i] * mask, "mask": mask, "target": self.target[i], "subject": self.subject[i]}
