"""One reconstruction site in Isik et al.'s gradient-averaging mode (``federation.mode: gradient_average``).

Each synchronisation step the site receives the current generator weights, takes ``n`` batches of its own
training data, trains its *local* WGAN critic on each (hybrid / unpaired objectives; the critic never leaves
the site) and returns the generator's gradient averaged over those batches. The centre averages the sites'
gradients and applies one optimiser step (:mod:`training.federation.gradient_average`).

Private state, kept in ``state_dir/state_round_NNN.pt`` as in FedAvg mode: the critic, its Adam state and
the site's batch counter (which drives the hybrid L1 -> WGAN schedule).

Through Flower (``training.federation.gradient_flower``) every synchronisation is its own message and the
site is rebuilt for each: :meth:`ReconGradientSite.suspend` keeps the round so far in
``state_dir/sync_round_NNN.pt`` (critic, its Adam state, batch counter, the round's loss sums, the batches
used and the site's torch random state) and ``ReconGradientSite(..., sync=j)`` continues from it, drawing
the same batches in the same shuffled order and the same random numbers as a site that was never rebuilt.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from mrcore.durable import durable_path
from training.federation.family import Arrays, Family
from training.models import build_critic
from training.objectives import HybridSchedule
from training.recon.loop import batch_loss
from training.recon.randomized import site_loader
from training.sites import derive_seed, load_site_state, save_site_state


class EndlessBatches:
    """The batches of ``loader`` epoch after epoch (as ``training.recon.loop._cycle``), able to skip batches
    without loading them: the loader's sampler draws from its generator exactly as if they had been loaded,
    so the batches after a skip are the ones an unskipped iteration would give. Single-process loaders only."""

    def __init__(self, loader: DataLoader) -> None:
        if loader.num_workers:
            raise ValueError("EndlessBatches needs a single-process DataLoader (num_workers=0)")
        self.loader = loader
        self._it = None

    def __iter__(self) -> EndlessBatches:
        return self

    def __next__(self) -> dict:
        while True:
            if self._it is None:
                self._it = iter(self.loader)
            try:
                return next(self._it)
            except StopIteration:
                self._it = None

    def skip(self) -> None:
        """Advance by one batch without loading it."""
        while True:
            if self._it is None:
                self._it = iter(self.loader)
            try:
                self._it._next_index()  # the batch's indices only (what the loader's iterator would fetch next)
                return
            except StopIteration:
                self._it = None


def sync_state_path(state_dir: Path, server_round: int) -> Path:
    """``state_dir/sync_round_NNN.pt``: a site's round so far, between two synchronisations through Flower."""
    return Path(state_dir) / f"sync_round_{server_round:03d}.pt"


class ReconGradientSite:
    """A site's side of one gradient-averaging round (see the module docstring); ``family`` is the
    :class:`~training.recon.family.ReconFamily` that builds it."""

    def __init__(self, family: Family, site: str, state_dir: Path, server_round: int, sync: int = 0) -> None:
        """``sync``: synchronisations of this round already done, continued from :meth:`suspend`'s file."""
        cfg, obj = family.cfg, family.cfg.objective
        self.family, self.site, self.state_dir, self.obj = family, site, Path(state_dir), obj
        self.server_round = server_round
        site_no = family.train_sites.index(site)
        torch.manual_seed(derive_seed(cfg.seed, site_no, server_round))
        self.generator = family.new_generator().to(family.device)
        self.critic = build_critic(in_channels=1).to(family.device) if obj.kind in ("unpaired", "hybrid") else None
        self.opt_c = (torch.optim.Adam(self.critic.parameters(), lr=obj.lr, betas=tuple(obj.betas))
                      if self.critic is not None else None)
        state = self._resume_state(sync) if sync else load_site_state(self.state_dir, server_round, family.device) or {}
        self.step = int(state.get("step", 0))
        if self.critic is not None and "critic" in state:
            self.critic.load_state_dict(state["critic"])
            self.opt_c.load_state_dict(state["opt_c"])
        self.schedule = HybridSchedule(obj.pure_l1_batches, obj.ramp_batches, obj.lambda_max)
        train = family.dataset(site, "train")
        train.set_epoch(server_round - 1)
        seed = torch.Generator().manual_seed(derive_seed(cfg.seed, site_no, server_round, 7))
        self.loader = site_loader(train, obj.batch_size, seed)
        self.batches = EndlessBatches(self.loader)
        self.labels: EndlessBatches | None = None
        if obj.kind == "unpaired":
            labels = family.dataset(site, "labels")
            labels.set_epoch(server_round - 1)
            self.labels = EndlessBatches(DataLoader(labels, batch_size=obj.batch_size, shuffle=True, generator=seed))
        self.sums: dict[str, float] = dict(state.get("sums", {}))
        self.count = int(state.get("count", 0))
        for _ in range(self.count):  # the batches already used this round, in the order they were drawn
            self.batches.skip()
            if self.labels is not None:
                self.labels.skip()
        self.rng = state["rng"] if "rng" in state else torch.get_rng_state()  # this site's own random stream
        self.syncs_done = sync

    def _resume_state(self, sync: int) -> dict:
        """The state :meth:`suspend` saved after synchronisation ``sync`` of this round (ValueError if the
        site's file is missing or belongs to another synchronisation)."""
        path = sync_state_path(self.state_dir, self.server_round)
        state = torch.load(path, weights_only=True, map_location=self.family.device) if path.exists() else None
        if state is None or int(state["sync"]) != sync:
            found = "no file" if state is None else f"the state after synchronisation {int(state['sync'])}"
            raise ValueError(f"site {self.site!r}: synchronisation {sync + 1} of round {self.server_round} needs "
                             f"the state after synchronisation {sync} in {path}; found {found}")
        return state

    @property
    def num_batches(self) -> int:
        """Batches in one pass over this site's training data (one round)."""
        return len(self.loader)

    def gradient(self, arrays: Arrays, n: int) -> tuple[Arrays, int]:
        """The generator's gradient at ``arrays`` (name -> float32, shapes of the weights), averaged over the
        site's next ``n`` batches, and the number of examples it used. The critic takes its steps meanwhile."""
        torch.set_rng_state(self.rng)
        self.generator.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()})
        self.generator.train()
        self.generator.zero_grad(set_to_none=True)
        examples = 0
        for _ in range(n):
            batch = next(self.batches)
            loss, logs = batch_loss(self.generator, self.critic, self.opt_c, batch, self.obj, self.schedule(self.step),
                                    self.labels, self.family.device)
            (loss / n).backward()
            examples += int(batch["kspace"].shape[0])
            logs["loss"] = float(loss.detach())
            for k, v in logs.items():
                self.sums[k] = self.sums.get(k, 0.0) + v
            self.count += 1
            self.step += 1
        self.rng = torch.get_rng_state()
        self.syncs_done += 1
        params = dict(self.generator.named_parameters())
        grads = {k: (params[k].grad.detach().cpu().numpy().astype(np.float32) if k in params and params[k].grad is not None
                     else np.zeros(np.shape(v), np.float32))
                 for k, v in arrays.items()}
        return grads, examples

    def _state(self) -> dict:
        state: dict = {"step": self.step}
        if self.critic is not None:
            state.update(critic=self.critic.state_dict(), opt_c=self.opt_c.state_dict())
        return state

    def suspend(self) -> None:
        """Keep this round so far in :func:`sync_state_path` (crash-safe) for the next synchronisation's site."""
        state = {**self._state(), "sums": self.sums, "count": self.count, "rng": self.rng, "sync": self.syncs_done}
        with durable_path(sync_state_path(self.state_dir, self.server_round)) as tmp:
            torch.save(state, tmp)

    def finish(self, server_round: int) -> dict[str, float]:
        """Save the site's private state for the next round; its mean training losses of this round."""
        save_site_state(self.state_dir, server_round, self._state())
        sync_state_path(self.state_dir, server_round).unlink(missing_ok=True)
        return {k: v / max(self.count, 1) for k, v in self.sums.items()}

