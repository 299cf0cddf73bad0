"""DICOM node latency: last instance of a 32-slice k-space series received -> derived series stored in Orthanc,
against the pure inference time of the same volume through Triton.

Real processes throughout: tritonserver (the shipped model repository, CPU config), Orthanc (temporary
config) as the PACS, ``python -m dicom_node serve`` with its production processor, dcmtk ``storescu`` as the
scanner sending the Raw Data instances ``wrap-kspace`` writes::

    python -m benchmarks.dicom_latency --out docs/benchmarks/dicom_latency.md

Times come from the node's queue (``instances.received_at``, ``jobs.completed_at`` / ``processed_at``,
``deliveries.delivered_at``: the delivery is recorded after Orthanc answered every C-STORE with success,
i.e. stored) and are cross-checked by polling Orthanc's REST API. The configured quiet time (a series is
complete after that long without a new instance) is part of the latency and reported separately.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import typer
import yaml

from benchmarks.common import free_port, markdown_table, time_call, write_report
from mrcore.data.phantom import PhantomConfig, PhantomSource
from mrcore.masks import make_mask
from serving.client import TritonClient
from serving.triton import TritonServer, TritonSettings

app = typer.Typer(add_completion=False, help=__doc__)
ROOT = Path(__file__).resolve().parents[1]


def _phantom_kspace(slices: int, matrix: int, coils: int, cache_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    src = PhantomSource(PhantomConfig(seed=0, subjects_per_site=1, slices_per_subject=slices,
                                      matrix=(matrix, matrix), cache_dir=cache_dir))
    mask = make_mask("equispaced", (matrix, matrix), 4.0, 0.08, seed=0)
    k = np.stack([src.kspace(src.sites[0], i, "T2w", num_coils=coils).kspace for i in range(slices)])
    return (k * mask).astype(np.complex64), mask


def _wait(pred, timeout: float, what: str, interval: float = 0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}")


def _orthanc_instances(http_port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/statistics", timeout=5) as r:
            return int(json.loads(r.read())["CountInstances"])
    except OSError:
        return -1


def measure(triton_url: str, *, slices: int = 32, matrix: int = 128, coils: int = 8, quiet_seconds: float = 2.0,
            cache_dir: Path = Path(".cache/mrdata"), repeats: int = 3, workdir: Path | None = None) -> dict:
    """One run: returns the timings in seconds (see the module docstring)."""
    kspace, mask = _phantom_kspace(slices, matrix, coils, cache_dir)
    with TritonClient(triton_url) as client:
        t_infer, _ = time_call(lambda: client.reconstruct(kspace, mask), repeats)

    tmp = Path(workdir or tempfile.mkdtemp(prefix="dicom-latency-"))
    procs: list[subprocess.Popen] = []
    try:
        http, dicom, node_port = free_port(), free_port(), free_port()
        (tmp / "orthanc").mkdir(parents=True, exist_ok=True)
        ocfg = {"Name": "bench", "StorageDirectory": str(tmp / "orthanc"), "IndexDirectory": str(tmp / "orthanc"),
                "HttpPort": http, "DicomPort": dicom, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
                "AuthenticationEnabled": False, "DicomCheckCalledAet": True, "Plugins": []}
        (tmp / "orthanc.json").write_text(json.dumps(ocfg))
        procs.append(subprocess.Popen([shutil.which("Orthanc") or "/usr/sbin/Orthanc", str(tmp / "orthanc.json")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait(lambda: _orthanc_instances(http) >= 0, 30, "Orthanc")
        ncfg = {"storage_dir": str(tmp / "node"), "listen": {"host": "127.0.0.1", "port": node_port},
                "quiet_seconds": quiet_seconds, "inference": {"url": triton_url, "protocol": "http"},
                "destinations": {"pacs": {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": dicom}},
                "routes": [{"called_ae_title": "RECON", "task": "reconstruction", "destinations": ["pacs"]}]}
        (tmp / "node.yaml").write_text(yaml.safe_dump(ncfg))
        log = open(tmp / "node.log", "wb")
        procs.append(subprocess.Popen([sys.executable, "-m", "dicom_node", "serve", "--config", str(tmp / "node.yaml")],
                                      stdout=log, stderr=subprocess.STDOUT, cwd=ROOT))
        _wait(lambda: b"DICOM node listening" in (tmp / "node.log").read_bytes(), 60, "the DICOM node")
        np.save(tmp / "k.npy", kspace)
        np.save(tmp / "m.npy", mask)
        subprocess.run([sys.executable, "-m", "dicom_node", "wrap-kspace", str(tmp / "k.npy"), "--mask",
                        str(tmp / "m.npy"), "--out", str(tmp / "raw"), "--contrast", "T2w"], check=True, cwd=ROOT,
                       capture_output=True)
        time.sleep(3)  # let the node's processor finish connecting (its imports) before the clock starts
        t_send = time.time()
        subprocess.run(["storescu", "-aet", "SCANNER", "-aec", "RECON", "+sd", "+r", "127.0.0.1", str(node_port),
                        str(tmp / "raw")], check=True, capture_output=True)
        t_acked = time.time()
        t_seen = _wait(lambda: time.time() if _orthanc_instances(http) >= slices else None, 600,
                       "the derived series in Orthanc")
        db = sqlite3.connect(tmp / "node" / "queue.sqlite")
        _wait(lambda: db.execute("SELECT state FROM jobs").fetchone()[0] == "done", 30, "job done")
        last = db.execute("SELECT MAX(received_at) FROM instances").fetchone()[0]
        completed, processed = db.execute("SELECT completed_at, processed_at FROM jobs").fetchone()
        delivered = db.execute("SELECT delivered_at FROM deliveries").fetchone()[0]
        db.close()
    finally:
        for p in reversed(procs):
            p.kill()
            p.wait(10)
        if workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    return {
        "slices": slices, "matrix": matrix, "coils": coils, "quiet_seconds": quiet_seconds,
        "inference": t_infer, "send": t_acked - t_send, "last_to_complete": completed - last,
        "processing": processed - completed, "delivery": delivered - processed, "last_to_stored": delivered - last,
        "last_to_seen_in_orthanc": t_seen - last,
    }


@app.command()
def main(
    out: Path = typer.Option(Path("docs/benchmarks/dicom_latency.md"), help="Markdown report to write."),
    triton_url: str = typer.Option("", help="A running Triton (host:port); default: start one on free ports."),
    slices: int = typer.Option(32, min=1),
    matrix: int = typer.Option(128, min=16),
    coils: int = typer.Option(8, min=1),
    quiet_seconds: float = typer.Option(2.0, min=0.0, help="The node's quiet time (part of the latency)."),
    repeats: int = typer.Option(3, min=1, help="Repetitions of the pure inference timing (median)."),
    cache_dir: Path = typer.Option(Path(".cache/mrdata"), help="Phantom cache directory."),
) -> None:
    """Measure one 32-slice series end to end and write the table."""
    server = None
    if not triton_url:
        server = TritonServer(TritonSettings(repository=ROOT / "model_repository", http_port=free_port(),
                                             grpc_port=free_port(), metrics_port=free_port()))
        server.start()
        triton_url = server.http_url
    try:
        r = measure(triton_url, slices=slices, matrix=matrix, coils=coils, quiet_seconds=quiet_seconds,
                    cache_dir=cache_dir, repeats=repeats)
    finally:
        if server is not None:
            server.stop()
    rows = [
        ["pure inference (TritonClient.reconstruct, whole volume, median)", r["inference"], 1.0],
        ["storescu: send the 32 instances (for reference)", r["send"], ""],
        ["last instance received -> series complete (quiet time)", r["last_to_complete"], ""],
        ["complete -> derived series on disk (decode, inference, build, fsync)", r["processing"],
         r["processing"] / r["inference"]],
        ["on disk -> stored in Orthanc (C-STORE of every instance)", r["delivery"], ""],
        ["**last instance received -> derived series stored in Orthanc**", r["last_to_stored"],
         r["last_to_stored"] / r["inference"]],
        ["same, without the configured quiet time", r["last_to_stored"] - r["quiet_seconds"],
         (r["last_to_stored"] - r["quiet_seconds"]) / r["inference"]],
        ["(cross-check: polled in Orthanc's REST API)", r["last_to_seen_in_orthanc"], ""],
    ]
    body = (f"{slices} slices, {coils} coils, {matrix}x{matrix}, embedded phantom (T2w), equispaced R=4; the model "
            f"`recon_unrolled` on Triton's CPU configuration; quiet time {quiet_seconds:g} s.\n\n"
            + markdown_table(["step", "seconds", "x pure inference"], rows))
    write_report(out, "DICOM node: last instance received -> derived series stored in the PACS",
                 f"python -m benchmarks.dicom_latency --out {out}", body)
    typer.echo(body)


if __name__ == "__main__":
    app()
