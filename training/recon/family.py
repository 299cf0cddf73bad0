"""The reconstruction family as the federation layer sees it (:class:`~training.federation.family.Family`).

What leaves a site: the generator's ``state_dict`` (parameters only; no BatchNorm, so no buffers).
What stays: the WGAN critic, the FL-MRCM domain identifier, their and the generator's Adam states and the
batch counter, in ``state_dir/state_round_NNN.pt``.

With FL-MRCM (``mrcm.enabled``) the held-out site is the *target*: it trains nothing; each round it sends
the pooled latent features of its adaptation slices (undersampled k-space of its first
``data.heldout_adapt_subjects`` subjects, no labels), which the source sites align their latents with.
"""

from __future__ import annotations

import logging
import time
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from mrcore.data.base import SliceSource
from mrcore.masks import make_mask
from training.federation.config import linear_lr_factor, torch_device
from training.federation.family import Arrays, Family, SiteUpdate
from training.models import build_critic, build_generator
from training.recon.config import ReconRunConfig
from training.recon.data import ReconSlices, split_by_subject, spread
from training.recon.export import servable_models
from training.recon.gradient_site import ReconGradientSite
from training.recon.loop import batch_metrics, reconstruct, train_epoch, volume_metrics
from training.recon.mrcm import LatentAligner, as_target_tensor, new_identifier, pool_latent
from training.recon.plots import plot_samples
from training.recon.randomized import RandomizedBatches, site_loader
from training.sites import derive_seed, load_site_state, open_site_source, save_site_state

log = logging.getLogger(__name__)


class ReconFamily(Family):
    """Federated unrolled reconstruction (Lei et al. generator/critic, FL-MR FedAvg)."""

    name = "recon"
    config_class = ReconRunConfig

    def __init__(self, cfg: ReconRunConfig) -> None:
        super().__init__(cfg)
        self._datasets: dict[tuple[str, str], ReconSlices] = {}

    # -- configuration --------------------------------------------------------------------------
    @property
    def target_site(self) -> str | None:
        """FL-MRCM's target site (the held-out site) when ``mrcm.enabled``, else None."""
        return self.cfg.data.heldout_site if self.cfg.mrcm.enabled else None

    @property
    def randomized(self) -> bool:
        """Training sites draw randomised examples (``data.randomize``) instead of reading phantom slices."""
        return self.cfg.data.randomize is not None

    @cached_property
    def source(self) -> SliceSource:
        d = self.cfg.data
        sites = () if self.randomized else tuple(d.train_sites)
        sites += (d.heldout_site,) if d.heldout_site else ()
        if not sites:
            raise ValueError("data.randomize without data.heldout_site leaves no phantom site to open")
        source = open_site_source(d.source, sites)
        for s in sites:
            for c in d.contrasts:
                source.check_contrast(s, c)
        return source

    def prepare(self) -> None:
        """Generate or load every site's data now (the phantom cache), so the sites only read it."""
        prepare = getattr(self.source, "prepare", None)
        if prepare is not None:
            prepare()
        site = self.source.sites[0]
        shape = self.source.kspace(site, 0, self.cfg.data.contrasts[0], num_coils=1).kspace.shape[-2:]
        m = self.cfg.mask  # an acceleration impossible for the matrix fails here, before any training
        make_mask(m.kind, shape, m.acceleration, m.center_fraction, seed=0,
                  axis=int(getattr(self.source, "phase_encode_axis", -2)))
        self._heldout_subject_split()  # too many adaptation subjects fails here

    # -- models ---------------------------------------------------------------------------------
    def new_generator(self, fft_backend: str = "torch") -> torch.nn.Module:
        m = self.cfg.model
        if m.generator == "unrolled_fast":
            return build_generator(m.generator, num_cascades=m.num_cascades, chans=m.chans, num_pools=m.num_pools,
                                   fft_backend=fft_backend)
        kwargs = {"chans": m.chans, "estimate_maps": m.estimate_maps, "sens_chans": m.sens_chans,
                  "fft_backend": fft_backend}
        if m.generator == "unrolled":
            kwargs.update(num_cascades=m.num_cascades, num_res_blocks=m.num_res_blocks)
        elif m.generator == "plain":
            kwargs.update(num_res_blocks=max(m.num_res_blocks, 5))
        return build_generator(m.generator, **kwargs)

    @cached_property
    def device(self) -> torch.device:
        """The configured torch device (:func:`training.federation.config.torch_device`)."""
        return torch_device(self.cfg.device)

    def generator_from(self, arrays: Arrays, fft_backend: str = "torch") -> torch.nn.Module:
        g = self.new_generator(fft_backend)
        g.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()})
        return g.to(self.device)

    def initial_arrays(self) -> Arrays:
        torch.manual_seed(self.cfg.seed)
        return {k: v.detach().numpy().copy() for k, v in self.new_generator().state_dict().items()}

    # -- data -----------------------------------------------------------------------------------
    def dataset(self, site: str, split: str) -> ReconSlices | RandomizedBatches:
        """``split`` in {'train', 'labels', 'val', 'heldout', 'adapt'}: 'labels' are the unpaired label subjects;
        'heldout' the held-out site's tested subjects, 'adapt' its FL-MRCM adaptation slices. With
        ``data.randomize`` a training site's 'train' and 'val' are randomised batches (seeded per site)."""
        key = (site, split)
        if self.randomized and split in ("train", "val") and key not in self._datasets:
            self._datasets[key] = self._randomized(site, split)
        if site == self.POOLED and key not in self._datasets:
            self._datasets[key] = ReconSlices.concat([self.dataset(s, split) for s in self.cfg.data.train_sites])
        if key not in self._datasets:
            d = self.cfg.data
            if split == "heldout":
                indices = spread(self._heldout_subject_split()[1], d.max_eval_slices)
            elif split == "adapt":
                indices = spread(self._heldout_subject_split()[0], self.cfg.mrcm.target_slices)
            else:
                sp = split_by_subject(self.source, site, d.val_subjects)
                if split == "val":
                    indices = spread(sp.val, d.max_eval_slices)
                else:
                    train = spread(sp.train, int(d.site_train_slices.get(site, d.max_train_slices)))
                    if self.cfg.objective.kind == "unpaired":
                        half = self._unpaired_halves(site, train)
                        train = half[0] if split == "train" else half[1]
                    indices = train
            self._datasets[key] = ReconSlices(
                self.source, site, indices, tuple(d.contrasts), d.num_coils, self.cfg.mask,
                seed=derive_seed(self.cfg.seed, self.source.sites.index(site)), train=split in ("train", "labels"),
            )
        return self._datasets[key]

    def _randomized(self, site: str, split: str) -> RandomizedBatches:
        d, obj = self.cfg.data, self.cfg.objective
        if site == self.POOLED:
            number = 0
        else:
            number = 1 + list(d.train_sites).index(site)
        seed = derive_seed(self.cfg.seed, number, 0 if split == "train" else 1)
        if split == "train":
            batches = d.train_batches * (len(d.train_sites) if site == self.POOLED else 1)
            return RandomizedBatches(d.randomize, seed, batches, obj.batch_size, self.cfg.model.virtual_coils)
        return RandomizedBatches(d.randomize, seed, d.val_batches, 2, self.cfg.model.virtual_coils, fixed=True)

    def _heldout_subject_split(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Slices of the held-out site: (adaptation subjects, tested subjects). The first
        ``data.heldout_adapt_subjects`` subjects are FL-MRCM's unlabeled adaptation data; the metrics on
        the held-out site use only the others, so a model is never tested on a subject it has seen."""
        site, n_adapt = self.cfg.data.heldout_site, self.cfg.data.heldout_adapt_subjects
        if site is None:
            return (), ()
        indices = tuple(range(self.source.num_slices(site)))
        subjects = self.source.subjects(site)
        if n_adapt >= len(subjects):
            raise ValueError(f"data.heldout_adapt_subjects={n_adapt} leaves no test subject at {site!r}, which has "
                             f"{len(subjects)} subjects")
        adapt = set(subjects[:n_adapt])
        return (tuple(i for i in indices if self.source.subject(site, i) in adapt),
                tuple(i for i in indices if self.source.subject(site, i) not in adapt))

    def _unpaired_halves(self, site: str, train: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Unpaired training: inputs from one half of the training subjects, labels from the other."""
        subjects = []
        for i in train:
            s = self.source.subject(site, i)
            if s not in subjects:
                subjects.append(s)
        if len(subjects) < 2:
            raise ValueError(f"unpaired training at site {site!r} needs at least 2 training subjects")
        label_subjects = set(subjects[len(subjects) // 2:])
        inputs = tuple(i for i in train if self.source.subject(site, i) not in label_subjects)
        labels = tuple(i for i in train if self.source.subject(site, i) in label_subjects)
        return inputs, labels

    # -- federation hooks -----------------------------------------------------------------------
    def target_features(self, arrays: Arrays) -> np.ndarray:
        """At the target site: float32 [N, chans, ceil(H / pool), ceil(W / pool)] pooled latents of its
        ``mrcm.target_slices`` adaptation slices under the shared ``arrays`` (only these leave the site)."""
        if self.target_site is None:
            raise ValueError("target_features needs mrcm.enabled")
        generator = self.generator_from(arrays).eval()
        latents = []
        with torch.no_grad():
            for batch in DataLoader(self.dataset(self.target_site, "adapt"), batch_size=4):
                _, latent = generator(batch["kspace"].to(self.device), batch["mask"].to(self.device), return_latent=True)
                latents.append(pool_latent(latent, self.cfg.mrcm.feature_pool).cpu().numpy())
        return np.concatenate(latents).astype(np.float32)

    def train_site(self, site: str, arrays: Arrays, server_round: int, state_dir: Path,
                   target_latents: np.ndarray | None = None) -> SiteUpdate:
        t0 = time.perf_counter()
        cfg, obj = self.cfg, self.cfg.objective
        if cfg.mrcm.enabled and target_latents is None:
            raise ValueError(f"FL-MRCM: site {site!r} got no target latents this round")
        site_no = self.train_sites.index(site)  # pooled: 0
        torch.manual_seed(derive_seed(cfg.seed, site_no, server_round))
        generator = self.generator_from(arrays)
        adversarial = obj.kind in ("unpaired", "hybrid")
        critic = build_critic(in_channels=1).to(self.device) if adversarial else None
        opt_g = torch.optim.Adam(generator.parameters(), lr=obj.lr, betas=tuple(obj.betas))
        opt_c = torch.optim.Adam(critic.parameters(), lr=obj.lr, betas=tuple(obj.betas)) if critic else None
        step = 0
        state = load_site_state(state_dir, server_round, self.device) or {}
        if state:
            opt_g.load_state_dict(state["opt_g"])
            step = int(state["step"])
        for group in opt_g.param_groups:  # after the state: Adam's saved state carries the old rate
            group["lr"] = obj.lr * linear_lr_factor(server_round, cfg.federation.rounds, obj.lr_final)
        if critic is not None and "critic" in state:
            critic.load_state_dict(state["critic"])
            opt_c.load_state_dict(state["opt_c"])
        aligner = None
        if cfg.mrcm.enabled:
            identifier = new_identifier(cfg.model.chans, cfg.mrcm.identifier_features).to(self.device)
            opt_dom = torch.optim.Adam(identifier.parameters(), lr=cfg.mrcm.lr, betas=tuple(obj.betas))
            if "identifier" in state:
                identifier.load_state_dict(state["identifier"])
                opt_dom.load_state_dict(state["opt_identifier"])
            aligner = LatentAligner(identifier, opt_dom, as_target_tensor(target_latents), cfg.mrcm.feature_pool,
                                    cfg.mrcm.weight, torch.Generator().manual_seed(derive_seed(cfg.seed, site_no, server_round, 9)))
        train = self.dataset(site, "train")
        labels = self.dataset(site, "labels") if obj.kind == "unpaired" else None
        loader_seed = torch.Generator().manual_seed(derive_seed(cfg.seed, site_no, server_round, 7))
        logs: dict[str, float] = {}
        for e in range(cfg.federation.local_epochs):
            epoch = (server_round - 1) * cfg.federation.local_epochs + e
            train.set_epoch(epoch)
            loader = _loader(train, obj.batch_size, loader_seed)
            label_loader = None
            if labels is not None:
                labels.set_epoch(epoch)
                label_loader = DataLoader(labels, batch_size=obj.batch_size, shuffle=True, generator=loader_seed)
            step, logs = train_epoch(generator, critic, opt_g, opt_c, loader, obj, step, label_loader, self.device,
                                     aligner=aligner)
        state = {"opt_g": opt_g.state_dict(), "step": step}
        if critic is not None:
            state.update(critic=critic.state_dict(), opt_c=opt_c.state_dict())
        if aligner is not None:
            state.update(identifier=aligner.identifier.state_dict(), opt_identifier=aligner.optimizer.state_dict())
        save_site_state(state_dir, server_round, state)
        out = {k: v.detach().cpu().numpy().copy() for k, v in generator.state_dict().items()}
        logs["seconds"] = time.perf_counter() - t0
        examples = len(train) * (obj.batch_size if isinstance(train, RandomizedBatches) else 1)
        return SiteUpdate(out, num_examples=examples, metrics=logs)

    def _evaluate(self, arrays: Arrays, site: str, split: str) -> dict[str, float]:
        ds = self.dataset(site, split)
        generator = self.generator_from(arrays)
        if isinstance(ds, RandomizedBatches):
            return batch_metrics(generator, _loader(ds, 4))
        out, _, target, subjects = reconstruct(generator, _loader(ds, 4))
        return volume_metrics(out, target, subjects)

    def evaluate_site(self, site: str, arrays: Arrays) -> dict[str, float]:
        return self._evaluate(arrays, site, "val")

    def evaluate_heldout(self, arrays: Arrays) -> dict[str, float]:
        site = self.cfg.data.heldout_site
        return self._evaluate(arrays, site, "heldout") if site else {}

    def write_artifacts(self, arrays: Arrays, server_round: int, run_dir: Path) -> None:
        site = self.cfg.data.heldout_site or self.train_sites[0]
        split = "heldout" if self.cfg.data.heldout_site else "val"
        ds = self.dataset(site, split)
        sub = torch.utils.data.Subset(ds, list(range(min(3, len(ds)))))
        out, zf, target, _ = reconstruct(self.generator_from(arrays), DataLoader(sub, batch_size=3))
        plot_samples(zf, out, target, run_dir / "plots" / "samples.png",
                     title=f"{site}, round {server_round}, R={self.cfg.mask.acceleration:g}")

    def servable_models(self, arrays: Arrays) -> list:
        return servable_models(self, arrays)

    def gradient_site(self, site: str, state_dir: Path, server_round: int, sync: int = 0) -> ReconGradientSite:
        """``site``'s side of a gradient-averaging round (:mod:`training.recon.gradient_site`), continued after
        ``sync`` synchronisations of it."""
        return ReconGradientSite(self, site, state_dir, server_round, sync)


def _loader(ds: ReconSlices | RandomizedBatches, batch_size: int, generator: torch.Generator | None = None) -> DataLoader:
    """Batches of ``ds``: randomised datasets are already batches (one per item)."""
    return site_loader(ds, batch_size, generator)
