"""Torch twins of :mod:`mrcore.fft` and :mod:`mrcore.sense` for training and ONNX export.

Complex tensors are REAL tensors with a trailing dimension of size 2 (real, imag) — fastMRI's
convention — because ONNX export cannot handle complex dtypes. Layouts:

* image ``[B, H, W, 2]``, coil images / k-space ``[B, C, H, W, 2]``, maps ``[B, C, H, W, 2]``;
* mask: real, broadcastable to ``[B, 1, H, W, 1]`` (e.g. ``[B, 1, H, W, 1]``, ``[1, 1, H, W, 1]`` or
  ``[B, 1, 1, W, 1]`` for line masks), 1 where sampled; ``None`` means fully sampled.

Two interchangeable FFT back-ends (``backend=``):

* ``"torch"``: ``torch.fft.fft2`` on ``torch.view_as_complex``; fftshift/ifftshift with ``narrow`` +
  ``torch.cat`` (exact for odd sizes). ``torch.export`` accepts it with dynamic H, W given as
  ``Dim.DYNAMIC``/``Dim.AUTO`` (the exported program then needs H, W >= 4); explicit ``Dim`` ranges are
  refused by the symbolic solver. Complex tensors do not export to ONNX: use ``"matmul"`` there.
* ``"matmul"``: the centred orthonormal DFT as real matrix products ``F_H @ X @ F_W`` with the centring
  folded into the matrices, ``F[k, n] = exp(-2 pi i (k - N//2)(n - N//2) / N) / sqrt(N)``, which is
  exactly ``fftshift . fft . ifftshift`` for odd and even ``N``. The matrices are built in the graph from the
  input's shape (``arange``, integer ``remainder``, ``cos``, ``sin``), so a graph exported with dynamic
  ``H``/``W`` builds them itself.

Both back-ends support autograd and agree with :func:`mrcore.fft.fft2c` to float32 precision (~1e-6
relative). The matmul back-end loses that precision if float32 matmuls are allowed to use TF32 on GPU
(``torch.set_float32_matmul_precision("high")``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from mrcore.validate import as_array, check_complex, check_finite

BACKENDS: tuple[str, ...] = ("torch", "matmul")


# --- checks and conversions -----------------------------------------------------------------------
def _check_complex_tensor(name: str, x: torch.Tensor, min_dim: int, layout: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor {layout}, got {type(x).__name__}")
    if x.is_complex() or not x.is_floating_point() or x.dim() < min_dim or x.shape[-1] != 2:
        raise ValueError(f"{name} must be a real floating tensor {layout} with a trailing (real, imag) "
                         f"dimension of 2, got {x.dtype} {tuple(x.shape)}")


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(map(repr, BACKENDS))}")


def to_complex_numpy(x: torch.Tensor) -> np.ndarray:
    """float [..., 2] tensor -> complex numpy ``[...]`` (complex128 for float64, else complex64)."""
    _check_complex_tensor("x", x, 1, "[..., 2]")
    t = x.detach().cpu()
    t = t if t.dtype == torch.float64 else t.float()
    arr = np.ascontiguousarray(t.numpy())
    return arr.view(np.complex128 if arr.dtype == np.float64 else np.complex64)[..., 0]


def from_complex_numpy(a: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Complex numpy ``[...]`` -> real tensor ``[..., 2]`` (real, imag) of ``dtype`` (float32 default)."""
    arr = as_array("a", a)
    check_complex("a", arr, "[...]")
    check_finite("a", arr)
    return torch.from_numpy(np.stack([arr.real, arr.imag], axis=-1)).to(dtype)


# --- complex arithmetic ---------------------------------------------------------------------------
def complex_mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise complex product of ``[..., 2]`` tensors (broadcasting over the leading dims)."""
    _check_complex_tensor("a", a, 1, "[..., 2]")
    _check_complex_tensor("b", b, 1, "[..., 2]")
    re = a[..., 0] * b[..., 0] - a[..., 1] * b[..., 1]
    im = a[..., 0] * b[..., 1] + a[..., 1] * b[..., 0]
    return torch.stack((re, im), dim=-1)


def complex_conj(a: torch.Tensor) -> torch.Tensor:
    """Complex conjugate of a ``[..., 2]`` tensor."""
    _check_complex_tensor("a", a, 1, "[..., 2]")
    return torch.stack((a[..., 0], -a[..., 1]), dim=-1)


def _safe_sqrt(v: torch.Tensor) -> torch.Tensor:
    """sqrt with a zero (not NaN) gradient at exact zeros."""
    positive = v > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, v, torch.ones_like(v))), torch.zeros_like(v))


def complex_abs(a: torch.Tensor) -> torch.Tensor:
    """Magnitude ``[...]`` of a ``[..., 2]`` tensor (gradient 0 at exact zeros)."""
    _check_complex_tensor("a", a, 1, "[..., 2]")
    return _safe_sqrt(a[..., 0] ** 2 + a[..., 1] ** 2)


def rss(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Root-sum-of-squares of complex coil images: ``[B, C, H, W, 2] -> [B, H, W]`` (over ``dim``).

    The twin of :func:`mrcore.sense.rss` on complex coil images; ``dim`` indexes the leading dims.
    """
    _check_complex_tensor("x", x, 2, "[B, C, H, W, 2]")
    if not -(x.dim() - 1) <= dim < x.dim() - 1:
        raise ValueError(f"dim must index a dimension before the trailing 2 of {tuple(x.shape)}, got {dim}")
    dim = dim % x.dim()
    return _safe_sqrt((x[..., 0] ** 2 + x[..., 1] ** 2).sum(dim=dim))


def rss_complex(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """fastMRI's name for :func:`rss` on ``[..., 2]`` tensors: ``sqrt(sum |x|^2)`` over ``dim``."""
    return rss(x, dim=dim)


# --- centring -------------------------------------------------------------------------------------
def _roll(x: torch.Tensor, dim: int, shift) -> torch.Tensor:
    """``out[i] = x[(i - shift) mod n]`` for ``0 <= shift <= n``, with narrow + cat (exports with dynamic n)."""
    n = x.shape[dim]
    return torch.cat((x.narrow(dim, n - shift, shift), x.narrow(dim, 0, n - shift)), dim=dim)


def fftshift(x: torch.Tensor, dims: tuple[int, ...] = (-3, -2)) -> torch.Tensor:
    """``numpy.fft.fftshift`` over ``dims`` (default H, W of a ``[..., H, W, 2]`` tensor)."""
    for d in dims:
        x = _roll(x, d, x.shape[d] // 2)
    return x


def ifftshift(x: torch.Tensor, dims: tuple[int, ...] = (-3, -2)) -> torch.Tensor:
    """``numpy.fft.ifftshift`` over ``dims`` (default H, W of a ``[..., H, W, 2]`` tensor)."""
    for d in dims:
        n = x.shape[d]
        x = _roll(x, d, n - n // 2)
    return x


# --- FFT back-ends ---------------------------------------------------------------------------------
def _fft_torch(x: torch.Tensor, inverse: bool) -> torch.Tensor:
    z = torch.view_as_complex(ifftshift(x).contiguous())
    z = torch.fft.ifft2(z, norm="ortho") if inverse else torch.fft.fft2(z, norm="ortho")
    return fftshift(torch.view_as_real(z))


def _centred_dft(n, like: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Real and imaginary parts of the centred orthonormal DFT matrix of size ``n`` (symmetric)."""
    # every shape-derived number is a tensor (not a Python/symbolic int), so the ONNX graph computes it
    arange = torch.arange(n, device=like.device, dtype=torch.int64)
    size = torch.ones_like(arange).sum()
    idx = arange - torch.div(size, 2, rounding_mode="floor")
    phase = torch.remainder(idx[:, None] * idx[None, :], size).to(like.dtype)  # exact integers in [0, n)
    size_f = size.to(like.dtype)
    angle = phase * (2 * math.pi) / size_f
    scale = torch.rsqrt(size_f)
    sign = 1.0 if inverse else -1.0
    return torch.cos(angle) * scale, torch.sin(angle) * (sign * scale)


def _rows_matmul(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``a @ x`` over the second-last axis: ``a [M, N]``, ``x [..., N, W]`` -> ``[..., M, W]``.

    One 2-D product on a transposed copy, never a broadcasting ``matmul``: inside an exported
    ``torch.cond`` branch the broadcasting form fails to convert to ONNX (``aten.sym_stride``).
    """
    n, w = x.shape[-2], x.shape[-1]
    m = a.shape[0]
    flat = x.reshape(-1, n, w).transpose(0, 1).reshape(n, -1)  # [N, rest * W]
    out = torch.matmul(a, flat).reshape(m, -1, w).transpose(0, 1)  # [rest, M, W]
    return out.reshape(*x.shape[:-2], m, w)


def _cols_matmul(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``x @ a`` over the last axis: ``x [B, ..., N]`` with ``a [N, M]``, or ``a [B, N, M]`` per batch entry."""
    n, m = x.shape[-1], a.shape[-1]
    if a.dim() == 2:
        return torch.matmul(x.reshape(-1, n), a).reshape(*x.shape[:-1], m)
    return torch.bmm(x.reshape(a.shape[0], -1, n), a).reshape(*x.shape[:-1], m)


Pair = tuple[torch.Tensor, torch.Tensor]


def _complex_rows(a: Pair, x: Pair) -> Pair:
    """``a @ x`` along the second-last axis of complex ``x`` (pairs of real tensors; three real products)."""
    t1, t2 = _rows_matmul(a[0], x[0]), _rows_matmul(a[1], x[1])
    t3 = _rows_matmul(a[0] + a[1], x[0] + x[1])
    return t1 - t2, t3 - t1 - t2


def _complex_cols(x: Pair, a: Pair) -> Pair:
    """``x @ a`` along the last axis of complex ``x`` (pairs of real tensors; three real products)."""
    t1, t2 = _cols_matmul(x[0], a[0]), _cols_matmul(x[1], a[1])
    t3 = _cols_matmul(x[0] + x[1], a[0] + a[1])
    return t1 - t2, t3 - t1 - t2


def dft2_pair(x: Pair, inverse: bool = False) -> Pair:
    """Centred orthonormal 2-D DFT of a complex ``(real, imag)`` pair of tensors ``[..., H, W]``.

    The same transform as :func:`fft2c` (``backend="matmul"``), on the layout that keeps real and imaginary
    parts in separate contiguous tensors (no strided ``[..., 2]`` slicing in an exported graph).
    """
    h = _centred_dft(x[0].shape[-2], x[0], inverse)
    w = _centred_dft(x[0].shape[-1], x[0], inverse)
    return _complex_cols(_complex_rows(h, x), w)  # F_H X F_W (F_W is symmetric)


def _band_idft_matrix(n, band: int, like: torch.Tensor) -> tuple[Pair, torch.Tensor]:
    """Columns of the centred orthonormal inverse DFT for the ``band`` central frequencies of an axis of ``n``.

    Returns ``((real, imag) [n, band], index [band])``: ``index`` is each column's k-space index (clamped into
    ``[0, n)``); columns whose frequency falls outside the axis (``n < band``) are zero.
    """
    arange = torch.arange(n, device=like.device, dtype=torch.int64)
    size = torch.ones_like(arange).sum()
    centre = torch.div(size, 2, rounding_mode="floor")
    k = torch.arange(band, device=like.device, dtype=torch.int64) - band // 2 + centre  # k-space indices
    valid = ((k >= 0) & (k < size)).to(like.dtype)
    freq = k - centre
    phase = torch.remainder((arange - centre)[:, None] * freq[None, :], size).to(like.dtype)
    angle = phase * (2 * math.pi) / size.to(like.dtype)
    scale = torch.rsqrt(size.to(like.dtype)) * valid
    return (torch.cos(angle) * scale, torch.sin(angle) * scale), torch.clamp(k, torch.zeros_like(size), size - 1)


def centre_band_idft2_pair(x: Pair, band: int = 64) -> Pair:
    """Inverse centred DFT of the central ``band x band`` block of k-space ``x`` ``[..., H, W]`` (pairs), exact.

    Equals ``dft2_pair(x * box, inverse=True)`` for the box of the ``band`` central frequencies along each axis
    (the whole axis where it is shorter), at a fraction of the cost: ``H band^2 + H band W`` products per image
    instead of ``H^2 W + H W^2``. Used for low-resolution coil images (coil maps).
    """
    (hr, hi), hk = _band_idft_matrix(x[0].shape[-2], band, x[0])
    (wr, wi), wk = _band_idft_matrix(x[0].shape[-1], band, x[0])
    sub = tuple(t.index_select(-2, hk).index_select(-1, wk) for t in x)  # [..., band, band]
    rows = _complex_rows((hr, hi), (sub[0], sub[1]))  # [..., H, band]: F_H^H[:, band] @ Y
    return _complex_cols(rows, (wr.transpose(0, 1), wi.transpose(0, 1)))  # @ F_W^H[band, :]


def _fft_matmul(x: torch.Tensor, inverse: bool) -> torch.Tensor:
    re, im = dft2_pair((x[..., 0], x[..., 1]), inverse)
    return torch.stack((re, im), dim=-1)


def fft2c(x: torch.Tensor, backend: str = "torch") -> torch.Tensor:
    """Centred orthonormal 2-D FFT over H, W of ``x``: float ``[..., H, W, 2]`` -> ``[..., H, W, 2]``.

    Same convention as :func:`mrcore.fft.fft2c` (DC at ``(H // 2, W // 2)``); ``backend`` is
    ``"torch"`` or ``"matmul"`` (ONNX-exportable with dynamic H, W).
    """
    _check_complex_tensor("x", x, 3, "[..., H, W, 2]")
    _check_backend(backend)
    return _fft_torch(x, False) if backend == "torch" else _fft_matmul(x, False)


def ifft2c(x: torch.Tensor, backend: str = "torch") -> torch.Tensor:
    """Centred orthonormal 2-D inverse FFT over H, W: float ``[..., H, W, 2]`` -> ``[..., H, W, 2]``."""
    _check_complex_tensor("x", x, 3, "[..., H, W, 2]")
    _check_backend(backend)
    return _fft_torch(x, True) if backend == "torch" else _fft_matmul(x, True)


# --- SENSE ----------------------------------------------------------------------------------------
def sense_expand(image: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """Coil images ``maps * image``: image ``[B, H, W, 2]``, maps ``[B, C, H, W, 2]`` -> ``[B, C, H, W, 2]``."""
    _check_complex_tensor("image", image, 4, "[B, H, W, 2]")
    _check_complex_tensor("maps", maps, 5, "[B, C, H, W, 2]")
    if image.dim() != 4 or maps.dim() != 5:
        raise ValueError(f"image must be [B, H, W, 2] and maps [B, C, H, W, 2], got {tuple(image.shape)} "
                         f"and {tuple(maps.shape)}")
    return complex_mul(image.unsqueeze(1), maps)


def sense_reduce(coil_images: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """Coil combination ``sum_c conj(maps_c) * coil_images_c``: ``[B, C, H, W, 2] -> [B, H, W, 2]``."""
    _check_complex_tensor("coil_images", coil_images, 5, "[B, C, H, W, 2]")
    _check_complex_tensor("maps", maps, 5, "[B, C, H, W, 2]")
    if coil_images.dim() != 5 or maps.dim() != 5:
        raise ValueError(f"coil_images and maps must be [B, C, H, W, 2], got {tuple(coil_images.shape)} "
                         f"and {tuple(maps.shape)}")
    return complex_mul(coil_images, complex_conj(maps)).sum(dim=1)


def _check_mask(mask: torch.Tensor | None) -> None:
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor) or mask.is_complex() or mask.dim() != 5 or mask.shape[1] != 1 \
            or mask.shape[-1] != 1:
        desc = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a real tensor broadcastable to [B, 1, H, W, 1], got {desc}")


def sense_forward(image: torch.Tensor, maps: torch.Tensor, mask: torch.Tensor | None = None,
                  backend: str = "torch") -> torch.Tensor:
    """Forward SENSE operator ``mask * fft2c(maps * image)``.

    Parameters
    ----------
    image : float [B, H, W, 2]
    maps : float [B, C, H, W, 2]
    mask : float, broadcastable to [B, 1, H, W, 1] (5-D, size 1 in the coil and last dims), or None
        1 where sampled; e.g. ``[B, 1, H, W, 1]`` or one mask for the batch ``[1, 1, H, W, 1]``.
    backend : "torch" or "matmul"

    Returns
    -------
    float [B, C, H, W, 2] k-space.
    """
    _check_mask(mask)
    k = fft2c(sense_expand(image, maps), backend=backend)
    return k if mask is None else k * mask


def sense_adjoint(kspace: torch.Tensor, maps: torch.Tensor, mask: torch.Tensor | None = None,
                  backend: str = "torch") -> torch.Tensor:
    """Adjoint SENSE operator ``sum_c conj(maps_c) * ifft2c(mask * kspace_c)``.

    Parameters
    ----------
    kspace : float [B, C, H, W, 2]
    maps : float [B, C, H, W, 2]
    mask : float broadcastable to [B, 1, H, W, 1], or None (as in :func:`sense_forward`)
    backend : "torch" or "matmul"

    Returns
    -------
    float [B, H, W, 2] image.
    """
    _check_complex_tensor("kspace", kspace, 5, "[B, C, H, W, 2]")
    _check_mask(mask)
    if mask is not None:
        kspace = kspace * mask
    return sense_reduce(ifft2c(kspace, backend=backend), maps)


# --- normal (Gram) operator A^H A of SENSE for line masks -------------------------------------------
def line_projector(profile: torch.Tensor) -> Pair:
    """``P = F^H diag(m) F`` for the centred orthonormal 1-D DFT ``F`` and a sampling profile ``m``.

    ``P`` is Hermitian and circulant: ``P[i, j] = q[(i - j) mod N]`` with
    ``q[d] = (1/N) sum_k m_k exp(2 pi i (k - N//2) d / N)``, so it is built from one matrix-vector product
    and a gather (no ``N^3`` work). Applied along the phase-encode axis of an image it is exactly
    ``ifft2c(M * fft2c(.))`` for a line mask ``M`` sampling the lines ``m`` (the read-out DFT pair cancels).

    Parameters
    ----------
    profile : float [B, N]
        Sampling profile along one axis, 1 where a line is sampled.

    Returns
    -------
    (real, imag) : float [B, N, N] each
    """
    if profile.dim() != 2:
        raise ValueError(f"profile must be [B, N], got {tuple(profile.shape)}")
    n = profile.shape[-1]
    arange = torch.arange(n, device=profile.device, dtype=torch.int64)
    size = torch.ones_like(arange).sum()
    k = arange - torch.div(size, 2, rounding_mode="floor")
    phase = torch.remainder(k[:, None] * arange[None, :], size).to(profile.dtype)  # [k, d], exact integers
    angle = phase * (2 * math.pi) / size.to(profile.dtype)
    inv_n = 1.0 / size.to(profile.dtype)
    q_re = torch.matmul(profile, torch.cos(angle)) * inv_n  # [B, d]
    q_im = torch.matmul(profile, torch.sin(angle)) * inv_n
    diff = torch.remainder(arange[:, None] - arange[None, :], size)  # [i, j] -> (i - j) mod N
    return q_re[:, diff], q_im[:, diff]


def expand_pair(image: Pair, maps: Pair) -> Pair:
    """Coil images ``S_c x``: image ``[B, H, W]`` pair, maps ``[B, C, H, W]`` pair -> ``[B, C, H, W]`` pair."""
    xr, xi = image[0].unsqueeze(1), image[1].unsqueeze(1)
    return maps[0] * xr - maps[1] * xi, maps[0] * xi + maps[1] * xr


def reduce_pair(coils: Pair, maps: Pair) -> Pair:
    """Coil combination ``sum_c conj(S_c) y_c``: ``[B, C, H, W]`` pairs -> ``[B, H, W]`` pair."""
    re = (maps[0] * coils[0] + maps[1] * coils[1]).sum(dim=1)
    im = (maps[0] * coils[1] - maps[1] * coils[0]).sum(dim=1)
    return re, im


def gram_lines_pair(image: Pair, maps: Pair, projector: Pair) -> Pair:
    """``A^H A x = sum_c conj(S_c) (S_c x) P^T`` for a line mask sampling columns (phase encoding along W).

    image : ``[B, H, W]`` pair; maps : ``[B, C, H, W]`` pair; projector : ``[B, W, W]`` pair from
    :func:`line_projector`. For a mask sampling rows, apply it to the transposed image and maps.
    """
    p_t = (projector[0], -projector[1])  # P^T = conj(P): P is Hermitian
    return reduce_pair(_complex_cols(expand_pair(image, maps), p_t), maps)


def gram_lines(image: torch.Tensor, maps: torch.Tensor, projector: Pair, axis: int) -> torch.Tensor:
    """``A^H A x`` for a Cartesian line mask, ``P`` from :func:`line_projector` (``[..., 2]`` layout).

    Parameters
    ----------
    image : float [B, H, W, 2]
    maps : float [B, C, H, W, 2]
    projector : (real, imag) float [B, N, N] with ``N = H`` for ``axis=-2`` (rows sampled), ``N = W`` for ``axis=-1``
    axis : -2 | -1  the phase-encode axis the mask samples

    Returns
    -------
    float [B, H, W, 2]; equals ``sense_adjoint(sense_forward(x, maps, M), maps, M)`` for the line mask ``M``.
    """
    if axis not in (-2, -1):
        raise ValueError(f"axis must be -2 or -1, got {axis!r}")
    x, s = (image[..., 0], image[..., 1]), (maps[..., 0], maps[..., 1])
    if axis == -2:
        x = (x[0].transpose(-1, -2), x[1].transpose(-1, -2))
        s = (s[0].transpose(-1, -2), s[1].transpose(-1, -2))
    re, im = gram_lines_pair(x, s, projector)
    if axis == -2:
        re, im = re.transpose(-1, -2), im.transpose(-1, -2)
    return torch.stack((re, im), dim=-1)
