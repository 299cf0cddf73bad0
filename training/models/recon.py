"""Reconstruction generators of Lei et al., "Wasserstein GANs for MR imaging: from paired to unpaired
training" (IEEE TMI 2021), plus a U-Net baseline.

All generators share one forward signature::

    image = G(kspace, mask, maps=None)

    kspace : float [B, C, H, W, 2]   measured (masked) multi-coil k-space, centred orthonormal FFT
    mask   : float [B|1, 1, H|1, W|1, 1]   1 where sampled
    maps   : float [B, C, H, W, 2] or None  coil sensitivities, sum_c |S_c|^2 = 1;
             None -> estimated by the built-in :class:`SensitivityNet` (``estimate_maps=True``)
    image  : float [B, H, W, 2]       complex image (real, imag); :func:`magnitude` gives [B, H, W]

Single-coil data is ``C = 1`` with maps of ones (with ``estimate_maps=False`` and ``maps=None`` the
generators use ones when ``C == 1``).

Every model is ONNX-exportable with ``torch.onnx.export(..., dynamo=True)`` with batch, coils, H and W
dynamic when built with ``fft_backend="matmul"``: no complex dtypes, no control flow on tensor values,
no BatchNorm (Opacus/DP-SGD safe), and the U-Nets pool odd sizes with a one-pixel replicate pad and
upsample to their skip connection's exact size, so odd and non-square sizes work. Declare the spatial
dims with a lower bound, e.g. ``Dim("height", min=16)``: then ``torch.export`` can prove that every
pooled size is >= 2 and records no 0/1-specialisation guards (without it, plain ``torch.export.export``
fails with "Constraints violated"; ``torch.onnx.export`` still succeeds by deferring them to runtime
asserts). Tested: batch 1-3, coils 1-8, 17x20 to 64x48, ORT vs PyTorch within ~1e-5.

Intensity scaling: the CNNs see the image divided by a per-sample RMS of the zero-filled image
(``normalize=True``) and their output is multiplied back, so the models are equivariant to the
(arbitrary, site-dependent) k-space scale.
"""

from __future__ import annotations

import torch
from torch import nn

from mrcore import torch_ops as ops

from .blocks import ResidualBlock, UNet, channels_to_complex, complex_to_channels
from .sensitivity import SensitivityNet


def magnitude(image: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Magnitude of a complex image ``[B, H, W, 2] -> [B, H, W]`` (any ``[..., 2]``).

    ``eps = 0``: exact, with a zero (not NaN) gradient at exact zeros (:func:`mrcore.torch_ops.complex_abs`);
    ``eps > 0``: ``sqrt(re^2 + im^2 + eps)``.
    """
    if eps == 0.0:
        return ops.complex_abs(image)
    return torch.sqrt(image.pow(2).sum(dim=-1) + eps)


def num_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _rms(x: torch.Tensor) -> torch.Tensor:
    """Per-sample RMS of ``[B, ...]`` -> ``[B, 1, 1, 1]`` (floored to avoid division by zero)."""
    return torch.sqrt(x.pow(2).flatten(1).mean(dim=1) + 1e-20).reshape(-1, 1, 1, 1)


class ResidualCNN(nn.Module):
    """Image-domain regulariser: ``conv3x3(2->chans) -> ReLU -> ResidualBlock x n -> conv3x3(chans->2)``.

    ``forward`` maps ``[B, 2, H, W] -> [B, 2, H, W]`` (the correction; the caller adds the skip);
    ``forward_with_latent`` also returns the ``[B, chans, H, W]`` feature map after the residual blocks.
    """

    def __init__(self, chans: int = 32, num_res_blocks: int = 2, norm: str = "none") -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(2, chans, 3, padding=1), nn.ReLU())
        self.body = nn.Sequential(*[ResidualBlock(chans, norm=norm) for _ in range(num_res_blocks)])
        self.tail = nn.Conv2d(chans, 2, 3, padding=1)

    def forward_with_latent(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        latent = self.body(self.head(x))
        return self.tail(latent), latent

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_latent(x)[0]


class StepSize(nn.Module):
    """Learnable scalar step ``mu`` (a 1-element ``nn.Parameter``): ``forward(g) = mu * g``.

    Kept as its own module so that Opacus computes its per-sample gradient like any other layer.
    """

    def __init__(self, mu_init: float = 0.5) -> None:
        super().__init__()
        self.mu = nn.Parameter(torch.full((1,), float(mu_init)))

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        return self.mu * g


class Cascade(nn.Module):
    """One unrolled iteration: soft data-consistency gradient step, then a residual CNN.

    ``x <- x - mu * (A^H A x - A^H y)``; ``x <- x + s * cnn(x / s)`` (``s`` the per-sample scale).
    """

    def __init__(self, chans: int, num_res_blocks: int, mu_init: float, norm: str) -> None:
        super().__init__()
        self.step = StepSize(mu_init)
        self.cnn = ResidualCNN(chans, num_res_blocks, norm)

    def forward(
        self,
        x: torch.Tensor,
        x0: torch.Tensor,
        maps: torch.Tensor,
        mask: torch.Tensor,
        scale: torch.Tensor,
        fft_backend: str,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ahax = ops.sense_adjoint(ops.sense_forward(x, maps, mask, backend=fft_backend), maps, mask, backend=fft_backend)
        x = x - self.step(ahax - x0)
        corr, latent = self.cnn.forward_with_latent(complex_to_channels(x) / scale)
        return x + channels_to_complex(corr * scale), latent


class _ReconBase(nn.Module):
    """Shared plumbing: coil maps (given, estimated, or ones for single coil) and the zero-filled image."""

    def __init__(self, estimate_maps: bool, sens_chans: int, sens_pools: int, fft_backend: str, normalize: bool) -> None:
        super().__init__()
        if fft_backend not in ("torch", "matmul"):
            raise ValueError(f"unknown fft_backend {fft_backend!r}; expected 'torch' or 'matmul'")
        self.fft_backend = fft_backend
        self.normalize = normalize
        self.sens_net = (
            SensitivityNet(chans=sens_chans, num_pools=sens_pools, fft_backend=fft_backend) if estimate_maps else None
        )

    @property
    def estimate_maps(self) -> bool:
        return self.sens_net is not None

    def resolve_maps(self, kspace: torch.Tensor, mask: torch.Tensor, maps: torch.Tensor | None) -> torch.Tensor:
        """Given maps, else estimated maps, else ones for single-coil data: float [B, C, H, W, 2]."""
        if maps is not None:
            return maps
        if self.sens_net is not None:
            return self.sens_net(kspace, mask)
        if kspace.shape[1] != 1:
            raise ValueError(
                f"{type(self).__name__}(estimate_maps=False) needs coil maps for multi-coil k-space "
                f"(got {kspace.shape[1]} coils and maps=None)"
            )
        ones = torch.ones_like(kspace[..., :1])
        return torch.cat([ones, torch.zeros_like(ones)], dim=-1)

    def zero_filled(self, kspace: torch.Tensor, mask: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        """``A^H y = sum_c conj(S_c) F^-1{M y_c}``: float [B, H, W, 2]."""
        return ops.sense_adjoint(kspace, maps, mask, backend=self.fft_backend)

    def _scale(self, x0: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            return _rms(x0)
        return torch.ones_like(x0[:, :1, :1, 0]).reshape(-1, 1, 1, 1)


class UnrolledGenerator(_ReconBase):
    """Lei et al.'s unrolled generator: ``num_cascades`` x (soft DC gradient step + residual CNN).

    ``x_0 = A^H y``; for k = 1..K: ``x <- x - mu_k (A^H A x - A^H y)``, ``x <- x + CNN_k(x)`` with
    ``A = M F S`` (mask, centred FFT, coil maps) and one learnable ``mu_k`` per cascade
    (``self.cascades[k].step.mu``; see :attr:`mus`). ``CNN_k`` is :class:`ResidualCNN` with
    ``num_res_blocks`` residual blocks of ``chans`` channels.

    Latent features (for FL-MRCM's :class:`~training.models.domain.DomainIdentifier`): the
    ``[B, chans, H, W]`` feature map after the residual blocks of the **last** cascade, returned by
    ``forward(..., return_latent=True)`` or :meth:`features`. With ``num_cascades=0`` there is none.

    Parameters
    ----------
    num_cascades, chans, num_res_blocks, mu_init : see above.
    estimate_maps : bool
        Build a :class:`SensitivityNet` (used whenever ``maps`` is not passed to ``forward``).
    sens_chans, sens_pools : int
        Size of the sensitivity U-Net.
    norm : 'none' | 'instance' | 'group'
        Normalisation inside the residual blocks.
    normalize : bool
        Per-sample intensity normalisation around the CNNs (see module docstring).
    fft_backend : 'torch' | 'matmul'
    """

    def __init__(
        self,
        num_cascades: int = 3,
        chans: int = 32,
        num_res_blocks: int = 2,
        mu_init: float = 0.5,
        estimate_maps: bool = True,
        sens_chans: int = 8,
        sens_pools: int = 2,
        norm: str = "none",
        normalize: bool = True,
        fft_backend: str = "torch",
    ) -> None:
        super().__init__(estimate_maps, sens_chans, sens_pools, fft_backend, normalize)
        self.cascades = nn.ModuleList([Cascade(chans, num_res_blocks, mu_init, norm) for _ in range(num_cascades)])

    @property
    def mus(self) -> list[nn.Parameter]:
        """The learnable step sizes ``mu_k``, one 1-element parameter per cascade."""
        return [c.step.mu for c in self.cascades]

    def forward(
        self,
        kspace: torch.Tensor,
        mask: torch.Tensor,
        maps: torch.Tensor | None = None,
        return_latent: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``[B, C, H, W, 2]`` k-space -> ``[B, H, W, 2]`` image (and ``[B, chans, H, W]`` latent)."""
        maps = self.resolve_maps(kspace, mask, maps)
        x0 = self.zero_filled(kspace, mask, maps)
        scale = self._scale(x0)
        x = x0
        latent = None
        for cascade in self.cascades:
            x, latent = cascade(x, x0, maps, mask, scale, self.fft_backend)
        if return_latent:
            if latent is None:
                raise ValueError("UnrolledGenerator with num_cascades=0 has no latent features")
            return x, latent
        return x

    def features(self, kspace: torch.Tensor, mask: torch.Tensor, maps: torch.Tensor | None = None) -> torch.Tensor:
        """Latent feature map ``[B, chans, H, W]`` of the last cascade (what the domain identifier aligns)."""
        return self.forward(kspace, mask, maps, return_latent=True)[1]


class PlainGenerator(_ReconBase):
    """Lei et al.'s 'plain' generator: a ResNet on the zero-filled image, then hard per-coil data consistency.

    ``x = x_0 + ResNet(x_0)`` (``num_res_blocks`` residual blocks, ``chans`` channels);
    coil images ``c_i = S_i x``; per coil ``k_i = M y_i + (1 - M) F{c_i}``; output
    ``sum_i conj(S_i) F^-1{k_i}`` (SENSE combination). :meth:`coil_images` returns the data-consistent
    coil images ``F^-1{k_i}`` themselves (``[B, C, H, W, 2]``); their k-space equals the measurement
    wherever ``mask == 1``.

    Latent features: the ``[B, chans, H, W]`` map after the residual blocks (``return_latent=True``).
    """

    def __init__(
        self,
        num_res_blocks: int = 5,
        chans: int = 32,
        estimate_maps: bool = True,
        sens_chans: int = 8,
        sens_pools: int = 2,
        norm: str = "none",
        normalize: bool = True,
        fft_backend: str = "torch",
    ) -> None:
        super().__init__(estimate_maps, sens_chans, sens_pools, fft_backend, normalize)
        self.cnn = ResidualCNN(chans, num_res_blocks, norm)

    def _dc_coils(
        self, kspace: torch.Tensor, mask: torch.Tensor, maps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x0 = self.zero_filled(kspace, mask, maps)
        scale = self._scale(x0)
        corr, latent = self.cnn.forward_with_latent(complex_to_channels(x0) / scale)
        x = x0 + channels_to_complex(corr * scale)
        k = ops.fft2c(ops.sense_expand(x, maps), backend=self.fft_backend)
        k = mask * kspace + (1.0 - mask) * k
        return ops.ifft2c(k, backend=self.fft_backend), latent

    def coil_images(self, kspace: torch.Tensor, mask: torch.Tensor, maps: torch.Tensor | None = None) -> torch.Tensor:
        """Data-consistent coil images ``[B, C, H, W, 2]``."""
        maps = self.resolve_maps(kspace, mask, maps)
        return self._dc_coils(kspace, mask, maps)[0]

    def forward(
        self,
        kspace: torch.Tensor,
        mask: torch.Tensor,
        maps: torch.Tensor | None = None,
        return_latent: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``[B, C, H, W, 2]`` k-space -> ``[B, H, W, 2]`` image (and ``[B, chans, H, W]`` latent)."""
        maps = self.resolve_maps(kspace, mask, maps)
        coils, latent = self._dc_coils(kspace, mask, maps)
        out = ops.sense_reduce(coils, maps)
        return (out, latent) if return_latent else out

    def features(self, kspace: torch.Tensor, mask: torch.Tensor, maps: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward(kspace, mask, maps, return_latent=True)[1]


class UNetGenerator(_ReconBase):
    """Baseline: a U-Net (residual, ``x_0 + UNet(x_0)``) on the zero-filled SENSE image, no data consistency.

    Defaults (``chans=8, num_pools=3``) give a parameter count close to the default
    :class:`UnrolledGenerator`. Any H, W (odd sizes handled inside :class:`~training.models.blocks.UNet`).
    Latent features: not exposed (``return_latent`` raises).
    """

    def __init__(
        self,
        chans: int = 8,
        num_pools: int = 3,
        estimate_maps: bool = True,
        sens_chans: int = 8,
        sens_pools: int = 2,
        norm: str = "instance",
        normalize: bool = True,
        fft_backend: str = "torch",
    ) -> None:
        super().__init__(estimate_maps, sens_chans, sens_pools, fft_backend, normalize)
        self.unet = UNet(2, 2, chans=chans, num_pools=num_pools, norm=norm)

    def forward(
        self,
        kspace: torch.Tensor,
        mask: torch.Tensor,
        maps: torch.Tensor | None = None,
        return_latent: bool = False,
    ) -> torch.Tensor:
        """``[B, C, H, W, 2]`` k-space -> ``[B, H, W, 2]`` image."""
        if return_latent:
            raise ValueError("UNetGenerator does not expose latent features; use UnrolledGenerator or PlainGenerator")
        maps = self.resolve_maps(kspace, mask, maps)
        x0 = self.zero_filled(kspace, mask, maps)
        scale = self._scale(x0)
        return x0 + channels_to_complex(self.unet(complex_to_channels(x0) / scale) * scale)
