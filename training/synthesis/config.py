"""Configuration schema of a synthesis run (``configs/synthesis.yaml``); every key has a default.

Errors name the key and the allowed values, e.g.
``ConfigError: synthesis.direction: unknown contrast 'T3w' in 'T1w->T3w'; expected one of 'T1w', ...``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mrcore.config import ConfigError
from mrcore.data.base import CONTRASTS
from mrcore.data.sources import DataConfig
from training.federation.config import FederationConfig, check_device
from training.privacy import PrivacyConfig

PARTITIONS = ("average", "gradual", "extreme")


def parse_direction(text: str, key: str = "synthesis.direction") -> tuple[str, str]:
    """``"T1w->T2w"`` -> ``("T1w", "T2w")``; both names from :data:`CONTRASTS` and different."""
    parts = [p.strip() for p in str(text).split("->")]
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"{key} must look like 'T1w->T2w' (source->target), got {text!r}")
    for c in parts:
        if c not in CONTRASTS:
            raise ConfigError(f"{key}: unknown contrast {c!r} in {text!r}; expected one of {', '.join(map(repr, CONTRASTS))}")
    if parts[0] == parts[1]:
        raise ConfigError(f"{key}: source and target contrast are both {parts[0]!r}")
    return parts[0], parts[1]


@dataclass(frozen=True)
class SynthesisDataConfig:
    """Which slices each site trains on (FedMed-GAN's data scenarios).

    ``partition`` splits ``train_slices_total`` training slices over ``train_sites`` ('average': equal,
    'gradual': proportional to n, n-1, ..., 1 (0.4/0.3/0.2/0.1 for 4 sites), 'extreme': 0.7 to the first
    site, the rest shared equally); each site draws its share from its own training subjects.
    ``paired_ratio`` (per site: ``site_paired_ratio``) is the fraction of a site's training slices whose
    two contrasts are used as an aligned pair; the others are unpaired (target from another slice,
    misaligned by ``augment``). ``site_contrasts`` restricts the contrasts a site is treated as having
    (a hospital that never acquired one). Held out: ``test_subjects`` per site, or ``heldout_site``.
    """

    source: DataConfig = field(default_factory=lambda: DataConfig(matrix=(64, 64), subjects_per_site=20, slices_per_subject=48))
    train_sites: tuple[str, ...] = ("hospital-a", "hospital-b", "hospital-c", "hospital-d")
    heldout_site: str | None = None
    val_subjects: int = 1
    test_subjects: int = 2
    partition: Literal["average", "gradual", "extreme"] = "average"
    train_slices_total: int = 3200
    paired_ratio: float = 0.5
    site_paired_ratio: dict = field(default_factory=dict)
    site_contrasts: dict = field(default_factory=dict)
    pooled: bool = False           # centralized baseline: every site's partition pooled in one site
    max_eval_slices: int = 32      # per site and split (spread over the split's slices)

    def __post_init__(self) -> None:
        if not self.train_sites:
            raise ConfigError("data.train_sites must name at least one site")
        if len(set(self.train_sites)) != len(self.train_sites):
            raise ConfigError(f"data.train_sites must be distinct, got {list(self.train_sites)}")
        if self.heldout_site is not None and self.heldout_site in self.train_sites:
            raise ConfigError(f"data.heldout_site {self.heldout_site!r} is also a training site")
        if self.val_subjects < 1 or self.test_subjects < 0:
            raise ConfigError("data.val_subjects must be >= 1 and data.test_subjects >= 0")
        if self.heldout_site is None and self.test_subjects < 1:
            raise ConfigError("without data.heldout_site, data.test_subjects must be >= 1 (the held-out subjects)")
        if self.train_slices_total < len(self.train_sites):
            raise ConfigError(f"data.train_slices_total must be >= the number of sites, got {self.train_slices_total}")
        for name, r in [("data.paired_ratio", self.paired_ratio),
                        *[(f"data.site_paired_ratio.{k}", v) for k, v in self.site_paired_ratio.items()]]:
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r <= 1:
                raise ConfigError(f"{name} must be a number in [0, 1], got {r!r}")
        for site in {**self.site_paired_ratio, **self.site_contrasts}:
            if site not in self.train_sites and site != self.heldout_site:
                raise ConfigError(f"data.site_paired_ratio/site_contrasts name {site!r}, which is not a site of this run")
        for site, cs in self.site_contrasts.items():
            if not isinstance(cs, (list, tuple)):
                raise ConfigError(f"data.site_contrasts.{site} must be a list of contrasts, got {cs!r}")
            for c in cs:
                if c not in CONTRASTS:
                    raise ConfigError(f"data.site_contrasts.{site}: unknown contrast {c!r}; expected one of "
                                     f"{', '.join(map(repr, CONTRASTS))}")
        if self.max_eval_slices < 1:
            raise ConfigError("data.max_eval_slices must be >= 1")


@dataclass(frozen=True)
class SynthesisConfig:
    """Which contrasts: ``direction`` 'A->B' trains G_AB (A to B) and G_BA (B to A) together."""

    direction: str = "T1w->T2w"

    def __post_init__(self) -> None:
        parse_direction(self.direction)

    @property
    def contrasts(self) -> tuple[str, str]:
        return parse_direction(self.direction)


@dataclass(frozen=True)
class AugmentConfig:
    """Misalignment of unpaired targets (FedMed-GAN): random rotation, translation and scaling."""

    misalign: bool = True
    rotation_deg: float = 10.0      # uniform in [-r, r]
    translation: float = 0.05       # fraction of the image size, uniform in [-t, t] per axis
    scale: tuple[float, float] = (0.9, 1.1)
    patch_size: int = 0             # train on random square patches of this size (0: whole slices)

    def __post_init__(self) -> None:
        if self.patch_size < 0 or 0 < self.patch_size < 16:
            raise ConfigError(f"augment.patch_size must be 0 (whole slices) or >= 16, got {self.patch_size}")
        if not 0 <= self.rotation_deg <= 180 or not 0 <= self.translation < 0.5:
            raise ConfigError("augment.rotation_deg must be in [0, 180] and augment.translation in [0, 0.5)")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ConfigError(f"augment.scale must be [low, high] with 0 < low <= high, got {list(self.scale)}")


@dataclass(frozen=True)
class SynthesisModelConfig:
    """CycleGAN generators (both the same architecture) and PatchGAN discriminators."""

    generator: Literal["resnet", "unet", "curve"] = "resnet"
    chans: int = 4
    depth: int = 2                  # down/up-sampling steps
    num_res_blocks: int = 1         # resnet only
    norm: Literal["instance", "group", "none"] = "instance"
    residual: bool = False          # generators predict x + net(x) (start from the identity map)
    curve_hidden: int = 16          # 'curve' generator: units of its pixel-wise tissue curve
    disc_chans: int = 8
    disc_layers: int = 3
    init_weights: str | None = None  # generators' starting weights pretrained outside the run's sites
                                     # (training.synthesis.pretrained); None: random (seeded) weights

    def __post_init__(self) -> None:
        if self.init_weights is not None and not str(self.init_weights).endswith(".npz"):
            raise ConfigError(f"model.init_weights must be a .npz file written by `mri-train publish-init`, got {self.init_weights!r}")
        if self.generator == "curve" and self.residual:
            raise ConfigError("model.residual applies to 'resnet' and 'unet'; the 'curve' generator starts from its curve")
        if self.curve_hidden < 1:
            raise ConfigError(f"model.curve_hidden must be >= 1, got {self.curve_hidden}")
        if self.chans < 1 or self.depth < 0 or self.num_res_blocks < 0 or self.disc_chans < 1 or self.disc_layers < 1:
            raise ConfigError("model.chans, model.disc_chans, model.disc_layers must be >= 1, depth/num_res_blocks >= 0")


@dataclass(frozen=True)
class SynthesisObjectiveConfig:
    """CycleGAN losses (LSGAN adversarial, L1 cycle, optional identity and paired L1); Adam (0.5, 0.999)."""

    gan_weight: float = 1.0
    cycle_weight: float = 10.0
    identity_weight: float = 0.0     # times cycle_weight, as in CycleGAN (0.5 there); 0 = off
    paired_l1_weight: float = 40.0   # on the paired records only; 0 = off
    curve_weight: float = 0.0        # 'curve' generators: L1 of the tissue curve alone on the paired records, so the
                                     # curve (not the context network) carries the contrast; 0 = off
    lr: float = 1e-2
    disc_lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    batch_size: int = 64             # expected batch size (Poisson sampling under DP)
    micro_batch_size: int = 16       # records per forward/backward pass (a batch is cut in near-equal chunks,
                                     # one step per batch: same step, less memory, faster here); 0 = whole batch
    lr_final: float = 0.1            # learning rates decay linearly over the rounds to lr_final * lr (1 = constant)

    def lr_factor(self, server_round: int, rounds: int) -> float:
        """Learning-rate factor of ``server_round`` (1-based) of ``rounds``: linear from 1 to ``lr_final``."""
        if rounds <= 1:
            return 1.0
        t = min(max(server_round - 1, 0), rounds - 1) / (rounds - 1)
        return 1.0 + t * (self.lr_final - 1.0)

    def __post_init__(self) -> None:
        for k in ("gan_weight", "cycle_weight", "identity_weight", "paired_l1_weight", "curve_weight"):
            if getattr(self, k) < 0:
                raise ConfigError(f"objective.{k} must be >= 0, got {getattr(self, k)}")
        if not self.lr > 0 or not self.disc_lr > 0 or self.batch_size < 1:
            raise ConfigError("objective.lr and objective.disc_lr must be > 0, objective.batch_size >= 1")
        if self.micro_batch_size < 0:
            raise ConfigError(f"objective.micro_batch_size must be >= 0 (0: the whole batch at once), got {self.micro_batch_size}")
        if not 0 < self.lr_final <= 1:
            raise ConfigError(f"objective.lr_final must be in (0, 1], got {self.lr_final}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"objective.betas must be in [0, 1), got {list(self.betas)}")


@dataclass(frozen=True)
class SynthesisFederationConfig(FederationConfig):
    """Rounds of FedAvg (weighted by each site's number of training records); 12 by default."""

    rounds: int = 12


@dataclass(frozen=True)
class SynthesisRunConfig:
    """A whole synthesis run (FedMed-GAN: federated CycleGAN with DP-SGD on the generators)."""

    family: Literal["synthesis"] = "synthesis"
    name: str = "synthesis-default"
    run_dir: Path = Path("runs/synthesis-default")
    seed: int = 0
    device: str = "cpu"
    data: SynthesisDataConfig = field(default_factory=SynthesisDataConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: SynthesisModelConfig = field(default_factory=SynthesisModelConfig)
    objective: SynthesisObjectiveConfig = field(default_factory=SynthesisObjectiveConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    federation: SynthesisFederationConfig = field(default_factory=SynthesisFederationConfig)

    def __post_init__(self) -> None:
        check_device(self.device)
        if self.federation.mode != "fedavg":
            raise ConfigError(f"federation.mode={self.federation.mode!r} is implemented for the recon family only; "
                              "synthesis runs use 'fedavg' (compression of its weight deltas works)")
