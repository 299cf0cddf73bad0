"""The coordinator's round loop: FedAvg over the sites, checkpoint every round, metrics, resume.

Run directory layout (``run_dir`` in the config)::

    config.yaml                  the resolved run configuration
    checkpoints/round_NNN.npz    shared weights after each round (the coordinator's only state)
    checkpoints/round_NNN.json   that round's metrics record, stored with the weights (per-site training
                                 metrics such as a site's privacy epsilon, validation, held-out)
    metrics.jsonl                one JSON record per round: per-site train and validation metrics,
                                 held-out metrics, seconds
    sites/<site>/                each site's private state in simulation (deployment: the node's state-dir)
"""

from __future__ import annotations

import json
import logging
import time

import yaml
from flwr.app import MetricRecord
from flwr.serverapp import Grid

from mrcore.durable import append_durable, write_json_durable
from training.federation.checkpoints import checkpoint_path, latest_checkpoint, read_metrics
from training.federation.family import Arrays
from training.federation.gradient_flower import run_gradient_coordinator
from training.federation.records import from_record, save_arrays, to_record
from training.federation.rundir import RunMismatch, check_same_run, record_round, start_run
from training.federation.secure import SecAggPlusRound
from training.federation.strategy import SiteFedAvg, describe
from training.federation.traffic import CountingGrid

# re-exported: the run directory's helpers lived here before training.federation.rundir
__all__ = ["RunMismatch", "check_same_run", "checkpoint_path", "latest_checkpoint", "read_metrics", "record_round",
           "run_coordinator", "start_run"]

log = logging.getLogger(__name__)


def run_coordinator(grid: Grid, run_cfg: dict, progress=None) -> Arrays:
    """Run (or resume) the rounds of ``run_cfg``; return the final shared weights. ``federation.mode:
    gradient_average`` runs :func:`training.federation.gradient_flower.run_gradient_coordinator` instead.

    ``progress``: optional callable ``(round, record)`` called after every round (progress bars).
    """
    if run_cfg["federation"].get("mode", "fedavg") == "gradient_average":  # one Flower round per synchronisation
        return run_gradient_coordinator(grid, run_cfg, progress)
    family, run_dir, arrays, offset = start_run(run_cfg)
    text = yaml.safe_dump(run_cfg, sort_keys=True)
    total_rounds = int(run_cfg["federation"]["rounds"])
    if offset >= total_rounds:
        log.info("all %d rounds already done", total_rounds)
        return arrays

    timeout = float(run_cfg["federation"].get("round_timeout_s", 3600))
    secure_cfg = family.cfg.federation.secure_aggregation
    secure = SecAggPlusRound(secure_cfg, family.train_sites, timeout) if secure_cfg.enabled else None
    strategy = SiteFedAvg(describe(arrays), text, offset, len(family.train_sites),
                          evaluate_sites=bool(run_cfg["federation"].get("evaluate_sites", True)),
                          target_site=family.target_site, query_timeout=timeout, secure=secure,
                          compression=family.cfg.federation.compression)
    t_round = [time.perf_counter()]
    counting = CountingGrid(grid)

    def evaluate(server_round: int, record) -> MetricRecord | None:
        if server_round == 0:
            return None
        g = offset + server_round
        shared = from_record(record)
        save_arrays(shared, checkpoint_path(run_dir, g))
        heldout = family.evaluate_heldout(shared)
        family.write_artifacts(shared, g, run_dir)
        now = time.perf_counter()
        row = {
            "round": g,
            "seconds": round(now - t_round[0], 2),
            "train": strategy.site_train_metrics.get(g, {}),
            "val": strategy.site_eval_metrics.get(g, {}),
            "heldout": heldout,
            "traffic": counting.summary(),
        }
        counting.reset()
        t_round[0] = now
        append_durable(run_dir / "metrics.jsonl", json.dumps(row) + "\n")
        write_json_durable(checkpoint_path(run_dir, g, ".json"), row, indent=1)
        if progress is not None:
            progress(g, row)
        return MetricRecord({k: float(v) for k, v in heldout.items()}) if heldout else None

    result = strategy.start(
        grid=counting,  # type: ignore[arg-type]
        initial_arrays=to_record(arrays),
        num_rounds=total_rounds - offset,
        timeout=float(run_cfg["federation"].get("round_timeout_s", 3600)),
        evaluate_fn=evaluate,
    )
    return from_record(result.arrays)
