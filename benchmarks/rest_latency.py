"""End-to-end latency of the REST API vs in-process ONNX Runtime on the same volume.

A 16-slice, 8-coil, 256x256 T2w volume of the embedded phantom, 4x equispaced undersampling (the mask
``recon_unrolled`` was trained with), reconstructed

1. in process: ONNX Runtime on ``model_repository/recon_unrolled/1/model.onnx``, in batches of 8 slices
   (Triton's ``max_batch_size``), k-space already in memory;
2. through Triton with the project's client (``serving.client.TritonClient``, HTTP, binary tensors);
3. through the REST API: ``POST /v1/reconstruct`` of the ``.npy`` (67 MB) to a real uvicorn process in front
   of the real tritonserver, ``.npy`` answer decoded: upload, validation, mask inference, Triton, response.

    python -m benchmarks.rest_latency --out docs/benchmarks/rest_latency.md
"""

from __future__ import annotations

import io
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import typer

from benchmarks.common import free_port, markdown_table, time_call, write_report
from mrcore.data.phantom import PhantomConfig, PhantomSource
from mrcore.masks import make_mask
from serving.client import TritonClient
from serving.triton import TritonServer, TritonSettings
from training.export.onnx_io import ort_session, relative_error

app = typer.Typer(add_completion=False, help=__doc__)
ROOT = Path(__file__).resolve().parents[1]


def volume(slices: int, coils: int, matrix: int, cache_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(undersampled kspace complex64 [S, C, ky, kx], mask float32 [ky, kx]) from the embedded phantom."""
    src = PhantomSource(PhantomConfig(seed=0, sites=("hospital-a",), subjects_per_site=1, slices_per_subject=slices,
                                      matrix=(matrix, matrix), cache_dir=cache_dir))
    site = src.sites[0]
    k = np.stack([src.kspace(site, i, "T2w", num_coils=coils).kspace for i in range(slices)])
    mask = make_mask("equispaced", (matrix, matrix), 4.0, 0.125, seed=0)
    return (k * mask).astype(np.complex64), mask


class _Api:
    """``python -m serving.api serve`` in a subprocess."""

    def __init__(self, triton_url: str, workdir: Path, token: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "MRI_API_TOKENS": token}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serving.api", "serve", "--port", str(self.port), "--triton-url", triton_url,
             "--set", f"jobs.directory={workdir / 'jobs'}", "--set", "logging.level=WARNING"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"the API exited with {self.proc.returncode}")
            time.sleep(0.25)
        self.stop()
        raise RuntimeError("the API did not become ready within 60 s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)


@app.command()
def main(
    out: Path = typer.Option(Path("docs/benchmarks/rest_latency.md"), help="Markdown report to write."),
    repeats: int = typer.Option(3, min=1, help="Timed repetitions per path (median reported)."),
    slices: int = typer.Option(16, min=1), coils: int = typer.Option(8, min=1), matrix: int = typer.Option(256, min=32),
    batch: int = typer.Option(8, min=1, help="Slices per ONNX Runtime run (Triton's max_batch_size)."),
    cache_dir: Path = typer.Option(Path(".cache/mrdata"), help="Phantom cache directory."),
) -> None:
    """Median seconds per volume: in-process ONNX Runtime, Triton client, REST API; and the REST / ORT ratio."""
    repo = ROOT / "model_repository"
    kspace, mask = volume(slices, coils, matrix, cache_dir)
    feed_k = np.stack([kspace.real, kspace.imag], -1).astype(np.float32)
    feed_m = np.ascontiguousarray(np.broadcast_to(mask, (slices, matrix, matrix)), np.float32)
    session = ort_session(repo / "recon_unrolled" / "1" / "model.onnx")

    def in_process() -> np.ndarray:
        return np.concatenate([session.run(["magnitude"], {"kspace": feed_k[i:i + batch], "mask": feed_m[i:i + batch]})[0]
                               for i in range(0, slices, batch)])

    t_ort, all_ort = time_call(in_process, repeats)
    ref = in_process()
    session = None  # free the in-process session before the servers start

    body = io.BytesIO()
    np.save(body, kspace)
    payload = body.getvalue()
    token = secrets.token_urlsafe(24)
    ports = [free_port() for _ in range(3)]
    with TritonServer(TritonSettings(repository=repo, http_port=ports[0], grpc_port=ports[1],
                                     metrics_port=ports[2])) as triton, \
            tempfile.TemporaryDirectory() as tmp, TritonClient(triton.http_url) as client:
        def via_client() -> np.ndarray:
            return client.reconstruct(kspace)  # mask inferred, as the REST call below

        t_client, all_client = time_call(via_client, repeats)
        out_client = via_client()
        api = _Api(triton.http_url, Path(tmp), token)
        try:
            with httpx.Client(base_url=api.url, timeout=600, headers={"Authorization": f"Bearer {token}"}) as http:
                def via_rest() -> np.ndarray:
                    r = http.post("/v1/reconstruct?format=npy", content=payload)
                    r.raise_for_status()
                    return np.load(io.BytesIO(r.content))

                t_rest, all_rest = time_call(via_rest, repeats)
                out_rest = via_rest()
        finally:
            api.stop()

    ratio = t_rest / t_ort
    rows = [
        ["in-process ONNX Runtime (batches of 8)", t_ort, 1.0, min(all_ort), max(all_ort), "reference"],
        ["Triton (serving.client, HTTP binary)", t_client, t_client / t_ort, min(all_client), max(all_client),
         f"{relative_error(out_client, ref):.1e}"],
        ["REST API end to end (uvicorn + Triton, .npy in/out)", t_rest, ratio, min(all_rest), max(all_rest),
         f"{relative_error(out_rest, ref):.1e}"],
    ]
    body_md = (
        f"One volume: {slices} slices x {coils} coils x {matrix}x{matrix}, complex64 k-space ({len(payload) / 1e6:.0f} MB "
        f"as .npy), 4x equispaced, model `recon_unrolled` v1; median of {repeats} runs after one warm-up.\n\n"
        + markdown_table(["path", "median s / volume", "x in-process", "min s", "max s", "max rel. error vs ORT"], rows)
        + f"\n\n**REST / in-process ratio: {ratio:.3f}** (target: at most 1.25; the REST path adds "
          f"{100 * (ratio - 1):.1f} %).\n\nThe REST time includes the upload and validation of the {len(payload) / 1e6:.0f} MB "
          "body, mask inference, the Triton round trips and the .npy answer. All three paths share the machine's "
          "cores with each other's idle processes (Triton, uvicorn).\n")
    write_report(out, "REST API latency vs in-process ONNX Runtime",
                 f"python -m benchmarks.rest_latency --out {out} --repeats {repeats}", body_md)
    typer.echo(body_md)


if __name__ == "__main__":
    app()
