"""What a model family must provide to be trained by the federation layer."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mrcore.config import build, to_dict

Arrays = dict[str, np.ndarray]


class StopRun(RuntimeError):
    """Raised by a site to end the whole run cleanly, before it trains a round (e.g. its privacy budget
    would be exceeded). The message travels to the coordinator inside Flower's error reply, marked with
    :attr:`MARKER`; the strategy then stops the run with the same message (see ``strategy.py``)."""

    MARKER = "[stop-run]"

    def __init__(self, message: str) -> None:
        text = message if message.startswith(self.MARKER) else f"{self.MARKER} {message}"
        super().__init__(text)

    @property
    def reason(self) -> str:
        """The message without the marker."""
        return str(self).removeprefix(self.MARKER).strip()


@dataclass
class SiteUpdate:
    """The result of one site's local training in one round.

    Attributes
    ----------
    arrays : the shared weights after local training (generator parameters only) — the only tensors
        that leave the site.
    num_examples : number of training examples used this round (FedAvg weight).
    metrics : scalar training metrics (losses, epsilon, ...).
    """

    arrays: Arrays
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


class Family(ABC):
    """A model family trained across sites: reconstruction or synthesis.

    The federation layer calls these methods; a family never talks to Flower itself, so its training
    loops are plain PyTorch and can be tested without any federation.
    """

    #: name used in config files (``family: recon``)
    name: str = ""
    #: the dataclass schema of the family's run configuration; it has a ``data`` section with
    #: ``train_sites`` and ``pooled``
    config_class: type
    #: the single site of a centralized run (``data.pooled``): every training site's data in one place
    POOLED = "pooled"

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        if cfg.federation.secure_aggregation.enabled:
            cfg.federation.secure_aggregation.shares_and_threshold(self.train_sites)

    @classmethod
    def from_dict(cls, data: dict) -> Family:
        """Build the family from a plain configuration dict (validated; ConfigError on mistakes)."""
        return cls(build(cls.config_class, data))

    def config_dict(self) -> dict:
        """The validated configuration with every default filled in, as a plain dict."""
        return to_dict(self.cfg)

    @property
    def train_sites(self) -> tuple[str, ...]:
        """Sites that take part in training, in partition order (partition-id i is train_sites[i]);
        ``('pooled',)`` for a centralized run."""
        return (self.POOLED,) if self.cfg.data.pooled else tuple(self.cfg.data.train_sites)

    @property
    def target_site(self) -> str | None:
        """A site that trains nothing but sends latent features each round (FL-MRCM's target), or None."""
        return None

    @property
    def federation_sites(self) -> tuple[str, ...]:
        """Every site with a node in the federation: the training sites, then the target site if any."""
        return self.train_sites + ((self.target_site,) if self.target_site else ())

    def target_features(self, arrays: Arrays) -> np.ndarray:
        """At the target site: latent features of its own slices under the shared ``arrays`` (FL-MRCM)."""
        raise NotImplementedError(f"family {self.name!r} has no target site")

    @abstractmethod
    def initial_arrays(self) -> Arrays:
        """Freshly initialised shared weights (deterministic for a given config seed)."""

    @abstractmethod
    def train_site(self, site: str, arrays: Arrays, server_round: int, state_dir: Path,
                   target_latents: np.ndarray | None = None) -> SiteUpdate:
        """Train locally at ``site`` starting from ``arrays``.

        ``state_dir`` is the site's private directory: critics, discriminators, optimiser states and
        privacy accountants are read from and written to it, keyed by ``server_round`` so that a
        resumed run continues exactly where it stopped. ``target_latents``: the target site's latent
        features of this round (:meth:`target_features`), when the family has a target site.
        """

    @abstractmethod
    def evaluate_site(self, site: str, arrays: Arrays) -> dict[str, float]:
        """Metrics of the shared model on ``site``'s validation split (only numbers leave the site)."""

    @abstractmethod
    def evaluate_heldout(self, arrays: Arrays) -> dict[str, float]:
        """Metrics on the held-out site or subjects (run by the coordinator); may be empty."""

    def prepare(self) -> None:  # noqa: B027 - optional hook, empty by design
        """Optional: build data caches up front, before the sites' processes start (in the coordinator)."""

    def write_artifacts(self, arrays: Arrays, server_round: int, run_dir: Path) -> None:  # noqa: B027 - optional hook, empty by design
        """Optional per-round artefacts (sample image grids, ...) written by the coordinator."""

    def plot_run(self, rows: list[dict], run_dir: Path) -> None:  # noqa: B027 - optional hook, empty by design
        """Optional family-specific plots of the run's metric rows (``metrics.jsonl``), called by the CLI."""

    def gradient_site(self, site: str, state_dir: Path, server_round: int, sync: int = 0):
        """Isik et al.'s gradient averaging (``federation.mode: gradient_average``): ``site``'s side of round
        ``server_round``, an object with ``num_batches``, ``state_dir``, ``gradient(arrays, n) -> (gradients,
        examples)``, ``suspend()`` (keep the round so far for a site rebuilt at the next synchronisation,
        ``sync`` = synchronisations done) and ``finish(server_round) -> mean training metrics`` (see
        :class:`training.recon.gradient_site.ReconGradientSite`)."""
        raise NotImplementedError(f"family {self.name!r} has no gradient-averaging mode")

    def servable_models(self, arrays: Arrays) -> list:
        """The models to export for serving (:class:`training.export.ServableModel`), built from ``arrays``."""
        raise NotImplementedError(f"family {self.name!r} has no servable models")
