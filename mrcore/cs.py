"""Compressed-sensing baseline: L1-wavelet regularised SENSE reconstruction (``sigpy.mri.app.L1WaveletRecon``)."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import sigpy.mri.app

from mrcore.coils import estimate_coil_maps
from mrcore.masks import infer_mask
from mrcore.validate import as_array, check_complex, check_finite, check_ndim, check_real, check_shape

_DEFAULT_CALIB = 24
_MIN_CALIB = 16


def _calibration_width(mask: np.ndarray, largest: int) -> int:
    """Largest ``c <= largest`` whose centred ``c x c`` block of ``mask`` is fully sampled (0 if none)."""
    ky, kx = mask.shape
    for c in range(min(largest, ky, kx), 0, -1):
        block = mask[ky // 2 - c // 2: ky // 2 - c // 2 + c, kx // 2 - c // 2: kx // 2 - c // 2 + c]
        if np.all(block != 0):
            return c
    return 0


def l1_wavelet_recon(kspace: np.ndarray, mask: np.ndarray | None, maps: np.ndarray | None = None,
                     lamda: float = 0.005, max_iter: int = 30) -> np.ndarray:
    """L1-wavelet (Daubechies 4) compressed-sensing reconstruction.

    Solves ``min_x 1/2 ||M^(1/2) (F S x - y)||^2 + lamda ||W x||_1`` (``M`` the 0/1 mask or non-negative
    weights) with SigPy's accelerated proximal gradient method (FISTA), step size
    ``1 / (max M * max_pixel sum_c |S_c|^2)``; deterministic.

    Parameters
    ----------
    kspace : complex [coils, ky, kx]
        Measured k-space; samples outside ``mask`` are ignored.
    mask : real [ky, kx] (>= 0) or None
        Sampling mask; ``None`` infers it with :func:`mrcore.masks.infer_mask` (non-zero samples).
    maps : complex [coils, y, x] or None
        Coil sensitivities; ``None`` estimates them with ESPIRiT (:func:`mrcore.coils.estimate_coil_maps`)
        from the fully sampled centre box, up to 24 x 24 (at least 16 x 16 is required).
    lamda : float > 0
        Regularisation weight, in the units of the k-space data (orthonormal FFT).
    max_iter : int >= 1

    Returns
    -------
    complex64 [y, x], 0 where every map is 0 (e.g. outside an ESPIRiT-cropped support): the data say
    nothing about the image there, and the wavelet prox would otherwise leak values into it.
    """
    k = as_array("kspace", kspace)
    check_complex("kspace", k, "[coils, ky, kx]")
    check_ndim("kspace", k, 3, "[coils, ky, kx]")
    check_finite("kspace", k)
    if mask is None:
        m = infer_mask(k)
    else:
        m = as_array("mask", mask)
        check_real("mask", m, "[ky, kx]")
        check_shape("mask", m, k.shape[1:], "[ky, kx]")
        check_finite("mask", m)
        if np.any(m < 0):
            raise ValueError("mask must be >= 0 (0/1 sampling mask or weights), got negative values")
        m = m.astype(np.float32)
    if isinstance(lamda, bool) or not isinstance(lamda, Real) or not np.isfinite(lamda) or lamda <= 0:
        raise ValueError(f"lamda must be a finite number > 0, got {lamda!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, Integral) or max_iter < 1:
        raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")
    k = k.astype(np.complex64)
    if maps is None:
        width = _calibration_width(m, _DEFAULT_CALIB)
        if width < _MIN_CALIB:
            raise ValueError(
                f"mask has a fully sampled centre of only {width}x{width}; ESPIRiT needs >= {_MIN_CALIB}x{_MIN_CALIB}: "
                "pass maps or sample a larger centre"
            )
        s = estimate_coil_maps(k * (m != 0), calib_width=width)
    else:
        s = as_array("maps", maps)
        check_complex("maps", s, "[coils, y, x]")
        check_shape("maps", s, k.shape, "[coils, y, x]")
        check_finite("maps", s)
        s = s.astype(np.complex64)
    # Step size 1/L from the bound ||A^H A|| <= max(mask) * max_pixel sum_c |S_c|^2 (1 for normalised maps):
    # deterministic, and spares SigPy's power iteration, which draws from numpy's global random state.
    lipschitz = float(np.max(m) * np.max(np.sum(np.abs(s) ** 2, axis=0)))
    if lipschitz == 0:
        raise ValueError("mask and maps leave nothing measured (mask or maps all zeros)")
    app = sigpy.mri.app.L1WaveletRecon(k, s, float(lamda), weights=m, max_iter=int(max_iter), alpha=1.0 / lipschitz,
                                       show_pbar=False)
    image = np.asarray(app.run()).astype(np.complex64, copy=False)
    return np.where(np.any(s != 0, axis=0), image, 0).astype(np.complex64, copy=False)
