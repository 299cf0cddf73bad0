"""Coil-sensitivity estimation inside the network (E2E-VarNet style), so inference never runs ESPIRiT.

:class:`SensitivityNet` follows fastMRI's ``SensitivityModel`` (Sriram et al., "End-to-end variational
networks for accelerated MRI reconstruction", MICCAI 2020): keep the calibration (auto-calibration
signal, ACS) region of the measured k-space, inverse FFT to low-resolution coil images, refine each coil
image with a small U-Net (2 channels real/imag; the same 2-D kernels applied to every coil), and divide
by the root-sum-of-squares over coils so that ``sum_c |S_c|^2 = 1``.

Unlike fastMRI, coils are NOT folded into the batch dimension: the U-Net runs on ``[B, 2, C, H, W]``
with ``(1, 3, 3)`` kernels (:class:`~training.models.blocks.UNet` with ``spatial_dims=3``), which
computes the same per-coil function but keeps one batch entry per k-space. Folding coils into the batch
makes Opacus compute "per-sample" gradients per coil (``B * C`` of them), which breaks DP-SGD's
per-example clipping.

Calibration region (no data-dependent Python control flow, ONNX/dynamic-shape safe)
--------------------------------------------------------------------------------------
By default (``num_low_frequencies=None``) the region is derived **in the graph** from the mask by
:func:`calibration_mask`: along the centre row (``ky = H // 2``) it keeps the contiguous run of sampled
columns that contains the centre column ``kx = W // 2``, along the centre column the contiguous run of
sampled rows that contains the centre row, and takes their outer product. For the usual Cartesian
line masks (constant along one axis) this is exactly the fully sampled block of centre lines, whichever
axis is the phase-encode direction; for 2-D masks with a centre calibration box it is that box. The
run is found with cumulative sums (``cumsum`` of the unsampled indicator, compared at the centre index),
i.e. tensor arithmetic only. If the centre line itself is not sampled the region is empty and the maps
degrade gracefully to ``net(0)`` normalised (no NaN).

The product is finally intersected with the mask itself (for 2-D Poisson-disc masks a sample next to
the box on the centre row/column could otherwise add unsampled corner points).

Alternatively ``num_low_frequencies=n`` uses a fixed band of ``n`` lines centred at ``n_axis // 2``
(``start = N // 2 - n // 2``, as :mod:`mrcore.masks` places its centre block) along ``calib_axis``:
-2 = ky rows (the default phase-encode axis of :mod:`mrcore.masks`), -1 = kx columns (fastMRI raw data),
independent of the mask.
"""

from __future__ import annotations

import torch
from torch import nn

from mrcore import torch_ops as ops

from .blocks import UNet


def _centre_onehot(n, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices ``0..n-1``, one-hot of ``n // 2``) as tensors of ``like``'s dtype.

    The centre index is computed as a tensor from ``arange(n)`` (not as a Python/symbolic int), so the
    exported graph derives it from the input shape and ``torch.export`` records no guards on it.
    """
    idx = torch.arange(n, device=like.device)
    size = torch.ones_like(idx).sum()
    onehot = (idx == torch.div(size, 2, rounding_mode="floor")).to(like.dtype)
    return idx.to(like.dtype), onehot


def _centre_run(profile: torch.Tensor) -> torch.Tensor:
    """Indicator of the contiguous run of ones containing the centre index ``N // 2``.

    Parameters
    ----------
    profile : float [B, N]
        1 where sampled, 0 where not.

    Returns
    -------
    float [B, N]: 1 inside the run (empty if the centre itself is 0), else 0.
    """
    idx, onehot = _centre_onehot(profile.shape[-1], profile)
    q = 1.0 - profile  # unsampled indicator
    u = torch.cumsum(q, dim=-1)  # u[j] = #unsampled in [0, j]
    u_c = (u * onehot).sum(dim=-1, keepdim=True)
    q_c = (q * onehot).sum(dim=-1, keepdim=True)
    c = (idx * onehot).sum()
    # number of unsampled entries between the centre and j, both inclusive
    right = u - u_c + q_c  # j >= c: sum q[c..j]
    left = u_c - u + q  # j <  c: sum q[j..c]
    count = torch.where(idx >= c, right, left)
    return (count < 0.5).to(profile.dtype)


def calibration_mask(mask: torch.Tensor, shape: torch.Size | tuple[int, ...] | None = None) -> torch.Tensor:
    """The fully sampled calibration block around the k-space centre, derived from ``mask`` in-graph.

    Parameters
    ----------
    mask : float [B|1, 1, H|1, W|1, 1]
        Sampling mask (1 sampled, 0 not), broadcastable to ``[B, 1, H, W, 1]``.
    shape : optional ``(B, C, H, W, 2)`` to broadcast a reduced mask to (the k-space shape).

    Returns
    -------
    float [B, 1, H, W, 1] with ones inside the calibration block.
    """
    if shape is not None:
        mask = mask.expand(shape[0], 1, shape[2], shape[3], 1)
    m = (mask[:, 0, :, :, 0] > 0.5).to(torch.float32)  # [B, H, W]
    _, row_onehot = _centre_onehot(m.shape[1], m)
    _, col_onehot = _centre_onehot(m.shape[2], m)
    row = (m * row_onehot[None, :, None]).sum(dim=1)  # [B, W]  centre row: sampled columns
    col = (m * col_onehot[None, None, :]).sum(dim=2)  # [B, H]  centre column: sampled rows
    acs = _centre_run(col)[:, :, None] * _centre_run(row)[:, None, :] * m  # [B, H, W]
    return acs[:, None, :, :, None].to(mask.dtype)


def fixed_band_mask(like: torch.Tensor, num_low_frequencies: int, axis: int = -2) -> torch.Tensor:
    """Band of ``num_low_frequencies`` centre lines of k-space ``like`` [B, C, H, W, 2].

    ``axis=-2``: rows ``H // 2 - n // 2 ...`` -> float [1, 1, H, 1, 1];
    ``axis=-1``: columns ``W // 2 - n // 2 ...`` -> float [1, 1, 1, W, 1].
    """
    if axis not in (-2, -1):
        raise ValueError(f"calib_axis must be -2 (ky rows) or -1 (kx columns), got {axis!r}")
    idx, onehot = _centre_onehot(like.shape[2] if axis == -2 else like.shape[3], like)
    start = (idx * onehot).sum() - num_low_frequencies // 2
    band = ((idx >= start) & (idx < start + num_low_frequencies)).to(like.dtype)
    if axis == -2:
        return band[None, None, :, None, None]
    return band[None, None, None, :, None]


class SensitivityNet(nn.Module):
    """Estimate normalised coil sensitivities from the calibration region of undersampled k-space.

    Parameters
    ----------
    chans : int
        Channels of the first U-Net level.
    num_pools : int
        U-Net down-sampling steps (any H, W; odd sizes are handled by :class:`~training.models.blocks.UNet`).
    num_low_frequencies : int or None
        ``None`` (default): calibration region derived from the mask in-graph (:func:`calibration_mask`).
        An int: fixed band of that many centre lines along ``calib_axis`` (see module docstring).
    calib_axis : -2 | -1
        Axis of the fixed band (ignored when ``num_low_frequencies`` is None).
    norm : 'instance' | 'group' | 'none'
    fft_backend : 'torch' | 'matmul'
        Passed to :func:`mrcore.torch_ops.ifft2c` ('matmul' for ONNX export).
    eps : float
        Added under the square root of the RSS normalisation (on data scaled to unit RMS).

    Forward
    -------
    kspace : float [B, C, H, W, 2]  masked multi-coil k-space
    mask : float [B|1, 1, H|1, W|1, 1]
    returns maps : float [B, C, H, W, 2] with ``sum_c |maps_c|^2 = 1`` (up to ``eps``).

    The U-Net refines each normalised low-resolution coil image residually
    (``x + unet(x)``), so even untrained the maps equal the classic low-resolution estimate
    ``x_c / RSS(x)``.
    """

    def __init__(
        self,
        chans: int = 8,
        num_pools: int = 2,
        num_low_frequencies: int | None = None,
        calib_axis: int = -2,
        norm: str = "instance",
        fft_backend: str = "torch",
        eps: float = 1e-10,
    ) -> None:
        super().__init__()
        if calib_axis not in (-2, -1):
            raise ValueError(f"calib_axis must be -2 (ky rows) or -1 (kx columns), got {calib_axis!r}")
        self.num_low_frequencies = num_low_frequencies
        self.calib_axis = calib_axis
        self.fft_backend = fft_backend
        self.eps = eps
        self.unet = UNet(2, 2, chans=chans, num_pools=num_pools, norm=norm, spatial_dims=3)

    def calibration_region(self, kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Float [B|1, 1, H|1, W|1, 1] indicator of the k-space region the maps are estimated from."""
        if self.num_low_frequencies is not None:
            return fixed_band_mask(kspace, self.num_low_frequencies, self.calib_axis)
        return calibration_mask(mask, kspace.shape)

    def forward(self, kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        acs = self.calibration_region(kspace, mask)
        x = ops.ifft2c(kspace * acs, backend=self.fft_backend)  # [B, C, H, W, 2] low-resolution coil images
        # per-coil RMS normalisation (scale-free input for the U-Net); relative coil scales restored after
        scale = torch.sqrt(x.pow(2).mean(dim=(2, 3, 4), keepdim=True) + 1e-20)  # [B, C, 1, 1, 1]
        xn = x / scale
        # coils stay a non-batch axis: [B, 2, C, H, W] through a (1, 3, 3)-kernel U-Net
        y = xn + self.unet(xn.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)
        common = torch.sqrt(scale.pow(2).mean(dim=1, keepdim=True))  # [B, 1, 1, 1, 1]
        y = y * (scale / common)
        norm = torch.sqrt(y.pow(2).sum(dim=(1, 4), keepdim=True) + self.eps)  # [B, 1, H, W, 1]
        return y / norm
