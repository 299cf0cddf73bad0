"""Configuration shared by every family's run: the federation rounds and the torch device."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from mrcore.config import ConfigError
from training.federation.compression import CompressionConfig

MODES = ("fedavg", "gradient_average")


@dataclass(frozen=True)
class SecureAggregationConfig:
    """SecAgg+ (Flower's ``SecAggPlusWorkflow`` / ``secaggplus_mod``) of the generator weights: the coordinator
    only learns the weighted sum over the sites, never one site's weights.

    Each site multiplies its weights by ``num_examples / max_weight`` (so the sum is FedAvg's weighted sum and
    the summed factors its denominator), clips to ``+-clipping_range``, quantizes to ``quantization_bits`` bits
    and masks the integers; the masks cancel in the sum (modulo 2**32).
    """

    enabled: bool = False
    num_shares: int = 0                 # Shamir shares of each site's mask secrets; 0: every training site
    reconstruction_threshold: int = 0   # shares that recover a secret (sites that must stay); 0: all shares
    max_weight: float = 1000.0          # >= any site's examples per round; smaller is more precise
    clipping_range: float = 8.0         # |weight * num_examples / max_weight| must stay below this
    quantization_bits: int = 0          # 0: as many as the 32-bit modulus allows for the number of sites

    def __post_init__(self) -> None:
        if self.num_shares < 0 or self.reconstruction_threshold < 0:
            raise ConfigError("federation.secure_aggregation.num_shares and reconstruction_threshold must be >= 0")
        if self.max_weight <= 0 or self.clipping_range <= 0:
            raise ConfigError("federation.secure_aggregation.max_weight and clipping_range must be > 0")
        if not 0 <= self.quantization_bits <= 30:
            raise ConfigError(f"federation.secure_aggregation.quantization_bits must be in [0, 30], "
                              f"got {self.quantization_bits}")

    def shares_and_threshold(self, sites: tuple[str, ...]) -> tuple[int, int]:
        """(number of shares, reconstruction threshold) for these training sites; ConfigError (naming the
        sites) when SecAgg+ cannot run with them, before any round starts."""
        shares = self.num_shares or len(sites)
        threshold = self.reconstruction_threshold or shares
        if len(sites) < 2:
            raise ConfigError(f"federation.secure_aggregation needs at least 2 training sites, got {list(sites)}")
        if shares > len(sites):
            raise ConfigError(f"federation.secure_aggregation.num_shares={shares} exceeds the {len(sites)} "
                              f"training sites {list(sites)}")
        if not 2 <= threshold <= shares:
            raise ConfigError(f"federation.secure_aggregation.reconstruction_threshold={threshold} must be in "
                              f"[2, num_shares={shares}] (training sites: {list(sites)})")
        return shares, threshold

    def bits(self, num_sites: int) -> int:
        """Quantization bits: the configured ones, or the most that keep the sum of ``num_sites`` values
        (and the summed weights) below 2**31 (room under the 2**32 modulus)."""
        auto = 31 - max(1, (num_sites - 1).bit_length())
        bits = self.quantization_bits or auto
        if bits > auto:
            raise ConfigError(f"federation.secure_aggregation.quantization_bits={bits} overflows the 32-bit sum "
                              f"of {num_sites} sites; at most {auto}")
        return bits


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
    secure_aggregation: SecureAggregationConfig = field(default_factory=SecureAggregationConfig)
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
        if self.secure_aggregation.enabled and (self.mode != "fedavg" or self.compression.kind != "none"):
            raise ConfigError("federation.secure_aggregation runs with federation.mode=fedavg and "
                              "federation.compression.kind=none only (SecAgg+ sums masked, quantized weights; "
                              f"got mode={self.mode!r}, compression.kind={self.compression.kind!r})")


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
