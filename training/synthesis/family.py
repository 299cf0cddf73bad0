"""The synthesis family (FedMed-GAN) as the federation layer sees it (:class:`~training.federation.family.Family`).

What leaves a site: the ``state_dict`` of both generators, ``g_ab.*`` (contrast A to B) and ``g_ba.*``
(B to A) — parameters only (InstanceNorm/GroupNorm keep no buffers), after DP-SGD when ``privacy.enabled``.
What stays in ``state_dir``: both PatchGAN discriminators, both Adam states (``state_round_NNN.pt``, the
previous round's file kept for resume) and the privacy ledger (``privacy_ledger.jsonl``, append-only: every
round a site trained, with its (noise multiplier, sample rate, steps) and epsilon after it).
"""

from __future__ import annotations

import json
import logging
import time
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from mrcore.config import ConfigError
from mrcore.data.base import SliceSource
from mrcore.durable import append_durable
from training.federation.config import torch_device
from training.federation.family import Arrays, Family, SiteUpdate
from training.models.synthesis import CycleGenerators, PatchDiscriminator, SynthesisExport, build_synthesis_generator
from training.privacy import check_budget, epsilon, make_private, projected_epsilon
from training.sites import derive_seed, load_site_state, open_site_source, save_site_state
from training.splits import split_subjects, spread
from training.synthesis.config import SynthesisRunConfig, parse_direction
from training.synthesis.data import ContrastPairs, choose_paired, partition_counts, partition_fractions
from training.synthesis.evaluate import evaluate_pairs
from training.synthesis.export import servable_models
from training.synthesis.loop import train_epoch
from training.synthesis.plots import plot_privacy, plot_samples
from training.synthesis.pretrained import load_init, provenance_path

log = logging.getLogger(__name__)
LEDGER = "privacy_ledger.jsonl"


def read_ledger(state_dir: Path) -> list[dict]:
    """Every round a site trained under DP (``state_dir/privacy_ledger.jsonl``), oldest first."""
    path = Path(state_dir) / LEDGER
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _append_ledger(state_dir: Path, entry: dict) -> None:
    append_durable(Path(state_dir) / LEDGER, json.dumps(entry) + "\n")


class SynthesisFamily(Family):
    """Federated CycleGAN synthesis between two contrasts (FedMed-GAN), optional DP-SGD on the generators."""

    name = "synthesis"
    config_class = SynthesisRunConfig

    def __init__(self, cfg: SynthesisRunConfig) -> None:
        super().__init__(cfg)
        self._datasets: dict[tuple[str, str], ContrastPairs] = {}

    # -- configuration --------------------------------------------------------------------------
    @property
    def contrasts(self) -> tuple[str, str]:
        """(A, B): source and target contrast of ``synthesis.direction``."""
        return self.cfg.synthesis.contrasts

    @cached_property
    def source(self) -> SliceSource:
        d = self.cfg.data
        sites = tuple(d.train_sites) + ((d.heldout_site,) if d.heldout_site else ())
        source = open_site_source(d.source, sites)
        for s in sites:
            self._check_contrasts(source, s)
        return source

    def available_contrasts(self, source: SliceSource, site: str) -> tuple[str, ...]:
        """Contrasts ``site`` has: the source's, restricted by ``data.site_contrasts``."""
        have = source.contrasts(site)
        wanted = self.cfg.data.site_contrasts.get(site)
        return have if wanted is None else tuple(c for c in have if c in wanted)

    def _check_contrasts(self, source: SliceSource, site: str) -> None:
        have = self.available_contrasts(source, site)
        for c in self.contrasts:
            if c not in have:
                raise ConfigError(
                    f"synthesis.direction {self.cfg.synthesis.direction!r} needs contrast {c!r}, but site {site!r} "
                    f"has 0 slices of it (it has {', '.join(map(repr, have)) or 'none'}); choose another direction "
                    "or remove the site from data.train_sites/data.heldout_site"
                )

    @cached_property
    def site_counts(self) -> dict[str, int]:
        """Training slices per site under ``data.partition`` (checked against what each site has)."""
        d = self.cfg.data
        counts = partition_counts(d.train_slices_total, partition_fractions(d.partition, len(d.train_sites)))
        out = {}
        for site, n in zip(d.train_sites, counts):
            have = len(self._split(site)["train"])
            if n < 1:
                raise ConfigError(f"data.partition {d.partition!r} gives site {site!r} 0 training slices of "
                                  f"{d.train_slices_total}; raise data.train_slices_total")
            if n > have:
                raise ConfigError(
                    f"data.partition {d.partition!r} gives site {site!r} {n} training slices but its training "
                    f"subjects have only {have}; raise data.source.subjects_per_site or lower data.train_slices_total"
                )
            out[site] = n
        return out

    def prepare(self) -> None:
        """Generate or load the data now, check every site's share and log the planned privacy cost."""
        prepare = getattr(self.source, "prepare", None)
        if prepare is not None:
            prepare()
        counts = self.site_counts
        if self.cfg.model.init_weights is not None:
            self.initial_arrays()  # refuses a file of another direction/architecture or trained on a site of the run
            info = json.loads(provenance_path(Path(self.cfg.model.init_weights)).read_text())
            log.info("generators start from %s (trained on %s, %s rounds, held-out PSNR there %.2f dB)",
                     self.cfg.model.init_weights, ", ".join(info["sites"]), info["rounds"],
                     info.get("heldout", {}).get("psnr", float("nan")))
        p = self.cfg.privacy
        for site in self.train_sites:
            n = sum(counts.values()) if site == self.POOLED else counts[site]
            msg = f"site {site}: {n} training records"
            if p.enabled:
                q = 1.0 / len(DataLoader(range(n), batch_size=self.cfg.objective.batch_size))
                steps = round(1 / q) * self.cfg.federation.local_epochs * self.cfg.federation.rounds
                eps = projected_epsilon([], p.noise_multiplier, q, steps, p.delta)
                msg += f", planned epsilon after {self.cfg.federation.rounds} rounds: {eps:.2f} (delta={p.delta:g})"
                if p.epsilon_budget is not None and eps > p.epsilon_budget:
                    msg += f" > budget {p.epsilon_budget:g}: training will stop before the round that exceeds it"
            log.info(msg)

    # -- models ---------------------------------------------------------------------------------
    @cached_property
    def device(self) -> torch.device:
        """The configured torch device (:func:`training.federation.config.torch_device`)."""
        return torch_device(self.cfg.device)

    def new_generator(self) -> torch.nn.Module:
        m = self.cfg.model
        return build_synthesis_generator(m.generator, m.chans, m.depth, m.num_res_blocks, m.norm, m.residual, m.curve_hidden)

    def new_generators(self) -> CycleGenerators:
        return CycleGenerators(self.new_generator(), self.new_generator())

    def new_discriminator(self) -> PatchDiscriminator:
        m = self.cfg.model
        return PatchDiscriminator(m.disc_chans, m.disc_layers, m.norm)

    def generators_from(self, arrays: Arrays) -> CycleGenerators:
        g = self.new_generators()
        g.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()})
        return g.to(self.device)

    def initial_arrays(self) -> Arrays:
        """Round 0's generators: seeded random weights, or ``model.init_weights`` (checked against the run:
        :func:`~training.synthesis.pretrained.load_init`)."""
        torch.manual_seed(self.cfg.seed)
        arrays = {k: v.detach().numpy().copy() for k, v in self.new_generators().state_dict().items()}
        if self.cfg.model.init_weights is not None:
            arrays = load_init(Path(self.cfg.model.init_weights), self.cfg, arrays)
        return arrays

    def generator_for_export(self, arrays: Arrays, direction: str) -> SynthesisExport:
        """The generator of ``direction`` ('A->B' as configured, or its reverse 'B->A') as a deployable module:
        ``forward(image: float32 [B, 1, H, W])`` raw magnitude at any scale -> ``float32 [B, 1, H, W]``
        synthesised contrast in normalised units (see :class:`~training.models.synthesis.SynthesisExport`)."""
        src, dst = parse_direction(direction, key="direction")
        a, b = self.contrasts
        gens = self.generators_from(arrays).cpu()
        if (src, dst) == (a, b):
            net = gens.g_ab
        elif (src, dst) == (b, a):
            net = gens.g_ba
        else:
            raise ValueError(f"this model was trained for {a}->{b} and {b}->{a}, not {direction!r}")
        return SynthesisExport(net).eval()

    # -- data -----------------------------------------------------------------------------------
    def _split(self, site: str) -> dict[str, tuple[int, ...]]:
        d = self.cfg.data
        return split_subjects(self.source, site, d.val_subjects, d.test_subjects)

    def dataset(self, site: str, split: str) -> ContrastPairs:
        """``split`` in {'train', 'val', 'test', 'heldout'}; site ``'pooled'`` concatenates the training
        sites; 'heldout' is ``data.heldout_site`` (all its slices) or else every training site's test subjects."""
        key = (site, split)
        if key in self._datasets:
            return self._datasets[key]
        d = self.cfg.data
        if split == "heldout":
            if d.heldout_site:
                n = self.source.num_slices(d.heldout_site)
                ds = self._eval_set(d.heldout_site, spread(tuple(range(n)), d.max_eval_slices * 4))
            else:
                ds = ContrastPairs.concat([self.dataset(s, "test") for s in d.train_sites])
        elif site == self.POOLED:
            ds = ContrastPairs.concat([self.dataset(s, split) for s in d.train_sites])
        elif split in ("val", "test"):
            ds = self._eval_set(site, spread(self._split(site)[split], d.max_eval_slices))
        elif split == "train":
            indices = spread(self._split(site)["train"], self.site_counts[site])
            site_no = self.source.sites.index(site)
            ratio = float(d.site_paired_ratio.get(site, d.paired_ratio))
            paired = choose_paired(len(indices), ratio, derive_seed(self.cfg.seed, site_no))
            ds = ContrastPairs.from_source(self.source, site, indices, self.contrasts, paired, self.cfg.augment,
                                           seed=derive_seed(self.cfg.seed, site_no, 3))
        else:
            raise ValueError(f"unknown split {split!r}; expected 'train', 'val', 'test' or 'heldout'")
        self._datasets[key] = ds
        return ds

    def _eval_set(self, site: str, indices: tuple[int, ...]) -> ContrastPairs:
        return ContrastPairs.from_source(self.source, site, indices, self.contrasts, np.ones(len(indices), bool),
                                         None, seed=0)

    # -- federation hooks -----------------------------------------------------------------------
    def train_site(self, site: str, arrays: Arrays, server_round: int, state_dir: Path,
                   target_latents: np.ndarray | None = None) -> SiteUpdate:
        if target_latents is not None:
            raise ValueError("the synthesis family has no target site; it takes no target latents")
        t0 = time.perf_counter()
        cfg, obj, priv = self.cfg, self.cfg.objective, self.cfg.privacy
        site_no = self.train_sites.index(site)
        torch.manual_seed(derive_seed(cfg.seed, site_no, server_round))
        train = self.dataset(site, "train")
        loader = DataLoader(train, batch_size=obj.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(derive_seed(cfg.seed, site_no, server_round, 7)))
        ledger = read_ledger(state_dir)
        history = [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in ledger]
        if priv.enabled:  # before any private data is touched this round
            q = 1.0 / len(loader)
            check_budget(priv, history, q, len(loader) * cfg.federation.local_epochs, site, server_round)

        gens = self.generators_from(arrays)
        d_a, d_b = self.new_discriminator().to(self.device), self.new_discriminator().to(self.device)
        opt_g = torch.optim.Adam(gens.parameters(), lr=obj.lr, betas=tuple(obj.betas))
        opt_d = torch.optim.Adam([*d_a.parameters(), *d_b.parameters()], lr=obj.disc_lr, betas=tuple(obj.betas))
        state = load_site_state(state_dir, server_round, self.device)
        if state is not None:
            d_a.load_state_dict(state["d_a"])
            d_b.load_state_dict(state["d_b"])
            opt_d.load_state_dict(state["opt_d"])
            opt_g.load_state_dict(state["opt_g"])
        elif server_round > 1:
            log.warning("site %s: no state of round %d; starting with new discriminators", site, server_round - 1)
        factor = obj.lr_factor(server_round, cfg.federation.rounds)
        for opt, lr in ((opt_g, obj.lr), (opt_d, obj.disc_lr)):
            for group in opt.param_groups:
                group["lr"] = lr * factor

        model, private = gens, None
        if priv.enabled:
            private = make_private(gens, opt_g, loader, priv, history,
                                   noise_seed=derive_seed(cfg.seed, site_no, server_round, 5))
            model, opt_g, loader = private.module, private.optimizer, private.loader
        logs: dict[str, float] = {}
        steps = 0
        for e in range(cfg.federation.local_epochs):
            train.set_epoch((server_round - 1) * cfg.federation.local_epochs + e)
            n, logs = train_epoch(model, d_a, d_b, opt_g, opt_d, loader, obj, self.device, private=private is not None)
            steps += n

        state_dir.mkdir(parents=True, exist_ok=True)
        if private is not None:
            eps = epsilon(private.accountant.history, priv.delta)
            _append_ledger(state_dir, {"round": server_round, "noise_multiplier": priv.noise_multiplier,
                                       "sample_rate": private.sample_rate, "steps": steps, "epsilon": eps,
                                       "delta": priv.delta, "max_grad_norm": priv.max_grad_norm})
            logs.update(epsilon=eps, delta=priv.delta)
            private.module.cleanup()  # remove Opacus hooks and attributes; the weights are gens'
        save_site_state(state_dir, server_round, {"d_a": d_a.state_dict(), "d_b": d_b.state_dict(),
                                                  "opt_d": opt_d.state_dict(), "opt_g": opt_g.state_dict()})
        out = {k: v.detach().cpu().numpy().copy() for k, v in gens.state_dict().items()}
        logs.update(steps=steps, records=len(train), paired=train.num_paired, seconds=time.perf_counter() - t0)
        return SiteUpdate(out, num_examples=len(train), metrics=logs)

    def evaluate(self, arrays: Arrays, ds: ContrastPairs, identity: bool = False) -> dict[str, float]:
        """Held-out style metrics of the shared ``arrays`` on ``ds`` (see :func:`evaluate_pairs`)."""
        return evaluate_pairs(self.generators_from(arrays), ds, identity)

    def evaluate_site(self, site: str, arrays: Arrays) -> dict[str, float]:
        return self.evaluate(arrays, self.dataset(site, "val"))

    def evaluate_heldout(self, arrays: Arrays) -> dict[str, float]:
        return self.evaluate(arrays, self.dataset("*", "heldout"), identity=True)

    def write_artifacts(self, arrays: Arrays, server_round: int, run_dir: Path) -> None:
        plot_samples(self, arrays, run_dir / "plots" / "samples.png", title=f"held-out, round {server_round}")

    def plot_run(self, rows: list[dict], run_dir: Path) -> None:
        plot_privacy(rows, run_dir / "plots" / "privacy.png")

    def servable_models(self, arrays: Arrays) -> list:
        return servable_models(self, arrays)
