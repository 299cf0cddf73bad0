"""Training objectives of Lei et al., "Wasserstein GANs for MR imaging" (IEEE TMI 2021).

* WGAN-GP critic loss (Gulrajani et al. 2017): ``E[D(fake)] - E[D(real)] + eta * E[(||grad D(x_hat)||_2 - 1)^2]``
  with ``x_hat = alpha * real + (1 - alpha) * fake``, ``alpha ~ U[0, 1]`` per sample.
* Hybrid generator loss: ``-(1 - lambda) E[D(G(x))] + lambda ||y - G(x)||_1``.
  ``lambda = 1`` is pure L1 (paired supervised training); Lei et al. train the first 500 batches with
  pure L1 and then move lambda linearly to 0.99 within 1000 batches (:class:`HybridSchedule`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def l1_loss(pred_mag: torch.Tensor, target_mag: torch.Tensor) -> torch.Tensor:
    """Mean absolute error between magnitude images ``[B, H, W]`` (any equal shapes)."""
    if pred_mag.shape != target_mag.shape:
        raise ValueError(f"l1_loss: shapes differ: {tuple(pred_mag.shape)} vs {tuple(target_mag.shape)}")
    return (pred_mag - target_mag).abs().mean()


def ssim_loss(pred_mag: torch.Tensor, target_mag: torch.Tensor, window: int = 7, k1: float = 0.01,
              k2: float = 0.03) -> torch.Tensor:
    """``1 - SSIM`` of magnitude images ``[B, H, W]``, fastMRI's ``SSIMLoss`` (uniform ``window x window``
    window, sample covariance, data range = each target's maximum), averaged over pixels and batch."""
    if pred_mag.shape != target_mag.shape or pred_mag.dim() != 3:
        raise ValueError(f"ssim_loss: expected two [B, H, W] tensors, got {tuple(pred_mag.shape)} and "
                         f"{tuple(target_mag.shape)}")
    x, y = pred_mag.unsqueeze(1), target_mag.unsqueeze(1)
    data_range = target_mag.flatten(1).amax(dim=1).reshape(-1, 1, 1, 1)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    w = torch.ones(1, 1, window, window, dtype=x.dtype, device=x.device) / window**2
    n = window**2
    cov_norm = n / (n - 1)
    ux, uy = torch.nn.functional.conv2d(x, w), torch.nn.functional.conv2d(y, w)
    uxx, uyy, uxy = (torch.nn.functional.conv2d(t, w) for t in (x * x, y * y, x * y))
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return 1 - s.mean()


def gradient_penalty(
    critic: nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    eta: float = 10.0,
    alpha: torch.Tensor | None = None,
) -> torch.Tensor:
    """WGAN-GP penalty ``eta * mean_b (||grad_x D(x_hat_b)||_2 - 1)^2``.

    Parameters
    ----------
    critic : maps ``[B, ...] -> [B]``
    real, fake : float [B, ...] (same shape); ``fake`` is detached here (the penalty trains the critic).
    eta : penalty weight (10 in Gulrajani et al. and Lei et al.).
    alpha : optional float [B] interpolation weights; default ``U[0, 1)`` per sample.

    The gradient is taken with ``create_graph=True`` so the penalty is differentiable w.r.t. the
    critic's parameters. The norm is over all non-batch dimensions.
    """
    if real.shape != fake.shape:
        raise ValueError(f"gradient_penalty: shapes differ: {tuple(real.shape)} vs {tuple(fake.shape)}")
    b = real.shape[0]
    if alpha is None:
        alpha = torch.rand(b, device=real.device, dtype=real.dtype)
    alpha = alpha.reshape(b, *([1] * (real.dim() - 1)))
    x_hat = (alpha * real.detach() + (1.0 - alpha) * fake.detach()).requires_grad_(True)
    scores = critic(x_hat)
    (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    norm = grad.flatten(1).norm(2, dim=1)
    return eta * ((norm - 1.0) ** 2).mean()


def critic_loss(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, eta: float = 10.0) -> torch.Tensor:
    """WGAN-GP critic loss ``E[D(fake)] - E[D(real)] + GP`` (minimise w.r.t. the critic; ``fake`` detached)."""
    fake = fake.detach()
    return critic(fake).mean() - critic(real).mean() + gradient_penalty(critic, real, fake, eta)


def generator_adversarial_loss(critic: nn.Module, fake: torch.Tensor) -> torch.Tensor:
    """``-E[D(G(x))]`` (minimise w.r.t. the generator)."""
    return -critic(fake).mean()


@dataclass(frozen=True)
class HybridSchedule:
    """L1 weight ``lambda(step)`` of the hybrid loss ``-(1-lambda) E[D(G(x))] + lambda ||y - G(x)||_1``.

    * ``step < pure_l1_batches``: ``lambda = 1`` (pure L1);
    * then ``lambda`` goes linearly from 1 to ``lambda_max`` over ``ramp_batches`` batches:
      ``lambda = 1 - (1 - lambda_max) * (step - pure_l1_batches) / ramp_batches``;
    * ``step >= pure_l1_batches + ramp_batches``: ``lambda = lambda_max`` (0.99) for good.

    ``step`` counts generator updates (batches) from 0. Defaults follow Lei et al.:
    500 pure-L1 batches, then to 0.99 within 1000 batches.
    """

    pure_l1_batches: int = 500
    ramp_batches: int = 1000
    lambda_max: float = 0.99

    def __post_init__(self) -> None:
        if self.pure_l1_batches < 0 or self.ramp_batches < 0:
            raise ValueError("pure_l1_batches and ramp_batches must be >= 0")
        if not 0.0 <= self.lambda_max <= 1.0:
            raise ValueError(f"lambda_max must be in [0, 1], got {self.lambda_max}")

    def __call__(self, step: int) -> float:
        if step < self.pure_l1_batches:
            return 1.0
        t = step - self.pure_l1_batches
        if self.ramp_batches == 0 or t >= self.ramp_batches:
            return float(self.lambda_max)
        return 1.0 - (1.0 - self.lambda_max) * t / self.ramp_batches

    def is_pure_l1(self, step: int) -> bool:
        """True while the adversarial term has zero weight (the critic need not be evaluated)."""
        return self(step) >= 1.0


def hybrid_generator_loss(
    critic: nn.Module | None,
    pred_mag: torch.Tensor,
    target_mag: torch.Tensor,
    lam: float,
    critic_input: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``-(1 - lam) E[D(G(x))] + lam * L1(pred_mag, target_mag)``.

    Parameters
    ----------
    critic : the critic, or None when ``lam == 1`` (pure L1; the critic is then not evaluated).
    pred_mag, target_mag : float [B, H, W] generator output / reference magnitudes.
    lam : L1 weight, e.g. ``HybridSchedule()(step)``.
    critic_input : what the critic sees of the generator output (default ``pred_mag``; pass the
        complex image for a 2-channel critic).

    Returns
    -------
    (loss, terms) with ``terms = {"l1": ..., "adv": ..., "lambda": lam}`` as floats for logging.
    """
    l1 = l1_loss(pred_mag, target_mag)
    if lam >= 1.0:
        adv = torch.zeros((), device=l1.device, dtype=l1.dtype)
    else:
        if critic is None:
            raise ValueError("hybrid_generator_loss: a critic is needed when lam < 1")
        adv = generator_adversarial_loss(critic, pred_mag if critic_input is None else critic_input)
    loss = (1.0 - lam) * adv + lam * l1
    return loss, {"l1": float(l1.detach()), "adv": float(adv.detach()), "lambda": float(lam)}
