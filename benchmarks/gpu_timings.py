"""Seconds on a CUDA GPU against the same machine's CPU, for the two generator families.

* inference of the shipped reconstruction network (``recon_unrolled``: the architecture of its model card,
  PyTorch eager, torch.fft and in-graph DFT matrices) on 256x256 8-coil slices, and of the shipped
  synthesis generator (``configs/synthesis.yaml``'s model) on 256x256 slices, batch 1 and 8;
* one site's local round of the default synthesis run with DP-SGD (Opacus, per-layer clipping, Poisson
  batches of 64 over 800 records): ``SynthesisFamily.train_site`` with ``device: cuda`` against
  ``device: cpu`` (one thread, as a simulated site trains, and every core). The epsilon the round reports
  must be the same on both devices (the accountant sees the same sigma, q and steps).

::

    python -m benchmarks.gpu_timings --out docs/benchmarks/gpu_timings.md      # needs a CUDA GPU

Without a visible GPU it stops with exit code 2 instead of writing CPU numbers under a GPU title.
Weights are the architectures' initial ones (timing does not depend on their values); the data of the
training round are the embedded phantom's.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import typer

from benchmarks.common import family_from_card, markdown_table, time_call, write_report
from mrcore.masks import make_mask
from training.federation.registry import family_from_config
from training.federation.runconfig import load_run_config
from training.recon.export import ReconForServing

app = typer.Typer(add_completion=False, help=__doc__)
SYNTH_CONFIG = Path("configs/synthesis.yaml")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _recon_model(repo: Path, fft_backend: str) -> torch.nn.Module:
    """The shipped reconstruction network's architecture (its model card's family) wrapped as served."""
    family = family_from_card(repo, "recon_unrolled")
    return ReconForServing(family.new_generator(fft_backend=fft_backend), require_matmul=False).eval()


def _synth_family(*overrides: str):
    """The family of the default synthesis run (``configs/synthesis.yaml`` with ``overrides``)."""
    return family_from_config(load_run_config(SYNTH_CONFIG, overrides))


def _synth_model() -> torch.nn.Module:
    """The default synthesis run's generator architecture."""
    return _synth_family().new_generator().eval()


def _inference_rows(repo: Path, devices: list[torch.device], repeats: int) -> list[list]:
    rng = np.random.default_rng(0)
    mask = torch.from_numpy(make_mask("equispaced", (256, 256), 4.0, 0.08, seed=0).astype(np.float32))

    def kspace(b: int) -> tuple[torch.Tensor, torch.Tensor]:  # [b, 8 coils, 256, 256, 2] and mask [b, 256, 256]
        return torch.from_numpy(rng.standard_normal((b, 8, 256, 256, 2)).astype(np.float32)), mask.expand(b, -1, -1)

    cases = [
        ("recon_unrolled, torch.fft", lambda: _recon_model(repo, "torch"), kspace),
        ("recon_unrolled, in-graph DFT matrices (as exported)", lambda: _recon_model(repo, "matmul"), kspace),
        ("synthesis generator (ResNet, 7.7 k parameters)", _synth_model,
         lambda b: (torch.from_numpy(rng.random((b, 1, 256, 256)).astype(np.float32)),)),
    ]
    rows = []
    for name, build, inputs in cases:
        for batch in (1, 8):
            row = [name, batch]
            for device in devices:
                model = build().to(device)
                args = [a.to(device).contiguous() for a in inputs(batch)]

                def call(model=model, args=args, device=device) -> None:  # bound now: time_call runs it in this loop
                    with torch.inference_mode():
                        model(*args)
                    _sync(device)

                median, _ = time_call(call, repeats, warmup=2)
                row.append(median / batch)
            rows.append(row)
            typer.echo(f"  {name}, batch {batch}: " + ", ".join(f"{v:.4g}" for v in row[2:]))
    return rows


def _dp_round(device: str, threads: int, workdir: Path) -> dict:
    """One local DP round of site hospital-a of the default synthesis run on ``device``."""
    torch.set_num_threads(threads)
    family = _synth_family(f"device={device}", f"run_dir={workdir / 'run'}")
    family.dataset("hospital-a", "train")  # data generated / loaded before the clock starts
    arrays = family.initial_arrays()
    state_dir = workdir / f"state-{device.replace(':', '')}-{threads}"
    t0 = time.perf_counter()
    update = family.train_site("hospital-a", arrays, 1, state_dir)
    seconds = time.perf_counter() - t0
    finite = all(np.isfinite(v).all() for v in update.arrays.values())
    moved = math.sqrt(sum(float(((update.arrays[k] - arrays[k]) ** 2).sum()) for k in arrays))
    return {"seconds": seconds, "steps": update.metrics["steps"], "records": update.metrics["records"],
            "epsilon": update.metrics["epsilon"], "finite": finite, "update_norm": moved}


@app.command()
def main(
    out: Path = typer.Option(Path("docs/benchmarks/gpu_timings.md"), help="Markdown report to write."),
    repo: Path = typer.Option(Path("model_repository"), help="Model repository (the shipped model cards)."),
    repeats: int = typer.Option(5, min=1, help="Timed repetitions of each inference (median reported)."),
) -> None:
    """Measure on the visible GPU and this machine's CPU and write the tables."""
    if not torch.cuda.is_available():
        typer.echo("no CUDA GPU is visible to torch: nothing measured (this benchmark needs a GPU)", err=True)
        raise typer.Exit(2)
    gpu = torch.device("cuda")
    gpu_name = torch.cuda.get_device_name(gpu)
    cores = torch.get_num_threads()
    typer.echo(f"inference on {gpu_name} and {cores} CPU threads")
    inference = _inference_rows(repo, [gpu, torch.device("cpu")], repeats)
    inference = [[*r, r[3] / r[2]] for r in inference]

    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for device, threads in (("cuda", 1), ("cpu", 1), ("cpu", cores)):
            r = _dp_round(device, threads, Path(tmp))
            typer.echo(f"  DP round on {device} ({threads} threads): {r}")
            rounds.append([device if device == "cpu" else f"cuda ({gpu_name})", threads, f"{r['seconds']:.1f}",
                           r["steps"], r["records"], f"{r['seconds'] / r['steps'] * 1000:.0f}",
                           f"{r['epsilon']:.4f}", "yes" if r["finite"] else "NO", f"{r['update_norm']:.3g}"])
    torch.set_num_threads(cores)

    body = (
        f"GPU: {gpu_name} (torch {torch.__version__}, CUDA {torch.version.cuda}); CPU: the same machine's "
        f"{cores} threads. Median of {repeats} calls after 2 warm-ups, fp32, PyTorch eager, "
        "`torch.inference_mode`, the GPU synchronised before the clock stops; inputs already on the device. "
        "Initial weights of the shipped architectures (the timing does not depend on their values).\n\n"
        "## Inference, seconds per slice\n\n"
        + markdown_table(["network", "batch", "GPU s/slice", "CPU s/slice", "GPU speed-up"], inference)
        + "\n\n## One site's DP-SGD round of the default synthesis run (`SynthesisFamily.train_site`, site "
        "hospital-a, round 1)\n\n"
        "Same configuration (`configs/synthesis.yaml`) but `device`; the epsilon must not depend on the device.\n\n"
        + markdown_table(["device", "torch threads", "seconds", "optimiser steps", "records", "ms / step",
                          "epsilon after the round", "weights finite", "L2 norm of the update"], rounds)
    )
    write_report(out, "GPU timings", "python -m benchmarks.gpu_timings --out " + str(out), body)
    typer.echo(f"wrote {out}")


if __name__ == "__main__":
    app()
