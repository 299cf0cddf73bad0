"""Networks of cross-modality synthesis (CycleGAN / FedMed-GAN): generators, PatchGAN discriminators and the
export wrapper that takes raw magnitude images.

Tensor conventions
------------------
* Generators and discriminators work on *normalised* magnitude images ``float32 [B, 1, H, W]``: each
  series (subject volume) divided by the median of its foreground (:func:`mrcore.intensity.robust_scale`,
  applied by the data pipeline in training and by the shared serving client), so that the intensity scale
  of a site (field strength, coil, receiver gain, vendor scaling) does not matter. Typical tissue sits near 1.
* Any ``H, W >= 16``, odd and non-square included: downsampling is a stride-2 convolution (output
  ``ceil(n / 2)``) and upsampling resizes to exactly the size of the matching encoder level.
* No BatchNorm anywhere (Opacus' per-sample gradients need per-sample layers): InstanceNorm (affine) or
  GroupNorm; no transposed convolutions (no per-sample-gradient rule in Opacus, and checkerboards).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .blocks import ResidualBlock, UNet, UpBlock, make_norm

#: generator architectures understood by :func:`build_synthesis_generator`
SYNTHESIS_GENERATORS: tuple[str, ...] = ("resnet", "unet", "curve")

#: small constant added to the per-image mean before dividing (an all-zero image stays finite)
NORM_EPS = 1e-6


def image_scale(image: torch.Tensor) -> torch.Tensor:
    """Per-image intensity scale: the mean over ``H, W`` of ``image: float32 [B, 1, H, W]`` -> ``[B, 1, 1, 1]``."""
    return image.mean(dim=(-2, -1), keepdim=True) + NORM_EPS


def normalise(image: torch.Tensor) -> torch.Tensor:
    """``image / mean(image)`` per sample: ``[B, 1, H, W]`` at any scale -> normalised units (mean 1)."""
    return image / image_scale(image)


class ResnetGenerator(nn.Module):
    """CycleGAN's ResNet generator, small: ``[B, 1, H, W] -> [B, 1, H, W]`` in normalised units.

    ``conv3x3(1 -> chans)``, ``num_downs`` stride-2 ``conv3x3`` (channels double), ``num_res_blocks``
    residual blocks at the bottom, ``num_downs`` upsampling blocks (nearest resize to the encoder's size +
    ``conv3x3``, channels halve, the encoder's features added as a skip), ``conv3x3(chans -> 1)``.

    Parameters
    ----------
    chans : int
        Channels at full resolution.
    num_downs : int
        Number of stride-2 steps.
    num_res_blocks : int
        Residual blocks at the bottom resolution.
    norm : 'instance' | 'group'
    residual : bool
        Predict a correction of the (normalised) input: ``x + net(x)``, so training starts from the
        identity map (intensities of the right order) rather than from zero.
    """

    def __init__(self, chans: int = 16, num_downs: int = 2, num_res_blocks: int = 4, norm: str = "instance",
                 residual: bool = False) -> None:
        super().__init__()
        self.residual = residual
        act = nn.LeakyReLU(0.2)
        self.head = nn.Sequential(nn.Conv2d(1, chans, 3, padding=1), make_norm(norm, chans), act)
        self.down = nn.ModuleList()
        ch = chans
        for _ in range(num_downs):
            self.down.append(nn.Sequential(nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1), make_norm(norm, ch * 2),
                                           nn.LeakyReLU(0.2)))
            ch *= 2
        self.res = nn.Sequential(*[ResidualBlock(ch, norm=norm, negative_slope=0.2) for _ in range(num_res_blocks)])
        self.up = nn.ModuleList()
        for _ in range(num_downs):
            self.up.append(UpBlock(ch, ch // 2, norm=norm))
            ch //= 2
        self.tail = nn.Conv2d(ch, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(x)
        skips = []
        for down in self.down:
            skips.append(y)
            y = down(y)
        y = self.res(y)
        for up in self.up:
            skip = skips.pop()
            y = up(y, skip.shape[2:]) + skip
        return x + self.tail(y) if self.residual else self.tail(y)


class UNetSynthesisGenerator(nn.Module):
    """U-Net generator (:class:`~training.models.blocks.UNet`): ``[B, 1, H, W] -> [B, 1, H, W]``, normalised units."""

    def __init__(self, chans: int = 16, num_pools: int = 2, norm: str = "instance", residual: bool = False) -> None:
        super().__init__()
        self.residual = residual
        self.unet = UNet(1, 1, chans=chans, num_pools=num_pools, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.unet(x) if self.residual else self.unet(x)


class TissueCurve(nn.Module):
    """A learned intensity transfer curve applied pixel by pixel: ``[B, 1, H, W] -> [B, 1, H, W]``.

    Three ``1x1`` convolutions (``1 -> hidden -> hidden -> 1``, LeakyReLU): a smooth function of the normalised
    source intensity alone. The signal equations make each pure tissue's target signal a function of its source
    signal, and partial-volume voxels mix linearly between them, so this curve carries most of a contrast
    translation with a few hundred parameters (little DP noise, nothing to over-fit to a simulator's textures).
    """

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        act = nn.LeakyReLU(0.2)
        self.net = nn.Sequential(nn.Conv2d(1, hidden, 1), act, nn.Conv2d(hidden, hidden, 1), act, nn.Conv2d(hidden, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CurveContextGenerator(nn.Module):
    """``curve(x) + context(x)``: a :class:`TissueCurve` plus a small :class:`ResnetGenerator` for what a pixel's
    intensity alone cannot tell (edges, partial volume, which tissue a mid-grey voxel belongs to).

    The context network's last convolution starts at zero, so training starts from the pure curve. Its ``norm``
    should be ``'none'``: a per-image normalisation (InstanceNorm) sees different statistics on training
    patches than on whole served slices, which shifted the output of earlier generators on real series.
    ``[B, 1, H, W] -> [B, 1, H, W]`` in normalised units, any ``H, W >= 16``.
    """

    def __init__(self, hidden: int = 16, chans: int = 8, num_downs: int = 2, num_res_blocks: int = 1,
                 norm: str = "none") -> None:
        super().__init__()
        self.curve = TissueCurve(hidden)
        self.context = ResnetGenerator(chans=chans, num_downs=num_downs, num_res_blocks=num_res_blocks, norm=norm)
        nn.init.zeros_(self.context.tail.weight)
        nn.init.zeros_(self.context.tail.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.curve(x) + self.context(x)


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (pix2pix/CycleGAN): ``[B, 1, H, W]`` -> patch logits ``[B, 1, h, w]``.

    ``conv4x4 s2 -> LeakyReLU``, then ``num_layers - 1`` of ``conv4x4 s2 -> norm -> LeakyReLU`` (channels
    double), ``conv4x4 s1 -> norm -> LeakyReLU``, ``conv4x4 s1 -> 1``. Stays at its site; never sent.
    """

    def __init__(self, chans: int = 16, num_layers: int = 3, norm: str = "instance") -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, chans, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        ch = chans
        for _ in range(num_layers - 1):
            layers += [nn.Conv2d(ch, ch * 2, 4, stride=2, padding=1), make_norm(norm, ch * 2), nn.LeakyReLU(0.2)]
            ch *= 2
        layers += [nn.Conv2d(ch, ch, 4, padding=1), make_norm(norm, ch), nn.LeakyReLU(0.2), nn.Conv2d(ch, 1, 4, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CycleGenerators(nn.Module):
    """Both generators of a CycleGAN as one module (one Opacus wrapper, one optimiser, one FedAvg payload).

    ``g_ab`` maps contrast A (source) to B (target), ``g_ba`` the reverse. Parameter names are
    ``g_ab.*`` and ``g_ba.*``.
    """

    def __init__(self, g_ab: nn.Module, g_ba: nn.Module) -> None:
        super().__init__()
        self.g_ab = g_ab
        self.g_ba = g_ba

    def forward(self, a: torch.Tensor, b: torch.Tensor, identity: bool = False, curves: bool = False) -> dict[str, torch.Tensor]:
        """All generator outputs of one CycleGAN step for normalised ``a, b: [B, 1, H, W]`` (sample i of ``a``
        and of ``b`` belong to the same training record, so per-sample gradients are per record); with
        :class:`CurveContextGenerator` s and ``curves`` also their tissue curves alone (``curve_b``, ``curve_a``;
        only when a loss uses them: Opacus needs every forward call of a module to take part in the backward)."""
        fake_b = self.g_ab(a)
        fake_a = self.g_ba(b)
        out = {"fake_b": fake_b, "fake_a": fake_a, "rec_a": self.g_ba(fake_b), "rec_b": self.g_ab(fake_a)}
        if identity:
            out["idt_b"] = self.g_ab(b)
            out["idt_a"] = self.g_ba(a)
        if curves and isinstance(self.g_ab, CurveContextGenerator) and isinstance(self.g_ba, CurveContextGenerator):
            out["curve_b"] = self.g_ab.curve(a)  # the tissue curves alone (objective.curve_weight)
            out["curve_a"] = self.g_ba.curve(b)
        return out


class SynthesisExport(nn.Module):
    """A trained generator for deployment: normalised source magnitude in, synthesised contrast out.

    ``forward(image: float32 [B, 1, H, W])``: slices of a series already divided by the series' robust
    scale (:func:`mrcore.intensity.normalise_series`; :meth:`serving.client.TritonClient.synthesize` does
    it for the whole series before chunking); applies the generator and clamps at 0. The output is the
    synthesised target contrast in *normalised units* (the target series' foreground median is 1 in
    training; multiply by any positive factor for display).
    """

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return F.relu(self.generator(image))


def build_synthesis_generator(name: str, chans: int = 16, depth: int = 2, num_res_blocks: int = 4,
                              norm: str = "instance", residual: bool = False, curve_hidden: int = 16) -> nn.Module:
    """Generator by name: ``'resnet'`` (:class:`ResnetGenerator`), ``'unet'`` (:class:`UNetSynthesisGenerator`) or
    ``'curve'`` (:class:`CurveContextGenerator`, ``curve_hidden`` units in its tissue curve); ``depth`` = number of
    down/up-sampling steps; ``residual``: ``x + net(x)`` (not for 'curve')."""
    if name == "curve":
        if residual:
            raise ValueError("model.residual does not apply to the 'curve' generator (its curve starts the map)")
        return CurveContextGenerator(curve_hidden, chans, depth, num_res_blocks, norm)
    if name == "resnet":
        return ResnetGenerator(chans=chans, num_downs=depth, num_res_blocks=num_res_blocks, norm=norm, residual=residual)
    if name == "unet":
        return UNetSynthesisGenerator(chans=chans, num_pools=depth, norm=norm, residual=residual)
    raise ValueError(f"unknown synthesis generator {name!r}; expected one of {', '.join(SYNTHESIS_GENERATORS)}")
