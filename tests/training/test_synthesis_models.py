"""Synthesis networks: shapes at odd sizes, no BatchNorm, Opacus compatibility, the ONNX export contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mrcore.intensity import normalise_series
from training.models.synthesis import (
    CycleGenerators,
    PatchDiscriminator,
    SynthesisExport,
    build_synthesis_generator,
    normalise,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("kind", ["resnet", "unet", "curve"])
@pytest.mark.parametrize("shape", [(64, 64), (61, 77), (16, 33)])
def test_generators_keep_any_shape(kind, shape):
    g = build_synthesis_generator(kind, chans=4, depth=2, num_res_blocks=1)
    x = torch.rand(2, 1, *shape)
    assert g(x).shape == (2, 1, *shape)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in g.modules())


def test_discriminator_gives_patches_and_generators_pack_both_directions():
    d = PatchDiscriminator(chans=4, num_layers=3)
    assert d(torch.rand(3, 1, 64, 64)).shape == (3, 1, 6, 6)
    gens = CycleGenerators(build_synthesis_generator("resnet", 4, 1, 1), build_synthesis_generator("resnet", 4, 1, 1))
    names = list(gens.state_dict())
    assert names and all(n.startswith(("g_ab.", "g_ba.")) for n in names)
    out = gens(torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32), identity=True)
    assert set(out) == {"fake_a", "fake_b", "rec_a", "rec_b", "idt_a", "idt_b"}


def test_opacus_accepts_the_generators():
    from opacus.validators import ModuleValidator

    for kind in ("resnet", "unet", "curve"):
        for norm in ("instance", "group", "none"):
            assert ModuleValidator.validate(build_synthesis_generator(kind, 4, 2, 1, norm), strict=False) == []


def test_export_module_on_normalised_series_is_scale_invariant():
    """The graph takes a series normalised by mrcore.intensity (as the serving client sends it): the scanner
    scale is gone before the model, and the output is the generator's, clamped at 0."""
    torch.manual_seed(0)
    g = build_synthesis_generator("resnet", 4, 2, 1)
    m = SynthesisExport(g).eval()
    x = np.random.default_rng(0).random((2, 33, 40)).astype(np.float32) + 0.2
    a = torch.from_numpy(normalise_series(x)[0])[:, None]
    b = torch.from_numpy(normalise_series(1000.0 * x)[0])[:, None]
    with torch.no_grad():
        torch.testing.assert_close(m(a), m(b), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(m(a), torch.relu(g(a)))
        assert (m(a) >= 0).all()
    x = torch.from_numpy(x)[:, None]
    torch.testing.assert_close(normalise(x).mean(dim=(-2, -1)), torch.ones(2, 1), rtol=1e-5, atol=1e-5)


def test_curve_generator_starts_as_its_pixelwise_curve():
    """The context network's last convolution starts at zero: the untrained generator is its tissue curve,
    a function of each pixel's intensity alone (the same intensity gives the same output anywhere)."""
    from training.models.synthesis import CurveContextGenerator

    torch.manual_seed(0)
    g = build_synthesis_generator("curve", chans=4, depth=2, num_res_blocks=1, norm="none", curve_hidden=8)
    assert isinstance(g, CurveContextGenerator)
    x = torch.rand(1, 1, 32, 40)
    x[..., 5, 7] = x[..., 20, 30] = 0.7
    with torch.no_grad():
        y = g(x)
        torch.testing.assert_close(y, g.curve(x))
    assert y[..., 5, 7] == y[..., 20, 30]
    with pytest.raises(ValueError, match="residual"):
        build_synthesis_generator("curve", residual=True)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["resnet", "unet", "curve"])
def test_onnx_export_dynamic_batch_height_width(tmp_path, kind):
    """The lead's export call: dynamo=True, dynamic batch/height/width (>= 16); ORT matches PyTorch to 1e-5
    relative at odd, non-square sizes, for series at any scanner scale normalised as the client sends them."""
    import onnxruntime as ort
    from torch.export import Dim

    torch.manual_seed(0)
    model = SynthesisExport(build_synthesis_generator(kind, chans=4, depth=2, num_res_blocks=1)).eval()
    path = tmp_path / f"synth_{kind}.onnx"
    x = torch.rand(2, 1, 64, 64)
    torch.onnx.export(model, (x,), str(path), dynamo=True, input_names=["image"], output_names=["synthesized"],
                      dynamic_shapes={"image": {0: Dim("batch"), 2: Dim("height", min=16), 3: Dim("width", min=16)}})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for b, h, w, scale in [(2, 64, 64, 1.0), (1, 61, 77, 350.0), (3, 16, 23, 0.01)]:
        img = normalise_series((scale * rng.random((b, 1, h, w))).astype(np.float32))[0]
        with torch.no_grad():
            ref = model(torch.from_numpy(img)).numpy()
        (out,) = sess.run(None, {"image": img})
        assert out.shape == (b, 1, h, w) and out.dtype == np.float32
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()))


def test_curve_weight_makes_the_tissue_curve_fit_the_paired_target_alone():
    """objective.curve_weight adds L1(curve(a), b) on paired records only: the term changes the loss by exactly
    curve_weight x that L1 and pulls a gradient into the curve's parameters, and unpaired records do not see it."""
    from training.synthesis.config import SynthesisObjectiveConfig
    from training.synthesis.loop import generator_loss

    torch.manual_seed(0)
    gens = CycleGenerators(build_synthesis_generator("curve", 4, 1, 1, "none"), build_synthesis_generator("curve", 4, 1, 1, "none"))
    d = PatchDiscriminator(chans=4, num_layers=2)
    a, b = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    assert "curve_b" not in gens(a, b)
    out = gens(a, b, curves=True)
    assert {"curve_a", "curve_b"} <= set(out)
    off, on = SynthesisObjectiveConfig(curve_weight=0.0), SynthesisObjectiveConfig(curve_weight=5.0)
    for paired, expected_pairs in ((torch.tensor([1.0, 1.0]), 2), (torch.tensor([1.0, 0.0]), 1), (torch.zeros(2), 0)):
        loss_off, _ = generator_loss(out, a, b, paired, d, d, off)
        loss_on, logs = generator_loss(out, a, b, paired, d, d, on)
        per = (out["curve_b"] - b).abs().flatten(1).mean(1) + (out["curve_a"] - a).abs().flatten(1).mean(1)
        torch.testing.assert_close(loss_on - loss_off, 5.0 * (per * paired).sum() / 2)
        assert ("curve_l1" in logs) and (expected_pairs == 0 or logs["curve_l1"] > 0)
    loss_on.backward()
    assert gens.g_ab.curve.net[0].weight.grad is not None
    with pytest.raises(Exception, match="curve_weight"):
        SynthesisObjectiveConfig(curve_weight=-1.0)
