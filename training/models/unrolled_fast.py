"""The v2 reconstruction generator: Lei et al.'s unrolled network made invariant to what a hospital's data
does not fix in advance (global scale, coil count, matrix size, phase-encode axis) and fast on a CPU.

Forward signature as every generator of :mod:`training.models.recon`::

    image = G(kspace, mask)
    kspace : float [B, C, H, W, 2]  undersampled multi-coil k-space (centred orthonormal FFT)
    mask   : float [B|1, 1, H|1, W|1, 1]  1 where sampled
    image  : float [B, H, W, 2]  complex image in the input's scale

What it does, in order:

1. **Scale.** ``s = ||y_calib|| / sqrt(H W)``, the RMS of the low-resolution image that the fully sampled
   calibration (ACS) block alone gives (Parseval). The network runs on ``y / s`` and multiplies its output by
   ``s``; nothing inside depends on the absolute scale, so ``G(a k) = a G(k)`` for any ``a > 0`` up to
   float rounding.
2. **Coil maps without learning.** ``S_c = x_c / sqrt(sum_c |x_c|^2 + eps)`` with ``x_c`` the coil images of
   the calibration block, at most :data:`MAPS_BAND` central frequencies per axis (the classic low-resolution
   estimate that ESPIRiT refines). There is no coil-map network: v1's learned one was what broke on real
   scanners' coils and cost most of its time.
3. **Unrolled cascades** (Lei et al.): ``x <- x - mu_k (A^H A x - A^H y)``, then ``x <- x + CNN_k(x)`` with a
   small U-Net per cascade whose input is scaled by its own RMS.
4. **Exact, cheap data consistency.** For Cartesian line masks (the mask constant along one axis, as in every
   2-D Cartesian acquisition) the read-out DFT pair of ``A^H A`` cancels: ``A^H A x = sum_c conj(S_c)
   (S_c x) P^T`` with the projector ``P = F^H diag(m) F`` along the phase-encode axis
   (:func:`mrcore.torch_ops.gram_lines_pair`), a quarter of the work of the 2-D DFT pair. Masks sampling rows
   run on the transposed image; other masks (2-D Poisson) take the general path. An exported graph holds the
   three paths behind ONNX ``If`` nodes (``torch.cond``).

Any coil count works (maps and data consistency are per coil; the U-Nets see the coil-combined image); the
serving client compresses many coils to a few virtual coils first (:func:`mrcore.coils.compress_coils`).
Inside, complex tensors are ``(real, imag)`` pairs of contiguous real tensors (no strided ``[..., 2]``
slicing in the exported graph).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mrcore import torch_ops as ops
from mrcore.torch_ops import Pair

from .recon import StepSize
from .sensitivity import calibration_mask

#: Coil maps come from at most this many central k-space frequencies along each axis (the calibration lines
#: along the phase-encode axis, a low-pass of the read-out): smooth maps at a fraction of a full inverse DFT.
MAPS_BAND = 48


def _branch(pred: torch.Tensor, true_fn, false_fn, operands: tuple):
    """``true_fn(*operands)`` if ``pred`` else ``false_fn(*operands)``; an ONNX ``If`` when exporting."""
    if torch.compiler.is_exporting():
        return torch.cond(pred, true_fn, false_fn, operands)
    return true_fn(*operands) if bool(pred) else false_fn(*operands)


def line_profiles(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which kind of mask ``mask [B, H, W]`` is, and its line profiles.

    Returns
    -------
    rows : bool scalar tensor   True when every mask is constant along W (rows = ky lines sampled)
    cols : bool scalar tensor   True when every mask is constant along H (columns sampled)
    row_profile : float [B, H]  the sampled rows (max over W)
    col_profile : float [B, W]  the sampled columns (max over H)
    """
    row_profile, col_profile = mask.amax(dim=2), mask.amax(dim=1)
    rows = (mask.amin(dim=2) == row_profile).all()
    cols = (mask.amin(dim=1) == col_profile).all()
    return rows, cols, row_profile, col_profile


def lowres_maps(coil_images: Pair, eps: float = 1e-6) -> Pair:
    """Normalised coil maps ``x_c / sqrt(sum_c |x_c|^2 + eps * mean power)`` of low-resolution coil images.

    coil_images : ``[B, C, H, W]`` pair. Returns a ``[B, C, H, W]`` pair with ``sum_c |S_c|^2 ~ 1`` wherever
    the object has signal (the floor keeps the background finite).
    """
    power = (coil_images[0].pow(2) + coil_images[1].pow(2)).sum(dim=1, keepdim=True)  # [B, 1, H, W]
    inv = torch.rsqrt(power + power.mean(dim=(2, 3), keepdim=True) * eps)
    return coil_images[0] * inv, coil_images[1] * inv


def _transpose(p: Pair) -> Pair:
    """Swap the last two axes of a pair (a contiguous copy: cond branches must return the same layout)."""
    return p[0].transpose(-1, -2).contiguous(), p[1].transpose(-1, -2).contiguous()


class LeanUNet(nn.Module):
    """A U-Net for ``[B, 2, H, W] -> [B, 2, H, W]`` (any H, W), lean on full-resolution work.

    Levels of ``chans * 2**level`` channels, two 3x3 convolutions each with LeakyReLU; 2x2 average pooling
    (odd sizes padded by one replicated row/column, as :class:`~training.models.blocks.UNet`); nearest-neighbour
    upsampling to the skip connection's exact size, concatenation, and two convolutions on the way up; a 1x1
    output convolution. No normalisation layers (the input is RMS-scaled by :class:`CascadeCNN`).
    """

    def __init__(self, chans: int = 8, num_pools: int = 2, negative_slope: float = 0.1) -> None:
        super().__init__()
        act = nn.LeakyReLU(negative_slope)

        def block(cin: int, cmid: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cmid, 3, padding=1), act, nn.Conv2d(cmid, cout, 3, padding=1), act)

        widths = [chans * 2**level for level in range(num_pools + 1)]
        self.down = nn.ModuleList([block(2, widths[0], widths[0])])
        self.down.extend(block(widths[i - 1], widths[i], widths[i]) for i in range(1, num_pools))
        bottom = widths[num_pools]
        self.bottom = block(widths[num_pools - 1], bottom, widths[num_pools - 1]) if num_pools else None
        self.up = nn.ModuleList(
            block(2 * widths[i], widths[i], widths[i - 1] if i else widths[0]) for i in reversed(range(num_pools))
        )
        self.out = nn.Conv2d(widths[0], 2, 1)

    @staticmethod
    def _pool(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        return F.avg_pool2d(F.pad(x, [0, w % 2, 0, h % 2], mode="replicate"), 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self._pool(x))
            skips.append(x)
        if self.bottom is not None:
            x = self.bottom(self._pool(x))
        for block in self.up:
            skip = skips.pop()
            x = block(torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="nearest"), skip], dim=1))
        return self.out(x)


class CascadeCNN(nn.Module):
    """``x + s * UNet(x / s)`` on a complex image ``(real, imag)`` pair ``[B, H, W]``, ``s`` its per-sample RMS."""

    def __init__(self, chans: int, num_pools: int) -> None:
        super().__init__()
        self.unet = LeanUNet(chans, num_pools)

    def forward(self, x: Pair) -> Pair:
        stacked = torch.stack(x, dim=1)  # [B, 2, H, W]
        scale = torch.sqrt(stacked.pow(2).mean(dim=(1, 2, 3), keepdim=True) + 1e-12)
        out = stacked + self.unet(stacked / scale) * scale
        return out[:, 0].clone(), out[:, 1].clone()  # separate tensors: torch.cond refuses aliasing operands


class FastUnrolledGenerator(nn.Module):
    """Unrolled reconstruction with calibration scaling, low-resolution coil maps and line-mask data consistency.

    Parameters
    ----------
    num_cascades : int
        Unrolled iterations (soft DC gradient step + U-Net each).
    chans : int
        Channels of each U-Net's first level (doubling per level).
    num_pools : int
        Down-sampling levels of each U-Net.
    mu_init : float
        Initial data-consistency step of every cascade.
    fft_backend : 'torch' | 'matmul'
        Kept for the generator interface: the v2 graph always uses in-graph DFT matrices (ONNX-exportable).
    """

    estimate_maps = True  # maps come from the calibration block inside the graph (the serving contract)

    def __init__(self, num_cascades: int = 6, chans: int = 8, num_pools: int = 2, mu_init: float = 1.0,
                 fft_backend: str = "matmul") -> None:
        super().__init__()
        if fft_backend not in ops.BACKENDS:
            raise ValueError(f"unknown fft_backend {fft_backend!r}; expected one of {ops.BACKENDS}")
        self.fft_backend = fft_backend
        self.steps = nn.ModuleList([StepSize(mu_init) for _ in range(num_cascades)])
        self.cnns = nn.ModuleList([CascadeCNN(chans, num_pools) for _ in range(num_cascades)])

    @property
    def mus(self) -> list[nn.Parameter]:
        return [s.mu for s in self.steps]

    def forward(self, kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W, 2]`` k-space -> ``[B, H, W, 2]`` complex image in the input's scale."""
        b, _, h, w, _ = kspace.shape
        m = mask[:, 0, :, :, 0] * torch.ones_like(kspace[:, 0, :, :, 0])  # [B, H, W]
        calib = calibration_mask(m[:, None, :, :, None])[:, :, :, :, 0]  # [B, 1, H, W]
        y = (kspace[..., 0] * m[:, None], kspace[..., 1] * m[:, None])  # [B, C, H, W]
        energy = ((y[0].pow(2) + y[1].pow(2)) * calib).flatten(1).sum(dim=1)
        scale = torch.sqrt(energy / (h * w))
        scale = torch.where(scale > 0, scale, torch.ones_like(scale)).reshape(b, 1, 1)
        y = (y[0] / scale[:, None], y[1] / scale[:, None])
        maps = lowres_maps(ops.centre_band_idft2_pair((y[0] * calib, y[1] * calib), MAPS_BAND))
        x0 = ops.reduce_pair(ops.dft2_pair(y, inverse=True), maps)
        rows, cols, row_profile, col_profile = line_profiles(m)
        maps_t = _transpose(maps)
        p_rows, p_cols = ops.line_projector(row_profile), ops.line_projector(col_profile)
        operands = (m, *maps, *maps_t, *p_rows, *p_cols, cols)
        x = x0
        for step, cnn in zip(self.steps, self.cnns):
            gram = _branch(rows, _gram_rows, _gram_not_rows, (*x, *operands))
            x = cnn((x[0] - step(gram[0] - x0[0]), x[1] - step(gram[1] - x0[1])))
        return torch.stack(x, dim=-1) * scale[..., None]


# -- A^H A by mask kind (pairs [B, H, W]; maps [B, C, H, W]); an exported graph holds all three --------
def _gram_rows(xr, xi, m, sr, si, tr, ti, prr, pri, pcr, pci, cols):
    return _transpose(ops.gram_lines_pair(_transpose((xr, xi)), (tr, ti), (prr, pri)))


def _gram_cols(xr, xi, m, sr, si, tr, ti, prr, pri, pcr, pci, cols):
    return ops.gram_lines_pair((xr, xi), (sr, si), (pcr, pci))


def _gram_general(xr, xi, m, sr, si, tr, ti, prr, pri, pcr, pci, cols):
    k = ops.dft2_pair(ops.expand_pair((xr, xi), (sr, si)))
    mc = m[:, None]
    return ops.reduce_pair(ops.dft2_pair((k[0] * mc, k[1] * mc), inverse=True), (sr, si))


def _gram_not_rows(*args):
    return _branch(args[-1], _gram_cols, _gram_general, args)
