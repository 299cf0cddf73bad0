"""FL-MRCM's cross-site latent alignment at one source site (Guo et al., CVPR 2021).

The target site sends, every round, latent feature maps of its own undersampled slices computed with the
current global generator (:meth:`~training.recon.family.ReconFamily.target_features`): float32
``[N, chans, H / pool, W / pool]``. At each source site a :class:`LatentAligner` holds that site's domain
identifier (:class:`~training.models.domain.DomainIdentifier`, two classes: 0 = this site, 1 = target),
which stays at the site with its optimiser state (like the WGAN critic):

* identifier step: cross-entropy on this site's latents (label 0, detached) and as many randomly drawn
  target latents (label 1);
* generator term: ``weight * CE(D(pool(latent)), 1)`` — the generator is pushed to produce latents the
  identifier takes for the target's, i.e. to make the sites' feature distributions indistinguishable.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from training.models.domain import DomainIdentifier

SOURCE, TARGET = 0, 1


def pool_latent(latent: torch.Tensor, pool: int) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, C, ceil(H / pool), ceil(W / pool)]`` by average pooling (what is sent)."""
    return F.avg_pool2d(latent, pool, ceil_mode=True) if pool > 1 else latent


class LatentAligner:
    """One source site's half of FL-MRCM (see the module docstring).

    Parameters
    ----------
    identifier : DomainIdentifier with ``num_domains=2`` (this site's; never sent).
    optimizer : its optimiser (state kept at the site between rounds).
    target : float32 [N, C, h, w], the target site's pooled latents of this round.
    pool : pooling applied to this site's latents so they match ``target``.
    weight : weight of the generator's adversarial alignment term.
    generator : torch.Generator drawing the target latents of each identifier step.
    """

    def __init__(self, identifier: nn.Module, optimizer: torch.optim.Optimizer, target: torch.Tensor, pool: int,
                 weight: float, generator: torch.Generator | None = None) -> None:
        if target.ndim != 4 or target.shape[0] < 1:
            raise ValueError(f"target latents must be float [N, C, h, w] with N >= 1, got {tuple(target.shape)}")
        self.identifier = identifier
        self.optimizer = optimizer
        self.target = target
        self.pool = pool
        self.weight = weight
        self.generator = generator

    def _check(self, pooled: torch.Tensor) -> None:
        if pooled.shape[1:] != self.target.shape[1:]:
            raise ValueError(f"this site's pooled latents are {tuple(pooled.shape[1:])}, the target's "
                             f"{tuple(self.target.shape[1:])}: FL-MRCM needs the same matrix size and channels")

    def generator_loss(self, latent: torch.Tensor) -> torch.Tensor:
        """``weight * CE(D(pool(latent)), target)`` for the generator's latents ``[B, C, H, W]`` (differentiable)."""
        pooled = pool_latent(latent, self.pool)
        self._check(pooled)
        labels = torch.full((latent.shape[0],), TARGET, dtype=torch.long, device=latent.device)
        return self.weight * F.cross_entropy(self.identifier(pooled), labels)

    def identifier_step(self, latent: torch.Tensor) -> float:
        """One update of the identifier on this site's latents (label 0) and as many target latents (1)."""
        src = pool_latent(latent.detach(), self.pool)
        self._check(src)
        pick = torch.randint(0, self.target.shape[0], (src.shape[0],), generator=self.generator)
        tgt = self.target[pick].to(src.device)
        logits = self.identifier(torch.cat([src, tgt]))
        labels = torch.cat([torch.full((len(src),), SOURCE), torch.full((len(tgt),), TARGET)]).to(src.device)
        loss = F.cross_entropy(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    @torch.no_grad()
    def accuracy(self, latent: torch.Tensor) -> float:
        """Fraction of this site's latents and of the target's that the identifier classifies correctly."""
        src = pool_latent(latent, self.pool)
        ok = (self.identifier(src).argmax(1) == SOURCE).float().mean() + \
             (self.identifier(self.target.to(src.device)).argmax(1) == TARGET).float().mean()
        return float(ok / 2)


def new_identifier(chans: int, features: tuple[int, ...]) -> DomainIdentifier:
    """A domain identifier for latents of ``chans`` channels (this site vs the target)."""
    return DomainIdentifier(chans, num_domains=2, features=tuple(features))


def as_target_tensor(latents: np.ndarray) -> torch.Tensor:
    """The target latents received in a message (numpy float32 [N, C, h, w]) as a tensor."""
    arr = np.asarray(latents, dtype=np.float32)
    if arr.ndim != 4:
        raise ValueError(f"target latents must be [N, C, h, w], got shape {arr.shape}")
    return torch.from_numpy(arr.copy())
