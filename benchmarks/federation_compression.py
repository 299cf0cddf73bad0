"""FedAvg vs Isik et al.'s gradient averaging, each without and with update compression, at 2 and 5 sites.

Every run goes through the project's entry point (``mri-train federated --engine sequential``, a subprocess
per run) on a small reconstruction configuration (64x64 phantom, 4 coils, 2-cascade unrolled generator,
WGAN hybrid objective with a local critic per site, 4x equispaced, hospital-c held out). Fairness: every
site runs the same number of batches per round in both modes (one pass over its data: FedAvg with
``local_epochs: 1``, gradient averaging with ``sync_every: 1``), so the generator takes the same number of
optimiser steps (FedAvg: each site's local Adam steps, then the average; gradient averaging: one central Adam
step per batch on the averaged gradient). Reported: held-out PSNR/SSIM after the last round, training wall
time (sum of the rounds' seconds, sites in turn on this CPU), and bytes per site (the serialised payload).

    python -m benchmarks.federation_compression --out docs/benchmarks/federation_compression.md
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import typer

from benchmarks.common import markdown_table, write_report

app = typer.Typer(add_completion=False, help=__doc__)

SITES = {2: "[hospital-a,hospital-b]", 5: "[hospital-a,hospital-b,hospital-d,hospital-e,hospital-f]"}
COMPRESSIONS = {
    "none": ["federation.compression.kind=none"],
    "float16": ["federation.compression.kind=float16"],
    "top-k 10 % + EF": ["federation.compression.kind=topk", "federation.compression.ratio=0.1"],
    "top-k 1 % + EF": ["federation.compression.kind=topk", "federation.compression.ratio=0.01"],
}
SMALL = [
    "data.source.matrix=[64, 64]", "data.source.subjects_per_site=4", "data.source.slices_per_subject=3",
    "data.source.sites=[hospital-a,hospital-b,hospital-c,hospital-d,hospital-e,hospital-f]",
    "data.heldout_site=hospital-c", "data.num_coils=4", "data.val_subjects=1", "data.max_eval_slices=8",
    "model.num_cascades=2", "model.chans=8", "model.sens_chans=4", "model.num_res_blocks=1",
    "objective.kind=hybrid", "objective.batch_size=2", "objective.pure_l1_batches=12", "objective.ramp_batches=12",
    "objective.lr=0.001", "federation.evaluate_sites=false", "mask.center_fraction=0.125",
]


def tag_of(sites: int, mode: str, compression: str) -> str:
    """Run directory name of one combination, e.g. ``gradient_average-5-topk10``."""
    return f"{mode}-{sites}-{compression.split()[0].replace('-', '')}{compression.split()[1] if ' ' in compression else ''}"


def finished(out_dir: Path, sites: int, mode: str, compression: str, rounds: int) -> bool:
    """True when that combination's run directory holds all ``rounds`` metric rows."""
    path = out_dir / tag_of(sites, mode, compression) / "metrics.jsonl"
    return path.exists() and len(path.read_text().splitlines()) >= rounds


def summary(run_dir: Path, sites: int, mode: str, compression: str, wall: float | None) -> dict:
    """The table's numbers of one finished run, from its metrics.jsonl."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    per_site = [m for r in rows for m in r["train"].values()]
    return {
        "sites": sites, "mode": mode, "compression": compression,
        "psnr": rows[-1]["heldout"]["psnr"], "ssim": rows[-1]["heldout"]["ssim"],
        "train_s": sum(r["seconds"] for r in rows), "wall_s": wall,
        "bytes_round": sum(m["bytes_sent"] for m in per_site) / len(per_site),
        "sends": sum(m.get("sends", 1) for m in per_site) / len(per_site),
    }


def run_one(out_dir: Path, cache: Path, sites: int, mode: str, compression: str, rounds: int, threads: int = 1) -> dict:
    """One training run through ``mri-train federated``; its last metrics row, summarised."""
    tag = tag_of(sites, mode, compression)
    run_dir = out_dir / tag
    sets = [*SMALL, f"data.train_sites={SITES[sites]}", f"data.source.cache_dir={cache}", f"run_dir={run_dir}",
            f"name={tag}", f"federation.rounds={rounds}", f"federation.mode={mode}", *COMPRESSIONS[compression]]
    cmd = [sys.executable, "-m", "training.cli", "federated", "-c", "configs/recon.yaml", "--engine", "sequential",
           "--fresh", *[a for s in sets for a in ("--set", s)]]
    t0 = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return summary(run_dir, sites, mode, compression, time.perf_counter() - t0)


@app.command()
def main(
    out: Path = typer.Option(Path("docs/benchmarks/federation_compression.md"), help="Markdown report to write."),
    work: Path = typer.Option(Path("runs/bench-federation"), help="Directory of the runs."),
    rounds: int = typer.Option(10, min=1, help="Rounds per run (each one pass over every site's data)."),
    threads: int = typer.Option(1, min=1, help="Torch threads per run (OMP_NUM_THREADS)."),
    sites: list[int] = typer.Option([2, 5], help="Numbers of training sites (2 and/or 5)."),
    compression: list[str] = typer.Option(list(COMPRESSIONS), help=f"Compressions to compare, of {list(COMPRESSIONS)}."),
    reuse: bool = typer.Option(False, help="Take the numbers of runs already finished in --work instead of rerunning them."),
    skip_missing: bool = typer.Option(False, help="With --reuse: leave combinations without a finished run out of the table."),
) -> None:
    """Run every (sites, mode, compression) combination and write the table."""
    unknown = [c for c in compression if c not in COMPRESSIONS] + [str(n) for n in sites if n not in SITES]
    if unknown:
        raise typer.BadParameter(f"unknown --compression/--sites {unknown}; expected {list(COMPRESSIONS)} and {list(SITES)}")
    results = []
    for n in sites:
        for mode in ("fedavg", "gradient_average"):
            for comp in compression:
                if reuse and finished(work, n, mode, comp, rounds):
                    r = summary(work / tag_of(n, mode, comp), n, mode, comp, None)
                elif reuse and skip_missing:
                    continue
                else:
                    r = run_one(work, work / "cache", n, mode, comp, rounds, threads)
                typer.echo(json.dumps(r))
                results.append(r)
    header = ["sites", "mode", "compression", "held-out PSNR (dB)", "held-out SSIM", "train time (s)",
              "sends per round", "bytes per send per site", "bytes per round per site"]
    rows = [[r["sites"], r["mode"], r["compression"], round(r["psnr"], 2), round(r["ssim"], 4), round(r["train_s"], 1),
             int(r["sends"]), int(r["bytes_round"] / r["sends"]), int(r["bytes_round"])] for r in results]
    body = (f"{rounds} rounds, {threads} torch thread(s) per run; every site runs the same batches per round in every mode (see the module docstring "
            f"of `benchmarks/federation_compression.py`).\n\n" + markdown_table(header, rows))
    write_report(out, "FedAvg vs gradient averaging, with compression",
                 "python -m benchmarks.federation_compression " + " ".join(sys.argv[1:]), body)
    typer.echo(out.read_text())


if __name__ == "__main__":
    app()
