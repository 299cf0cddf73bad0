"""Contrast names from what scanners write: protocol / series names, fastMRI acquisition labels, TR/TE/TI.

Pure rules, no file formats: the ISMRMRD and fastMRI readers, the shared DICOM layer (routing of every
C-STORE) and the REST API all call these, and none of them needs h5py or ismrmrd to do it. Contrast names
are :data:`mrcore.data.base.CONTRASTS` (``T1w``, ``T2w``, ``PD``, ``FLAIR``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "FASTMRI_ACQUISITIONS",
    "contrast_from_header",
    "contrast_from_protocol",
    "contrast_from_sequence",
    "contrast_of_acquisition",
]

#: fastMRI ``acquisition`` attribute (suffix such as ``_FBK`` removed) -> our contrast names.
FASTMRI_ACQUISITIONS: dict[str, str] = {
    "AXT1": "T1w",
    "AXT1PRE": "T1w",
    "AXT1POST": "T1w",
    "AXT2": "T2w",
    "AXFLAIR": "FLAIR",
    "CORPD": "PD",
    "CORPDFS": "PD",
}


def contrast_of_acquisition(
    acquisition: str | None,
    contrast_map: Mapping[str, str] | None = None,
    default: str | None = None,
) -> str | None:
    """Map a fastMRI ``acquisition`` string to a contrast name, or ``default`` when it is not known.

    ``contrast_map`` entries (keys compared case-insensitively, full string or without the ``_FBK``-like
    suffix) take precedence over :data:`FASTMRI_ACQUISITIONS`.
    """
    if acquisition is None:
        return default
    full = str(acquisition).strip().upper()
    base = full.split("_", 1)[0]
    table = dict(FASTMRI_ACQUISITIONS)
    if contrast_map:
        table.update({str(k).strip().upper(): v for k, v in contrast_map.items()})
    for key in (full, base):
        if key in table:
            return table[key]
    return default


def contrast_from_protocol(name: str | None) -> str | None:
    """Contrast suggested by a protocol / series name, or ``None``.

    Order: FLAIR (``flair``, ``dark fluid``, ``tirm``; but ``t1`` + ``flair`` is T1-FLAIR, T1w), then the
    fastMRI acquisition table (``AXT2``...),
    then T1w (``t1``, ``mprage``, ``spgr``, ``tfl``, ``bravo``), T2w (``t2``), PD (``pd``, ``proton``).
    """
    if not name:
        return None
    n = str(name).strip().lower()
    if re.search(r"flair|dark[ _-]?fluid|tirm", n):
        return "T1w" if "t1" in n else "FLAIR"  # T1-FLAIR is T1-weighted
    fast = FASTMRI_ACQUISITIONS.get(n.upper().split("_", 1)[0])
    if fast is not None:
        return fast
    if re.search(r"t1|mp-?rage|mp2rage|spgr|tfl|bravo", n):
        return "T1w"
    if "t2" in n:
        return "T2w"
    if re.search(r"pd|proton", n):
        return "PD"
    return None


def _first(values) -> float | None:
    if values is None:
        return None
    if isinstance(values, (list, tuple)):
        return float(values[0]) if values else None
    return float(values)


def contrast_from_sequence(tr_ms: float | None, te_ms: float | None, ti_ms: float | None) -> str | None:
    """Contrast suggested by TR/TE/TI in milliseconds (ISMRMRD units), or ``None`` when ambiguous.

    TI > 1500 -> FLAIR; 300 <= TI <= 1500 with TE < 30 -> T1w (MPRAGE-like); TR < 1000 with TE < 30 -> T1w;
    TR >= 1500 with TE >= 60 -> T2w; TR >= 1500 with TE <= 40 -> PD.
    """
    if ti_ms is not None and ti_ms > 1500:
        return "FLAIR"
    if te_ms is None:
        return None
    if ti_ms is not None and 300 <= ti_ms <= 1500 and te_ms < 30:
        return "T1w"
    if tr_ms is None:
        return None
    if tr_ms < 1000 and te_ms < 30:
        return "T1w"
    if tr_ms >= 1500 and te_ms >= 60:
        return "T2w"
    if tr_ms >= 1500 and te_ms <= 40:
        return "PD"
    return None


def contrast_from_header(header: Any) -> str | None:
    """Contrast from a parsed ``ismrmrd.xsd.ismrmrdHeader``: protocol/series name, then TR/TE/TI; else ``None``."""
    mi = getattr(header, "measurementInformation", None)
    if mi is not None:
        for name in (getattr(mi, "protocolName", None), getattr(mi, "seriesDescription", None)):
            c = contrast_from_protocol(name)
            if c is not None:
                return c
    sp = getattr(header, "sequenceParameters", None)
    if sp is not None:
        return contrast_from_sequence(_first(sp.TR), _first(sp.TE), _first(sp.TI))
    return None
