"""`mri-data`: generate, inspect and preview the training data (the embedded phantom or real data).

    mri-data generate                      # build/cache the default 4-site phantom data set
    mri-data info --config configs/data.yaml
    mri-data preview --out docs/img/data_preview.png
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import typer

from mrcore.config import ConfigError, load_config
from mrcore.data.sources import DataConfig, open_source
from training.preview import write_preview

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
log = logging.getLogger("mri-data")

CONFIG_OPT = typer.Option(None, "--config", "-c", help="YAML/TOML file with a data section (see configs/data.yaml).")
SET_OPT = typer.Option([], "--set", "-s", help="Override a key, e.g. --set seed=3 --set matrix=[128,128].")


def _load(config: Path | None, overrides: list[str]) -> DataConfig:
    try:
        return load_config(DataConfig, config, overrides)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from exc


@app.command()
def generate(config: Path | None = CONFIG_OPT, set_: list[str] = SET_OPT) -> None:
    """Generate (or load from the cache) every site of the configured data set and print a summary."""
    cfg = _load(config, set_)
    t0 = time.perf_counter()
    source = open_source(cfg)
    total = sum(source.num_slices(s) for s in source.sites)
    typer.echo(f"{cfg.kind}: {len(source.sites)} sites, {total} slices ready in {time.perf_counter() - t0:.1f} s")


@app.command()
def info(config: Path | None = CONFIG_OPT, set_: list[str] = SET_OPT) -> None:
    """List sites, contrasts, subjects and slice counts."""
    source = open_source(_load(config, set_))
    for site in source.sites:
        typer.echo(
            f"{site}: {source.num_slices(site)} slices, {len(source.subjects(site))} subjects, "
            f"contrasts {', '.join(source.contrasts(site))}"
        )


@app.command()
def preview(
    out: Path = typer.Option(Path("docs/img/data_preview.png"), help="PNG file to write."),
    config: Path | None = CONFIG_OPT,
    set_: list[str] = SET_OPT,
    contrast: str = typer.Option("T2w", help="Contrast of the k-space row."),
    acceleration: float = typer.Option(4.0, help="Acceleration of the mask shown."),
    mask_kind: str = typer.Option("equispaced", help="equispaced | random | poisson"),
) -> None:
    """Write a PNG montage: sites x contrasts, coil images, k-space, mask, zero-filled and reference."""
    source = open_source(_load(config, set_))
    try:
        path = write_preview(source, out, contrast=contrast, acceleration=acceleration, mask_kind=mask_kind)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    typer.echo(f"wrote {path}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app()
