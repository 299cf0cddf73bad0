"""Isik et al.'s distributed WGAN: the centre averages the sites' generator *gradients* and steps once.

``mri-train federated`` runs this engine when the configuration says ``federation.mode: gradient_average``.
One round (checkpoint, metrics row, evaluation) is one pass over each site's training data, as a FedAvg round
with ``local_epochs: 1``; it is made of ``ceil(batches / sync_every)`` synchronisation steps. At each step

1. every site gets the current generator weights, runs its next ``sync_every`` batches (its critic, which
   never leaves it, steps on each) and sends the generator's gradient averaged over them, compressed with
   ``federation.compression`` (error-feedback residual kept at the site) and serialised as Flower serialises
   an ``ArrayRecord``;
2. the centre decodes each site's bytes, averages the gradients weighted by examples, clips them
   (``objective.grad_clip``) and takes one Adam step (``objective.lr``, ``betas``, linear decay to
   ``lr_final``) on the generator; its Adam state is checkpointed with the weights.

Two engines run it with the same site step (:func:`site_sync`), centre step (:func:`centre_step`) and round
bookkeeping (:func:`round_train_metrics`, :func:`finish_round`):

* :func:`run_gradient_average`, here: the sites in turn in this process, like ``--engine sequential``
  (``mri-train federated``); each site object lives for the whole round. The bytes each site sends are the
  bytes Flower would send; the centre decodes exactly those bytes.
* :func:`training.federation.gradient_flower.run_gradient_coordinator`: through Flower (``flwr run`` on a
  SuperLink with the hospitals' SuperNodes, or Flower's simulation), one Flower round per synchronisation;
  each site is rebuilt for every message from its private state and gives the same gradients.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mrcore.durable import durable_path
from training.federation.checkpoints import checkpoint_path
from training.federation.compression import CompressionConfig, shapes_of, weighted_mean
from training.federation.config import linear_lr_factor
from training.federation.family import Arrays
from training.federation.payload import centre_decode, site_encode
from training.federation.records import audit_outgoing
from training.federation.rundir import record_round, start_run

log = logging.getLogger(__name__)


class CentreOptimizer:
    """The centre's copy of the generator weights and its Adam optimiser (state saved with each checkpoint)."""

    def __init__(self, arrays: dict[str, np.ndarray], objective: dict) -> None:
        self.params = {k: torch.nn.Parameter(torch.from_numpy(np.array(v, np.float32))) for k, v in arrays.items()}
        self.dtypes = {k: np.asarray(v).dtype for k, v in arrays.items()}
        self.lr = float(objective["lr"])
        self.grad_clip = float(objective.get("grad_clip", 0.0))
        self.opt = torch.optim.Adam(list(self.params.values()), lr=self.lr, betas=tuple(objective.get("betas", (0.9, 0.999))))

    def arrays(self) -> dict[str, np.ndarray]:
        """The current weights (original dtypes)."""
        return {k: p.detach().numpy().astype(self.dtypes[k]) for k, p in self.params.items()}

    def step(self, gradient: dict[str, np.ndarray], lr_factor: float) -> None:
        """One optimiser step with the averaged ``gradient`` (name -> float32, shapes of the weights)."""
        for k, p in self.params.items():
            p.grad = torch.from_numpy(np.asarray(gradient[k], np.float32)).reshape(p.shape)
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(list(self.params.values()), self.grad_clip)
        for group in self.opt.param_groups:
            group["lr"] = self.lr * lr_factor
        self.opt.step()

    def save(self, path: Path) -> None:
        """Adam's state, crash-safely."""
        with durable_path(path) as tmp:
            torch.save(self.opt.state_dict(), tmp)

    def load(self, path: Path) -> None:
        """Adam's state from :meth:`save` (the weights come from the checkpoint)."""
        self.opt.load_state_dict(torch.load(path, weights_only=True))


def optimizer_path(run_dir: Path, server_round: int) -> Path:
    """``checkpoints/round_NNN.adam.pt``: the centre's optimiser state after that round."""
    return checkpoint_path(run_dir, server_round, ".adam.pt")


def site_sync(site, name: str, arrays: Arrays, k: int, comp: CompressionConfig, server_round: int,
              send: int) -> tuple[bytes, Arrays, int]:
    """The site's step of one synchronisation: the generator's gradient at ``arrays`` over its next ``k``
    batches, compressed for send number ``send`` (error feedback in the site's state dir) and audited.
    Returns ``(wire bytes, payload, examples)``."""
    grads, examples = site.gradient(arrays, k)
    data, payload = site_encode(grads, comp, site.state_dir, send)
    audit_outgoing(site.state_dir, name, server_round, payload, examples)
    return data, payload, examples


def centre_step(centre: CentreOptimizer, received: list[tuple[str, bytes, int]], shapes: dict[str, tuple[int, ...]],
                comp: CompressionConfig, lr_factor: float) -> None:
    """The centre's step of one synchronisation: decode each ``(site, wire bytes, examples)`` (in the sites'
    configured order), average weighted by examples, clip and step. ValueError naming the site whose
    payload is not the configured one."""
    dense = []
    for name, data, examples in received:
        try:
            dense.append((centre_decode(data, shapes, comp), examples))
        except ValueError as exc:
            raise ValueError(f"site {name!r}: {exc}") from None
    centre.step(weighted_mean(dense), lr_factor)


def round_train_metrics(losses: dict[str, dict[str, float]], sent: dict[str, int], syncs: int) -> dict:
    """Per site: its mean training losses of the round with ``bytes_sent``, ``bytes_per_send`` and ``sends``."""
    return {name: {**losses[name], "bytes_sent": sent[name], "bytes_per_send": sent[name] / syncs, "sends": syncs}
            for name in losses}


def run_gradient_average(run_cfg: dict, progress: Callable[[int, dict], None] | None = None) -> Arrays:
    """Run (or resume) ``run_cfg``'s rounds in gradient-averaging mode in this process; return the final weights."""
    family, run_dir, arrays, offset = start_run(run_cfg)
    fed = run_cfg["federation"]
    comp = CompressionConfig(**fed.get("compression", {}))
    total, k = int(fed["rounds"]), int(fed.get("sync_every", 1))
    centre = start_centre(run_dir, arrays, run_cfg["objective"], offset)
    shapes = shapes_of(arrays)
    for g in range(offset + 1, total + 1):
        t0 = time.perf_counter()
        lr_factor = linear_lr_factor(g, total, float(run_cfg["objective"].get("lr_final", 1.0)))
        sites = {s: family.gradient_site(s, run_dir / "sites" / s, g) for s in family.train_sites}
        syncs = math.ceil(max(site.num_batches for site in sites.values()) / k)
        sent = dict.fromkeys(sites, 0)
        for j in range(syncs):
            current, received = centre.arrays(), []
            for name, site in sites.items():
                data, _, examples = site_sync(site, name, current, k, comp, g, (g - 1) * syncs + j + 1)
                sent[name] += len(data)
                received.append((name, data, examples))
            centre_step(centre, received, shapes, comp, lr_factor)
        arrays = centre.arrays()
        train = round_train_metrics({name: site.finish(g) for name, site in sites.items()}, sent, syncs)
        val = ({s: {**family.evaluate_site(s, arrays), "num-examples": 1} for s in family.train_sites}
               if fed.get("evaluate_sites", True) else {})
        finish_round(family, run_dir, g, arrays, centre, {"train": train, "val": val}, t0, progress)
    return arrays


def start_centre(run_dir: Path, arrays: Arrays, objective: dict, offset: int) -> CentreOptimizer:
    """The centre at ``arrays``, with the Adam state saved after round ``offset`` when resuming."""
    centre = CentreOptimizer(arrays, objective)
    if offset and optimizer_path(run_dir, offset).exists():
        centre.load(optimizer_path(run_dir, offset))
    return centre


def finish_round(family, run_dir: Path, g: int, arrays: Arrays, centre: CentreOptimizer, parts: dict, t0: float,
                 progress) -> dict:
    """Checkpoint (weights, Adam state, metrics record with ``parts``: train, val and optionally traffic),
    evaluate the held-out site and log round ``g``; returns the row."""
    centre.save(optimizer_path(run_dir, g))
    return record_round(family, run_dir, g, arrays, {"seconds": round(time.perf_counter() - t0, 2), **parts,
                                                     "engine": "gradient_average"}, progress)
