"""Evaluation of synthesis: both generators and the identity baseline, per subject volume.

All images are in normalised units (each divided by its own mean, see
:func:`training.models.synthesis.normalise`); PSNR and SSIM use the volume maximum of the target as data
range (fastMRI), MAE is in normalised units; the numbers are means over subjects.
"""

from __future__ import annotations

from torch.utils.data import DataLoader

from training.models.synthesis import CycleGenerators
from training.synthesis.data import ContrastPairs
from training.synthesis.loop import synthesize
from training.volume_metrics import volume_metrics

METRIC_NAMES = ("psnr", "ssim", "mae")


def evaluate_pairs(gens: CycleGenerators, ds: ContrastPairs, identity: bool = False) -> dict[str, float]:
    """MAE/PSNR/SSIM of A->B (``psnr``, ``ssim``, ``mae``) and B->A (``psnr_rev``, ...) on the aligned pairs
    of ``ds``; with ``identity`` also the baseline 'target contrast vs source contrast' (``identity_psnr``, ...)."""
    loader = DataLoader(ds, batch_size=8)
    fake_b, a, b, subjects = synthesize(gens.g_ab, loader, "a", "b")
    fake_a = synthesize(gens.g_ba, loader, "b", "a")[0]
    out = volume_metrics(fake_b, b, subjects, METRIC_NAMES)
    out.update({f"{k}_rev": v for k, v in volume_metrics(fake_a, a, subjects, METRIC_NAMES).items()})
    if identity:
        out.update({f"identity_{k}": v for k, v in volume_metrics(a, b, subjects, METRIC_NAMES).items()})
    return out
