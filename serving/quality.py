"""The reconstruction guardrail of the serving side: settings, per-slice verdicts and the policy.

The measurement itself is :mod:`mrcore.quality` (k-space self-validation); :meth:`serving.client.TritonClient.
reconstruct_checked` runs the extra inference (one more Triton call per chunk of slices, with the held-out lines
removed from k-space and mask). This module holds what the REST API and the DICOM node share:

* :class:`QualitySettings`, the ``quality:`` section of ``configs/serving.yaml`` and ``configs/dicom_node.yaml``;
* :class:`SliceQuality`, one slice's verdict, and its JSON form ``{"slice", "est_nmse", "est_nmse_zero_filled",
  "holdout_nmse", "dc_residual", "flag"}``
  (the ``X-Recon-Quality`` header, the job resource's ``quality`` field, the DICOM private block);
* :func:`apply_policy`: ``report`` (annotate only), ``flag`` (annotate and mark the series), ``fallback`` (replace
  flagged slices by the zero-filled coil-combined (RSS) image of the acquired k-space).

Thresholds: defaults chosen by the calibration study (``docs/quality_guardrail.md``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from mrcore.config import ConfigError
from mrcore.contract import check_mask, mask_per_slice
from mrcore.fft import ifft2c
from mrcore.quality import (
    DEFAULT_HOLDOUT_FRACTION,
    DEFAULT_RATIO_THRESHOLD,
    DEFAULT_SEED,
    FRACTION_RANGE,
    SliceEstimate,
    is_flagged,
)

log = logging.getLogger("serving.quality")

__all__ = ["POLICIES", "QualitySettings", "SliceQuality", "apply_policy", "fallback_images", "header_value",
           "log_verdicts", "summary_line"]

POLICIES = ("report", "flag", "fallback")
METHOD = "kspace-holdout-2"
FALLBACK_METHOD = "zero-filled RSS of the acquired k-space"


@dataclass(frozen=True)
class QualitySettings:
    """``quality:`` in the serving and node configs.

    enabled : run the self-validation (one more inference per slice); off: no estimate, no header
    policy : report | flag | fallback
    holdout_fraction : share of the acquired lines held out (outside the calibration region), in [0.01, 0.5]
    seed : seed of the held-out lines (per slice: ``default_rng([seed, slice])``)
    ratio_threshold : a slice whose estimated error exceeds this many times zero-filled's estimate is flagged
        (est_nmse / est_nmse_zero_filled; null: off)
    holdout_threshold : a slice whose holdout_nmse exceeds this is flagged (zero-filled: 1; null, the default: off)
    dc_threshold : a slice whose data-consistency residual on the seen lines exceeds this is flagged (null: off)
    """

    enabled: bool = True
    policy: Literal["report", "flag", "fallback"] = "report"
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION
    seed: int = DEFAULT_SEED
    ratio_threshold: float | None = DEFAULT_RATIO_THRESHOLD
    holdout_threshold: float | None = None
    dc_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ConfigError(f"config key 'quality.policy' must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        lo, hi = FRACTION_RANGE
        f = self.holdout_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not lo <= f <= hi:
            raise ConfigError(f"config key 'quality.holdout_fraction' must be a number in [{lo}, {hi}], got {f!r}")
        for key in ("ratio_threshold", "holdout_threshold", "dc_threshold"):
            v = getattr(self, key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0):
                raise ConfigError(f"config key 'quality.{key}' must be a number > 0 or null (off), got {v!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"config key 'quality.seed' must be an int >= 0, got {self.seed!r}")

    @classmethod
    def parse(cls, value, key: str = "quality") -> QualitySettings:
        """From a config mapping (the node config's own parser); ConfigError naming the key."""
        if value is None:
            return cls()
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} must be a mapping, got {value!r}")
        unknown = sorted(set(value) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"config key '{key}.{unknown[0]}' is unknown; expected one of "
                              f"{', '.join(cls.__dataclass_fields__)}")
        return cls(**value)


@dataclass(frozen=True)
class SliceQuality:
    """One slice's verdict. holdout_nmse None: unavailable (``reason`` says why); replaced: the policy put the
    fallback image in its place."""

    slice: int
    holdout_nmse: float | None
    dc_residual: float | None
    flag: bool
    reason: str = ""
    replaced: bool = False
    est_nmse: float | None = None
    est_nmse_zero_filled: float | None = None

    def public(self) -> dict:
        out: dict[str, object] = {"slice": self.slice, "est_nmse": _round(self.est_nmse),
                                  "est_nmse_zero_filled": _round(self.est_nmse_zero_filled),
                                  "holdout_nmse": _round(self.holdout_nmse), "dc_residual": _round(self.dc_residual),
                                  "flag": self.flag}
        if self.reason:
            out["unavailable"] = self.reason
        if self.replaced:
            out["replaced"] = True
        return out

    def comment(self, settings: QualitySettings) -> str:
        """The short human-readable line for ImageComments."""
        if self.holdout_nmse is None:
            text = f"Self-check unavailable ({self.reason})"
        elif self.est_nmse is None or self.est_nmse_zero_filled is None:
            text = (f"Self-check: held-out k-space error {self.holdout_nmse:.3f} (zero-filled = 1), data residual "
                    f"{_fmt(self.dc_residual)}: " + ("FLAGGED, review against the source data" if self.flag else "ok"))
        else:
            limit = "" if settings.ratio_threshold is None else f"; flag above {settings.ratio_threshold:g}x zero-filled"
            text = (f"Self-check: estimated NMSE {self.est_nmse:.4f} (zero-filled {self.est_nmse_zero_filled:.4f}"
                    f"{limit}), held-out k-space error {self.holdout_nmse:.3f}: "
                    + ("FLAGGED, review against the source data" if self.flag else "ok"))
        if self.replaced:
            text += f"; replaced by {FALLBACK_METHOD}"
        return text


def _round(v: float | None) -> float | None:
    return None if v is None else float(f"{v:.5g}")


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def verdict(index: int, estimate: SliceEstimate, settings: QualitySettings, reason: str = "") -> SliceQuality:
    """Slice ``index``'s verdict under ``settings``' thresholds (:func:`mrcore.quality.is_flagged`)."""
    flag = is_flagged(estimate, settings.ratio_threshold, settings.holdout_threshold, settings.dc_threshold)
    return SliceQuality(index, estimate.holdout_nmse, estimate.dc_residual, flag, reason,
                        est_nmse=estimate.est_nmse, est_nmse_zero_filled=estimate.est_nmse_zero_filled)


def header_value(quality: Sequence[SliceQuality]) -> str:
    """The ``X-Recon-Quality`` header: compact JSON list (ASCII)."""
    return json.dumps([q.public() for q in quality], separators=(",", ":"))


def fallback_images(kspace: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """``kspace`` [S, C, ky, kx], ``mask`` [S, ky, kx] or None -> float32 [S, ky, kx]: zero-filled RSS of the acquired k-space (the conservative answer)."""
    k = np.asarray(kspace)
    if mask is not None:
        k = k * np.asarray(mask, dtype=np.float32)[:, None]
    return np.sqrt((np.abs(ifft2c(k)) ** 2).sum(axis=1)).astype(np.float32)


def apply_policy(image: np.ndarray, kspace: np.ndarray, mask: np.ndarray | None, quality: Sequence[SliceQuality],
                 settings: QualitySettings) -> tuple[np.ndarray, list[SliceQuality]]:
    """``(image, quality)`` after the policy: ``fallback`` replaces exactly the flagged slices (marked
    ``replaced``); ``report`` and ``flag`` leave the pixels alone."""
    out = list(quality)
    if settings.policy != "fallback" or not any(q.flag for q in out):
        return image, out
    flagged = [q.slice for q in out if q.flag]
    masks = None if mask is None else mask_per_slice(check_mask(np.asarray(mask), kspace.shape), kspace.shape[0])
    zf = fallback_images(kspace[flagged], None if masks is None else masks[flagged])
    image = np.array(image, dtype=np.float32, copy=True)
    image[flagged] = zf
    out = [SliceQuality(**{**asdict(q), "replaced": True}) if q.flag else q for q in out]
    return image, out


def series_flagged(quality: Sequence[SliceQuality] | None, settings: QualitySettings) -> bool:
    """The series says so in its SeriesDescription (policies flag and fallback)."""
    return bool(quality) and settings.policy in ("flag", "fallback") and any(q.flag for q in quality or ())


def summary_line(quality: Sequence[SliceQuality]) -> str:
    flagged = sum(q.flag for q in quality)
    return f"{flagged} of {len(quality)} slices flagged"


def log_verdicts(logger: logging.Logger, model: str, version: str, quality: Sequence[SliceQuality],
                 settings: QualitySettings, **extra) -> None:
    """One log line per reconstruction: counts per model version (no patient data: callers pass hashed ids)."""
    values = [q.est_nmse for q in quality if q.est_nmse is not None]
    logger.info("reconstruction self-check", extra={
        "model": model, "model_version": version, "policy": settings.policy, "slices": len(quality),
        "flagged": sum(q.flag for q in quality), "replaced": sum(q.replaced for q in quality),
        "unavailable": sum(q.holdout_nmse is None for q in quality),
        "est_nmse_max": max(values) if values else None, **extra})
