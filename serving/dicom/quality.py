"""The reconstruction self-check in a derived DICOM series (REST ``format=dicom`` and the DICOM node).

Each derived instance of a checked reconstruction carries

* a private block, creator ``MRI-SERVICE QUALITY`` in group ``0x0071`` (block reserved by pydicom, normally
  elements ``(0071,10xx)``):

  ======  ====  ===================================================================================
  offset  VR    value
  ======  ====  ===================================================================================
  0x01    LO    method: ``kspace-holdout-2`` (:mod:`mrcore.quality`)
  0x02    DS    holdout_nmse of the slice (empty: unavailable)
  0x03    DS    dc_residual of the slice (empty: unavailable)
  0x04    CS    ``FLAGGED``, ``OK`` or ``UNAVAILABLE``
  0x05    DS    holdout_threshold in force (empty: off)
  0x06    DS    holdout_fraction in force
  0x07    CS    policy: ``REPORT``, ``FLAG`` or ``FALLBACK``
  0x08    CS    ``YES`` when the policy replaced this slice by the fallback image, else ``NO``
  0x09    UT    the slice's JSON object, as in the REST ``X-Recon-Quality`` header
  0x0A    DS    est_nmse of the slice, the estimated NMSE of the answer (empty: unavailable)
  0x0B    DS    est_nmse_zero_filled, the same estimate for zero-filled (empty: unavailable)
  0x0C    DS    ratio_threshold in force (flag when est_nmse > ratio_threshold x est_nmse_zero_filled; empty: off)
  ======  ====  ===================================================================================

* a short human-readable ``ImageComments`` line (:meth:`serving.quality.SliceQuality.comment`);
* with the policies ``flag`` and ``fallback``, a series holding a flagged slice ends its ``SeriesDescription`` with
  `` [SELF-CHECK FLAGGED]`` (the description shortened to keep 64 characters);
* a slice replaced by ``fallback`` says so in its ``DerivationDescription``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset

from serving.quality import METHOD

if TYPE_CHECKING:
    from serving.quality import QualitySettings, SliceQuality

__all__ = ["FLAG_SUFFIX", "PRIVATE_CREATOR", "PRIVATE_GROUP", "annotate_quality", "read_quality"]

PRIVATE_CREATOR = "MRI-SERVICE QUALITY"
PRIVATE_GROUP = 0x0071
FLAG_SUFFIX = " [SELF-CHECK FLAGGED]"


def _ds(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"[:16]


def annotate_quality(datasets: Sequence[Dataset], quality: Sequence[SliceQuality], settings: QualitySettings,
                     fallback_method: str = "") -> None:
    """Write the self-check of slice ``i`` into ``datasets[i]`` (in place); see the module docstring."""
    if len(datasets) != len(quality):
        raise ValueError(f"{len(quality)} quality entries for {len(datasets)} instances")
    flagged_series = settings.policy in ("flag", "fallback") and any(q.flag for q in quality)
    for ds, q in zip(datasets, quality):
        block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
        block.add_new(0x01, "LO", METHOD)
        block.add_new(0x02, "DS", _ds(q.holdout_nmse))
        block.add_new(0x03, "DS", _ds(q.dc_residual))
        block.add_new(0x04, "CS", "UNAVAILABLE" if q.holdout_nmse is None and not q.flag else
                      ("FLAGGED" if q.flag else "OK"))
        block.add_new(0x05, "DS", _ds(settings.holdout_threshold))
        block.add_new(0x06, "DS", _ds(settings.holdout_fraction))
        block.add_new(0x07, "CS", settings.policy.upper())
        block.add_new(0x08, "CS", "YES" if q.replaced else "NO")
        block.add_new(0x09, "UT", json.dumps(q.public(), separators=(",", ":")))
        block.add_new(0x0A, "DS", _ds(q.est_nmse))
        block.add_new(0x0B, "DS", _ds(q.est_nmse_zero_filled))
        block.add_new(0x0C, "DS", _ds(settings.ratio_threshold))
        ds.ImageComments = q.comment(settings)[:10240]
        if q.replaced:
            ds.DerivationDescription = (f"{ds.get('DerivationDescription', '')}; self-check flagged this slice: "
                                        f"replaced by {fallback_method}")[:1024]
        if flagged_series:
            desc = str(ds.get("SeriesDescription", "") or "")
            if not desc.endswith(FLAG_SUFFIX):
                ds.SeriesDescription = (desc[:64 - len(FLAG_SUFFIX)] + FLAG_SUFFIX).strip()


def read_quality(ds: Dataset) -> dict | None:
    """The slice's JSON object from the private block (None without one)."""
    try:
        block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
    except KeyError:
        return None
    return json.loads(str(block[0x09].value))
