"""Closed-form MR signal equations (pure functions, no state).

All times are in milliseconds. Signals are in units of the fully relaxed magnetisation of a tissue with
relative proton density 1 (CSF), so a voxel of pure tissue gives a value in ``[0, pd]``.

The equations take the usual short-echo forms: they assume TE << TR, a perfect 90/180 degree
excitation and refocusing, no stimulated echoes and full spoiling between repetitions. For
inversion recovery they also assume a perfect 180 degree inversion and take the magnitude
(clinical FLAIR and T1-FLAIR are displayed as magnitude).
"""

from __future__ import annotations

import math

import numpy as np

from mrcore.validate import check_positive


def _times(name: str, value) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.size == 0 or not np.all(np.isfinite(arr)) or not np.all(arr > 0):
        raise ValueError(f"{name} must be finite and > 0 (milliseconds), got {value!r}")
    return arr


def _pd(value) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.size == 0 or not np.all(np.isfinite(arr)) or not np.all(arr >= 0):
        raise ValueError(f"pd must be finite and >= 0, got {value!r}")
    return arr


def _sequence_times(tr: float, te: float) -> None:
    check_positive("tr", tr)
    check_positive("te", te, strict=False)
    if te >= tr:
        raise ValueError(f"te must be shorter than tr, got te={te!r} ms, tr={tr!r} ms")


def spin_echo(pd, t1, t2, tr: float, te: float) -> np.ndarray:
    """Spin-echo signal ``pd * (1 - exp(-TR/T1)) * exp(-TE/T2)``.

    Parameters
    ----------
    pd : float or array
        Relative proton density (>= 0), dimensionless.
    t1, t2 : float or array, broadcastable with ``pd``
        Relaxation times, ms (> 0).
    tr, te : float
        Repetition and echo time, ms (0 <= te < tr).

    Returns
    -------
    float64 array of the broadcast shape of ``pd``, ``t1`` and ``t2`` (0-D for scalars).
    """
    _sequence_times(tr, te)
    pd_, t1_, t2_ = _pd(pd), _times("t1", t1), _times("t2", t2)
    return pd_ * (1.0 - np.exp(-tr / t1_)) * np.exp(-te / t2_)


def inversion_recovery(pd, t1, t2, tr: float, te: float, ti: float) -> np.ndarray:
    """Magnitude inversion-recovery signal ``pd * |1 - 2 exp(-TI/T1) + exp(-TR/T1)| * exp(-TE/T2)``.

    Used for FLAIR (TI nulls CSF, see :func:`flair_null_ti`) and T1-FLAIR (short TI).

    Parameters
    ----------
    pd : float or array
        Relative proton density (>= 0), dimensionless.
    t1, t2 : float or array, broadcastable with ``pd``
        Relaxation times, ms (> 0).
    tr, te, ti : float
        Repetition, echo and inversion time, ms (0 <= te < tr, 0 < ti < tr).

    Returns
    -------
    float64 array of the broadcast shape of ``pd``, ``t1`` and ``t2`` (0-D for scalars).
    """
    _sequence_times(tr, te)
    check_positive("ti", ti)
    if ti >= tr:
        raise ValueError(f"ti must be shorter than tr, got ti={ti!r} ms, tr={tr!r} ms")
    pd_, t1_, t2_ = _pd(pd), _times("t1", t1), _times("t2", t2)
    mz = 1.0 - 2.0 * np.exp(-ti / t1_) + np.exp(-tr / t1_)
    return pd_ * np.abs(mz) * np.exp(-te / t2_)


def flair_null_ti(t1_csf: float, tr: float) -> float:
    """Inversion time that nulls a tissue of longitudinal relaxation ``t1_csf`` (ms) at repetition ``tr`` (ms).

    Solves ``1 - 2 exp(-TI/T1) + exp(-TR/T1) = 0``, the zero of :func:`inversion_recovery`:
    ``TI = T1 * ln(2 / (1 + exp(-TR/T1)))``. For TR >> T1 this tends to ``T1 ln 2``.

    Returns
    -------
    float
        Inversion time, ms.
    """
    check_positive("t1_csf", t1_csf)
    check_positive("tr", tr)
    return float(t1_csf * math.log(2.0 / (1.0 + math.exp(-tr / t1_csf))))
