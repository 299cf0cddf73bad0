"""DP-SGD helpers: the per-site accountant, the budget check, and that a private step clips and noises."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mrcore.config import ConfigError, build
from training.federation.family import StopRun
from training.privacy import (
    PrivacyBudgetExceeded,
    PrivacyConfig,
    check_budget,
    epsilon,
    make_private,
    per_layer_bounds,
    projected_epsilon,
)


def test_epsilon_grows_with_steps_and_shrinks_with_noise():
    q, delta = 0.05, 1e-5
    by_steps = [epsilon([(1.07, q, n)], delta) for n in (10, 100, 1000)]
    assert 0 < by_steps[0] < by_steps[1] < by_steps[2]
    by_noise = [epsilon([(s, q, 200)], delta) for s in (0.5, 1.07, 2.0)]
    assert by_noise[0] > by_noise[1] > by_noise[2] > 0
    assert epsilon([], delta) == 0.0


def test_epsilon_matches_opacus_accountant_computed_independently():
    """Rounds composed from our history == one RDPAccountant stepped step by step (and the closed-form RDP)."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as analysis

    sigma, q, delta = 1.07, 8 / 100, 1e-5
    rounds = [13, 13, 13]
    acc = RDPAccountant()
    for _ in range(sum(rounds)):
        acc.step(noise_multiplier=sigma, sample_rate=q)
    ours = epsilon([(sigma, q, n) for n in rounds], delta)
    assert ours == pytest.approx(acc.get_epsilon(delta=delta), rel=1e-9)
    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=sum(rounds), orders=orders)
    closed, _ = analysis.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    assert ours == pytest.approx(closed, rel=1e-9)
    assert projected_epsilon([(sigma, q, 26)], sigma, q, 13, delta) == pytest.approx(ours, rel=1e-9)


def test_budget_check_stops_before_the_round_that_would_exceed_it():
    cfg = PrivacyConfig(epsilon_budget=3.0)
    hist = []
    eps1 = check_budget(cfg, hist, 0.08, 13, "hospital-a", 1)
    assert eps1 < 3.0
    hist.append((cfg.noise_multiplier, 0.08, 13))
    with pytest.raises(PrivacyBudgetExceeded, match=r"round 2 would take site 'hospital-a' .* above privacy.epsilon_budget=3") as info:
        for r in range(2, 50):
            check_budget(cfg, hist, 0.08, 13, "hospital-a", r)
            hist.append((cfg.noise_multiplier, 0.08, 13))
    assert isinstance(info.value, StopRun) and str(info.value).startswith(StopRun.MARKER)
    assert check_budget(PrivacyConfig(), hist * 10, 0.08, 13, "x", 9) > 3.0  # no budget: never stops


@pytest.mark.parametrize("key,value,match", [
    ("noise_multiplier", 0.0, "noise_multiplier must be a number > 0"),
    ("noise_multiplier", -1.0, "noise_multiplier must be a number > 0"),
    ("max_grad_norm", 0.0, "max_grad_norm .* must be a number > 0"),
    ("delta", 1.0, r"delta must be in \(0, 1\)"),
    ("delta", 0.0, r"delta must be in \(0, 1\)"),
    ("epsilon_budget", -2.0, "epsilon_budget must be a number > 0"),
    ("per_layer_exponent", -0.5, r"per_layer_exponent must be a number in \[0, 1\]"),
    ("per_layer_exponent", 1.5, r"per_layer_exponent must be a number in \[0, 1\]"),
])
def test_out_of_range_dp_parameters_are_refused(key, value, match):
    with pytest.raises(ConfigError, match=match):
        build(PrivacyConfig, {key: value}, "privacy.")


def _private_step(noise: float, clip: float, seed: int = 0, clipping: str = "flat"):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.GroupNorm(1, 2), nn.Flatten(), nn.Linear(2 * 8 * 8, 1))
    x = torch.randn(16, 1, 8, 8)
    y = torch.randn(16, 1)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    p = make_private(net, opt, loader, PrivacyConfig(noise_multiplier=noise, max_grad_norm=clip, poisson_sampling=False,
                                                     clipping=clipping), noise_seed=seed)
    p.optimizer.zero_grad()
    loss = ((p.module(x) - y) ** 2).mean()
    loss.backward()
    per_sample = torch.cat([q.grad_sample.flatten(1) for q in net.parameters()], 1)
    p.optimizer.step()
    grads = torch.cat([q.grad.flatten() for q in net.parameters()])
    return per_sample, grads, p


def test_private_step_clips_per_sample_gradients_and_adds_noise():
    per_sample, _, _ = _private_step(1e-12, 1e6)
    assert per_sample.shape[0] == 16 and per_sample.norm(dim=1).min() > 0.01  # per-sample gradients exist
    # no noise, huge bound: the plain mean gradient
    _, g_plain, _ = _private_step(1e-12, 1e6)
    torch.testing.assert_close(g_plain, per_sample.mean(0), rtol=1e-4, atol=1e-6)
    # tiny bound: each sample's gradient scaled to norm 0.01, so the mean has norm <= 0.01
    _, g_clip, _ = _private_step(1e-12, 0.01)
    assert g_clip.norm() <= 0.01 + 1e-6 and not torch.allclose(g_clip, g_plain)
    # noise: std noise * clip / batch per coordinate, reproducible from the seed
    _, g_noisy, p = _private_step(1.0, 0.01, seed=3)
    _, g_noisy2, _ = _private_step(1.0, 0.01, seed=3)
    torch.testing.assert_close(g_noisy, g_noisy2)
    assert (g_noisy - g_clip).std() == pytest.approx(1.0 * 0.01 / 16, rel=0.3)
    assert len(p.accountant.history) == 1 and p.accountant.history[0][2] == 1


def test_per_layer_clipping_bounds_every_tensor_with_the_same_total_sensitivity():
    params = [torch.zeros(2, 1, 3, 3), torch.zeros(2), torch.zeros(1, 128)]
    bounds = per_layer_bounds(params, 1.3)
    assert sum(b * b for b in bounds) == pytest.approx(1.3 ** 2)  # sensitivity (and noise, epsilon) unchanged
    assert bounds[2] > bounds[0] > bounds[1]  # proportional to sqrt(size)
    # tiny bound, no noise: every tensor's part of the per-sample gradient is clipped to its own bound
    per_sample, g_layer, p = _private_step(1e-12, 0.01, clipping="per_layer")
    net_params = list(p.module.parameters())
    offset = 0
    for q, bound in zip(net_params, per_layer_bounds(net_params, 0.01)):
        n = q.numel()
        assert g_layer[offset:offset + n].norm() <= bound + 1e-7
        offset += n
    _, g_flat, _ = _private_step(1e-12, 0.01)
    assert not torch.allclose(g_layer, g_flat)
    # noise: the same std as flat clipping with that C (noise multiplier x total bound / batch)
    _, g_noisy, _ = _private_step(1.0, 0.01, seed=3, clipping="per_layer")
    assert (g_noisy - g_layer).std() == pytest.approx(1.0 * 0.01 / 16, rel=0.3)
    with pytest.raises(ConfigError, match="clipping must be 'flat' or 'per_layer'"):
        build(PrivacyConfig, {"clipping": "ghost"}, "privacy.")


@pytest.mark.parametrize("exponent", [0.0, 0.25, 0.5, 1.0])
def test_per_layer_budget_exponent_keeps_the_sensitivity(exponent):
    params = [torch.zeros(4, 4, 3, 3), torch.zeros(4), torch.zeros(1)]
    bounds = per_layer_bounds(params, 2.0, exponent)
    assert sum(b * b for b in bounds) == pytest.approx(4.0)  # the same noise and epsilon for every exponent
    ratio = bounds[0] / bounds[1]
    assert ratio == pytest.approx((144 / 4) ** exponent)  # C_i ~ n_i ** exponent
    if exponent == 0.5:
        assert bounds == pytest.approx([2.0 * (n / 149) ** 0.5 for n in (144, 4, 1)])
