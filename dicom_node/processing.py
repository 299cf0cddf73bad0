"""From a complete series to the derived series: the one place the node calls inference.

The worker calls a :class:`Processor` ``(route, datasets) -> ProcessResult``. The production processor is
:class:`InferenceProcessor` around the serving client (``serving.client.TritonClient``):

* reconstruction route: Raw Data instances -> :func:`serving.dicom.decode_kspace` ->
  ``client.reconstruct(kspace [S, C, ky, kx], mask, model)`` -> float32 [S, ky, kx];
* synthesis route: MR images -> :func:`serving.dicom.read_series` -> the synthesis input check
  (:func:`serving.synthesis_check.check_source`: a series too small to normalise or without a head fails the job
  with the reason; warnings go into ``ImageComments`` of every derived instance) ->
  ``client.synthesize(volume [S, H, W], source, target)`` -> float32 [S, H, W];

then :func:`serving.dicom.build_derived_series`. Unit tests may pass any callable with the same
signature (a test double); end-to-end tests use the real client against a real Triton server.

Errors decide what the worker does: :func:`is_retryable` is True for "try again later" failures
(inference server down or not ready, connection errors); a :class:`~serving.dicom.DicomInputError` or an
inference error on bad input is permanent and the job fails at once.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from serving.client import TritonClient
from serving.dicom import build_derived_series, decode_kspace, read_series
from serving.dicom.quality import annotate_quality
from serving.logs import uid_hash
from serving.quality import FALLBACK_METHOD, QualitySettings, SliceQuality, apply_policy, log_verdicts
from serving.synthesis_check import annotate_warnings, check_source, log_check

if TYPE_CHECKING:
    from dicom_node.config import Route

log = logging.getLogger("dicom_node.quality")
synth_log = logging.getLogger("dicom_node.synthesis")

__all__ = ["InferenceBackend", "InferenceProcessor", "ProcessResult", "Processor", "TransientError",
           "is_retryable", "make_processor"]


class TransientError(RuntimeError):
    """A failure worth retrying later (used by processors that are not the Triton client)."""


@dataclass(frozen=True)
class ProcessResult:
    """The derived series of one job (datasets ready to store) and the model that made it."""

    datasets: list[Dataset]
    model: str
    model_version: str


class Processor(Protocol):
    def __call__(self, route: Route, datasets: Sequence[Dataset], *, series_instance_uid: str) -> ProcessResult:
        """Turn the instances of one complete series into its derived series (``series_instance_uid``)."""


class InferenceBackend(Protocol):
    """The part of ``serving.client.TritonClient`` the node uses."""

    def reconstruct(self, kspace: np.ndarray, mask: np.ndarray | None = ..., model: str = ...,
                    complex_output: bool = ..., version: str = ...) -> np.ndarray: ...

    def synthesize(self, images: np.ndarray, source: str, target: str) -> np.ndarray: ...

    def model_info(self, name: str) -> dict: ...


def _client_errors() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(retryable, permanent) exception types of the serving client. If ``serving.client`` was never imported,
    none of its exceptions can have been raised (and importing it would cost seconds)."""
    client = sys.modules.get("serving.client")
    if client is None:
        return (), ()
    return (client.InferenceUnavailable,), (client.InferenceError,)


def is_retryable(exc: BaseException) -> bool:
    """False for bad input (DicomInputError, inference errors on input, ValueError/TypeError/KeyError), True for
    everything else (inference server unavailable, connection errors, timeouts, disk errors...)."""
    retry, permanent = _client_errors()
    if retry and isinstance(exc, retry):
        return True
    if isinstance(exc, TransientError):
        return True
    if (permanent and isinstance(exc, permanent)) or isinstance(exc, (ValueError, TypeError, KeyError)):
        return False
    return True


def _description(route: Route, source: Dataset, model: str, contrast: str | None) -> str:
    desc = str(source.get("SeriesDescription", "") or "")
    return " ".join(route.series_description.format(description=desc, model=model, contrast=contrast or "",
                                                    task=route.task).split())


class InferenceProcessor:
    """The production processor: decode, infer through ``backend``, build the derived series.

    Parameters
    ----------
    backend : InferenceBackend (a ``serving.client.TritonClient``).
    quality : the reconstruction self-check (config ``quality``); None or ``enabled: false``, or a backend without
        ``reconstruct_checked``: off
    """

    def __init__(self, backend: InferenceBackend, quality: QualitySettings | None = None) -> None:
        self.backend = backend
        self.quality = quality if quality is not None and quality.enabled and \
            hasattr(backend, "reconstruct_checked") else None

    def _version(self, model: str) -> str:
        try:
            info = self.backend.model_info(model) or {}
        except Exception:  # noqa: BLE001 - the version is informative; inference itself already succeeded
            return "unknown"
        versions = info.get("versions") or ([info["version"]] if info.get("version") else [])
        if not versions:
            return "unknown"
        return str(max(versions, key=lambda v: (len(str(v)), str(v))))

    def __call__(self, route: Route, datasets: Sequence[Dataset], *, series_instance_uid: str) -> ProcessResult:
        quality: list[SliceQuality] | None = None
        check = None
        if route.task == "reconstruction":
            kv = decode_kspace(datasets)
            if self.quality is not None:
                checked = self.backend.reconstruct_checked(  # type: ignore[attr-defined]
                    kv.kspace, kv.mask, model=route.model, version=route.version or "", settings=self.quality,
                    strict=False)
                image, quality = np.asarray(checked[0], dtype=np.float32), list(checked[1])
            else:
                image = np.asarray(self.backend.reconstruct(kv.kspace, kv.mask, model=route.model,
                                                            version=route.version or ""), dtype=np.float32)
            expected = (kv.kspace.shape[0], *kv.kspace.shape[2:])
            if image.shape != expected:
                raise ValueError(f"model {route.model} returned {image.shape}, expected float32 [S, ky, kx] "
                                 f"{expected}")
            model, sources, geometry, frames, contrast = route.model, kv.datasets, kv.geometry, None, kv.contrast
            same_contrast = True
        else:
            sv = read_series(datasets)
            assert route.source is not None and route.target is not None  # the config requires both for synthesis
            # refusals (NormalisationError, SynthesisInputError: ValueErrors) fail the job at once, with the reason
            check = check_source(sv.volume, route.source)
            log_check(synth_log, route.model_name, check, route=route.name, series=uid_hash(series_instance_uid))
            image = np.asarray(self.backend.synthesize(sv.volume, route.source, route.target), dtype=np.float32)
            if image.shape != sv.volume.shape:
                raise ValueError(f"model {route.model_name} returned {image.shape}, expected {sv.volume.shape}")
            model, sources, geometry, frames, contrast = route.model_name, sv.datasets, sv.geometry, sv.frames, \
                route.target
            same_contrast = False
        version = route.version if route.task == "reconstruction" and route.version else self._version(model)
        if quality is not None and self.quality is not None:
            image, quality = apply_policy(image, kv.kspace, kv.mask, quality, self.quality)
            log_verdicts(log, model, version, quality, self.quality, route=route.name,
                         series=uid_hash(series_instance_uid))
        out = build_derived_series(
            sources, image, model_name=model, model_version=version,
            series_description=_description(route, sources[0], model, contrast),
            series_number_offset=route.series_number_offset, geometry=geometry, source_frames=frames,
            same_contrast=same_contrast, series_instance_uid=series_instance_uid)
        if quality is not None and self.quality is not None:
            annotate_quality(out, quality, self.quality, FALLBACK_METHOD)
        if check is not None:
            annotate_warnings(out, check)
        return ProcessResult(out, model, version)


def make_processor(url: str, protocol: str = "http", quality: QualitySettings | None = None) -> Processor:
    """The production processor around ``serving.client.TritonClient(url, protocol)``."""
    return InferenceProcessor(TritonClient(url=url, protocol=protocol), quality)


def new_series_uid(job_id: int, route: str, series_uid: str, attempt: int) -> str:
    """Deterministic UID of a job's derived series (same job and attempt -> same UID)."""
    return generate_uid(entropy_srcs=["mri-service derived", route, series_uid, str(job_id), str(attempt)])


ProcessorFactory = Callable[[], Processor]
