"""Local training and evaluation of the synthesis family (plain PyTorch, no federation).

One step on a batch of records ``(a, b)`` (CycleGAN with LSGAN losses, Zhu et al. 2017):

* generators (one optimiser over ``G_AB`` and ``G_BA``; DP-SGD when wrapped by Opacus), per record::

      gan_weight * [(D_B(G_AB(a)) - 1)^2 + (D_A(G_BA(b)) - 1)^2]            (patch means)
    + cycle_weight * [|G_BA(G_AB(a)) - a| + |G_AB(G_BA(b)) - b|]
    + identity_weight * cycle_weight * [|G_AB(b) - b| + |G_BA(a) - a|]        (optional)
    + paired_l1_weight * paired * [|G_AB(a) - b| + |G_BA(b) - a|]             (paired records only)

  averaged over the batch (every term is per record, so per-sample gradients are per record);
* discriminators (local, plain Adam): ``0.5 * [(D(real) - 1)^2 + D(fake)^2]`` for ``D_A`` and ``D_B``.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from training.synthesis.config import SynthesisObjectiveConfig


def _per_sample_mean(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(dim=1)


def generator_loss(out: dict[str, torch.Tensor], a: torch.Tensor, b: torch.Tensor, paired: torch.Tensor,
                   d_a: nn.Module, d_b: nn.Module, obj: SynthesisObjectiveConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """Batch-mean generator objective (see the module docstring) and its terms as floats."""
    adv = _per_sample_mean((d_b(out["fake_b"]) - 1) ** 2) + _per_sample_mean((d_a(out["fake_a"]) - 1) ** 2)
    cyc = _per_sample_mean((out["rec_a"] - a).abs()) + _per_sample_mean((out["rec_b"] - b).abs())
    l1 = _per_sample_mean((out["fake_b"] - b).abs()) + _per_sample_mean((out["fake_a"] - a).abs())
    per_sample = obj.gan_weight * adv + obj.cycle_weight * cyc + obj.paired_l1_weight * paired * l1
    logs = {"adv": float(adv.detach().mean()), "cycle": float(cyc.detach().mean())}
    if "idt_b" in out:
        idt = _per_sample_mean((out["idt_b"] - b).abs()) + _per_sample_mean((out["idt_a"] - a).abs())
        per_sample = per_sample + obj.identity_weight * obj.cycle_weight * idt
        logs["identity"] = float(idt.detach().mean())
    if "curve_b" in out and obj.curve_weight > 0:  # the tissue curve alone fits the paired target, too
        curve = _per_sample_mean((out["curve_b"] - b).abs()) + _per_sample_mean((out["curve_a"] - a).abs())
        per_sample = per_sample + obj.curve_weight * paired * curve
        logs["curve_l1"] = float((curve.detach() * paired).sum() / paired.sum().clamp(min=1))
    if bool(paired.any()):
        logs["paired_l1"] = float((l1.detach() * paired).sum() / paired.sum())
    loss = per_sample.mean()
    logs["loss"] = float(loss.detach())
    return loss, logs


def discriminator_loss(d: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """LSGAN discriminator loss ``0.5 * (E[(D(real) - 1)^2] + E[D(fake)^2])``."""
    return 0.5 * (((d(real) - 1) ** 2).mean() + (d(fake) ** 2).mean())


def _noise_only_step(optimizer: torch.optim.Optimizer) -> None:
    """An empty Poisson batch under DP: no gradient, but the step (noise, accounting) still happens."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.requires_grad:
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
    optimizer.step()


def micro_batches(n: int, size: int) -> list[slice]:
    """``ceil(n / size)`` contiguous slices of ``range(n)`` of near-equal length (``size`` <= 0: one slice).

    A Poisson batch of 70 records with ``size`` 16 is cut 14/14/14/14/14 rather than 16/16/16/16/6: on CPU the cost
    per record of these small convolutions and their per-sample gradients is lowest at 16-32 records per
    pass (measured here, see docs/synthesis.md).
    """
    k = 1 if size <= 0 else max(1, -(-n // size))
    bounds = [round(i * n / k) for i in range(k + 1)]
    return [slice(bounds[i], bounds[i + 1]) for i in range(k)]


def train_epoch(gens: nn.Module, d_a: nn.Module, d_b: nn.Module, opt_g: torch.optim.Optimizer,
                opt_d: torch.optim.Optimizer, loader: DataLoader, obj: SynthesisObjectiveConfig,
                device: torch.device | str = "cpu", private: bool = False) -> tuple[int, dict[str, float]]:
    """One pass over ``loader``; returns (optimiser steps, mean losses).

    ``gens``: :class:`~training.models.synthesis.CycleGenerators` (or its Opacus ``GradSampleModule``);
    ``private``: ``opt_g`` is a ``DPOptimizer`` (empty Poisson batches still take a noise-only step).

    Each batch takes one generator step and one discriminator step. A batch of more than
    ``obj.micro_batch_size`` records goes through the generators in near-equal chunks whose gradients
    add up before the step: the same step as the whole batch at once, up to floating-point summation
    order. Under DP each chunk's per-sample gradients are clipped and summed (Opacus' skipped steps, as
    in its ``BatchMemoryManager``); the noise is added and the accountant counts one step per batch.
    """
    sums: dict[str, float] = {}
    count = steps = 0
    identity = obj.identity_weight > 0
    gens.train()
    d_a.train()
    d_b.train()
    for batch in loader:
        a, b, paired = batch["a"].to(device), batch["b"].to(device), batch["paired"].to(device)
        n = a.shape[0]
        if n == 0:
            if private:
                _noise_only_step(opt_g)
                steps += 1
            continue
        opt_g.zero_grad(set_to_none=True)
        chunks = micro_batches(n, obj.micro_batch_size)
        fakes_a, fakes_b, logs = [], [], {}
        for i, part in enumerate(chunks):
            m = part.stop - part.start
            out = gens(a[part], b[part], identity=identity, curves=obj.curve_weight > 0)
            loss, part_logs = generator_loss(out, a[part], b[part], paired[part], d_a, d_b, obj)
            if not private:  # the batch mean; Opacus' per-sample gradients undo each chunk's mean itself
                loss = loss * (m / n)
            with warnings.catch_warnings():  # Opacus' hooks on outputs of inputs without grad: expected
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                loss.backward()
            if private and i < len(chunks) - 1:
                opt_g.signal_skip_step(do_skip=True)
                opt_g.step()  # clips this chunk's per-sample gradients and adds them up; no noise, no step
                opt_g.zero_grad(set_to_none=True)
            fakes_a.append(out["fake_a"].detach())
            fakes_b.append(out["fake_b"].detach())
            for k, v in part_logs.items():  # batch means: chunks weighted by their records (paired L1: paired ones)
                w = float(paired[part].sum() / paired.sum()) if k == "paired_l1" else m / n
                logs[k] = logs.get(k, 0.0) + v * w
        opt_g.step()
        opt_d.zero_grad(set_to_none=True)
        ld = discriminator_loss(d_a, a, torch.cat(fakes_a)) + discriminator_loss(d_b, b, torch.cat(fakes_b))
        ld.backward()
        opt_d.step()
        logs["disc"] = float(ld.detach())
        for k, v in logs.items():
            sums[k] = sums.get(k, 0.0) + v
        count += 1
        steps += 1
    return steps, {k: v / max(count, 1) for k, v in sums.items()}


@torch.no_grad()
def synthesize(generator: nn.Module, loader: DataLoader, source: str = "a", target: str = "b"
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Run ``generator`` over ``loader`` mapping batch[source] -> batch[target].

    Returns (synthesised, source, target, subject ids): float32 [N, H, W] normalised magnitudes (the
    synthesised image clamped at 0, as the exported model does) and int [N].
    """
    generator.eval()
    device = next(generator.parameters()).device
    outs, srcs, tgts, subjects = [], [], [], []
    for batch in loader:
        x = batch[source].to(device)
        outs.append(generator(x).clamp_min(0)[:, 0].cpu().numpy())
        srcs.append(batch[source][:, 0].numpy())
        tgts.append(batch[target][:, 0].numpy())
        subjects.append(batch["subject"].numpy())
    return np.concatenate(outs), np.concatenate(srcs), np.concatenate(tgts), np.concatenate(subjects)
