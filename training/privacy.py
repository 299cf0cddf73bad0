"""Per-sample differential privacy (DP-SGD, Opacus) for the shared weights of a site, with one privacy
accountant per site that persists across federated rounds.

What is private: every per-sample gradient of the *shared* module (the generators) is clipped to
``max_grad_norm`` (L2 over all its parameters) and Gaussian noise of standard deviation
``noise_multiplier * max_grad_norm`` is added to their sum (Opacus' ``DPOptimizer``); batches are drawn by
Poisson sampling with rate ``q = batch_size / N`` (Opacus' ``DPDataLoader``). The site's RDP accountant
(``opacus.accountants.RDPAccountant``) composes every step of every round; its history (a list of
``(noise_multiplier, q, steps)``) is saved in the site's private state and reloaded next round, so the
reported ``(epsilon, delta)`` covers the whole run of that site.

Modules that stay at the site (discriminators, critics) are not made private here: they are never sent.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from opacus import PrivacyEngine
from opacus.accountants import RDPAccountant
from torch import nn
from torch.utils.data import DataLoader

from mrcore.config import ConfigError
from training.federation.family import StopRun


@dataclass(frozen=True)
class PrivacyConfig:
    """DP-SGD settings of a run (``privacy:`` section); defaults are FedMed-GAN's.

    Attributes
    ----------
    enabled : bool
    noise_multiplier : float
        sigma > 0: noise standard deviation in units of ``max_grad_norm``.
    max_grad_norm : float
        Per-sample clip bound C > 0 (L2 norm over all shared parameters).
    delta : float
        Target delta in (0, 1) of the reported (epsilon, delta).
    epsilon_budget : float or None
        Stop the run before a round that would take any site's epsilon above this (None: no limit).
    poisson_sampling : bool
        Poisson sampling of batches (needed for the RDP analysis of the subsampled Gaussian mechanism;
        with False, batches are shuffled and the reported epsilon is only an approximation).
    clipping : 'flat' | 'per_layer'
        'flat': the per-sample gradient of all shared parameters together is clipped to C. 'per_layer':
        each parameter tensor i is clipped to its own ``C_i = C * sqrt(n_i / n)`` (n_i its number of
        elements, n the total), so ``sqrt(sum C_i^2) = C``: the same sensitivity, noise and epsilon, but one
        tensor with large gradients cannot use up the whole clip budget of the others (Opacus' per-layer
        clipping; budgets proportional to size give every clipped tensor the same signal-to-noise ratio).
    per_layer_exponent : float
        p in [0, 1] of per-layer clipping's budgets ``C_i ~ n_i^p`` (scaled so that ``sqrt(sum C_i^2) = C``):
        0.5 (default) is the square root of the size above, 0 the same budget for every tensor, 1 budgets
        proportional to the size (favouring large tensors). Ignored by 'flat'.
    """

    enabled: bool = True
    noise_multiplier: float = 1.07
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    epsilon_budget: float | None = None
    poisson_sampling: bool = True
    clipping: str = "flat"
    per_layer_exponent: float = 0.5

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise ConfigError(f"privacy.noise_multiplier must be a number > 0, got {self.noise_multiplier!r}")
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise ConfigError(f"privacy.max_grad_norm (the clip bound) must be a number > 0, got {self.max_grad_norm!r}")
        if not 0 < self.delta < 1:
            raise ConfigError(f"privacy.delta must be in (0, 1), got {self.delta!r}")
        if self.clipping not in ("flat", "per_layer"):
            raise ConfigError(f"privacy.clipping must be 'flat' or 'per_layer', got {self.clipping!r}")
        if not (math.isfinite(self.per_layer_exponent) and 0 <= self.per_layer_exponent <= 1):
            raise ConfigError(f"privacy.per_layer_exponent must be a number in [0, 1], got {self.per_layer_exponent!r}")
        if self.epsilon_budget is not None and not (math.isfinite(self.epsilon_budget) and self.epsilon_budget > 0):
            raise ConfigError(f"privacy.epsilon_budget must be a number > 0 or null, got {self.epsilon_budget!r}")


class PrivacyBudgetExceeded(StopRun):
    """A round would take a site's epsilon above ``privacy.epsilon_budget``: the run stops before it."""


def accountant_from_history(history: list | tuple = ()) -> RDPAccountant:
    """An ``RDPAccountant`` holding ``history`` (list of ``(noise_multiplier, sample_rate, steps)``)."""
    acc = RDPAccountant()
    acc.history = [(float(s), float(q), int(n)) for s, q, n in history]
    return acc


def epsilon(history: list | tuple, delta: float) -> float:
    """Epsilon at ``delta`` of the composed steps in ``history`` (0 for no steps)."""
    if not history:
        return 0.0
    return float(accountant_from_history(history).get_epsilon(delta=delta))


def projected_epsilon(history: list | tuple, noise_multiplier: float, sample_rate: float, steps: int,
                      delta: float) -> float:
    """Epsilon after ``history`` plus ``steps`` more steps of (``noise_multiplier``, ``sample_rate``)."""
    return epsilon([*history, (noise_multiplier, sample_rate, steps)], delta)


def check_budget(cfg: PrivacyConfig, history: list | tuple, sample_rate: float, steps: int, site: str,
                 server_round: int) -> float:
    """Epsilon the site would have after this round; raises :class:`PrivacyBudgetExceeded` if it would
    exceed ``cfg.epsilon_budget`` (checked *before* any private data is touched in the round)."""
    eps_next = projected_epsilon(history, cfg.noise_multiplier, sample_rate, steps, cfg.delta)
    if cfg.epsilon_budget is not None and eps_next > cfg.epsilon_budget:
        now = epsilon(history, cfg.delta)
        raise PrivacyBudgetExceeded(
            f"privacy budget: round {server_round} would take site {site!r} from epsilon={now:.3f} to "
            f"{eps_next:.3f} (delta={cfg.delta:g}), above privacy.epsilon_budget={cfg.epsilon_budget:g}; "
            f"training stopped, the last checkpoint (round {server_round - 1}) is the final model. "
            "Raise the budget or the noise multiplier, or train fewer rounds."
        )
    return eps_next


def per_layer_bounds(params: list[torch.Tensor], max_grad_norm: float, exponent: float = 0.5) -> list[float]:
    """Clip bound of each parameter tensor for per-layer clipping: ``C_i ~ n_i ** exponent`` (n_i its number of
    elements; 0.5: ``C * sqrt(n_i / n)``), scaled so that the bounds' L2 norm (the sensitivity Opacus adds noise
    for) is ``max_grad_norm``."""
    weights = [p.numel() ** exponent for p in params]
    norm = math.sqrt(sum(w * w for w in weights))
    return [max_grad_norm * w / norm for w in weights]


@dataclass
class PrivateTraining:
    """The objects of one site's private local training (returned by :func:`make_private`)."""

    module: nn.Module            # GradSampleModule around the shared module
    optimizer: torch.optim.Optimizer  # DPOptimizer
    loader: DataLoader           # Poisson-sampled DPDataLoader
    accountant: RDPAccountant    # the site's accountant, history of earlier rounds included
    sample_rate: float


def make_private(module: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader, cfg: PrivacyConfig,
                 history: list | tuple = (), noise_seed: int | None = None) -> PrivateTraining:
    """Wrap ``module`` (the shared weights only), its ``optimizer`` and ``loader`` with Opacus.

    ``history``: the site's accountant history from earlier rounds. ``noise_seed`` seeds the Gaussian
    noise (reproducible runs and resume; not cryptographically secure: see Opacus' ``secure_mode``).
    """
    # Opacus draws the noise on the parameters' device with this generator, which must live there too
    device = next(p.device for g in optimizer.param_groups for p in g["params"])
    gen = torch.Generator(device=device).manual_seed(int(noise_seed)) if noise_seed is not None else None
    max_grad_norm: float | list[float] = cfg.max_grad_norm
    if cfg.clipping == "per_layer":
        max_grad_norm = per_layer_bounds([p for g in optimizer.param_groups for p in g["params"] if p.requires_grad],
                                         cfg.max_grad_norm, cfg.per_layer_exponent)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant="rdp")
        engine.accountant = accountant_from_history(history)
        module, optimizer, loader = engine.make_private(
            module=module, optimizer=optimizer, data_loader=loader, noise_multiplier=cfg.noise_multiplier,
            max_grad_norm=max_grad_norm, poisson_sampling=cfg.poisson_sampling, noise_generator=gen,
            clipping=cfg.clipping,
        )
    return PrivateTraining(module, optimizer, loader, engine.accountant, 1.0 / len(loader))
