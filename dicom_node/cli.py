"""``python -m dicom_node`` / ``dicom-node``: serve, inspect and retry jobs, wrap k-space into DICOM.

A thin layer over :class:`dicom_node.node.DicomNode`, :class:`dicom_node.queue.JobQueue` and
:func:`serving.dicom.encode_kspace`.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import pydicom
import typer

from dicom_node.audit import configure_logging, uid_hash
from dicom_node.config import ConfigError, load_config
from dicom_node.node import DicomNode
from dicom_node.queue import STATES, JobQueue
from mrcore.config import read_config_file
from serving.dicom import encode_kspace, read_kspace_file
from serving.logs import LOG_FORMATS

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="DICOM node of the MRI service: storage SCP, durable job queue, derived-series delivery.")

_CONFIG = typer.Option(Path("configs/dicom_node.yaml"), "--config", "-c", help="YAML or TOML node configuration.")


def _load(config: Path, **overrides):
    try:
        return load_config(config, {k: v for k, v in overrides.items() if v is not None})
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


def _import_factory(spec: str):
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise typer.BadParameter(f"expected MODULE:CALLABLE, got {spec!r}", param_hint="--processor")
    return getattr(importlib.import_module(module), attr)


@app.command()
def serve(
    config: Path = _CONFIG,
    host: str | None = typer.Option(None, help="Override listen.host."),
    port: int | None = typer.Option(None, help="Override listen.port."),
    storage_dir: Path | None = typer.Option(None, help="Override storage_dir (spool, results, queue)."),
    inference_url: str | None = typer.Option(None, help="Override inference.url (Triton host:port)."),
    processor: str | None = typer.Option(
        None, help="MODULE:CALLABLE returning a processor (default: the Triton client). For custom pipelines "
                   "and tests."),
    log_level: str = typer.Option("INFO", help="Logging level."),
    log_format: str = typer.Option("text", help="Log lines as 'text' or 'json' (one object per line)."),
    dicomweb_port: int | None = typer.Option(
        None, help="Turn the STOW-RS listener on at this port (0: any free port; host and limits from the "
                   "file's dicomweb section)."),
) -> None:
    """Run the node until SIGTERM / Ctrl-C (listener, assembler, processing and delivery workers)."""
    if log_format not in LOG_FORMATS:
        raise typer.BadParameter(f"expected one of {', '.join(LOG_FORMATS)}, got {log_format!r}",
                                 param_hint="--log-format")
    raw = _load(config)
    overrides: dict[str, Any] = {}
    if host or port is not None:
        overrides["listen"] = {"host": host or raw.host, "port": raw.port if port is None else port}
    if storage_dir:
        overrides["storage_dir"] = str(storage_dir)
    if inference_url:
        overrides["inference"] = {"url": inference_url, "protocol": raw.inference_protocol}
    if dicomweb_port is not None:
        section = read_config_file(config).get("dicomweb") or {}
        overrides["dicomweb"] = {**(section if isinstance(section, dict) else {}), "enabled": True,
                                 "port": dicomweb_port}
    cfg = _load(config, **overrides) if overrides else raw
    cfg.storage.apply_umask()  # nothing this process writes is readable by other users (patient data)
    cfg.storage.prepare(cfg.storage_dir)
    configure_logging(log_level, cfg.audit_log or cfg.storage_dir / "audit.log", log_format, cfg.storage)
    try:
        node = DicomNode(cfg, processor_factory=_import_factory(processor) if processor else None)
        node.start()
    except ConfigError as e:  # e.g. the DICOMweb listener is on and no token is configured
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except OSError as e:  # a port in use, an address not on this host
        typer.echo(f"error: cannot listen: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(node.describe())
    sys.stdout.flush()
    node.run_forever()


def _age(t: float | None) -> str:
    if not t:
        return "-"
    s = max(0, int(time.time() - t))
    return f"{s}s" if s < 120 else f"{s // 60}m" if s < 7200 else f"{s // 3600}h"


@app.command()
def jobs(
    config: Path = _CONFIG,
    state: str | None = typer.Option(None, help="Only jobs in this state (receiving, complete, processing, "
                                                   "delivering, done, failed)."),
    limit: int = typer.Option(50, help="Newest N jobs."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Table of jobs and their states (with per-destination delivery state and the last error, or the note of an
    incomplete series / the version a derived series supersedes)."""
    if state is not None and state not in STATES:
        raise typer.BadParameter(f"expected one of {', '.join(STATES)}", param_hint="--state")
    cfg = _load(config)
    q = JobQueue(cfg.db_path, permissions=cfg.storage)
    try:
        rows: list[dict[str, Any]] = []
        for j in q.jobs(state, limit):
            rows.append({"id": j.id, "route": j.route, "state": j.state, "series": uid_hash(j.series_uid),
                         "instances": j.num_instances, "attempts": j.attempts,
                         "deliveries": {d.destination: f"{d.state}({d.attempts})" for d in q.deliveries(j.id)},
                         "updated": _dt.datetime.fromtimestamp(j.updated_at).isoformat(timespec="seconds"),
                         "age": _age(j.created_at), "last_error": j.last_error, "note": j.note,
                         "received": j.received_units, "expected": j.expected_units, "version": j.version,
                         "supersedes": uid_hash(j.supersedes_series_uid) if j.supersedes_series_uid else None})
        if as_json:
            typer.echo(json.dumps(rows, indent=1))
            return
        header = f"{'JOB':>5} {'ROUTE':<12} {'STATE':<11} {'SERIES':<12} {'INST':>4} {'TRY':>3} {'AGE':>5}  " \
                 f"{'DELIVERIES':<28} LAST ERROR"
        typer.echo(header)
        for r in rows:
            dl = " ".join(f"{k}:{v}" for k, v in r["deliveries"].items()) or "-"
            err = (r["last_error"] or (f"INCOMPLETE: {r['note']}" if r["note"] else "")
                   or (f"v{r['version']}, supersedes {r['supersedes']}" if r["supersedes"] else ""))[:80]
            typer.echo(f"{r['id']:>5} {r['route']:<12} {r['state']:<11} {r['series']:<12} {r['instances']:>4} "
                       f"{r['attempts']:>3} {r['age']:>5}  {dl:<28} {err}")
        counts = q.counts()
        typer.echo("total: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no jobs"))
    finally:
        q.close()


@app.command()
def retry(job: int = typer.Argument(..., help="Job id (see `jobs`)."), config: Path = _CONFIG) -> None:
    """Re-queue a failed job: failed deliveries are retried with the stored results, else processing."""
    cfg = _load(config)
    q = JobQueue(cfg.db_path, permissions=cfg.storage)
    try:
        new = q.retry(job)
    except (KeyError, ValueError) as e:
        typer.echo(f"error: {e.args[0]}", err=True)
        raise typer.Exit(1) from None
    finally:
        q.close()
    typer.echo(f"job {job}: {new}")


@app.command("wrap-kspace")
def wrap_kspace(
    input: Path = typer.Argument(..., exists=True, dir_okay=False,
                                 help=".npy complex (S, C, ky, kx) or (C, ky, kx), .npz (kspace, mask), fastMRI .h5, "
                                      "ISMRMRD .h5/.mrd"),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory for the DICOM files."),
    mask: Path | None = typer.Option(None, help=".npy mask float32 (ky, kx) or (S, ky, kx), 1 = sampled."),
    acceleration: float | None = typer.Option(None, help="Undersample fully sampled input with this factor."),
    mask_kind: str = typer.Option("equispaced", help="equispaced | random | poisson (with --acceleration)."),
    center_fraction: float = typer.Option(0.08, help="Fully sampled centre fraction (with --acceleration)."),
    per_volume: bool = typer.Option(False, "--per-volume", help="One instance for the volume (default: per slice)."),
    contrast: str | None = typer.Option(None, help="T1w | T2w | PD | FLAIR (fallback for HDF5 files)."),
    template: Path | None = typer.Option(None, help="DICOM file whose patient and study are copied."),
    patient_id: str | None = typer.Option(None, help="PatientID without --template (default: generated)."),
    patient_name: str = typer.Option("", help="PatientName without --template."),
    series_description: str = typer.Option("undersampled k-space", help="SeriesDescription."),
    fov: tuple[float, float] = typer.Option((240.0, 240.0), help="Field of view (rows, cols) in mm."),
    slice_thickness: float = typer.Option(5.0, help="Slice thickness / spacing in mm."),
) -> None:
    """Wrap k-space into Raw Data Storage DICOM files (private block, see docs/dicom_node.md) for storescu."""
    try:
        kf = read_kspace_file(input, mask=mask, contrast=contrast, acceleration=acceleration, mask_kind=mask_kind,
                              center_fraction=center_fraction)
        tpl = pydicom.dcmread(template, stop_before_pixels=True) if template else None
        datasets = encode_kspace(kf.kspace, kf.mask, per_slice=not per_volume, fov_mm=fov,
                                 slice_thickness=slice_thickness, contrast=kf.contrast or contrast,
                                 phase_encoding_axis=kf.phase_encoding_axis, template=tpl, patient_id=patient_id,
                                 patient_name=patient_name, series_description=series_description)
    except (ValueError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    out.mkdir(parents=True, exist_ok=True)
    for i, ds in enumerate(datasets, start=1):
        ds.save_as(out / f"kspace_{i:04d}.dcm", enforce_file_format=True)
    s, c, ky, kx = kf.kspace.shape
    typer.echo(f"wrote {len(datasets)} Raw Data Storage instance(s) to {out}: {s} slice(s), {c} coil(s), "
               f"{ky}x{kx}, mask {'none' if kf.mask is None else kf.mask.shape}, contrast {kf.contrast or '-'}")


def main() -> None:  # pragma: no cover
    app()
