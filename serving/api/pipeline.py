"""Validated input -> Triton -> formatted answer; the same code for synchronous requests and jobs.

Both functions block (Triton calls); the routes and the job runner call them in worker threads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mrcore.intensity import NormalisationError
from mrcore.quality import QualityInputError
from serving.api.errors import ApiError
from serving.api.outputs import OutputMeta, Rendered, render
from serving.dicom import SeriesGeometry, derivation_description
from serving.quality import apply_policy, header_value, log_verdicts, summary_line
from serving.synthesis_check import SynthesisInputError, check_source, log_check
from serving.synthesis_check import header_value as warning_header

if TYPE_CHECKING:
    from serving.api.inference import Inference, Progress
    from serving.api.inputs import ReconInput, SynthInput

__all__ = ["ReconOptions", "SynthOptions", "reconstruct", "synthesize"]

log = logging.getLogger("serving.api.quality")
synth_log = logging.getLogger("serving.api.synthesis")
#: longest X-Recon-Quality header (about 100 slices); a longer list is only in the job resource's quality field
MAX_QUALITY_HEADER = 8192


@dataclass(frozen=True)
class ReconOptions:
    model: str
    format: str
    slice_index: int | None = None
    pixel_spacing_mm: float | None = None
    slice_thickness_mm: float | None = None
    contrast: str | None = None
    version: str | None = None       # pinned model version (None: the newest)


@dataclass(frozen=True)
class SynthOptions:
    model: str
    format: str
    source: str
    target: str
    slice_index: int | None = None


def _recon_geometry(req: ReconInput, opts: ReconOptions, shape: tuple[int, ...]):
    if req.geometry is not None and opts.pixel_spacing_mm is None and opts.slice_thickness_mm is None:
        return req.geometry
    s, rows, cols = shape
    if opts.pixel_spacing_mm is not None:
        spacing = (opts.pixel_spacing_mm, opts.pixel_spacing_mm)
    elif req.pixel_spacing is not None:
        spacing = req.pixel_spacing
    else:
        spacing = (240.0 / rows, 240.0 / cols)  # a 240 mm field of view (a head)
    return SeriesGeometry.axial(s, (rows, cols), pixel_spacing=spacing, slice_thickness=opts.slice_thickness_mm or 5.0)


def reconstruct(inference: Inference, req: ReconInput, opts: ReconOptions,
                progress: Progress | None = None) -> Rendered:
    try:
        image, maps_used, quality = inference.reconstruct(req.kspace, req.mask, opts.model, maps=req.maps,
                                                          progress=progress, version=opts.version)
    except QualityInputError as exc:
        raise ApiError(422, f"the reconstruction self-check cannot run on this input: {exc}",
                       field=f"quality.{exc.key}", expected="an input with enough acquired lines outside the "
                       "calibration region for the configured holdout_fraction (or quality.enabled: false)",
                       code="invalid_input") from None
    expected = (req.kspace.shape[0], *req.kspace.shape[2:])
    if image.shape != expected or not np.isfinite(image).all():
        raise ApiError(422, f"model {opts.model} returned {image.dtype} {image.shape} with "
                            f"{int(np.size(image) - np.isfinite(image).sum())} non-finite values; expected finite "
                            f"float32 {expected}", field="model", expected="a reconstruction model",
                       code="bad_model_output")
    contrast = opts.contrast or req.contrast
    desc = " ".join(x for x in (req.description or contrast or "", f"recon {opts.model}") if x).strip()
    version = opts.version or inference.version(opts.model)
    settings = inference.quality
    if quality is not None and settings is not None:
        image, quality = apply_policy(image, req.kspace, req.mask, quality, settings)
        log_verdicts(log, opts.model, version, quality, settings)
        if inference.metrics is not None:
            inference.metrics.checked(opts.model, version, quality)
    meta = OutputMeta("reconstruction", opts.model, version, desc, contrast,
                      geometry=_recon_geometry(req, opts, image.shape), sources=req.sources,
                      quality=quality, quality_settings=settings)
    if quality is not None and settings is not None:
        value = header_value(quality)
        meta.headers["X-Recon-Quality"] = value if len(value) <= MAX_QUALITY_HEADER else \
            f"too long for a header ({summary_line(quality)}): see the job's quality field"
        meta.headers["X-Recon-Quality-Policy"] = settings.policy
        if any(q.replaced for q in quality):
            meta.headers["X-Recon-Quality-Replaced"] = ",".join(str(q.slice) for q in quality if q.replaced)
    meta.headers["X-Coil-Maps"] = "uploaded" if maps_used else \
        ("ignored: the model estimates coil maps" if req.maps is not None else "estimated by the model")
    meta.headers["X-Mask"] = "uploaded" if req.mask is not None else "inferred from the sampled k-space"
    return render(opts.format, image, meta, slice_index=opts.slice_index)


def _check_source(req: SynthInput, opts: SynthOptions):
    """The synthesis input check (:mod:`serving.synthesis_check`): 422 for a series too small to normalise or
    without a head; the check (with its warnings) otherwise."""
    try:
        return check_source(req.volume, opts.source)
    except NormalisationError as exc:
        raise ApiError(422, f"the source series cannot be normalised for synthesis: {exc}", field="PixelData",
                       expected="a magnitude series with at least some foreground (a head in the field of view)",
                       got=f"{len(req.volume)} slice(s) of {req.volume.shape[1]}x{req.volume.shape[2]}",
                       code="cannot_normalise") from None
    except SynthesisInputError as exc:
        raise ApiError(422, f"the source series is refused for synthesis: {exc}", field="PixelData",
                       expected="an axial brain series: one head-sized object surrounded by air, with tissue "
                                "contrast (docs/synthesis_input.md)", code=exc.finding.code) from None


def synthesize(inference: Inference, req: SynthInput, opts: SynthOptions,
               progress: Progress | None = None) -> Rendered:
    check = _check_source(req, opts)
    log_check(synth_log, opts.model, check)
    image = inference.synthesize(req.volume, opts.source, opts.target, opts.model, progress=progress)
    if image.shape != req.volume.shape or not np.isfinite(image).all():
        raise ApiError(422, f"model {opts.model} returned {image.dtype} {image.shape}; expected finite float32 "
                            f"{req.volume.shape}", field="model", expected="a synthesis model",
                       code="bad_model_output")
    series = req.series
    source_desc = str(series.datasets[0].get("SeriesDescription", "") or "") if series is not None else ""
    desc = " ".join(f"{source_desc} synthetic {opts.target}".split())
    meta = OutputMeta("synthesis", opts.model, inference.version(opts.model), desc, opts.target,
                      geometry=series.geometry if series is not None else None,
                      sources=series.datasets if series is not None else None,
                      frames=series.frames if series is not None else None, nifti=req.nifti)
    meta.headers["X-Source-Contrast"] = opts.source
    meta.headers["X-Target-Contrast"] = opts.target
    meta.headers["X-Synthetic-Data"] = "YES"
    meta.headers["X-Derivation-Description"] = derivation_description(opts.model, meta.version)
    warning = warning_header(check)
    if warning is not None:
        meta.headers["X-Synthesis-Warning"] = warning
    meta.synthesis_check = check
    return render(opts.format, image, meta, slice_index=opts.slice_index)
