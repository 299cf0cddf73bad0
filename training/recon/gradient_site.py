"""One reconstruction site in Isik et al.'s gradient-averaging mode (``federation.mode: gradient_average``).

Each synchronisation step the site receives the current generator weights, takes ``n`` batches of its own
training data, trains its *local* WGAN critic on each (hybrid / unpaired objectives; the critic never leaves
the site) and returns the generator's gradient averaged over those batches. The centre averages the sites'
gradients and applies one optimiser step (:mod:`training.federation.gradient_average`).

Private state, kept in ``state_dir/state_round_NNN.pt`` as in FedAvg mode: the critic, its Adam state and
the site's batch counter (which drives the hybrid L1 -> WGAN schedule).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from training.federation.family import Arrays, Family
from training.models import build_critic
from training.objectives import HybridSchedule
from training.recon.loop import _cycle, batch_loss
from training.recon.randomized import site_loader
from training.sites import derive_seed, load_site_state, save_site_state


class ReconGradientSite:
    """A site's side of one gradient-averaging round (see the module docstring); ``family`` is the
    :class:`~training.recon.family.ReconFamily` that builds it."""

    def __init__(self, family: Family, site: str, state_dir: Path, server_round: int) -> None:
        cfg, obj = family.cfg, family.cfg.objective
        self.family, self.site, self.state_dir, self.obj = family, site, Path(state_dir), obj
        site_no = family.train_sites.index(site)
        torch.manual_seed(derive_seed(cfg.seed, site_no, server_round))
        self.generator = family.new_generator().to(family.device)
        self.critic = build_critic(in_channels=1).to(family.device) if obj.kind in ("unpaired", "hybrid") else None
        self.opt_c = (torch.optim.Adam(self.critic.parameters(), lr=obj.lr, betas=tuple(obj.betas))
                      if self.critic is not None else None)
        state = load_site_state(self.state_dir, server_round, family.device) or {}
        self.step = int(state.get("step", 0))
        if self.critic is not None and "critic" in state:
            self.critic.load_state_dict(state["critic"])
            self.opt_c.load_state_dict(state["opt_c"])
        self.schedule = HybridSchedule(obj.pure_l1_batches, obj.ramp_batches, obj.lambda_max)
        train = family.dataset(site, "train")
        train.set_epoch(server_round - 1)
        seed = torch.Generator().manual_seed(derive_seed(cfg.seed, site_no, server_round, 7))
        self.loader = site_loader(train, obj.batch_size, seed)
        self.batches: Iterator[dict] = _cycle(self.loader)
        self.labels: Iterator[dict] | None = None
        if obj.kind == "unpaired":
            labels = family.dataset(site, "labels")
            labels.set_epoch(server_round - 1)
            self.labels = _cycle(DataLoader(labels, batch_size=obj.batch_size, shuffle=True, generator=seed))
        self.sums: dict[str, float] = {}
        self.count = 0

    @property
    def num_batches(self) -> int:
        """Batches in one pass over this site's training data (one round)."""
        return len(self.loader)

    def gradient(self, arrays: Arrays, n: int) -> tuple[Arrays, int]:
        """The generator's gradient at ``arrays`` (name -> float32, shapes of the weights), averaged over the
        site's next ``n`` batches, and the number of examples it used. The critic takes its steps meanwhile."""
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
        params = dict(self.generator.named_parameters())
        grads = {k: (params[k].grad.detach().cpu().numpy().astype(np.float32) if k in params and params[k].grad is not None
                     else np.zeros(np.shape(v), np.float32))
                 for k, v in arrays.items()}
        return grads, examples

    def finish(self, server_round: int) -> dict[str, float]:
        """Save the site's private state for the next round; its mean training losses of this round."""
        state: dict = {"step": self.step}
        if self.critic is not None:
            state.update(critic=self.critic.state_dict(), opt_c=self.opt_c.state_dict())
        save_site_state(self.state_dir, server_round, state)
        return {k: v / max(self.count, 1) for k, v in self.sums.items()}

