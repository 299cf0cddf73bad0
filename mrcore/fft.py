"""The one FFT convention of the project: centred, orthonormal, over the last two axes.

``fft2c(x) = fftshift(fft2(ifftshift(x), norm="ortho"))``, the convention of fastMRI's ``fftc`` and of
SigPy's ``sigpy.fft`` (``center=True, norm="ortho"``). Every other module calls these two functions;
the torch twins in :mod:`mrcore.torch_ops` implement the same convention. The transforms run in
``scipy.fft`` (single precision stays single precision; several times faster than ``numpy.fft``, which
computes in double precision).
"""

from __future__ import annotations

import numpy as np
import scipy.fft

_AXES = (-2, -1)


def fft2c(image: np.ndarray) -> np.ndarray:
    """Centred orthonormal 2-D FFT over the last two axes.

    Parameters
    ----------
    image : complex [..., y, x]
        Image(s); leading axes (coils, slices) are batch axes. Real input is promoted to complex.

    Returns
    -------
    complex64 [..., ky, kx] (complex128 if the input was double precision); DC at index ``(n // 2)``.
    """
    x = np.asarray(image)
    out = np.fft.fftshift(scipy.fft.fft2(np.fft.ifftshift(x, axes=_AXES), axes=_AXES, norm="ortho"), axes=_AXES)
    return out.astype(_complex_dtype(x), copy=False)


def ifft2c(kspace: np.ndarray) -> np.ndarray:
    """Centred orthonormal 2-D inverse FFT over the last two axes (the adjoint and inverse of :func:`fft2c`).

    Parameters
    ----------
    kspace : complex [..., ky, kx]

    Returns
    -------
    complex64 [..., y, x] (complex128 for double-precision input).
    """
    k = np.asarray(kspace)
    out = np.fft.fftshift(scipy.fft.ifft2(np.fft.ifftshift(k, axes=_AXES), axes=_AXES, norm="ortho"), axes=_AXES)
    return out.astype(_complex_dtype(k), copy=False)


def _complex_dtype(x: np.ndarray) -> type:
    return np.complex128 if x.dtype in (np.float64, np.complex128) else np.complex64
