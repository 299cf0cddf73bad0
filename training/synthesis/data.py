"""Per-site synthesis data: contrast pairs (paired or unpaired), partitions over sites, misalignment.

Each site reads only its own slices through the :class:`~mrcore.data.base.SliceSource`. A *record* is one
training example ``(a, b)``: ``a`` a slice of the source contrast A, ``b`` a slice of the target contrast B.

* paired record: ``b`` is the same slice as ``a`` (co-registered), so an L1 term can compare them;
* unpaired record: ``b`` comes from another slice of the site's unpaired set (re-drawn every epoch) and,
  with ``augment.misalign``, is rotated, shifted and scaled at random (FedMed-GAN's misaligned data).

Images are Rician magnitudes as the scanner delivers them, each subject's volume divided by the median of its
foreground (:func:`mrcore.intensity.robust_scale`, the same function the served path applies to an uploaded
series): a site's arbitrary intensity scale does not matter. With ``augment.patch_size`` the training records
are random square patches (the same position in ``a`` and its paired ``b``) of the full-resolution slices;
evaluation always uses whole slices.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import Dataset

from mrcore.data.base import SliceSource
from mrcore.intensity import robust_scale
from training.synthesis.config import PARTITIONS, AugmentConfig


def partition_fractions(scheme: str, num_sites: int) -> tuple[float, ...]:
    """Share of the training slices per site (FedMed-GAN): 'average' equal; 'gradual' proportional to
    ``n, n-1, ..., 1`` (4 sites: 0.4/0.3/0.2/0.1); 'extreme' 0.7 for the first site and the remaining 0.3
    split equally (4 sites: 0.7/0.1/0.1/0.1). A single site gets everything."""
    if scheme not in PARTITIONS:
        raise ValueError(f"unknown data.partition {scheme!r}; expected one of {', '.join(map(repr, PARTITIONS))}")
    if num_sites < 1:
        raise ValueError(f"need at least one site, got {num_sites}")
    if num_sites == 1:
        return (1.0,)
    if scheme == "average":
        w = [1.0] * num_sites
    elif scheme == "gradual":
        w = [float(num_sites - i) for i in range(num_sites)]
    else:
        return (0.7, *[0.3 / (num_sites - 1)] * (num_sites - 1))
    return tuple(x / sum(w) for x in w)


def partition_counts(total: int, fractions: tuple[float, ...]) -> tuple[int, ...]:
    """Integer slice counts summing to ``total``, closest to ``total * fractions`` (largest remainder)."""
    raw = [total * f for f in fractions]
    counts = [math.floor(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (counts[i] - raw[i], i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return tuple(counts)


def random_affine(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Rotate (uniform in +-``rotation_deg``), scale (uniform in ``scale``) and shift (+-``translation`` of the
    size per axis) ``image: float32 [H, W]`` about its centre; bilinear, zero outside. Returns float32 [H, W]."""
    angle = math.radians(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg))
    s = rng.uniform(cfg.scale[0], cfg.scale[1])
    tx, ty = rng.uniform(-cfg.translation, cfg.translation, size=2) * 2.0  # normalised coords span 2
    c, si = math.cos(angle) / s, math.sin(angle) / s
    theta = torch.tensor([[c, -si, tx], [si, c, ty]], dtype=torch.float32)[None]
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0, 0].numpy()


def subject_scales(images: np.ndarray, subjects: np.ndarray) -> np.ndarray:
    """float32 [N]: for every slice of ``images [N, H, W]``, the robust scale of its subject's volume (all the
    slices of the same subject, :func:`mrcore.intensity.robust_scale`)."""
    scales = np.empty(len(images), dtype=np.float32)
    for s in np.unique(subjects):
        sel = subjects == s
        scales[sel] = robust_scale(images[sel])
    return scales


def volume_normalise(images: np.ndarray, subjects: np.ndarray) -> np.ndarray:
    """``images [N, H, W]`` divided by their subject's robust scale (:func:`subject_scales`); float32."""
    images = np.asarray(images, dtype=np.float32)
    return (images / subject_scales(images, subjects)[:, None, None]).astype(np.float32)


def _crop(x: torch.Tensor, top: int, left: int, size: int) -> torch.Tensor:
    return x[..., top:top + size, left:left + size]


class ContrastPairs(Dataset):
    """Records ``(a, b)`` of one site (or of pooled sites).

    Items are dicts of tensors: ``a``, ``b``: float32 [1, H, W] normalised magnitudes; ``paired``: float32
    scalar (1 = ``b`` is the aligned slice of ``a``); ``subject``: int (position of the slice's subject,
    for per-volume metrics).

    Parameters
    ----------
    a, b : float32 [N, H, W]
        Raw magnitudes of contrast A and B of the same N slices (aligned).
    paired : bool [N]
        Which records are used as aligned pairs; the others are unpaired (training only).
    subjects : int [N]
    augment : AugmentConfig or None
        Misalignment of unpaired targets (None: none).
    seed : int
        Unpaired partners and misalignment are drawn from (seed, epoch, item).
    """

    def __init__(self, a: np.ndarray, b: np.ndarray, paired: np.ndarray, subjects: np.ndarray,
                 augment: AugmentConfig | None, seed: int) -> None:
        if len(a) == 0:
            raise ValueError("a synthesis data set needs at least one slice")
        if a.shape != b.shape:
            raise ValueError(f"contrast images differ in shape: {a.shape} vs {b.shape}")
        self.a_raw = np.asarray(a, dtype=np.float32)
        self.b_raw = np.asarray(b, dtype=np.float32)
        subjects = np.asarray(subjects, dtype=np.int64)
        self.b_scale = subject_scales(self.b_raw, subjects)
        self.a = torch.from_numpy(volume_normalise(self.a_raw, subjects))[:, None]
        self.b = torch.from_numpy(self.b_raw / self.b_scale[:, None, None])[:, None]
        self.paired = np.asarray(paired, dtype=bool)
        self.subject = torch.as_tensor(subjects)
        self.augment = augment
        self.seed = int(seed)
        self.unpaired_idx = np.flatnonzero(~self.paired)
        self.set_epoch(0)

    @classmethod
    def from_source(cls, source: SliceSource, site: str, indices: tuple[int, ...], contrasts: tuple[str, str],
                    paired: np.ndarray, augment: AugmentConfig | None, seed: int) -> ContrastPairs:
        """Read ``indices`` of ``site`` in both ``contrasts`` (A, B)."""
        if not indices:
            raise ValueError(f"site {site!r} has no slices for this split")
        a = np.stack([source.image(site, i, contrasts[0]) for i in indices])
        b = np.stack([source.image(site, i, contrasts[1]) for i in indices])
        ids: dict[str, int] = {}
        subjects = [ids.setdefault(source.subject(site, i), len(ids)) for i in indices]
        return cls(a, b, paired, np.asarray(subjects), augment, seed)

    @classmethod
    def concat(cls, parts: list[ContrastPairs]) -> ContrastPairs:
        """One data set holding all ``parts`` (centralized training); subjects renumbered."""
        offsets = np.cumsum([0] + [int(p.subject.max()) + 1 for p in parts[:-1]])
        return cls(np.concatenate([p.a_raw for p in parts]), np.concatenate([p.b_raw for p in parts]),
                   np.concatenate([p.paired for p in parts]),
                   np.concatenate([p.subject.numpy() + o for p, o in zip(parts, offsets)]),
                   parts[0].augment, parts[0].seed)

    def __len__(self) -> int:
        return len(self.paired)

    @property
    def num_paired(self) -> int:
        return int(self.paired.sum())

    def set_epoch(self, epoch: int) -> None:
        """Draw the unpaired partners of epoch ``epoch``: a random cyclic shift of a random order, so no
        unpaired record gets its own slice back (when there are at least two)."""
        self.epoch = int(epoch)
        self.partner = np.arange(len(self))
        u = self.unpaired_idx
        if len(u) > 1:
            rng = np.random.default_rng((self.seed, self.epoch, 11))
            order = rng.permutation(u)
            self.partner[order] = np.roll(order, -int(rng.integers(1, len(u))))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        i = int(i)
        a = self.a[i]
        if self.paired[i]:
            b = self.b[i]
        else:
            j = int(self.partner[i])
            if self.augment is not None and self.augment.misalign:
                rng = np.random.default_rng((self.seed, self.epoch, i, 13))
                warped = random_affine(self.b_raw[j] / self.b_scale[j], rng, self.augment)
                b = torch.from_numpy(warped.astype(np.float32))[None]
            else:
                b = self.b[j]
        size = self.augment.patch_size if self.augment is not None else 0
        h, w = a.shape[-2:]
        if size and size < min(h, w):
            rng = np.random.default_rng((self.seed, self.epoch, i, 19))
            top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
            a = _crop(a, top, left, size)
            if not self.paired[i]:  # an unpaired target: a patch of its own, elsewhere
                top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
            b = _crop(b, top, left, size)
        return {"a": a, "b": b, "paired": torch.tensor(float(self.paired[i])), "subject": self.subject[i]}


def choose_paired(n: int, ratio: float, seed: int) -> np.ndarray:
    """bool [n] with ``round(ratio * n)`` True entries at random (seeded) positions."""
    k = int(round(ratio * n))
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng((seed, 17)).permutation(n)[:k]] = True
    return mask
