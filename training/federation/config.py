"""Configuration shared by every family's run: the federation rounds and the torch device."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from mrcore.config import ConfigError
from training.federation.compression import CompressionConfig

MODES = ("fedavg", "gradient_average")


@dataclass(frozen=True)
class FederationConfig:
    """Rounds of FedAvg (weighted by each site's number of examples), or of Isik et al.'s gradient averaging.

    mode : 'fedavg' (sites train ``local_epochs`` and send weights, or compressed weight deltas) or
        'gradient_average' (every ``sync_every`` batches each site sends its generator gradient, the centre
        averages them and takes one optimiser step; critics stay at the sites; one round = one pass over
        each site's training data, as a FedAvg round with ``local_epochs: 1``).
    compression : what a site does to its update before sending it (:mod:`training.federation.compression`).
    """

    rounds: int = 10
    local_epochs: int = 1
    resume: bool = True
    evaluate_sites: bool = True
    round_timeout_s: float = 3600.0
    mode: Literal["fedavg", "gradient_average"] = "fedavg"
    sync_every: int = 1
    compression: CompressionConfig = field(default_factory=CompressionConfig)

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.local_epochs < 1:
            raise ConfigError("federation.rounds and federation.local_epochs must be >= 1")
        if self.mode not in MODES:
            raise ConfigError(f"federation.mode must be one of {MODES}, got {self.mode!r}")
        if self.sync_every < 1:
            raise ConfigError(f"federation.sync_every must be >= 1, got {self.sync_every}")
        if self.mode == "gradient_average" and self.local_epochs != 1:
            raise ConfigError("federation.local_epochs must be 1 with federation.mode=gradient_average "
                              "(a round is one pass over each site's data)")


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
