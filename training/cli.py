"""`mri-train`: federated training of the reconstruction and synthesis families.

    mri-train federated --config configs/recon.yaml
    mri-train federated --config configs/recon.yaml --set federation.rounds=3 --set objective.kind=hybrid
    mri-train show-config --config configs/recon.yaml
"""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path

import typer
import yaml

from mrcore.config import ConfigError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
log = logging.getLogger("mri-train")

CONFIG_OPT = typer.Option(..., "--config", "-c", help="Run configuration (YAML/TOML), e.g. configs/recon.yaml.")
SET_OPT = typer.Option([], "--set", "-s", help="Override a key: --set federation.rounds=3 (repeatable).")


def _load(config: Path, overrides: list[str]) -> dict:
    from training.federation.runconfig import load_run_config

    try:
        return load_run_config(config, overrides)
    except (ConfigError, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--config/--set") from exc


@app.command("show-config")
def show_config(config: Path = CONFIG_OPT, set_: list[str] = SET_OPT) -> None:
    """Print the validated run configuration with every default filled in."""
    typer.echo(yaml.safe_dump(_load(config, set_), sort_keys=False))


@app.command()
def federated(
    config: Path = CONFIG_OPT,
    set_: list[str] = SET_OPT,
    fresh: bool = typer.Option(False, "--fresh", help="Ignore existing checkpoints in run_dir and start over."),
) -> None:
    """Train across the configured sites with Flower's simulation engine (resumes from the last checkpoint)."""
    from tqdm import tqdm

    from training.federation.coordinator import latest_checkpoint, read_metrics
    from training.federation.registry import family_from_yaml
    from training.federation.simulation import simulate
    from training.plots import plot_curves

    run_cfg = _load(config, set_)
    run_dir = Path(run_cfg["run_dir"])
    if fresh and run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    family = family_from_yaml(yaml.safe_dump(run_cfg, sort_keys=True))
    _ = family.source  # validate sites/contrasts and build the data cache before any process starts
    total = int(run_cfg["federation"]["rounds"])
    done = latest_checkpoint(run_dir)
    start = done[0] if done else 0
    typer.echo(f"run {run_cfg['name']}: sites {', '.join(family.train_sites)}, rounds {start}->{total}, dir {run_dir}")
    bar = tqdm(total=total, initial=start, desc="federated rounds", unit="round")

    def progress(rnd: int, row: dict) -> None:
        held = row.get("heldout", {})
        bar.set_postfix({k: f"{v:.3f}" for k, v in held.items() if k in ("psnr", "ssim")})
        bar.update(1)
        write_summaries(run_dir, read_metrics(run_dir))
        plot_curves(read_metrics(run_dir), run_dir / "plots" / "curves.png")

    t0 = time.perf_counter()
    simulate(run_cfg, progress=progress)
    bar.close()
    rows = read_metrics(run_dir)
    write_summaries(run_dir, rows)
    if rows:
        plot_curves(rows, run_dir / "plots" / "curves.png")
        typer.echo(f"done in {time.perf_counter() - t0:.0f} s; last round: {rows[-1]['heldout']}")
    typer.echo(f"metrics: {run_dir / 'metrics.csv'}; plots: {run_dir / 'plots'}")


def write_summaries(run_dir: Path, rows: list[dict]) -> None:
    """metrics.jsonl -> metrics.csv (one row per round x site x split)."""
    out = Path(run_dir) / "metrics.csv"
    keys = sorted({k for r in rows for part in ("train", "val") for s in r.get(part, {}).values() for k in s}
                  | {k for r in rows for k in r.get("heldout", {})})
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["round", "split", "site", *keys])
        for r in rows:
            for part in ("train", "val"):
                for site, vals in sorted(r.get(part, {}).items()):
                    w.writerow([r["round"], part, site, *[vals.get(k, "") for k in keys]])
            if r.get("heldout"):
                w.writerow([r["round"], "heldout", "", *[r["heldout"].get(k, "") for k in keys]])


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app()
