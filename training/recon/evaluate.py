"""Evaluation of reconstruction: learned generators against zero-filled and compressed sensing.

Metrics follow fastMRI (per subject volume, data range = volume maximum, averaged over subjects) on the
magnitude images, against the RSS of the fully sampled coil images. The CS baseline is SigPy's
L1-wavelet reconstruction with ESPIRiT maps estimated from the calibration region of each slice; its
regularisation weight is chosen on validation slices of the *training* sites (never on test data).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from mrcore.coils import estimate_coil_maps
from mrcore.cs import l1_wavelet_recon
from mrcore.metrics import psnr
from training.recon.data import ReconSlices
from training.recon.family import ReconFamily
from training.recon.loop import reconstruct, volume_metrics

log = logging.getLogger(__name__)

CS_LAMBDAS = (0.0005, 0.001, 0.002, 0.005, 0.01)  # in k-space units (orthonormal FFT)


def _numpy_item(ds: ReconSlices, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    item = ds[i]
    kspace = torch.view_as_complex(item["kspace"].contiguous()).numpy()
    mask = item["mask"][0, :, :, 0].numpy()
    return kspace, mask, item["target"].numpy()


def _calib_width(mask: np.ndarray) -> int:
    ky, kx = mask.shape
    for c in range(min(24, ky, kx), 6, -1):
        if np.all(mask[ky // 2 - c // 2: ky // 2 - c // 2 + c, kx // 2 - c // 2: kx // 2 - c // 2 + c]):
            return c
    raise ValueError("the mask has no fully sampled centre of at least 7x7 for ESPIRiT; raise center_fraction")


def cs_reconstruct(ds: ReconSlices, lamda: float, indices=None, progress: bool = False) -> np.ndarray:
    """|CS| magnitudes [N, H, W] of ``ds`` (ESPIRiT maps per slice, L1-wavelet 30 iterations)."""
    indices = range(len(ds)) if indices is None else indices
    out = []
    for i in tqdm(indices, desc=f"CS lambda={lamda:g}", disable=not progress, leave=False):
        kspace, mask, _ = _numpy_item(ds, i)
        # crop=0: keep the maps over the whole field of view. ESPIRiT's usual 0.95 crop cut off the
        # scalp of noisy low-field slices and cost the baseline 2 dB here (measured, see docs).
        maps = estimate_coil_maps(kspace, calib_width=_calib_width(mask), crop=0.0)
        out.append(np.abs(l1_wavelet_recon(kspace, mask, maps=maps, lamda=lamda)))
    return np.stack(out)


def tune_cs_lambda(family: ReconFamily, slices_per_site: int = 3) -> float:
    """The CS weight with the best mean PSNR on a few validation slices of the training sites."""
    scores = {lam: [] for lam in CS_LAMBDAS}
    for site in family.train_sites:
        ds = family.dataset(site, "val")
        pick = np.linspace(0, len(ds) - 1, min(slices_per_site, len(ds))).round().astype(int)
        targets = [ds[int(i)]["target"].numpy() for i in pick]
        for lam in CS_LAMBDAS:
            recs = cs_reconstruct(ds, lam, [int(i) for i in pick])
            scores[lam] += [psnr(t, r) for t, r in zip(targets, recs)]
    best = max(scores, key=lambda lam: float(np.mean(scores[lam])))
    log.info("CS lambda chosen on training-site validation slices: %g (%s)", best,
             {k: round(float(np.mean(v)), 2) for k, v in scores.items()})
    return best


def evaluate_split(family: ReconFamily, site: str, split: str, generator: torch.nn.Module | None = None,
                   cs_lambda: float | None = None, progress: bool = True) -> dict[str, dict[str, float]]:
    """Metrics of zero-filled, CS (if ``cs_lambda``) and ``generator`` (if given) on one split of ``family``'s data."""
    ds = family.dataset(site, split)
    results: dict[str, dict[str, float]] = {}
    net = generator if generator is not None else family.generator_from(family.initial_arrays())
    out, zf, target, subjects = reconstruct(net, DataLoader(ds, batch_size=4))
    results["zero-filled"] = volume_metrics(zf, target, subjects)
    if generator is not None:
        results["model"] = volume_metrics(out, target, subjects)
    if cs_lambda is not None:
        results["cs"] = volume_metrics(cs_reconstruct(ds, cs_lambda, progress=progress), target, subjects)
    return results


def sample_indices(ds: ReconSlices, n: int) -> Subset:
    """A few evenly spread items (for image grids)."""
    return Subset(ds, [int(i) for i in np.linspace(0, len(ds) - 1, min(n, len(ds))).round()])
