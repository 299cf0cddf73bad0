"""The reconstruction generator as a served model: what goes into ONNX and Triton.

Served signature (Triton has no complex dtype: real/imaginary parts are a trailing axis of 2)::

    kspace    float32 [batch, coils, ky, kx, 2]  undersampled multi-coil k-space (centred orthonormal FFT);
                                                  unsampled entries may hold anything: the mask zeroes them
    mask      float32 [batch, ky, kx]            1 where sampled, 0 elsewhere
    image     float32 [batch, ky, kx, 2]         reconstructed complex image, same scale as the input
    magnitude float32 [batch, ky, kx]            |image|

Coil maps are estimated inside the graph by the generator's sensitivity network from the fully sampled
centre of k-space, and data consistency uses in-graph DFT matrices, so any batch, coil count and
matrix (ky, kx >= 16, odd and non-square included) runs through one model.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.export import Dim

from mrcore.config import to_dict
from mrcore.masks import make_mask
from training.export.spec import ServableModel, TensorSpec
from training.models import magnitude

#: the Triton model name of the federated reconstruction generator
MODEL_NAME = "recon_unrolled"


class ReconForServing(nn.Module):
    """``(kspace [B,C,ky,kx,2], mask [B,ky,kx]) -> (image [B,ky,kx,2], magnitude [B,ky,kx])``.

    ``require_matmul=False`` admits a ``torch.fft`` generator (benchmarks of ONNX's DFT operator only).
    """

    def __init__(self, generator: nn.Module, require_matmul: bool = True) -> None:
        super().__init__()
        if not getattr(generator, "estimate_maps", False):
            raise ValueError("only generators that estimate coil maps in the graph (model.estimate_maps: true) can be served")
        if require_matmul and getattr(generator, "fft_backend", None) != "matmul":
            raise ValueError("export the generator with fft_backend='matmul' (in-graph DFT matrices)")
        self.generator = generator

    def forward(self, kspace: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = mask.unsqueeze(1).unsqueeze(-1)
        image = self.generator(kspace * m, m)
        return image, magnitude(image)


def _random_case(rng: np.random.Generator, batch: int, coils: int, ky: int, kx: int, acceleration: float,
                 kind: str = "random", axis: int = -2) -> dict:
    kspace = rng.standard_normal((batch, coils, ky, kx, 2)).astype(np.float32)
    masks = [make_mask(kind, (ky, kx), acceleration, 0.125, seed=int(rng.integers(1 << 31)), axis=axis)
             for _ in range(batch)]
    return {"kspace": kspace, "mask": np.stack(masks).astype(np.float32)}


def servable_models(family, arrays: dict[str, np.ndarray]) -> list[ServableModel]:
    """The reconstruction family's served model(s), with parity cases: fresh random k-space at
    256x256 (8 coils), a held-out phantom/real slice from the run's data, and an odd non-square
    matrix (97x75, 4 coils)."""
    module = ReconForServing(family.generator_from(arrays, fft_backend="matmul").cpu().eval())
    batch, coils = Dim("batch", min=1, max=64), Dim("coils", min=1, max=64)
    ky, kx = Dim("ky", min=16, max=1024), Dim("kx", min=16, max=1024)
    rng = np.random.default_rng(20261123)
    cfg = family.cfg
    example = _random_case(rng, 2, 4, 32, 32, cfg.mask.acceleration)
    site = cfg.data.heldout_site or family.train_sites[0]
    ds = family.dataset(site, "heldout" if cfg.data.heldout_site else "val")
    items = [ds[i] for i in range(min(2, len(ds)))]
    real = {"kspace": torch.stack([it["kspace"] for it in items]).numpy(),
            "mask": torch.stack([it["mask"][0, :, :, 0] for it in items]).numpy()}
    cases = [
        ("random-8coil-256x256", _random_case(rng, 1, 8, 256, 256, 4.0)),
        (f"{site}-{cfg.data.contrasts[0]}-{ds.shape[0]}x{ds.shape[1]}", real),
        ("random-4coil-97x75", _random_case(rng, 2, 4, 97, 75, 3.0)),
    ]
    fast = cfg.model.generator == "unrolled_fast"
    if fast:  # every data-consistency path of the v2 graph, and more coils than it is served with
        cases += [("columns-16coil-120x97", _random_case(rng, 1, 16, 120, 97, 4.0, axis=-1)),
                  ("poisson-3coil-64x80", _random_case(rng, 1, 3, 64, 80, 3.0, kind="poisson"))]
    m = cfg.mask
    card = {
        "description": "Federated unrolled reconstruction (Lei et al. generator, FL-MR FedAvg): undersampled "
                       "multi-coil k-space in, complex image out; coil maps estimated in the graph.",
        "trained_for": {"mask": m.kind, "acceleration": m.acceleration, "center_fraction": m.center_fraction,
                        "contrasts": list(cfg.data.contrasts), "matrix": list(ds.shape), "coils": cfg.data.num_coils},
    }
    parameters = {}
    if fast:
        card["description"] = (
            "Federated unrolled reconstruction v2 (Lei et al. cascades of soft data consistency and U-Net "
            "regularisers, FL-MR FedAvg): undersampled multi-coil k-space in, complex image out, in the input's scale. "
            "Scale-equivariant (normalised by the calibration region's RMS inside the graph); coil maps from the "
            "calibration region (no learned coil-map network); exact data consistency with a phase-encode projector "
            "for line masks along either axis, FFTs for 2-D masks; any matrix. The serving client compresses more "
            f"than {cfg.model.virtual_coils} coils to {cfg.model.virtual_coils} virtual coils (SVD) first.")
        card["trained_for"] = {"randomized": to_dict(cfg.data.randomize) if cfg.data.randomize else None,
                               "virtual_coils": cfg.model.virtual_coils}
        parameters["virtual_coils"] = str(cfg.model.virtual_coils)
    return [ServableModel(
        name=MODEL_NAME,
        task="reconstruction",
        module=module,
        inputs=[TensorSpec("kspace", (-1, -1, -1, -1, 2), "undersampled k-space [batch, coils, ky, kx, re/im]"),
                TensorSpec("mask", (-1, -1, -1), "sampling mask [batch, ky, kx], 1 = sampled")],
        outputs=[TensorSpec("image", (-1, -1, -1, 2), "complex image [batch, ky, kx, re/im]"),
                 TensorSpec("magnitude", (-1, -1, -1), "magnitude image [batch, ky, kx]")],
        example=(torch.from_numpy(example["kspace"]), torch.from_numpy(example["mask"])),
        dynamic={"kspace": {0: batch, 1: coils, 2: ky, 3: kx}, "mask": {0: batch, 1: ky, 2: kx}},
        parity_cases=cases,
        card=card,
        parameters=parameters,
        all_versions=True,
    )]
