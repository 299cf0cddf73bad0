"""The synthesis generators as served models: one Triton model per direction.

Served signature::

    image        float32 [batch, 1, H, W]  source-contrast magnitude of a series divided by the series' robust
                                            scale (mrcore.intensity.normalise_series; the shared serving client
                                            does it), H, W >= 16
    synthesized  float32 [batch, 1, H, W]  target contrast in normalised units (the training targets' foreground
                                            median is 1; see training.models.synthesis.SynthesisExport)

Names: ``synth_<source>_to_<target>`` lower-cased, e.g. ``synth_t1w_to_t2w`` and ``synth_t2w_to_t1w``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.export import Dim

from training.export.spec import ServableModel, TensorSpec


def model_name(source: str, target: str) -> str:
    """``("T1w", "T2w") -> "synth_t1w_to_t2w"`` (the same rule as :func:`serving.client.synthesis_model_name`)."""
    return f"synth_{source.lower()}_to_{target.lower()}"


def _random_images(rng: np.random.Generator, batch: int, h: int, w: int) -> np.ndarray:
    """Positive random images with a smooth blob, in normalised units (foreground median about 1)."""
    yy, xx = np.mgrid[:h, :w]
    blob = np.exp(-(((yy - h / 2) / (h / 3)) ** 2 + ((xx - w / 2) / (w / 3)) ** 2))
    x = blob[None] * rng.uniform(1.0, 2.0, (batch, 1, 1)) + rng.random((batch, h, w)) * 0.1
    return x[:, None].astype(np.float32)


LIMITATIONS = ("Synthetic images: every output instance is marked Synthetic Data = YES. The model maps the "
               "source contrast to the target contrast pixel by pixel in context; **pathology that is invisible "
               "on the source series (iso-intense on it) cannot appear in the output**, whatever the target "
               "contrast would show. Do not use a synthesized series to exclude a lesion. Lesion table on a real "
               "patient: docs/synthesis_patients.md. Serving checks the source first (mrcore.synthesis_input, "
               "docs/synthesis_input.md): no head in the series is refused; a series that is not brain-like or "
               "looks like another contrast is answered with a warning (X-Synthesis-Warning, ImageComments).")


def servable_models(family, arrays: dict[str, np.ndarray]) -> list[ServableModel]:
    """Both directions of the trained cycle, each with parity cases: random images (2x64x64), real source
    slices of the evaluation split, and an odd non-square matrix (3x61x77)."""
    a, b = family.contrasts
    d = family.cfg.data
    split_site = d.heldout_site or d.train_sites[0]
    ds = family.dataset(split_site, "heldout" if d.heldout_site else "test")
    n = min(4, len(ds))
    rng = np.random.default_rng(20261124)
    batch, height, width = Dim("batch", min=1, max=64), Dim("height", min=16, max=2048), Dim("width", min=16, max=2048)
    privacy = family.cfg.privacy
    models = []
    for src, dst, real, keys in ((a, b, ds.a[:n, 0].numpy(), "psnr, ssim, mae"),
                                 (b, a, ds.b[:n, 0].numpy(), "psnr_rev, ssim_rev, mae_rev")):
        module: nn.Module = family.generator_for_export(arrays, f"{src}->{dst}")
        example = _random_images(rng, 2, 32, 32)
        cases = [
            ("random-2x64x64", {"image": _random_images(rng, 2, 64, 64)}),
            (f"{split_site}-{src}-{real.shape[-2]}x{real.shape[-1]}", {"image": np.ascontiguousarray(real[:, None], dtype=np.float32)}),
            ("random-3x61x77", {"image": _random_images(rng, 3, 61, 77)}),
        ]
        card = {
            "description": f"Federated CycleGAN generator (FedMed-GAN style, local discriminators"
                           f"{', DP-SGD' if privacy.enabled else ''}): {src} magnitude in, synthesized {dst} out "
                           "(normalised units: the series is divided by its foreground median before the model, "
                           "mrcore.intensity; the training targets' foreground median is 1).",
            "trained_for": {"source": src, "target": dst, "matrix": list(real.shape[-2:]),
                            "generator": family.cfg.model.generator},
            "metrics_of_this_direction": f"{keys} (identity_*: the {a} input compared with the {b} target)",
            "input_normalisation": "mrcore.intensity.normalise_series over the whole series (serving.client)",
            "limitations": LIMITATIONS,
        }
        if privacy.enabled:
            card["privacy"] = {"mechanism": "DP-SGD (Opacus), per-sample clipping + Gaussian noise on the generators",
                               "noise_multiplier": privacy.noise_multiplier, "max_grad_norm": privacy.max_grad_norm,
                               "delta": privacy.delta, "accountant": "RDP, one per site across rounds"}
        models.append(ServableModel(
            name=model_name(src, dst),
            task="synthesis",
            module=module.eval(),
            inputs=[TensorSpec("image", (-1, 1, -1, -1),
                               f"{src} magnitude [batch, 1, H, W] / the series' robust scale (mrcore.intensity)")],
            outputs=[TensorSpec("synthesized", (-1, 1, -1, -1), f"synthesized {dst} [batch, 1, H, W], normalised units")],
            example=(torch.from_numpy(example),),
            dynamic={"image": {0: batch, 2: height, 3: width}},
            parity_cases=cases,
            card=card,
        ))
    return models
