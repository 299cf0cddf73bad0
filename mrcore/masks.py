"""Undersampling masks: functions of (shape, acceleration, centre fraction, seed), like fastMRI's ``MaskFunc``.

Convention: a mask is float32 ``[ky, kx]`` with values 0/1, the shape of one coil's k-space (no
broadcasting). Cartesian masks sample whole phase-encode lines along ``axis``: ``axis=-2`` (default)
samples rows (ky lines); ``axis=-1`` samples columns, the phase-encode axis of fastMRI's raw data. The
fully sampled centre block of ``c`` lines in a dimension of ``n`` starts at ``n // 2 - c // 2``, so it
always contains the DC index ``n // 2`` of :func:`mrcore.fft.fft2c` and is symmetric about it for odd ``c``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real

import numpy as np

from mrcore.validate import as_array, check_choice, check_complex, check_finite, check_ndim, check_real

MASK_KINDS: tuple[str, ...] = ("equispaced", "random", "poisson")

#: Poisson-disc sampling cannot go below ~1.6x (a one-pixel disc radius with cropped corners); 2x is safe.
POISSON_MIN_ACCELERATION = 2.0
_POISSON_TOLERANCE = 0.05  # relative, achieved vs nominal acceleration
_POISSON_ATTEMPTS = 3


# --- argument checks ------------------------------------------------------------------------------
def _check_shape(shape) -> tuple[int, int]:
    try:
        dims = tuple(shape)
    except TypeError:
        raise ValueError(f"shape must be 2 positive ints (ky, kx), got {shape!r}") from None
    if len(dims) != 2 or not all(isinstance(d, Integral) and not isinstance(d, bool) and int(d) > 0 for d in dims):
        raise ValueError(f"shape must be 2 positive ints (ky, kx), got {shape!r}")
    return int(dims[0]), int(dims[1])


def _check_acceleration(acceleration) -> float:
    if isinstance(acceleration, bool) or not isinstance(acceleration, Real) or not math.isfinite(acceleration):
        raise ValueError(f"acceleration must be a finite number > 1, got {acceleration!r}")
    if not float(acceleration) > 1:
        raise ValueError(f"acceleration must be > 1, got {acceleration!r}")
    return float(acceleration)


def _check_center_fraction(center_fraction) -> float:
    ok = isinstance(center_fraction, Real) and not isinstance(center_fraction, bool)
    if not (ok and math.isfinite(center_fraction) and 0 < center_fraction < 1):
        raise ValueError(f"center_fraction must be in (0, 1), got {center_fraction!r}")
    return float(center_fraction)


def _check_axis(axis) -> int:
    if isinstance(axis, bool) or axis not in (-2, -1, 0, 1):
        raise ValueError(f"axis must be -2 (ky rows) or -1 (kx columns), got {axis!r}")
    return int(axis) % 2


def _check_seed(seed) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
    return int(seed)


def _centre_block(n: int, count: int) -> slice:
    start = n // 2 - count // 2
    return slice(start, start + count)


# --- Cartesian line masks -------------------------------------------------------------------------
class _LineMask:
    """Shared logic of the Cartesian masks: ``round(n / acceleration)`` lines, centre block included."""

    def __init__(self, acceleration: float, center_fraction: float, axis: int = -2) -> None:
        self.acceleration = _check_acceleration(acceleration)
        self.center_fraction = _check_center_fraction(center_fraction)
        self.axis = axis
        self._axis = _check_axis(axis)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(acceleration={self.acceleration}, "
                f"center_fraction={self.center_fraction}, axis={self.axis})")

    def line_counts(self, n: int) -> tuple[int, int]:
        """(centre lines, total lines) for ``n`` phase-encode lines; ValueError when impossible."""
        num_low = max(1, round(n * self.center_fraction))
        total = round(n / self.acceleration)
        if total < 1:
            raise ValueError(f"acceleration {self.acceleration} is impossible for {n} lines: fewer than 1 line")
        if num_low > n / self.acceleration:
            raise ValueError(
                f"acceleration {self.acceleration} is impossible for {n} lines with center_fraction "
                f"{self.center_fraction}: the centre block alone has {num_low} lines > {n / self.acceleration:.2f}"
            )
        return num_low, total

    def __call__(self, shape: Sequence[int], seed: int | None = None) -> np.ndarray:
        """Mask for one coil's k-space.

        Parameters
        ----------
        shape : (ky, kx) positive ints
        seed : int >= 0 or None (fresh randomness)

        Returns
        -------
        float32 [ky, kx], 1 on sampled lines along ``axis``.
        """
        dims = _check_shape(shape)
        rng = np.random.default_rng(_check_seed(seed))
        n = dims[self._axis]
        num_low, total = self.line_counts(n)
        lines = np.zeros(n, dtype=bool)
        lines[_centre_block(n, num_low)] = True
        outside = np.flatnonzero(~lines)
        lines[self._pick(outside, total - num_low, rng)] = True
        mask = np.zeros(dims, dtype=np.float32)
        if self._axis == 0:
            mask[lines, :] = 1
        else:
            mask[:, lines] = 1
        return mask

    def _pick(self, outside: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError


class EquispacedMask(_LineMask):
    """Equispaced phase-encode lines plus a fully sampled centre block (fastMRI's ``EquispacedMaskFractionFunc``).

    Exactly ``round(n / acceleration)`` lines are sampled: the centre block of ``max(1, round(n *
    center_fraction))`` lines and the rest equispaced over the remaining lines with a seeded offset.
    """

    def _pick(self, outside: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
        if count == 0:
            return outside[:0]
        step = len(outside) / count
        offset = int(rng.integers(0, max(1, math.floor(step))))
        return outside[np.round(offset + step * np.arange(count)).astype(int)]


class RandomMask(_LineMask):
    """Random phase-encode lines plus a fully sampled centre block (fastMRI's ``RandomMaskFunc``, exact count).

    Exactly ``round(n / acceleration)`` lines: the centre block and the rest drawn uniformly without
    replacement from the other lines.
    """

    def _pick(self, outside: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
        return rng.choice(outside, size=count, replace=False)


# --- 2-D Poisson disc -----------------------------------------------------------------------------
class PoissonDiscMask:
    """2-D variable-density Poisson-disc mask with a fully sampled calibration box (``sigpy.mri.poisson``).

    The calibration box ``calib = (cy, cx)`` is centred on ``(ky // 2, kx // 2)``. SigPy's own tolerance
    is loose, so the achieved acceleration is checked to lie within 5 % of nominal (retrying with derived
    seeds). Supports ``acceleration >= 2`` (denser Poisson-disc sampling is not attainable).
    """

    def __init__(self, acceleration: float, calib: tuple[int, int] = (20, 20),
                 tolerance: float = _POISSON_TOLERANCE) -> None:
        self.acceleration = _check_acceleration(acceleration)
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 < tolerance < 1:
            raise ValueError(f"tolerance must be a number in (0, 1), got {tolerance!r}")
        self.tolerance: float = float(tolerance)
        if self.acceleration < POISSON_MIN_ACCELERATION:
            raise ValueError(
                f"acceleration must be >= {POISSON_MIN_ACCELERATION} for Poisson-disc sampling, got {acceleration!r}"
            )
        try:
            cal = tuple(calib)
        except TypeError:
            cal = ()
        if len(cal) != 2 or not all(isinstance(c, Integral) and not isinstance(c, bool) and c >= 0 for c in cal):
            raise ValueError(f"calib must be 2 non-negative ints (cy, cx), got {calib!r}")
        self.calib = (int(cal[0]), int(cal[1]))

    def __repr__(self) -> str:
        return f"PoissonDiscMask(acceleration={self.acceleration}, calib={self.calib})"

    def __call__(self, shape: Sequence[int], seed: int | None = None) -> np.ndarray:
        """Mask for one coil's k-space.

        Parameters
        ----------
        shape : (ky, kx) positive ints, each larger than the calibration box
        seed : int >= 0 or None (fresh randomness)

        Returns
        -------
        float32 [ky, kx] with values 0/1.
        """
        dims = _check_shape(shape)
        seed = _check_seed(seed)
        if seed is None:
            seed = int(np.random.default_rng().integers(0, 2**32))
        if any(c >= n for c, n in zip(self.calib, dims)):
            raise ValueError(f"calib {self.calib} must be smaller than shape {dims}")
        size = dims[0] * dims[1]
        if self.calib[0] * self.calib[1] > size / self.acceleration:
            raise ValueError(
                f"acceleration {self.acceleration} is impossible for shape {dims}: the calibration box "
                f"{self.calib} alone has {self.calib[0] * self.calib[1]} samples > {size / self.acceleration:.1f}"
            )
        import sigpy.mri  # deferred: sigpy imports numba and torch (~3 s), which serving never needs

        for attempt in range(_POISSON_ATTEMPTS):
            sub_seed = int(np.random.SeedSequence((seed, attempt)).generate_state(1)[0])
            try:
                mask = sigpy.mri.poisson(dims, self.acceleration, calib=self.calib, dtype=np.float32,
                                         seed=sub_seed, tol=0.8 * self.tolerance * self.acceleration)
            except ValueError:
                continue
            mask = (np.asarray(mask).real > 0).astype(np.float32)
            mask[_centre_block(dims[0], self.calib[0]), _centre_block(dims[1], self.calib[1])] = 1
            if abs(size / mask.sum() - self.acceleration) <= self.tolerance * self.acceleration:
                return mask
        raise ValueError(f"could not generate a Poisson-disc mask of acceleration {self.acceleration} for shape {dims}")


# --- factory and helpers --------------------------------------------------------------------------
def make_mask(kind: str, shape: Sequence[int], acceleration: float, center_fraction: float = 0.08,
              seed: int | None = 0, axis: int = -2) -> np.ndarray:
    """Build a mask of kind ``"equispaced"``, ``"random"`` or ``"poisson"``.

    Parameters
    ----------
    kind : one of :data:`MASK_KINDS`
    shape : (ky, kx) positive ints
    acceleration : float > 1 (>= 2 for ``"poisson"``)
    center_fraction : float in (0, 1)
        Fraction of lines in the centre block; for ``"poisson"`` the calibration box is
        ``(max(1, round(ky * center_fraction)), max(1, round(kx * center_fraction)))``.
    seed : int >= 0 or None
    axis : -2 or -1, phase-encode axis of the line masks (ignored by ``"poisson"``, which is 2-D)

    Returns
    -------
    float32 [ky, kx] with values 0/1.
    """
    check_choice("mask kind", kind, MASK_KINDS)
    if kind == "poisson":
        dims = _check_shape(shape)
        cf = _check_center_fraction(center_fraction)
        _check_axis(axis)
        calib = (max(1, round(dims[0] * cf)), max(1, round(dims[1] * cf)))
        return PoissonDiscMask(acceleration, calib=calib)(dims, seed=seed)
    cls = EquispacedMask if kind == "equispaced" else RandomMask
    return cls(acceleration, center_fraction, axis=axis)(shape, seed=seed)


def acceleration_of(mask: np.ndarray) -> float:
    """Achieved acceleration ``mask.size / count_nonzero(mask)`` of a real ``[ky, kx]`` mask."""
    m = as_array("mask", mask)
    check_real("mask", m, "[ky, kx]")
    check_ndim("mask", m, 2, "[ky, kx]")
    check_finite("mask", m)
    sampled = np.count_nonzero(m)
    if sampled == 0:
        raise ValueError("mask samples nothing (all zeros)")
    return float(m.size / sampled)


def infer_mask(kspace: np.ndarray) -> np.ndarray:
    """Sampling mask of k-space: 1 where any coil has a non-zero sample.

    Parameters
    ----------
    kspace : complex [coils, ky, kx] (or [ky, kx] single-coil)

    Returns
    -------
    float32 [ky, kx]
    """
    k = as_array("kspace", kspace)
    check_complex("kspace", k, "[coils, ky, kx]")
    check_ndim("kspace", k, (2, 3), "[coils, ky, kx]")
    check_finite("kspace", k)
    nonzero = k != 0
    if k.ndim == 3:
        nonzero = nonzero.any(axis=0)
    return nonzero.astype(np.float32)
