"""Seconds per 256x256 8-coil slice of the shipped reconstruction model along the serving path.

PyTorch eager (the training graph, torch.fft; and the exported in-graph DFT variant), ONNX Runtime in
process (the shipped ``model.onnx``, and the same network exported with ONNX's ``DFT`` operator for
the FFT choice), the real tritonserver over HTTP and gRPC with batch 1 and 8, and the SigPy CS
baseline (ESPIRiT + 30 L1-wavelet iterations). The Triton rows come twice: the answer alone and with the
reconstruction self-check (``quality.enabled``, :meth:`serving.client.TritonClient.reconstruct_checked`), whose
cost is the difference::

    python -m benchmarks.serving_latency --out docs/benchmarks/serving_latency.md
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch
import typer

from benchmarks.common import family_from_card, free_port, markdown_table, time_call, write_report
from mrcore.coils import estimate_coil_maps
from mrcore.cs import l1_wavelet_recon
from mrcore.data.phantom import PhantomConfig, PhantomSource
from mrcore.masks import make_mask
from serving.client import TritonClient
from serving.triton import TritonServer, TritonSettings
from training.export.onnx_io import export_onnx, ort_session, relative_error
from training.export.run import load_run  # noqa: F401  (quiets the exporter's logging)
from training.recon.export import ReconForServing, servable_models

app = typer.Typer(add_completion=False, help=__doc__)
MODEL = "recon_unrolled"


def _slices(matrix: int, coils: int, n: int, cache_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """``n`` undersampled slices complex64 [n, coils, ky, kx] of the embedded phantom, and the mask."""
    src = PhantomSource(PhantomConfig(seed=0, subjects_per_site=1, slices_per_subject=n, matrix=(matrix, matrix), cache_dir=cache_dir))
    mask = make_mask("equispaced", (matrix, matrix), 4.0, 0.08, seed=0)
    k = np.stack([src.kspace(src.sites[0], i, "T2w", num_coils=coils).kspace for i in range(n)])
    return (k * mask).astype(np.complex64), mask


@app.command()
def main(
    out: Path = typer.Option(Path("docs/benchmarks/serving_latency.md"), help="Markdown report to write."),
    repo: Path = typer.Option(Path("model_repository"), help="Model repository (the shipped one)."),
    repeats: int = typer.Option(3, min=1, help="Timed repetitions (median reported)."),
    cache_dir: Path = typer.Option(Path(".cache/mrdata"), help="Phantom cache directory."),
    dft_op: bool = typer.Option(True, help="Also export and time the ONNX DFT-operator variant (25 s export)."),
) -> None:
    """Measure and write the table."""
    matrix, coils = 256, 8
    k, mask = _slices(matrix, coils, 8, cache_dir)
    feed8 = {"kspace": np.stack([k.real, k.imag], -1).astype(np.float32), "mask": np.broadcast_to(mask, k.shape[:1] + mask.shape).astype(np.float32)}
    feed1 = {name: v[:1] for name, v in feed8.items()}
    rows = []

    # PyTorch eager: the served graph (in-graph DFT) and the training graph (torch.fft), trained weights not
    # needed for timing (same architecture as the shipped model, from its model card)
    family = family_from_card(repo, MODEL)
    arrays = family.initial_arrays()
    torch_in = {n: torch.from_numpy(v) for n, v in feed1.items()}
    for backend in ("torch", "matmul"):
        net = ReconForServing(family.generator_from(arrays, fft_backend=backend).eval(), require_matmul=False)
        with torch.no_grad():
            t, _ = time_call(lambda: net(torch_in["kspace"], torch_in["mask"]), repeats)  # noqa: B023 - called at once, inside this iteration
        rows.append([f"PyTorch eager, {'torch.fft' if backend == 'torch' else 'in-graph DFT matrices'}", 1, t, t])

    onnx_path = repo / MODEL / "1" / "model.onnx"
    sess = ort_session(onnx_path)
    for feed in (feed1, feed8):
        b = feed["kspace"].shape[0]
        t, _ = time_call(lambda: sess.run(["magnitude"], feed), repeats)  # noqa: B023 - called at once, inside this iteration
        rows.append(["ONNX Runtime in process (shipped model.onnx, DFT matrices)", b, t, t / b])
    t_ort1 = rows[-2][3]

    fft_note = ""
    if dft_op:  # the alternative: torch.fft exported to ONNX's DFT operator
        (spec,) = servable_models(family, arrays)
        spec.module = ReconForServing(family.generator_from(arrays, fft_backend="torch").eval(), require_matmul=False)
        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(spec, Path(tmp) / "dft.onnx")
            dsess = ort_session(path)
            t, _ = time_call(lambda: dsess.run(["magnitude"], feed1), repeats)
            rows.append(["ONNX Runtime in process, ONNX DFT operator", 1, t, t])
            errs = {}
            for label, case in spec.parity_cases:
                with torch.no_grad():
                    ref = spec.module(*(torch.from_numpy(case[n]) for n in ("kspace", "mask")))[1].numpy()
                errs[label] = relative_error(dsess.run(["magnitude"], case)[0], ref)
        fft_note = ("\n\nFFT inside the graph, ONNX DFT operator: relative error vs PyTorch per case: "
                    + ", ".join(f"{k} {v:.1e}" for k, v in errs.items())
                    + f". The shipped model (DFT as matrix products) has parity "
                    f"{json.loads((repo / MODEL / '1' / 'model_card.json').read_text())['export']['parity_max_relative_error']:.1e} (model card).")

    settings = TritonSettings(repository=repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    with TritonServer(settings) as server:
        for protocol, url in (("HTTP", server.http_url), ("gRPC", server.grpc_url)):
            with TritonClient(url, protocol.lower()) as client:
                for n in (1, 8):
                    t, _ = time_call(lambda: client.reconstruct(k[:n], mask), repeats)  # noqa: B023 - called at once, inside this iteration
                    rows.append([f"Triton {protocol} (binary tensors), python backend + ONNX Runtime", n, t, t / n])
                    # the reconstruction self-check (issue 19, serving.quality): one more call without held-out lines
                    t, _ = time_call(lambda: client.reconstruct_checked(k[:n], mask), repeats)  # noqa: B023 - called at once, inside this iteration
                    rows.append([f"Triton {protocol}, with the self-check (quality.enabled: second call, "
                                 "held-out lines)", n, t, t / n])

    t_esp, _ = time_call(lambda: estimate_coil_maps(k[0], crop=0.0), max(1, repeats - 1))
    maps = estimate_coil_maps(k[0], crop=0.0)
    t_l1, _ = time_call(lambda: l1_wavelet_recon(k[0], mask, maps=maps, lamda=0.001), max(1, repeats - 1))
    rows.append(["SigPy CS: ESPIRiT + L1-wavelet (30 iterations)", 1, t_esp + t_l1, t_esp + t_l1])

    table = [[r[0], r[1], r[2], r[3], r[3] / t_ort1] for r in rows]
    body = (f"{matrix}x{matrix}, {coils} coils, equispaced R=4, `{MODEL}` architecture of the shipped model card, "
            f"median of {repeats} runs after a warm-up. Threads: torch {torch.get_num_threads()}, ONNX Runtime default. "
            "Last column: seconds per slice relative to in-process ONNX Runtime at batch 1.\n\n"
            + markdown_table(["path", "batch", "seconds / call", "seconds / slice", "x ORT (batch 1)"], table) + fft_note)
    write_report(out, "Serving latency per slice", f"python -m benchmarks.serving_latency --out {out}", body)
    typer.echo(body)


if __name__ == "__main__":
    app()
