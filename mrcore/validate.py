"""Input checks shared by the MRI core: each raises ``ValueError`` naming the argument and what was expected.

No silent broadcasting: shapes are compared exactly, dtypes are checked, non-finite values are refused.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _describe(arr: np.ndarray) -> str:
    return f"{arr.dtype} {tuple(arr.shape)}"


def as_array(name: str, value) -> np.ndarray:
    """Return ``value`` as an ndarray, refusing ``None`` and objects numpy cannot convert."""
    if value is None:
        raise ValueError(f"{name} is required, got None")
    arr = np.asarray(value)
    if arr.dtype == object:
        raise ValueError(f"{name} must be a numeric array, got an object array")
    return arr


def check_ndim(name: str, arr: np.ndarray, ndim: int | Sequence[int], layout: str) -> None:
    """Require ``arr.ndim`` in ``ndim``; ``layout`` names the axes, e.g. ``"[coils, ky, kx]"``."""
    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if arr.ndim not in allowed:
        raise ValueError(f"{name} must be {layout} ({' or '.join(map(str, allowed))}-D), got {_describe(arr)}")


def check_complex(name: str, arr: np.ndarray, layout: str) -> None:
    """Require a complex dtype (k-space, coil maps, complex images)."""
    if not np.iscomplexobj(arr):
        raise ValueError(f"{name} must be complex64 {layout}, got {_describe(arr)}")


def check_real(name: str, arr: np.ndarray, layout: str) -> None:
    """Require a real floating or integer dtype (magnitude images, masks)."""
    if np.iscomplexobj(arr) or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"{name} must be real {layout}, got {_describe(arr)}")


def check_finite(name: str, arr: np.ndarray) -> None:
    """Refuse NaN and Inf."""
    if arr.size == 0:
        raise ValueError(f"{name} is empty, got shape {tuple(arr.shape)}")
    if not np.all(np.isfinite(arr)):
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{name} contains {bad} NaN/Inf values")


def check_shape(name: str, arr: np.ndarray, expected: Sequence[int], layout: str) -> None:
    """Require ``arr.shape == expected`` exactly (no broadcasting)."""
    if tuple(arr.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)} {layout}, got {_describe(arr)}")


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    """Require ``value`` to be one of ``choices`` (contrast, site, mask kind...)."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(map(repr, choices))}")


def check_positive(name: str, value: float, *, strict: bool = True) -> None:
    """Require a finite number > 0 (or >= 0 with ``strict=False``)."""
    ok = np.isfinite(value) and (value > 0 if strict else value >= 0)
    if not ok:
        raise ValueError(f"{name} must be {'>' if strict else '>='} 0, got {value!r}")
