"""Neural networks of the reconstruction service: generators, WGAN critic, coil-map estimator, domain identifier.

Registry::

    G = build_generator("unrolled", num_cascades=3, fft_backend="matmul")   # or "plain", "unet"
    D = build_critic(in_channels=1)
    G_AB = build_synthesis_generator("resnet", chans=4)                   # synthesis (CycleGAN), or "unet"

Tensor conventions (complex = real tensor with a trailing dim of 2) are described in
:mod:`training.models.recon`.
"""

from __future__ import annotations

import inspect

from torch import nn

from .blocks import ResidualBlock, UNet, channels_to_complex, complex_to_channels
from .critic import WGANCritic
from .domain import DomainIdentifier, grad_reverse
from .recon import PlainGenerator, ResidualCNN, UNetGenerator, UnrolledGenerator, magnitude, num_parameters
from .sensitivity import SensitivityNet, calibration_mask
from .synthesis import (
    SYNTHESIS_GENERATORS,
    CycleGenerators,
    PatchDiscriminator,
    ResnetGenerator,
    SynthesisExport,
    UNetSynthesisGenerator,
    build_synthesis_generator,
)
from .unrolled_fast import FastUnrolledGenerator

GENERATORS: dict[str, type[nn.Module]] = {
    "unrolled_fast": FastUnrolledGenerator,
    "unrolled": UnrolledGenerator,
    "plain": PlainGenerator,
    "unet": UNetGenerator,
}


def _checked_kwargs(cls: type, what: str, kwargs: dict) -> None:
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(f"{what} does not accept {', '.join(map(repr, unknown))}; accepted: {', '.join(accepted)}")


def build_generator(name: str, **kwargs) -> nn.Module:
    """Generator by name: ``'unrolled_fast'`` (:class:`FastUnrolledGenerator`, the v2 served model),
    ``'unrolled'`` (:class:`UnrolledGenerator`), ``'plain'`` (:class:`PlainGenerator`) or ``'unet'``
    (:class:`UNetGenerator`); ``kwargs`` go to the constructor."""
    try:
        cls = GENERATORS[name]
    except KeyError:
        raise ValueError(f"unknown generator {name!r}; known: {', '.join(sorted(GENERATORS))}") from None
    _checked_kwargs(cls, f"generator {name!r} ({cls.__name__})", kwargs)
    return cls(**kwargs)


def build_critic(**kwargs) -> WGANCritic:
    """The WGAN critic (:class:`WGANCritic`); ``kwargs`` go to the constructor."""
    _checked_kwargs(WGANCritic, "WGANCritic", kwargs)
    return WGANCritic(**kwargs)


__all__ = [
    "GENERATORS",
    "SYNTHESIS_GENERATORS",
    "CycleGenerators",
    "PatchDiscriminator",
    "ResnetGenerator",
    "SynthesisExport",
    "UNetSynthesisGenerator",
    "build_synthesis_generator",
    "DomainIdentifier",
    "FastUnrolledGenerator",
    "PlainGenerator",
    "ResidualBlock",
    "ResidualCNN",
    "SensitivityNet",
    "UNet",
    "UNetGenerator",
    "UnrolledGenerator",
    "WGANCritic",
    "build_critic",
    "build_generator",
    "calibration_mask",
    "channels_to_complex",
    "complex_to_channels",
    "grad_reverse",
    "magnitude",
    "num_parameters",
]
