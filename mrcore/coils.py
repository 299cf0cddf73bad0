"""Coil sensitivities: simulation (birdcage with smooth random phase) and ESPIRiT estimation (SigPy)."""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral, Real

import numpy as np

from mrcore.validate import as_array, check_complex, check_finite, check_ndim

_KERNEL_WIDTH = 6  # SigPy's ESPIRiT kernel width


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or int(value) < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_float(name: str, value, low: float, high: float | None = None) -> float:
    ok = isinstance(value, Real) and not isinstance(value, bool) and np.isfinite(float(value)) and float(value) > low
    if ok and high is not None:
        ok = value < high
    if not ok:
        bound = f"in ({low}, {high})" if high is not None else f"> {low}"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def simulate_coil_maps(shape: Sequence[int], num_coils: int, seed: int = 0, relative_radius: float = 1.2,
                       phase_order: int = 2) -> np.ndarray:
    """Birdcage coil sensitivities with a smooth random phase, normalised to ``sum_c |S_c|^2 == 1``.

    Parameters
    ----------
    shape : (y, x) positive ints
    num_coils : int >= 1
    seed : int >= 0
        Seeds the phase polynomials.
    relative_radius : float > 0
        Birdcage radius relative to half the field of view (``sigpy.mri.birdcage_maps``'s ``r``).
    phase_order : int >= 0
        Degree of the per-coil phase polynomial in the normalised coordinates ``y, x`` in ``[-1, 1]``;
        coefficients are standard normal (radians), the constant term uniform in ``[-pi, pi)``.

    Returns
    -------
    complex64 [coils, y, x]
    """
    try:
        dims = tuple(shape)
    except TypeError:
        dims = ()
    if len(dims) != 2 or not all(isinstance(d, Integral) and not isinstance(d, bool) and d > 0 for d in dims):
        raise ValueError(f"shape must be 2 positive ints (y, x), got {shape!r}")
    num_coils = _check_int("num_coils", num_coils, 1)
    seed = _check_int("seed", seed, 0)
    relative_radius = _check_float("relative_radius", relative_radius, 0.0)
    phase_order = _check_int("phase_order", phase_order, 0)

    import sigpy.mri  # deferred: sigpy imports numba and torch (~3 s), which serving never needs

    ny, nx = int(dims[0]), int(dims[1])
    maps = sigpy.mri.birdcage_maps((num_coils, ny, nx), r=relative_radius)
    rng = np.random.default_rng(seed)
    y = np.linspace(-1, 1, ny)[:, None]
    x = np.linspace(-1, 1, nx)[None, :]
    terms = [(i, j) for i in range(phase_order + 1) for j in range(phase_order + 1 - i) if i + j > 0]
    for c in range(num_coils):
        phase = rng.uniform(-np.pi, np.pi) + sum(rng.standard_normal() * y**i * x**j for i, j in terms)
        maps[c] *= np.exp(1j * phase)
    norm = np.sqrt(np.sum(np.abs(maps) ** 2, axis=0))
    if not np.all(np.isfinite(maps)) or not np.all(norm > 0):
        raise ValueError(f"relative_radius {relative_radius} puts a coil centre on the grid; use a larger radius")
    return (maps / norm).astype(np.complex64)


def estimate_coil_maps(kspace: np.ndarray, calib_width: int = 24, threshold: float = 0.02, crop: float = 0.95,
                       max_iter: int = 100) -> np.ndarray:
    """ESPIRiT coil sensitivities (``sigpy.mri.app.EspiritCalib``), one set of maps.

    Parameters
    ----------
    kspace : complex [coils, ky, kx]
        The centre ``calib_width x calib_width`` block (centred on ``(ky // 2, kx // 2)``) must be fully sampled.
    calib_width : int
        Width of the square calibration region, > 6 (SigPy's kernel width) and <= min(ky, kx).
    threshold : float in (0, 1)
        Singular-value threshold of the calibration matrix, relative to the largest.
    crop : float in [0, 1)
        Eigenvalue threshold: maps are 0 where the largest eigenvalue is below it (0: no cropping).
    max_iter : int >= 1
        Power iterations.

    Returns
    -------
    complex64 [coils, y, x], phase relative to coil 0, ``sum_c |S_c|^2 == 1`` inside the support.
    """
    k = as_array("kspace", kspace)
    check_complex("kspace", k, "[coils, ky, kx]")
    check_ndim("kspace", k, 3, "[coils, ky, kx]")
    check_finite("kspace", k)
    calib_width = _check_int("calib_width", calib_width, _KERNEL_WIDTH + 1)
    if calib_width > min(k.shape[1:]):
        raise ValueError(f"calib_width must be <= min(ky, kx) = {min(k.shape[1:])}, got {calib_width}")
    threshold = _check_float("threshold", threshold, 0.0, 1.0)
    if isinstance(crop, bool) or not isinstance(crop, Real) or not 0 <= crop < 1:
        raise ValueError(f"crop must be a number in [0, 1), got {crop!r}")
    max_iter = _check_int("max_iter", max_iter, 1)
    import sigpy.mri.app  # deferred: sigpy imports numba and torch (~3 s), which serving never needs

    app = sigpy.mri.app.EspiritCalib(k.astype(np.complex64, copy=False), calib_width=calib_width, thresh=threshold,
                                     kernel_width=_KERNEL_WIDTH, crop=crop, max_iter=max_iter, show_pbar=False)
    return np.asarray(app.run()).astype(np.complex64, copy=False)


def compress_coils(kspace: np.ndarray, num_virtual: int, mask: np.ndarray | None = None) -> np.ndarray:
    """SVD coil compression (Buehrer et al. MRM 2007; Huang et al. MRI 2008) to at most ``num_virtual`` coils.

    The acquired samples of every coil form a matrix ``Y [coils, samples]``; the virtual coils are
    ``U_v^H y`` with ``U_v`` the ``num_virtual`` dominant left singular vectors of ``Y`` (eigenvectors of the
    coil covariance ``Y Y^H``). The projection is unitary onto that subspace, so the virtual coils are the exact
    measurements of virtual coil sensitivities ``U_v^H S`` and data consistency stays exact; what is dropped is
    the least energy (mostly noise) the coils carry. With ``coils <= num_virtual`` the k-space is returned
    unchanged.

    Parameters
    ----------
    kspace : complex [coils, ky, kx]
    num_virtual : int >= 1
    mask : real [ky, kx] or None
        The acquired samples (non-zero); ``None``: every non-zero sample of any coil.

    Returns
    -------
    complex64 [min(coils, num_virtual), ky, kx]
    """
    k = as_array("kspace", kspace)
    check_complex("kspace", k, "[coils, ky, kx]")
    check_ndim("kspace", k, 3, "[coils, ky, kx]")
    check_finite("kspace", k)
    num_virtual = _check_int("num_virtual", num_virtual, 1)
    k = k.astype(np.complex64, copy=False)
    if k.shape[0] <= num_virtual:
        return k
    acquired = (np.abs(k).sum(axis=0) > 0) if mask is None else (np.asarray(mask) != 0)
    if acquired.shape != k.shape[1:]:
        raise ValueError(f"mask must be [ky, kx] = {list(k.shape[1:])}, got {list(acquired.shape)}")
    samples = k[:, acquired].astype(np.complex128)  # [coils, n]
    if samples.shape[1] == 0:
        raise ValueError("kspace has no acquired sample to compress coils from")
    _, vectors = np.linalg.eigh(samples @ samples.conj().T)  # ascending eigenvalues
    basis = vectors[:, ::-1][:, :num_virtual]  # [coils, num_virtual]
    return np.einsum("cv,cyx->vyx", basis.conj(), k).astype(np.complex64)
