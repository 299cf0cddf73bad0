"""Configuration schema of a reconstruction run (``configs/recon.yaml``); every key has a default."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mrcore.data.base import CONTRASTS
from mrcore.data.sources import DataConfig
from mrcore.masks import MASK_KINDS
from training.federation.config import FederationConfig, check_device


@dataclass(frozen=True)
class ReconDataConfig:
    """Which slices each site trains on."""

    source: DataConfig = field(default_factory=lambda: DataConfig(matrix=(128, 128), subjects_per_site=8, slices_per_subject=12))
    train_sites: tuple[str, ...] = ("hospital-a", "hospital-b", "hospital-d")
    heldout_site: str | None = "hospital-c"
    contrasts: tuple[str, ...] = ("T2w",)
    num_coils: int = 8
    val_subjects: int = 2            # per site, split by subject
    max_train_slices: int = 0        # per site; 0 = all
    site_train_slices: dict = field(default_factory=dict)  # site -> limit, overrides max_train_slices
    pooled: bool = False             # centralized 'Mix' upper bound: the training sites' data pooled in one site
    max_eval_slices: int = 24        # per site, for validation / held-out metrics

    def __post_init__(self) -> None:
        for c in self.contrasts:
            if c not in CONTRASTS:
                raise ValueError(f"unknown contrast {c!r} in data.contrasts; expected one of {CONTRASTS}")
        if not self.train_sites:
            raise ValueError("data.train_sites must name at least one site")
        if self.heldout_site is not None and self.heldout_site in self.train_sites:
            raise ValueError(f"data.heldout_site {self.heldout_site!r} is also a training site")
        if self.num_coils < 1 or self.val_subjects < 1:
            raise ValueError("data.num_coils and data.val_subjects must be >= 1")


@dataclass(frozen=True)
class MaskConfig:
    """Undersampling: a function of (shape, acceleration, centre fraction, seed)."""

    kind: str = "equispaced"
    acceleration: float = 4.0
    center_fraction: float = 0.08

    def __post_init__(self) -> None:
        if self.kind not in MASK_KINDS:
            raise ValueError(f"unknown mask.kind {self.kind!r}; expected one of {MASK_KINDS}")
        if not self.acceleration > 1:
            raise ValueError(f"mask.acceleration must be > 1, got {self.acceleration}")
        if not 0 < self.center_fraction < 1:
            raise ValueError(f"mask.center_fraction must be in (0, 1), got {self.center_fraction}")


@dataclass(frozen=True)
class ModelConfig:
    """Generator and critic (Lei et al.)."""

    generator: Literal["unrolled", "plain", "unet"] = "unrolled"
    num_cascades: int = 3
    chans: int = 32
    num_res_blocks: int = 2
    estimate_maps: bool = True
    sens_chans: int = 8
    critic_input: Literal["magnitude", "complex"] = "magnitude"


@dataclass(frozen=True)
class ObjectiveConfig:
    """Paired L1, unpaired WGAN-GP, or hybrid (Lei et al. schedule); Adam as in the seed."""

    kind: Literal["paired", "unpaired", "hybrid"] = "paired"
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int = 4
    critic_steps: int = 1
    gp_eta: float = 10.0
    pure_l1_batches: int = 500
    ramp_batches: int = 1000
    lambda_max: float = 0.99

    def __post_init__(self) -> None:
        if not self.lr > 0 or self.batch_size < 1 or self.critic_steps < 1:
            raise ValueError("objective.lr must be > 0, objective.batch_size and critic_steps >= 1")


@dataclass(frozen=True)
class ReconRunConfig:
    """A whole reconstruction run."""

    family: Literal["recon"] = "recon"
    name: str = "recon-default"
    run_dir: Path = Path("runs/recon-default")
    seed: int = 0
    device: str = "cpu"              # "cuda" on a GPU host (refused when no GPU is visible)
    data: ReconDataConfig = field(default_factory=ReconDataConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)

    def __post_init__(self) -> None:
        check_device(self.device)
