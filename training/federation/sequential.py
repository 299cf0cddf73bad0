"""FedAvg without Ray: every site trained in turn in this process (``mri-train federated --engine sequential``).

The same rounds as :func:`training.federation.coordinator.run_coordinator` through Flower's simulation engine:
each site's :meth:`~training.federation.family.Family.train_site` (its own state directory, DP ledger and
audit of what leaves it), FedAvg weighted by each site's number of training examples, the same checkpoints
(``checkpoints/round_NNN.npz`` / ``.json``), ``metrics.jsonl`` rows and resume. Meant for machines where the Ray
runtime cannot start (a node that times out during startup on a saturated CPU); sites do not run side by
side, so a round takes the sum of the sites' times.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import yaml

from training.federation.compression import CompressionConfig
from training.federation.coordinator import record_round, start_run
from training.federation.payload import centre_receive_weights, from_bytes, site_send_weights
from training.federation.records import audit_outgoing
from training.federation.registry import family_from_yaml

log = logging.getLogger(__name__)


def fedavg(updates: list[tuple[dict[str, np.ndarray], int]]) -> dict[str, np.ndarray]:
    """Average of the sites' arrays weighted by their number of examples."""
    total = float(sum(n for _, n in updates))
    keys = updates[0][0].keys()
    return {k: (sum(np.asarray(a[k], np.float64) * (n / total) for a, n in updates)).astype(updates[0][0][k].dtype)
            for k in keys}


def run_sequential(run_cfg: dict, progress: Callable[[int, dict], None] | None = None) -> dict[str, np.ndarray]:
    """Run (or resume) ``run_cfg``'s rounds with the sites trained one after the other; the final weights.

    Each site's reply goes through the bytes Flower would send (``federation.compression`` applied, their
    length logged as ``bytes_sent``) and the centre averages what it decodes from them."""
    if family_from_yaml(yaml.safe_dump(run_cfg, sort_keys=True)).target_site:
        raise ValueError("the sequential engine does not run FL-MRCM target sites; use --engine flower")
    family, run_dir, arrays, offset = start_run(run_cfg)
    total = int(run_cfg["federation"]["rounds"])
    evaluate_sites = bool(run_cfg["federation"].get("evaluate_sites", True))
    comp = CompressionConfig(**run_cfg["federation"].get("compression", {}))
    for g in range(offset + 1, total + 1):
        t0 = time.perf_counter()
        updates, train, val = [], {}, {}
        for site in family.train_sites:
            state_dir = run_dir / "sites" / site
            update = family.train_site(site, arrays, g, state_dir)
            data, payload = site_send_weights(update.arrays, arrays, comp, state_dir, g)
            audit_outgoing(state_dir, site, g, payload, update.num_examples)
            updates.append((centre_receive_weights(from_bytes(data), arrays, comp), update.num_examples))
            train[site] = {**update.metrics, "num-examples": update.num_examples, "bytes_sent": len(data)}
        arrays = fedavg(updates)
        if evaluate_sites:
            for site in family.train_sites:
                val[site] = {**family.evaluate_site(site, arrays), "num-examples": 1}
        record_round(family, run_dir, g, arrays, {"seconds": round(time.perf_counter() - t0, 2), "train": train,
                                                  "val": val, "engine": "sequential"}, progress)
    return arrays
