"""Configuration schema of a reconstruction run (``configs/recon.yaml``); every key has a default."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mrcore.data.base import CONTRASTS
from mrcore.data.randomize import RandomizationConfig
from mrcore.data.sources import DataConfig
from mrcore.masks import MASK_KINDS
from training.federation.config import FederationConfig, check_device


@dataclass(frozen=True)
class ReconDataConfig:
    """Which slices each site trains on."""

    source: DataConfig = field(default_factory=lambda: DataConfig(matrix=(128, 128), subjects_per_site=8, slices_per_subject=12))
    train_sites: tuple[str, ...] = ("hospital-a", "hospital-b", "hospital-d")
    heldout_site: str | None = "hospital-c"
    heldout_adapt_subjects: int = 0  # first N subjects of the held-out site: unlabeled k-space for FL-MRCM, not tested
    contrasts: tuple[str, ...] = ("T2w",)
    num_coils: int = 8
    val_subjects: int = 2            # per site, split by subject
    max_train_slices: int = 0        # per site; 0 = all
    site_train_slices: dict = field(default_factory=dict)  # site -> limit, overrides max_train_slices
    pooled: bool = False             # centralized 'Mix' upper bound: the training sites' data pooled in one site
    max_eval_slices: int = 24        # per site, for validation / held-out metrics
    # Domain randomisation (mrcore.data.randomize): the training sites draw every example from these ranges
    # instead of reading their phantom slices (the held-out site stays the phantom's, for the phantom table)
    randomize: RandomizationConfig | None = None
    train_batches: int = 60          # randomised batches per site and round (each of objective.batch_size)
    val_batches: int = 8             # fixed randomised validation batches per site

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
        if self.heldout_adapt_subjects < 0:
            raise ValueError(f"data.heldout_adapt_subjects must be >= 0, got {self.heldout_adapt_subjects}")
        if self.heldout_adapt_subjects and self.heldout_site is None:
            raise ValueError("data.heldout_adapt_subjects needs data.heldout_site (the target site of FL-MRCM)")
        if self.train_batches < 1 or self.val_batches < 1:
            raise ValueError("data.train_batches and data.val_batches must be >= 1")


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

    generator: Literal["unrolled", "plain", "unet", "unrolled_fast"] = "unrolled"
    num_cascades: int = 3
    chans: int = 32
    num_res_blocks: int = 2
    estimate_maps: bool = True
    sens_chans: int = 8
    critic_input: Literal["magnitude", "complex"] = "magnitude"
    num_pools: int = 2               # unrolled_fast: U-Net levels per cascade
    virtual_coils: int = 8           # unrolled_fast: SVD coil compression target (training data and serving client)

    def __post_init__(self) -> None:
        if self.num_cascades < 0 or self.chans < 1 or self.num_pools < 0 or self.virtual_coils < 1:
            raise ValueError("model.num_cascades and model.num_pools must be >= 0, model.chans and "
                             "model.virtual_coils >= 1")


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
    ssim_weight: float = 0.0         # paired loss: L1 + ssim_weight * (1 - SSIM) (fastMRI's SSIM loss)
    grad_clip: float = 0.0           # clip the generator's gradient norm (0: off)
    lr_final: float = 1.0            # the generator's learning rate decays linearly over the rounds to lr_final * lr

    def __post_init__(self) -> None:
        if not self.lr > 0 or self.batch_size < 1 or self.critic_steps < 1:
            raise ValueError("objective.lr must be > 0, objective.batch_size and critic_steps >= 1")
        if self.ssim_weight < 0 or self.grad_clip < 0:
            raise ValueError("objective.ssim_weight and objective.grad_clip must be >= 0")
        if not 0 < self.lr_final <= 1:
            raise ValueError(f"objective.lr_final must be in (0, 1], got {self.lr_final}")


@dataclass(frozen=True)
class MrcmConfig:
    """FL-MRCM (Guo et al., CVPR 2021): align the source sites' latent features with the target site's.

    The target is ``data.heldout_site``: it trains nothing and shares no weights; every round it computes
    the latent features of ``target_slices`` of its adaptation slices (the undersampled k-space of its first
    ``data.heldout_adapt_subjects`` subjects, no fully sampled labels) with the current global generator,
    average-pooled by ``feature_pool``, and the coordinator passes them to the source sites. Each source
    site keeps its own domain identifier (never sent) that tells its latents from the target's; its
    generator adds ``weight`` x the adversarial loss of fooling it.
    """

    enabled: bool = False
    weight: float = 0.01             # adversarial alignment loss weight (the L1 loss has weight 1)
    target_slices: int = 16          # latent feature maps the target site sends each round
    feature_pool: int = 4            # average pooling of the [chans, H, W] latent before it is sent
    lr: float = 1e-3                 # domain identifier's Adam learning rate (1e-4 stayed at chance: measured)
    identifier_features: tuple[int, ...] = (32, 64)

    def __post_init__(self) -> None:
        if self.weight < 0 or self.target_slices < 1 or self.feature_pool < 1 or not self.lr > 0:
            raise ValueError("mrcm.weight must be >= 0, mrcm.target_slices and mrcm.feature_pool >= 1, mrcm.lr > 0")
        if not self.identifier_features or min(self.identifier_features) < 1:
            raise ValueError("mrcm.identifier_features must be a non-empty list of channel counts >= 1")


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
    mrcm: MrcmConfig = field(default_factory=MrcmConfig)

    def __post_init__(self) -> None:
        check_device(self.device)
        if self.federation.mode == "gradient_average" and self.mrcm.enabled:
            raise ValueError("federation.mode=gradient_average cannot be combined with mrcm.enabled "
                             "(FL-MRCM's target latents are exchanged per FedAvg round)")
        if self.mrcm.enabled:
            if self.data.pooled:
                raise ValueError("mrcm.enabled needs federated sites; it cannot be combined with data.pooled")
            if not self.data.heldout_adapt_subjects:
                raise ValueError("mrcm.enabled needs data.heldout_adapt_subjects >= 1: the target site's subjects "
                                 "whose undersampled k-space is aligned to (they are then left out of the held-out metrics)")
            if self.model.generator in ("unet", "unrolled_fast"):
                raise ValueError("mrcm.enabled needs model.generator 'unrolled' or 'plain' (the others expose no latent features)")
