"""Local training and evaluation loops of the reconstruction family (plain PyTorch, no federation).

Objectives (Lei et al.):

* ``paired``: ``L1(|G(x)|, y)``;
* ``unpaired``: WGAN-GP — the critic compares ``|G(x)|`` with magnitude labels of *other* subjects,
  the generator minimises ``-E[D(|G(x)|)]`` (data consistency inside G anchors it to the measurements);
* ``hybrid``: ``-(1 - lambda) E[D(|G(x)|)] + lambda L1``, lambda = 1 for the first batches, then linear
  to ``lambda_max`` (:class:`~training.objectives.HybridSchedule`);
* with FL-MRCM (``aligner``), any of these plus the latent alignment term of
  :class:`~training.recon.mrcm.LatentAligner`, whose domain identifier takes one step per batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from mrcore import torch_ops as ops
from training.models import magnitude
from training.objectives import HybridSchedule, critic_loss, generator_adversarial_loss, l1_loss, ssim_loss
from training.recon.config import ObjectiveConfig
from training.recon.mrcm import LatentAligner
from training.volume_metrics import volume_metrics


def critic_view(mag: torch.Tensor) -> torch.Tensor:
    """Critic input: magnitude ``[B, H, W]`` -> ``[B, 1, H, W]`` divided by its per-sample mean, so the
    critic judges structure and texture, not the site's arbitrary intensity scale."""
    return (mag / (mag.flatten(1).mean(dim=1).reshape(-1, 1, 1) + 1e-8)).unsqueeze(1)


def _cycle(loader: DataLoader) -> Iterator[dict]:
    while True:
        yield from loader


def train_epoch(
    generator: nn.Module,
    critic: nn.Module | None,
    opt_g: torch.optim.Optimizer,
    opt_c: torch.optim.Optimizer | None,
    loader: DataLoader,
    objective: ObjectiveConfig,
    step: int,
    label_loader: DataLoader | None = None,
    device: torch.device | str = "cpu",
    aligner: LatentAligner | None = None,
) -> tuple[int, dict[str, float]]:
    """One pass over ``loader``; returns the new batch counter and mean losses.

    ``step`` is the site's running batch counter (drives the hybrid schedule); ``label_loader``
    provides the unpaired magnitude labels (``target`` of other subjects); ``aligner``: FL-MRCM.
    """
    schedule = HybridSchedule(objective.pure_l1_batches, objective.ramp_batches, objective.lambda_max)
    labels = _cycle(label_loader) if label_loader is not None else None
    sums: dict[str, float] = {}
    count = 0
    generator.train()
    for batch in loader:
        loss, logs = batch_loss(generator, critic, opt_c, batch, objective, schedule(step), labels, device, aligner)
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        if objective.grad_clip:
            nn.utils.clip_grad_norm_(generator.parameters(), objective.grad_clip)
        opt_g.step()
        logs["loss"] = float(loss.detach())
        for k, v in logs.items():
            sums[k] = sums.get(k, 0.0) + v
        count += 1
        step += 1
    return step, {k: v / max(count, 1) for k, v in sums.items()}


@torch.no_grad()
def reconstruct(generator: nn.Module, loader: DataLoader) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Run ``generator`` over ``loader``: (outputs, zero-filled, targets, subject ids), magnitudes [N, H, W]."""
    generator.eval()
    device = next(generator.parameters()).device
    outs, zfs, targets, subjects = [], [], [], []
    for batch in loader:
        outs.append(magnitude(generator(batch["kspace"].to(device), batch["mask"].to(device))).cpu().numpy())
        zfs.append(ops.rss(ops.ifft2c(batch["kspace"]), dim=1).numpy())
        targets.append(batch["target"].numpy())
        subjects.append(batch["subject"].numpy())
    return np.concatenate(outs), np.concatenate(zfs), np.concatenate(targets), np.concatenate(subjects)


@torch.no_grad()
def batch_metrics(generator: nn.Module, loader: DataLoader) -> dict[str, float]:
    """Mean fastMRI metrics of ``generator`` over ``loader`` when batches differ in shape (randomised data):
    every example is its own volume (``subject`` ids are unique per example)."""
    generator.eval()
    device = next(generator.parameters()).device
    rows = []
    for batch in loader:
        out = magnitude(generator(batch["kspace"].to(device), batch["mask"].to(device))).cpu().numpy()
        target = batch["target"].numpy()
        rows += [volume_metrics(out[i:i + 1], target[i:i + 1], np.zeros(1)) for i in range(len(target))]
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def batch_loss(
    generator: nn.Module,
    critic: nn.Module | None,
    opt_c: torch.optim.Optimizer | None,
    batch: dict,
    objective: ObjectiveConfig,
    lam: float,
    labels: Iterator[dict] | None = None,
    device: torch.device | str = "cpu",
    aligner: LatentAligner | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The generator's loss on one ``batch`` (scalar tensor, not yet backpropagated) and its logged terms.

    Adversarial objectives first train the critic ``objective.critic_steps`` times on this batch (the
    critic's optimiser steps here; it stays at the site). ``lam``: the hybrid L1 weight of this batch;
    ``labels``: endless iterator of unpaired label batches; ``aligner``: FL-MRCM (its identifier steps too).
    """
    batch = {k: v.to(device) for k, v in batch.items()}
    latent = None
    if aligner is not None:
        image, latent = generator(batch["kspace"], batch["mask"], return_latent=True)
    else:
        image = generator(batch["kspace"], batch["mask"])
    fake = magnitude(image, eps=1e-12)
    logs: dict[str, float] = {}
    if objective.kind == "paired":
        loss = l1_loss(fake, batch["target"])
        logs["l1"] = float(loss.detach())
        if objective.ssim_weight:
            ls = ssim_loss(fake, batch["target"])
            loss = loss + objective.ssim_weight * ls
            logs["ssim_loss"] = float(ls.detach())
    else:
        assert critic is not None and opt_c is not None
        real = next(labels)["target"].to(device) if objective.kind == "unpaired" and labels is not None else batch["target"]
        for _ in range(objective.critic_steps):
            opt_c.zero_grad(set_to_none=True)
            lc = critic_loss(critic, critic_view(real), critic_view(fake.detach()), objective.gp_eta)
            lc.backward()
            opt_c.step()
        logs["critic"] = float(lc.detach())
        adv = generator_adversarial_loss(critic, critic_view(fake))
        if objective.kind == "unpaired":
            loss = adv
        else:
            l1 = l1_loss(fake, batch["target"])
            loss = (1.0 - lam) * adv + lam * l1
            logs["l1"], logs["lambda"] = float(l1.detach()), lam
        logs["adv"] = float(adv.detach())
    if aligner is not None:
        logs["domain"] = aligner.identifier_step(latent)
        align = aligner.generator_loss(latent)
        loss = loss + align
        logs["align"] = float(align.detach())
    return loss, logs
