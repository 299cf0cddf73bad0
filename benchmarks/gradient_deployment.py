"""Seconds per synchronisation of gradient averaging: in process vs through a real TLS deployment (one
``flower-superlink``, one ``flower-supernode`` per site, authenticated sites, all on this machine).

    .venv/bin/python -m benchmarks.gradient_deployment --out .cache/bench-gradient-deployment --rounds 2

The same tiny reconstruction run (2 sites, 32x32 4-coil slices, 2 batches of 2 per site and round, hybrid
WGAN objective, ``sync_every: 1``, so 2 synchronisations per round) both ways; prints, per round, the seconds
per synchronisation and the load average (1 min) before and after each engine, and how far apart the
two final generators are.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from benchmarks.common import markdown_table
from training.federation.checkpoints import read_metrics
from training.federation.deploy import LocalDeployment
from training.federation.gradient_average import run_gradient_average
from training.federation.records import load_arrays
from training.federation.runconfig import load_run_config

SITES = ("hospital-a", "hospital-b")


def tiny_config(out: Path, run: str, rounds: int) -> Path:
    """The benchmark's run configuration (written to ``out/<run>.yaml``)."""
    cfg = {
        "family": "recon", "run_dir": str(out / run), "seed": 3,
        "data": {"source": {"matrix": [32, 32], "subjects_per_site": 3, "slices_per_subject": 2,
                            "cache_dir": str(out / "cache")},
                 "train_sites": list(SITES), "heldout_site": None, "num_coils": 4, "val_subjects": 1},
        "model": {"chans": 8, "num_cascades": 1, "sens_chans": 4},
        "objective": {"kind": "hybrid", "batch_size": 2, "lr": 1e-3, "pure_l1_batches": 1, "ramp_batches": 2},
        "federation": {"rounds": rounds, "evaluate_sites": False, "mode": "gradient_average", "sync_every": 1},
    }
    path = out / f"{run}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def main() -> None:
    """Run both engines and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(".cache/bench-gradient-deployment"))
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    loads = {"in process": [os.getloadavg()[0]]}
    torch.set_num_threads(1)  # as each site's process (MRI_SITE_THREADS)
    local = run_gradient_average(load_run_config(tiny_config(out, "local", args.rounds)))
    loads["in process"].append(os.getloadavg()[0])
    loads["deployment"] = [os.getloadavg()[0]]
    t0 = time.perf_counter()
    with LocalDeployment(out / "flower", {s: out / f"state-{s}" for s in SITES}) as deployment:
        started = time.perf_counter() - t0
        deployment.run(tiny_config(out, "deployed", args.rounds), timeout_s=3600)
    loads["deployment"].append(os.getloadavg()[0])
    rows = []
    for engine, run in (("in process", "local"), ("deployment", "deployed")):
        for r in read_metrics(out / run):
            syncs = r["train"][SITES[0]]["sends"]
            train = r.get("traffic", {}).get("train_seconds")
            rows.append([engine, r["round"], syncs, f"{r['seconds'] / syncs:.2f}",
                         f"{train / syncs:.2f}" if train is not None else "", r["train"][SITES[0]]["bytes_per_send"],
                         f"{loads[engine][0]:.1f} -> {loads[engine][1]:.1f}"])
    remote = load_arrays(out / "deployed" / "checkpoints" / f"round_{args.rounds:03d}.npz")
    diff = max(float(np.max(np.abs(remote[k] - local[k]))) for k in local)
    print(f"SuperLink + {len(SITES)} SuperNodes started in {started:.1f} s; final generator, deployment vs in "
          f"process: max |difference| {diff:.3g}")
    print(markdown_table(["engine", "round", "syncs", "s per sync (round)", "s per sync (train messages)",
                          "bytes per send per site", "load average"], rows))


if __name__ == "__main__":
    main()
