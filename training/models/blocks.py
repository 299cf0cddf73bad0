"""Small building blocks shared by the generators, the sensitivity network and the critics.

Layout conventions
------------------
* Complex tensors are real tensors with a trailing dimension of size 2 (real, imaginary):
  an image is ``[B, H, W, 2]``, multi-coil data ``[B, C, H, W, 2]``.
* Convolutions work on channel-first real tensors ``[B, 2, H, W]``; :func:`complex_to_channels` and
  :func:`channels_to_complex` convert between the two layouts (pure permutes, ONNX friendly).

No module here uses BatchNorm: DP-SGD (Opacus) rejects it and WGAN-GP critics must not use it.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

NORMS = ("none", "instance", "group")


def complex_to_channels(x: torch.Tensor) -> torch.Tensor:
    """``[B, H, W, 2]`` complex image -> ``[B, 2, H, W]`` (channel 0 real, channel 1 imaginary)."""
    return x.permute(0, 3, 1, 2).contiguous()


def channels_to_complex(x: torch.Tensor) -> torch.Tensor:
    """``[B, 2, H, W]`` -> ``[B, H, W, 2]`` complex image (inverse of :func:`complex_to_channels`)."""
    return x.permute(0, 2, 3, 1).contiguous()


def make_norm(norm: str, channels: int, groups: int = 8, spatial_dims: int = 2) -> nn.Module:
    """Normalisation layer by name: ``'none'`` (identity), ``'instance'`` (affine InstanceNorm2d/3d) or
    ``'group'`` (GroupNorm with ``gcd(groups, channels)`` groups). BatchNorm is deliberately not offered."""
    if norm == "none":
        return nn.Identity()
    if norm == "instance":
        return (nn.InstanceNorm2d if spatial_dims == 2 else nn.InstanceNorm3d)(channels, affine=True)
    if norm == "group":
        return nn.GroupNorm(math.gcd(groups, channels), channels)
    raise ValueError(f"unknown norm {norm!r}; expected one of {', '.join(NORMS)}")


class ResidualBlock(nn.Module):
    """``x + conv(act(norm(conv(x))))`` with 3x3 convolutions; shape preserving ``[B, C, H, W]``.

    Parameters
    ----------
    channels : int
    norm : 'none' | 'instance' | 'group'
        Normalisation after the first convolution.
    negative_slope : float
        LeakyReLU slope (0 gives ReLU).
    """

    def __init__(self, channels: int, norm: str = "none", negative_slope: float = 0.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm = make_norm(norm, channels)
        self.act = nn.LeakyReLU(negative_slope) if negative_slope else nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act(self.norm(self.conv1(x))))


def _conv(in_chans: int, out_chans: int, spatial_dims: int, bias: bool = True) -> nn.Module:
    """3x3 convolution, 'same' padding; for ``spatial_dims=3`` a (1, 3, 3) kernel (no mixing along depth)."""
    if spatial_dims == 2:
        return nn.Conv2d(in_chans, out_chans, 3, padding=1, bias=bias)
    return nn.Conv3d(in_chans, out_chans, (1, 3, 3), padding=(0, 1, 1), bias=bias)


class ConvBlock(nn.Module):
    """Two ``conv3x3 -> norm -> LeakyReLU`` layers (the U-Net stage of fastMRI, InstanceNorm by default)."""

    def __init__(
        self, in_chans: int, out_chans: int, norm: str = "instance", negative_slope: float = 0.2, spatial_dims: int = 2
    ) -> None:
        super().__init__()
        bias = norm == "none"
        self.layers = nn.Sequential(
            _conv(in_chans, out_chans, spatial_dims, bias),
            make_norm(norm, out_chans, spatial_dims=spatial_dims),
            nn.LeakyReLU(negative_slope),
            _conv(out_chans, out_chans, spatial_dims, bias),
            make_norm(norm, out_chans, spatial_dims=spatial_dims),
            nn.LeakyReLU(negative_slope),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class UpBlock(nn.Module):
    """Nearest-neighbour upsampling to a given size (the skip connection's), then ``conv3x3 -> norm -> LeakyReLU``.

    Used instead of a transposed convolution: no checkerboard artefacts, and Opacus has a native
    per-sample-gradient rule for plain convolutions (not for transposed ones).
    """

    def __init__(
        self, in_chans: int, out_chans: int, norm: str = "instance", negative_slope: float = 0.2, spatial_dims: int = 2
    ) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            _conv(in_chans, out_chans, spatial_dims, norm == "none"),
            make_norm(norm, out_chans, spatial_dims=spatial_dims),
            nn.LeakyReLU(negative_slope),
        )

    def forward(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return self.layers(F.interpolate(x, size=size, mode="nearest"))


class UNet(nn.Module):
    """A small U-Net for ``[B, in_chans, H, W] -> [B, out_chans, H, W]``, any H, W (odd, non-square).

    Any size works without a final crop: each downsampling step pads odd H/W by one replicated
    row/column and average-pools 2x2 (size ``ceil(n / 2)``), and each upsampling step resizes
    (nearest neighbour) to exactly the size of its skip connection, then convolves
    (:class:`UpBlock`). All sizes therefore derive from the input's own shape, so
    ``torch.export`` with dynamic H, W needs no guards (a pad-to-multiple-and-crop design produced
    unprovable guards such as ``4 * ((W + pad) // 4) == W`` that fail for odd W). Channels double per
    level.

    With ``spatial_dims=3`` the network takes ``[B, in_chans, D, H, W]`` and applies the same 2-D
    network to every slice along ``D`` (kernels ``(1, 3, 3)``, pooling ``(1, 2, 2)``) while keeping
    ``B`` as the only batch dimension: this is how :class:`~training.models.sensitivity.SensitivityNet`
    processes coils (``D = coils``) so that Opacus sees one sample per k-space, not one per coil.
    InstanceNorm3d then normalises over coils and space jointly.

    Parameters
    ----------
    in_chans, out_chans : int
    chans : int
        Channels of the first level.
    num_pools : int
        Number of down/up-sampling steps (0 gives a plain two-conv network).
    norm : 'none' | 'instance' | 'group'
    spatial_dims : 2 | 3
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        chans: int = 8,
        num_pools: int = 2,
        norm: str = "instance",
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
        self.num_pools = num_pools
        self.spatial_dims = spatial_dims
        kw = {"norm": norm, "spatial_dims": spatial_dims}
        self.down = nn.ModuleList([ConvBlock(in_chans, chans, **kw)])
        ch = chans
        for _ in range(num_pools):
            self.down.append(ConvBlock(ch, ch * 2, **kw))
            ch *= 2
        # after the loop ``ch`` is the bottom width; climb back up
        self.up = nn.ModuleList()
        self.up_conv = nn.ModuleList()
        for _ in range(num_pools):
            self.up.append(UpBlock(ch, ch // 2, **kw))
            self.up_conv.append(ConvBlock(ch, ch // 2, **kw))
            ch //= 2
        self.out = (nn.Conv2d if spatial_dims == 2 else nn.Conv3d)(ch, out_chans, 1)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        """2x2 average pooling of H, W after padding odd sizes by one replicated row/column."""
        h, w = x.shape[-2], x.shape[-1]
        if self.spatial_dims == 2:
            return F.avg_pool2d(F.pad(x, [0, w % 2, 0, h % 2], mode="replicate"), 2)
        return F.avg_pool3d(F.pad(x, [0, w % 2, 0, h % 2, 0, 0], mode="replicate"), (1, 2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        skips = []
        for i, block in enumerate(self.down):
            if i > 0:
                skips.append(y)
                y = self._pool(y)
            y = block(y)
        for up, up_conv in zip(self.up, self.up_conv):
            skip = skips.pop()
            y = up_conv(torch.cat([up(y, skip.shape[2:]), skip], dim=1))
        return self.out(y)
