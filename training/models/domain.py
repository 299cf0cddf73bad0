"""Domain identifier for FL-MRCM (Guo et al., "Multi-institutional collaborations for improving deep
learning-based magnetic resonance image reconstruction using federated learning", CVPR 2021).

FL-MRCM aligns the latent features of the source sites with those of the target site adversarially: a
domain identifier ``D_dom`` is trained to tell which site a latent feature map came from, and the
generator is trained to fool it. The feature map aligned here is the one the generators return with
``return_latent=True``: for :class:`~training.models.recon.UnrolledGenerator` the ``[B, chans, H, W]``
output of the residual blocks of the last cascade, for :class:`~training.models.recon.PlainGenerator`
the output of its residual blocks.

For single-step adversarial training wrap the features with :func:`grad_reverse` (gradient reversal
layer, Ganin & Lempitsky 2015) instead of alternating updates.
"""

from __future__ import annotations

import torch
from torch import nn


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return -ctx.scale * grad, None


def grad_reverse(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Identity forward, gradient multiplied by ``-scale`` backward."""
    return _GradReverse.apply(x, scale)


class DomainIdentifier(nn.Module):
    """Small conv classifier: latent ``[B, in_channels, H, W]`` -> logits ``[B, num_domains]``.

    ``len(features)`` stride-2 3x3 convolutions with LeakyReLU (no BatchNorm: DP-SGD safe), global
    average pooling, and a linear layer. Train with ``nn.functional.cross_entropy(logits, site_index)``.
    """

    def __init__(
        self,
        in_channels: int,
        num_domains: int,
        features: tuple[int, ...] = (32, 64, 64),
        leaky: float = 0.2,
    ) -> None:
        super().__init__()
        if num_domains < 2:
            raise ValueError(f"num_domains must be >= 2, got {num_domains}")
        layers: list[nn.Module] = []
        ch = in_channels
        for f in features:
            layers += [nn.Conv2d(ch, f, 3, stride=2, padding=1), nn.LeakyReLU(leaky)]
            ch = f
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(ch, num_domains)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(latent).mean(dim=(2, 3)))
