"""Tests of training.objectives: WGAN-GP terms, hybrid loss and Lei et al.'s lambda schedule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from training.models import WGANCritic
from training.objectives import (
    HybridSchedule,
    critic_loss,
    generator_adversarial_loss,
    gradient_penalty,
    hybrid_generator_loss,
    l1_loss,
)


class LinearCritic(nn.Module):
    """D(x) = <w, x> per sample (its input gradient is w everywhere)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(*shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.w).flatten(1).sum(dim=1)


class CountingCritic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.inner = WGANCritic()

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def test_l1_loss():
    a, b = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[0.0, 2.0], [5.0, 4.0]])
    assert l1_loss(a, b).item() == pytest.approx(0.75)
    with pytest.raises(ValueError, match="shapes differ"):
        l1_loss(a, b[:1])


@pytest.mark.parametrize("eta", [10.0, 3.0])
def test_gradient_penalty_of_a_linear_critic(eta):
    torch.manual_seed(0)
    critic = LinearCritic((6, 5))
    real, fake = torch.randn(4, 6, 5), torch.randn(4, 6, 5)
    gp = gradient_penalty(critic, real, fake, eta=eta)
    expected = eta * (critic.w.detach().norm() - 1.0) ** 2
    torch.testing.assert_close(gp.detach(), expected)
    # differentiable w.r.t. the critic (create_graph): d/dw eta (||w|| - 1)^2 = 2 eta (||w|| - 1) w / ||w||
    gp.backward()
    w = critic.w.detach()
    torch.testing.assert_close(critic.w.grad, 2 * eta * (w.norm() - 1) * w / w.norm())


def test_gradient_penalty_is_zero_for_a_unit_norm_critic_and_uses_per_sample_alpha():
    critic = LinearCritic((3, 4))
    with torch.no_grad():
        critic.w /= critic.w.norm()
    real, fake = torch.randn(5, 3, 4), torch.randn(5, 3, 4)
    assert gradient_penalty(critic, real, fake).item() == pytest.approx(0.0, abs=1e-10)

    # a quadratic critic D(x) = 0.5 ||x||^2 has grad x_hat: check the interpolation with given alphas
    class Quadratic(nn.Module):
        def forward(self, x):
            return 0.5 * x.flatten(1).pow(2).sum(1)

    alpha = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    x_hat = alpha[:, None, None] * real + (1 - alpha[:, None, None]) * fake
    expected = 10.0 * ((x_hat.flatten(1).norm(dim=1) - 1) ** 2).mean()
    torch.testing.assert_close(gradient_penalty(Quadratic(), real, fake, alpha=alpha), expected)


def test_critic_and_generator_losses():
    torch.manual_seed(0)
    critic = LinearCritic((8, 8))
    real, fake = torch.randn(3, 8, 8), torch.randn(3, 8, 8, requires_grad=True)
    w = critic.w.detach()
    d_real, d_fake = (real * w).sum((1, 2)), (fake.detach() * w).sum((1, 2))
    loss = critic_loss(critic, real, fake, eta=10.0)
    torch.testing.assert_close(loss.detach(), d_fake.mean() - d_real.mean() + 10.0 * (w.norm() - 1) ** 2)
    loss.backward()
    assert fake.grad is None  # the critic step does not train the generator
    g = generator_adversarial_loss(critic, fake)
    torch.testing.assert_close(g.detach(), -d_fake.mean())


def test_critic_loss_runs_on_the_real_critic():
    critic = WGANCritic()
    real, fake = torch.rand(2, 33, 47), torch.rand(2, 33, 47)
    loss = critic_loss(critic, real, fake)
    loss.backward()
    assert all(p.grad is not None for p in critic.parameters())


def test_hybrid_schedule_values():
    s = HybridSchedule()
    assert (s.pure_l1_batches, s.ramp_batches, s.lambda_max) == (500, 1000, 0.99)
    assert s(0) == 1.0
    assert s(499) == 1.0
    assert s(500) == 1.0
    assert s(1000) == pytest.approx(0.995)
    assert s(1500) == pytest.approx(0.99)
    assert s(5000) == pytest.approx(0.99)
    values = [s(t) for t in range(0, 3000, 7)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # non-increasing
    assert s.is_pure_l1(499) and not s.is_pure_l1(501)
    assert HybridSchedule(0, 0, 0.9)(0) == pytest.approx(0.9)
    with pytest.raises(ValueError):
        HybridSchedule(lambda_max=1.5)


def test_hybrid_generator_loss():
    torch.manual_seed(0)
    critic = CountingCritic()
    pred = torch.rand(2, 32, 32, requires_grad=True)
    target = torch.rand(2, 32, 32)

    loss, terms = hybrid_generator_loss(critic, pred, target, lam=1.0)
    assert critic.calls == 0  # pure L1: the critic is not evaluated
    torch.testing.assert_close(loss, l1_loss(pred, target))
    assert terms["adv"] == 0.0 and terms["lambda"] == 1.0
    loss, _ = hybrid_generator_loss(None, pred, target, lam=1.0)

    lam = 0.99
    loss, terms = hybrid_generator_loss(critic, pred, target, lam=lam)
    expected = -(1 - lam) * critic(pred).mean() + lam * l1_loss(pred, target)
    torch.testing.assert_close(loss, expected)
    assert terms["l1"] == pytest.approx(l1_loss(pred, target).item())
    loss.backward()
    assert pred.grad is not None
    with pytest.raises(ValueError, match="critic"):
        hybrid_generator_loss(None, pred, target, lam=0.5)

    complex_critic = WGANCritic(in_channels=2)
    z = torch.randn(2, 32, 32, 2)
    loss, terms = hybrid_generator_loss(complex_critic, pred, target, 0.5, critic_input=z)
    torch.testing.assert_close(loss, -0.5 * complex_critic(z).mean() + 0.5 * l1_loss(pred, target))
