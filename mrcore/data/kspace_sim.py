"""From an image to multi-coil k-space: smooth phase, limited resolution, coil encoding and thermal noise.

Generic over where the image came from (the embedded phantom, or real magnitude images read from
NIfTI). The FFT convention is :mod:`mrcore.fft` (centred, orthonormal), so white noise of standard
deviation ``sigma`` per real/imaginary part in k-space is white noise of the same ``sigma`` in the
image domain.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.fft

from mrcore.fft import fft2c
from mrcore.validate import (
    as_array,
    check_complex,
    check_finite,
    check_ndim,
    check_positive,
    check_real,
    check_shape,
)


def smooth_phase(
    shape: tuple[int, int],
    seed: int | Sequence[int] | np.random.SeedSequence,
    order: int = 2,
    max_rad: float = np.pi,
) -> np.ndarray:
    """Random smooth image phase: a 2-D polynomial of total degree ``order``.

    Coefficients are standard normal on coordinates normalised to ``[-1, 1]``. The polynomial is then
    scaled so that ``max |phase| == max_rad``. It stands in for B0 off-resonance, receive-chain and
    eddy-current phase, which vary slowly over the field of view.

    Parameters
    ----------
    shape : (ny, nx)
        Image size, pixels.
    seed : int, sequence of ints or numpy.random.SeedSequence
        Seed for :func:`numpy.random.default_rng`; the same seed gives the same phase.
    order : int
        Highest total polynomial degree (>= 0; 0 is a constant phase).
    max_rad : float
        Largest absolute phase, radians (>= 0).

    Returns
    -------
    float32 [y, x]
        Phase, radians.
    """
    ny, nx = _shape2("shape", shape)
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order < 0:
        raise ValueError(f"order must be an integer >= 0, got {order!r}")
    check_positive("max_rad", max_rad, strict=False)
    rng = np.random.default_rng(seed)
    y = np.linspace(-1.0, 1.0, ny)[:, None]
    x = np.linspace(-1.0, 1.0, nx)[None, :]
    phase = np.zeros((ny, nx))
    for i in range(order + 1):
        for j in range(order + 1 - i):
            phase += rng.standard_normal() * (y**i) * (x**j)
    peak = np.abs(phase).max()
    phase *= max_rad / peak if peak > 0 else 0.0
    return phase.astype(np.float32)


def simulate_kspace(
    image: np.ndarray, maps: np.ndarray, noise_sigma: float, rng: np.random.Generator
) -> np.ndarray:
    """Fully sampled multi-coil k-space of ``image``: ``fft2c(maps * image)`` plus white complex Gaussian noise.

    Parameters
    ----------
    image : complex or real [y, x]
        Object (complex image, or a real magnitude image for sources that hold only magnitudes).
    maps : complex64 [coils, y, x]
        Coil sensitivities (normalised so ``sum_c |S_c|^2 == 1``, see :mod:`mrcore.data.base`).
    noise_sigma : float
        Standard deviation of each of the real and imaginary parts of the noise added to every
        k-space sample of every coil (>= 0), in the units of ``image``. Coils are independent
        (identity noise covariance).
    rng : numpy.random.Generator
        Source of the noise (pass a seeded generator for reproducible output).

    Returns
    -------
    complex64 [coils, ky, kx]
    """
    img = as_array("image", image)
    check_ndim("image", img, 2, "[y, x]")
    check_finite("image", img)
    smaps = as_array("maps", maps)
    check_ndim("maps", smaps, 3, "[coils, y, x]")
    check_complex("maps", smaps, "[coils, y, x]")
    check_shape("maps", smaps, (smaps.shape[0], *img.shape), "[coils, y, x]")
    check_finite("maps", smaps)
    check_positive("noise_sigma", noise_sigma, strict=False)
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    coil_images = smaps.astype(np.complex64, copy=False) * img.astype(np.complex64, copy=False)
    kspace = fft2c(coil_images)
    if noise_sigma > 0:
        noise = rng.standard_normal((2, *kspace.shape), dtype=np.float32)
        kspace += np.float32(noise_sigma) * (noise[0] + 1j * noise[1])
    return kspace.astype(np.complex64, copy=False)


def truncate_resolution(image: np.ndarray, fraction: float) -> np.ndarray:
    """Keep only the central ``fraction`` of the k-space extent along each image axis (zero-filled).

    Models a site that acquires a smaller k-space extent (lower resolution) than the common
    reconstruction matrix: ``ifft2c(mask * fft2c(image))`` with the box
    ``|k_y| <= fraction * ny / 2`` and ``|k_x| <= fraction * nx / 2`` (in cycles per field of view),
    sharp-edged, so the result has the zero-filling ringing a real low-resolution scan shows.
    The box is symmetric, so a real image stays real.

    Parameters
    ----------
    image : real or complex [..., y, x]
        Image(s); leading axes are batch axes.
    fraction : float
        Acquired fraction of the k-space extent, in (0, 1]; 1 returns the image unchanged.

    Returns
    -------
    float32 [..., y, x] for real input, complex64 [..., y, x] for complex input.
    """
    img = as_array("image", image)
    check_ndim("image", img, tuple(range(2, 8)), "[..., y, x]")
    check_finite("image", img)
    if not (np.isfinite(fraction) and 0 < fraction <= 1):
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    is_complex = np.iscomplexobj(img)
    if not is_complex:
        check_real("image", img, "[..., y, x]")
    out_dtype = np.complex64 if is_complex else np.float32
    if fraction == 1:
        return img.astype(out_dtype, copy=True)
    ny, nx = img.shape[-2:]
    # Masking the centred spectrum equals masking the uncentred one at the same signed frequencies
    # (a circular shift commutes with the circular convolution that the mask is).
    keep_y = np.abs(np.fft.fftfreq(ny) * ny) <= fraction * ny / 2
    if is_complex:
        keep_x = np.abs(np.fft.fftfreq(nx) * nx) <= fraction * nx / 2
        spec = scipy.fft.fft2(img.astype(np.complex64, copy=False), axes=(-2, -1))
        spec *= (keep_y[:, None] & keep_x[None, :])
        return scipy.fft.ifft2(spec, axes=(-2, -1)).astype(np.complex64, copy=False)
    keep_x = np.abs(np.fft.rfftfreq(nx) * nx) <= fraction * nx / 2
    spec = scipy.fft.rfft2(img.astype(np.float32, copy=False), axes=(-2, -1))
    spec *= (keep_y[:, None] & keep_x[None, :])
    return scipy.fft.irfft2(spec, s=(ny, nx), axes=(-2, -1)).astype(np.float32, copy=False)


def _shape2(name: str, shape) -> tuple[int, int]:
    try:
        ny, nx = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be (ny, nx), got {shape!r}") from None
    if ny < 1 or nx < 1 or (ny, nx) != tuple(shape):
        raise ValueError(f"{name} must be two positive integers (ny, nx), got {shape!r}")
    return ny, nx
