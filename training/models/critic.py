"""The WGAN critic of Lei et al. (IEEE TMI 2021).

Seven 3x3 convolutions with LeakyReLU: the first four have stride 2 and ``features`` channels
(4, 8, 16, 32 by default, doubling), then two stride-1 convolutions at the last width, and a final
stride-1 convolution to one channel whose output is averaged over space to a scalar per sample.
No normalisation layers (batch norm would break the per-sample gradient penalty of WGAN-GP).
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import complex_to_channels


class WGANCritic(nn.Module):
    """``D: image -> [B]`` real-valued score (higher = more 'real').

    Parameters
    ----------
    in_channels : 1 or 2
        1: magnitude images, accepted as ``[B, H, W]`` or ``[B, 1, H, W]``;
        2: complex images, accepted as ``[B, H, W, 2]`` or ``[B, 2, H, W]``.
    features : tuple of int
        Channels of the strided layers (one stride-2 convolution each).
    leaky : float
        LeakyReLU negative slope.
    num_extra : int
        Stride-1 convolutions at the last width before the output convolution (2 gives 7 layers in all).
    """

    def __init__(
        self,
        in_channels: int = 1,
        features: tuple[int, ...] = (4, 8, 16, 32),
        leaky: float = 0.2,
        num_extra: int = 2,
    ) -> None:
        super().__init__()
        if in_channels not in (1, 2):
            raise ValueError(f"in_channels must be 1 (magnitude) or 2 (complex), got {in_channels}")
        self.in_channels = in_channels
        layers: list[nn.Module] = []
        ch = in_channels
        for f in features:
            layers += [nn.Conv2d(ch, f, 3, stride=2, padding=1), nn.LeakyReLU(leaky)]
            ch = f
        for _ in range(num_extra):
            layers += [nn.Conv2d(ch, ch, 3, stride=1, padding=1), nn.LeakyReLU(leaky)]
        layers.append(nn.Conv2d(ch, 1, 3, stride=1, padding=1))
        self.net = nn.Sequential(*layers)

    def _to_channels(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels == 1:
            if x.dim() == 3:
                return x.unsqueeze(1)
            if x.dim() == 4 and x.shape[1] == 1:
                return x
            raise ValueError(f"magnitude critic expects [B, H, W] or [B, 1, H, W], got {tuple(x.shape)}")
        if x.dim() == 4 and x.shape[-1] == 2:
            return complex_to_channels(x)
        if x.dim() == 4 and x.shape[1] == 2:
            return x
        raise ValueError(f"complex critic expects [B, H, W, 2] or [B, 2, H, W], got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image -> ``[B]`` critic values."""
        return self.net(self._to_channels(x)).mean(dim=(1, 2, 3))
