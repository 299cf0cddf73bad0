"""FL-MRCM's latent alignment at a source site (no federation): identifier, generator term, config checks."""

from __future__ import annotations

import pytest
import torch

from training.federation.runconfig import load_run_config
from training.recon.mrcm import LatentAligner, new_identifier, pool_latent


def aligner(target: torch.Tensor, weight: float = 1.0) -> LatentAligner:
    torch.manual_seed(0)
    ident = new_identifier(4, (8, 8))
    return LatentAligner(ident, torch.optim.Adam(ident.parameters(), lr=1e-2), target, pool=2, weight=weight,
                         generator=torch.Generator().manual_seed(0))


def test_identifier_learns_to_tell_the_sites_apart():
    target = pool_latent(torch.randn(16, 4, 16, 16) + 2.0, 2)  # the target's latents are shifted
    al = aligner(target)
    source = torch.randn(16, 4, 16, 16)
    before = al.accuracy(source)
    losses = [al.identifier_step(source) for _ in range(40)]
    assert losses[-1] < 0.5 * losses[0]
    assert al.accuracy(source) > max(before, 0.9)


def test_generator_term_pulls_source_latents_towards_the_target():
    target = pool_latent(torch.randn(16, 4, 16, 16) + 2.0, 2)
    al = aligner(target)
    source = torch.randn(16, 4, 16, 16)
    for _ in range(40):
        al.identifier_step(source)
    latent = source.clone().requires_grad_(True)
    loss = al.generator_loss(latent)
    loss.backward()
    assert loss.item() > 0 and latent.grad is not None
    moved = source - 1.0 * latent.grad / latent.grad.abs().max()
    assert al.generator_loss(moved).item() < loss.item()  # a step against the gradient fools the identifier more
    assert al.weight == 1.0 and aligner(target, weight=0.0).generator_loss(latent).item() == 0.0


def test_latents_of_another_size_are_refused():
    al = aligner(pool_latent(torch.randn(4, 4, 16, 16), 2))
    with pytest.raises(ValueError, match="same matrix size"):
        al.generator_loss(torch.randn(2, 4, 20, 20))


@pytest.mark.parametrize("overrides, message", [
    (["mrcm.enabled=true", "data.heldout_adapt_subjects=0"], "heldout_adapt_subjects >= 1"),
    (["mrcm.enabled=true", "data.heldout_adapt_subjects=2", "model.generator=unet"], "no latent features"),
    (["mrcm.enabled=true", "data.heldout_adapt_subjects=2", "data.pooled=true"], "data.pooled"),
    (["data.heldout_site=null", "data.heldout_adapt_subjects=2"], "needs data.heldout_site"),
    (["mrcm.feature_pool=0"], "feature_pool"),
])
def test_mrcm_config_mistakes_are_named(overrides, message):
    from training.federation.registry import family_from_config

    with pytest.raises(ValueError, match=message):
        cfg = load_run_config(None, ["family=recon", *overrides])
        family_from_config(cfg)


def test_too_many_adaptation_subjects_fail_before_training(tmp_path):
    from training.federation.registry import family_from_config

    cfg = load_run_config(None, [
        "family=recon", f"data.source.cache_dir={tmp_path / 'cache'}", "data.source.matrix=[32, 32]",
        "data.source.subjects_per_site=2", "data.source.slices_per_subject=2", "data.num_coils=2",
        "data.train_sites=[hospital-a]", "data.heldout_site=hospital-c", "data.heldout_adapt_subjects=2",
        "data.val_subjects=1",
    ])
    with pytest.raises(ValueError, match="leaves no test subject"):
        family_from_config(cfg).prepare()
