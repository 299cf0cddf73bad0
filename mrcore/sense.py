"""The SENSE model ``A = M F S`` in numpy, and the simple reconstructions built on it.

``S`` multiplies the image by each coil map, ``F`` is :func:`mrcore.fft.fft2c` per coil and ``M`` is a real
``[ky, kx]`` sampling mask applied identically to every coil (``None`` means fully sampled). Shapes are
compared exactly: a mask must have the k-space's ``[ky, kx]`` shape.
"""

from __future__ import annotations

import numpy as np

from mrcore.fft import fft2c, ifft2c
from mrcore.validate import as_array, check_complex, check_finite, check_ndim, check_real, check_shape

_KSPACE = "[coils, ky, kx]"
_MAPS = "[coils, y, x]"


def _complex(name: str, value, ndim, layout: str) -> np.ndarray:
    arr = as_array(name, value)
    check_complex(name, arr, layout)
    check_ndim(name, arr, ndim, layout)
    check_finite(name, arr)
    return arr


def _mask(mask, shape: tuple[int, ...]) -> np.ndarray | None:
    if mask is None:
        return None
    m = as_array("mask", mask)
    check_real("mask", m, "[ky, kx]")
    check_shape("mask", m, shape, "[ky, kx]")
    check_finite("mask", m)
    return m.astype(np.float32, copy=False)


def _maps_like(maps, coils_and_shape: tuple[int, ...]) -> np.ndarray:
    s = _complex("maps", maps, 3, _MAPS)
    check_shape("maps", s, coils_and_shape, _MAPS)
    return s


def sense_forward(image: np.ndarray, maps: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Forward SENSE operator ``mask * fft2c(maps * image)``.

    Parameters
    ----------
    image : complex [y, x]
    maps : complex [coils, y, x]
        Coil sensitivities.
    mask : real [ky, kx] or None
        Sampling mask (same shape as ``image``); ``None`` for fully sampled.

    Returns
    -------
    complex64 [coils, ky, kx]
    """
    x = _complex("image", image, 2, "[y, x]")
    s = _complex("maps", maps, 3, _MAPS)
    check_shape("maps", s, (s.shape[0],) + x.shape, _MAPS)
    m = _mask(mask, x.shape)
    k = fft2c(s * x[None])
    if m is not None:
        k = k * m
    return k.astype(np.complex64, copy=False)


def sense_adjoint(kspace: np.ndarray, maps: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Adjoint SENSE operator ``sum_c conj(maps_c) * ifft2c(mask * kspace_c)``.

    Parameters
    ----------
    kspace : complex [coils, ky, kx]
    maps : complex [coils, y, x], same shape as ``kspace``
    mask : real [ky, kx] or None

    Returns
    -------
    complex64 [y, x]
    """
    k = _complex("kspace", kspace, 3, _KSPACE)
    s = _maps_like(maps, k.shape)
    m = _mask(mask, k.shape[1:])
    if m is not None:
        k = k * m
    return np.sum(np.conj(s) * ifft2c(k), axis=0).astype(np.complex64, copy=False)


def rss(coil_images: np.ndarray, axis: int = 0) -> np.ndarray:
    """Root-sum-of-squares ``sqrt(sum |x|^2)`` over the coil axis.

    Parameters
    ----------
    coil_images : complex or real [coils, y, x] (or [slices, coils, y, x] with ``axis=1``)
    axis : int
        The coil axis.

    Returns
    -------
    float32, the input shape without ``axis``.
    """
    x = as_array("coil_images", coil_images)
    if not (np.iscomplexobj(x) or np.issubdtype(x.dtype, np.number)) or x.dtype == bool:
        raise ValueError(f"coil_images must be numeric [coils, y, x], got {x.dtype} {tuple(x.shape)}")
    check_ndim("coil_images", x, (3, 4), "[coils, y, x]")
    check_finite("coil_images", x)
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis must be an int in [{-x.ndim}, {x.ndim}), got {axis!r}")
    return np.sqrt(np.sum(np.abs(x) ** 2, axis=axis)).astype(np.float32, copy=False)


def zero_filled(kspace: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Zero-filled reconstruction: RSS over coils of ``ifft2c(mask * kspace)``.

    Parameters
    ----------
    kspace : complex [coils, ky, kx] or [ky, kx] (single coil)
    mask : real [ky, kx] or None

    Returns
    -------
    float32 [y, x]
    """
    k = _complex("kspace", kspace, (2, 3), _KSPACE)
    m = _mask(mask, k.shape[-2:])
    if m is not None:
        k = k * m
    images = ifft2c(k)
    if images.ndim == 2:
        return np.abs(images).astype(np.float32, copy=False)
    return rss(images, axis=0)


def coil_combine(kspace: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """SENSE-weighted (per-pixel least-squares) combination of fully sampled coil data.

    ``x = sum_c conj(S_c) y_c / sum_c |S_c|^2`` with ``y_c = ifft2c(kspace_c)``; 0 where all maps are 0
    (e.g. outside an ESPIRiT-cropped support). With maps normalised to ``sum_c |S_c|^2 == 1`` this is
    :func:`sense_adjoint` without mask.

    Parameters
    ----------
    kspace : complex [coils, ky, kx]
    maps : complex [coils, y, x], same shape

    Returns
    -------
    complex64 [y, x]
    """
    k = _complex("kspace", kspace, 3, _KSPACE)
    s = _maps_like(maps, k.shape)
    numerator = np.sum(np.conj(s) * ifft2c(k), axis=0)
    weight = np.sum(np.abs(s) ** 2, axis=0)
    safe = np.where(weight > 0, weight, 1)
    return np.where(weight > 0, numerator / safe, 0).astype(np.complex64, copy=False)
