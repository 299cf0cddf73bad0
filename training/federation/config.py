"""Configuration shared by every family's run: the federation rounds and the torch device."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mrcore.config import ConfigError


@dataclass(frozen=True)
class FederationConfig:
    """Rounds of FedAvg (weighted by each site's number of examples)."""

    rounds: int = 10
    local_epochs: int = 1
    resume: bool = True
    evaluate_sites: bool = True
    round_timeout_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.local_epochs < 1:
            raise ConfigError("federation.rounds and federation.local_epochs must be >= 1")


def linear_lr_factor(server_round: int, rounds: int, final: float) -> float:
    """Learning-rate factor of ``server_round`` (1-based) of ``rounds``: linear from 1 to ``final``."""
    if rounds <= 1:
        return 1.0
    t = min(max(server_round - 1, 0), rounds - 1) / (rounds - 1)
    return 1.0 + t * (final - 1.0)


def check_device(device: str) -> None:
    """ConfigError unless ``device`` is 'cpu', 'cuda' or 'cuda:N'."""
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def torch_device(device: str):
    """The configured ``torch.device``; a GPU that is asked for but not visible is an error, not a fallback."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} was configured but no CUDA GPU is visible to torch")
    return torch.device(device)
