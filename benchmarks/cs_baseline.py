"""Benchmark of the compressed-sensing baseline on one 256x256 8-coil slice of the embedded data.

Times ESPIRiT coil-map estimation and the 30-iteration L1-wavelet reconstruction separately (SigPy,
CPU), and reports their image quality next to zero-filled reconstruction::

    python -m benchmarks.cs_baseline --out docs/benchmarks/cs_baseline.md
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from benchmarks.common import markdown_table, time_call, write_report
from mrcore.coils import estimate_coil_maps
from mrcore.cs import l1_wavelet_recon
from mrcore.data.phantom import PhantomConfig, PhantomSource
from mrcore.masks import make_mask
from mrcore.metrics import nmse, psnr, ssim
from mrcore.sense import zero_filled

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    out: Path = typer.Option(Path("docs/benchmarks/cs_baseline.md"), help="Markdown report to write."),
    repeats: int = typer.Option(3, min=1, help="Timed repetitions (median reported)."),
    matrix: int = typer.Option(256, min=32, help="Square matrix size."),
    coils: int = typer.Option(8, min=1, help="Number of simulated coils."),
    acceleration: float = typer.Option(4.0, help="Undersampling factor."),
    mask_kind: str = typer.Option("equispaced", help="equispaced | random | poisson"),
    center_fraction: float = typer.Option(0.08, help="Fully sampled centre fraction (ESPIRiT needs >= 16 lines)."),
    lamda: float = typer.Option(0.001, help="L1-wavelet weight (0.001 was best on validation slices, docs/recon_results.md)."),
    cache_dir: Path = typer.Option(Path(".cache/mrdata"), help="Phantom cache directory."),
) -> None:
    """Measure seconds per slice of ESPIRiT and L1-wavelet CS, and their PSNR/SSIM vs zero-filled."""
    cfg = PhantomConfig(seed=0, subjects_per_site=1, slices_per_subject=4, matrix=(matrix, matrix), cache_dir=cache_dir)
    source = PhantomSource(cfg)
    site = source.sites[0]
    sample = source.kspace(site, 2, "T2w", num_coils=coils)
    mask = make_mask(mask_kind, sample.kspace.shape[-2:], acceleration, center_fraction, seed=0)
    kspace = (sample.kspace * mask).astype(np.complex64)
    target = sample.target

    # crop=0 as in the evaluation (training/recon/evaluate.py): the 0.95 crop cut off the scalp
    t_espirit, _ = time_call(lambda: estimate_coil_maps(kspace, crop=0.0), repeats)
    maps = estimate_coil_maps(kspace, crop=0.0)
    t_l1, _ = time_call(lambda: l1_wavelet_recon(kspace, mask, maps=maps, lamda=lamda), repeats)
    t_zf, _ = time_call(lambda: zero_filled(kspace, mask), repeats)

    cs = np.abs(l1_wavelet_recon(kspace, mask, maps=maps, lamda=lamda))  # ESPIRiT maps are unit-norm: |x| ~ RSS
    zf = zero_filled(kspace, mask)
    rows = [
        ["zero-filled (RSS)", t_zf, psnr(target, zf), ssim(target, zf), nmse(target, zf)],
        ["ESPIRiT maps", t_espirit, "", "", ""],
        [f"L1-wavelet, 30 iter, lambda={lamda:g} (given maps)", t_l1, psnr(target, cs), ssim(target, cs), nmse(target, cs)],
        ["CS total (ESPIRiT + L1-wavelet)", t_espirit + t_l1, "", "", ""],
    ]
    body = (
        f"One {matrix}x{matrix} slice, {coils} simulated coils, site `{site}`, T2w, {mask_kind} mask R={acceleration:g} "
        f"with {center_fraction:.0%} centre, median of {repeats} runs after one warm-up.\n\n"
        + markdown_table(["method", "seconds / slice", "PSNR (dB)", "SSIM", "NMSE"], rows)
    )
    cmd = f"python -m benchmarks.cs_baseline --out {out}"
    write_report(out, "Compressed-sensing baseline: time per slice", cmd, body)
    typer.echo(body)


if __name__ == "__main__":
    app()
