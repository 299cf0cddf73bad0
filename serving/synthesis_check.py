"""The synthesis input check of the serving side, shared by the REST API and the DICOM node.

The check itself is :mod:`mrcore.synthesis_input` (pure numpy, thresholds in ``docs/synthesis_input.md``);
this module runs it once per source series, before any inference, and gives its findings the forms both
entry points use:

* :func:`check_source`: normalise the whole series (:func:`mrcore.intensity.normalise_series`, which raises
  :class:`~mrcore.intensity.NormalisationError` for a series too small to normalise), check it, and raise
  :class:`~mrcore.synthesis_input.SynthesisInputError` for a refusal (no head in the field of view);
* :func:`header_value`: the ``X-Synthesis-Warning`` header (compact JSON list of ``{"code", "message"}``) and
  the job resource's ``synthesis_warnings`` field;
* :func:`annotate_warnings`: the warning line at the start of ``ImageComments`` of every derived instance.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset

from mrcore.intensity import normalise_series
from mrcore.synthesis_input import InputCheck, SynthesisInputError, check_synthesis_input

__all__ = ["COMMENT_PREFIX", "SynthesisInputError", "annotate_warnings", "check_source", "comment", "header_value",
           "log_check"]

COMMENT_PREFIX = "SYNTHESIS INPUT WARNING: "


def check_source(volume: np.ndarray, source: str) -> InputCheck:
    """Check a source series ``float [slices, rows, cols]`` (any intensity scale) for a route whose source contrast
    is ``source``. Raises NormalisationError (too little foreground to normalise) or SynthesisInputError (refused:
    ``exc.finding`` names the reason); returns the check (its ``warnings`` may be empty)."""
    normalised, _ = normalise_series(np.asarray(volume, dtype=np.float32))
    return check_synthesis_input(normalised, source).raise_if_refused()


def header_value(check: InputCheck) -> str | None:
    """``X-Synthesis-Warning``: compact JSON list of the warnings (ASCII); None when there is none."""
    if not check.warnings:
        return None
    return json.dumps([w.public() for w in check.warnings], separators=(",", ":"), ensure_ascii=True)


def comment(check: InputCheck) -> str:
    """The human-readable ImageComments line of the warnings ("" when there is none)."""
    if not check.warnings:
        return ""
    return COMMENT_PREFIX + " | ".join(w.message for w in check.warnings)


def annotate_warnings(datasets: Sequence[Dataset], check: InputCheck) -> None:
    """Put the warning line first in ``ImageComments`` of every instance (in place; nothing without warnings)."""
    line = comment(check)
    if not line:
        return
    for ds in datasets:
        ds.ImageComments = "; ".join(x for x in (line, str(ds.get("ImageComments", "") or "")) if x)[:10240]


def log_check(logger: logging.Logger, model: str, check: InputCheck, **extra) -> None:
    """One log line per checked series: findings and features (no patient data: callers pass hashed ids)."""
    logger.info("synthesis input check", extra={
        "model": model, "expected": check.expected, "looks_like": check.looks_like,
        "warnings": [w.code for w in check.warnings], **check.features.public(), **extra})
