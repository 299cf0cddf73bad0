"""Seconds per slice of the served reconstruction against SigPy CS, in one run on this machine (CPU).

For each setting (256x256 with 8 coils and 320x320 with 16 coils by default; 4x equispaced, 8 % centre) on a
slice of the embedded phantom::

    CS   = ESPIRiT coil maps (SigPy, calibration = the fully sampled centre, at most 24) + L1-wavelet, 30 iterations
    each served version of recon_unrolled = the serving client's SVD coil compression (to the model's
           ``virtual_coils``) + the exported ONNX graph in ONNX Runtime (in process, ``--threads`` threads)

Medians of ``--repeats`` runs after a warm-up; the ratio CS / model is the speed-up. Run it on a quiet
machine: other processes on the two cores inflate ONNX Runtime's multi-threaded times more than SigPy's.

    python -m benchmarks.recon_speed --out docs/benchmarks/recon_speed.md
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from benchmarks.common import markdown_table, time_call, write_report
from mrcore.data.phantom import PhantomConfig, PhantomSource
from mrcore.masks import make_mask
from training.recon import generalization as gen

app = typer.Typer(add_completion=False, help=__doc__)

SETTINGS = ((256, 8), (320, 16))


def _slice(matrix: int, coils: int, cache_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    source = PhantomSource(PhantomConfig(seed=0, subjects_per_site=1, slices_per_subject=4, matrix=(matrix, matrix),
                                         cache_dir=cache_dir))
    sample = source.kspace(source.sites[0], 2, "T2w", num_coils=coils)
    mask = make_mask("equispaced", sample.kspace.shape[-2:], 4.0, 0.08, seed=0)
    return (sample.kspace * mask)[None].astype(np.complex64), mask[None].astype(np.float32)


@app.command()
def main(
    out: Path = typer.Option(Path("docs/benchmarks/recon_speed.md"), help="Markdown report to write."),
    repo: Path = typer.Option(Path("model_repository"), help="Model repository (every recon_unrolled version is timed)."),
    repeats: int = typer.Option(3, min=1, help="Timed repetitions (median reported)."),
    threads: int = typer.Option(2, min=1, help="ONNX Runtime intra-op threads."),
    cache_dir: Path = typer.Option(Path(".cache/mrdata"), help="Phantom cache directory."),
) -> None:
    """Time CS and every served recon_unrolled version per slice at 256x256/8 coils and 320x320/16 coils."""
    models = gen.repository_models(repo)
    cs = gen.cs_method(1e-4, 0.0)
    rows = []
    for matrix, coils in SETTINGS:
        kspace, mask = _slice(matrix, coils, cache_dir)
        t_cs, _ = time_call(lambda: cs(kspace, mask), repeats)  # noqa: B023 - called at once, inside this iteration
        rows.append([f"{matrix}x{matrix}, {coils} coils", "SigPy CS: ESPIRiT + L1-wavelet (30 iterations)", t_cs, 1.0])
        for name, (path, virtual) in models.items():
            run = gen.onnx_method(path, virtual, threads)
            t, _ = time_call(lambda: run(kspace, mask), repeats)  # noqa: B023 - called at once, inside this iteration
            coil_note = f", {coils} -> {virtual} virtual coils" if virtual and coils > virtual else ""
            rows.append([f"{matrix}x{matrix}, {coils} coils", f"{name} (ONNX Runtime, {threads} threads{coil_note})",
                         t, t_cs / t])
    body = (
        "One phantom slice per setting, equispaced 4x with an 8 % centre; seconds per slice are medians of "
        f"{repeats} runs after a warm-up; 'x faster' is CS's time over the row's, measured in the same run.\n\n"
        + markdown_table(["setting", "method", "seconds / slice", "x faster than CS"], rows)
    )
    write_report(out, "Reconstruction speed against compressed sensing (CPU)",
                 f"python -m benchmarks.recon_speed --out {out}", body)
    typer.echo(body)


if __name__ == "__main__":
    app()
