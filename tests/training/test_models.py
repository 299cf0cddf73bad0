"""Tests of training.models: shapes, data consistency, coil-map estimation, critic layout, ONNX export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mrcore.coils import simulate_coil_maps
from mrcore.fft import fft2c, ifft2c
from mrcore.masks import make_mask
from training.models import (
    DomainIdentifier,
    PlainGenerator,
    SensitivityNet,
    UNetGenerator,
    UnrolledGenerator,
    WGANCritic,
    build_critic,
    build_generator,
    calibration_mask,
    grad_reverse,
    magnitude,
    num_parameters,
)
from training.models.sensitivity import fixed_band_mask


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Single-threaded torch for these tiny tensors: far faster on a shared 2-core machine (no spin-waits)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SIZES = [(32, 32), (33, 47)]
NAMES = ["unrolled", "plain", "unet"]


# --- helpers --------------------------------------------------------------------------------------
def to_t(z: np.ndarray) -> torch.Tensor:
    """complex ndarray -> float32 tensor with trailing (real, imag)."""
    return torch.from_numpy(np.stack([z.real, z.imag], axis=-1).astype(np.float32))


def to_np(x: torch.Tensor) -> np.ndarray:
    x = x.detach().double().numpy()
    return x[..., 0] + 1j * x[..., 1]


def make_batch(b=2, c=4, h=32, w=32, seed=0, kind="random", axis=-2):
    """Masked k-space [B,C,H,W,2], mask [B,1,H,W,1], maps [B,C,H,W,2], image [B,H,W,2] (numpy-simulated)."""
    rng = np.random.default_rng(seed)
    ks, ms, ss, xs = [], [], [], []
    for i in range(b):
        yy, xx = np.mgrid[-1 : 1 : h * 1j, -1 : 1 : w * 1j]
        image = (np.exp(-(yy**2 + xx**2) * 3) + 0.3 * rng.standard_normal((h, w))) * np.exp(1j * (yy + 0.5 * xx))
        maps = simulate_coil_maps((h, w), c, seed=seed + i) if c > 1 else np.ones((1, h, w), np.complex64)
        mask = make_mask(kind, (h, w), 3.0, center_fraction=0.15, seed=seed + i, axis=axis)
        ks.append(mask * fft2c(maps * image))
        ms.append(mask)
        ss.append(maps)
        xs.append(image)
    kspace = to_t(np.stack(ks))
    mask = torch.from_numpy(np.stack(ms)[:, None, :, :, None].astype(np.float32))
    return kspace, mask, to_t(np.stack(ss)), to_t(np.stack(xs))


def np_zero_filled(kspace, mask, maps) -> np.ndarray:
    """sum_c conj(S_c) ifft2c(M y_c) computed with numpy (mrcore.fft), complex [B, H, W]."""
    k, s, m = to_np(kspace), to_np(maps), mask.double().numpy()[:, 0, :, :, 0]
    return np.sum(np.conj(s) * ifft2c(m[:, None] * k), axis=1)


def np_normal(x, maps, mask) -> np.ndarray:
    """A^H A x in numpy."""
    s, m = to_np(maps), mask.double().numpy()[:, 0, :, :, 0]
    return np.sum(np.conj(s) * ifft2c(m[:, None] * fft2c(s * x[:, None])), axis=1)


def zero_cnn_tails(model: nn.Module) -> None:
    """Make every residual CNN output exactly zero (its last conv all-zero)."""
    with torch.no_grad():
        for cascade in model.cascades:
            cascade.cnn.tail.weight.zero_()
            cascade.cnn.tail.bias.zero_()


def rel_err(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


# --- shapes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("coils", [4, 1])
def test_output_shapes_estimated_and_given_maps(name, size, coils):
    torch.manual_seed(0)
    h, w = size
    kspace, mask, maps, _ = make_batch(2, coils, h, w)
    g = build_generator(name)
    with torch.no_grad():
        out_est = g(kspace, mask)
        out_given = g(kspace, mask, maps)
    assert out_est.shape == (2, h, w, 2) and out_given.shape == (2, h, w, 2)
    assert torch.isfinite(out_est).all() and torch.isfinite(out_given).all()
    assert magnitude(out_est).shape == (2, h, w)


def test_single_coil_without_maps_uses_ones():
    kspace, mask, maps, _ = make_batch(2, 1, 33, 47)
    g = UnrolledGenerator(estimate_maps=False)
    with torch.no_grad():
        torch.testing.assert_close(g(kspace, mask), g(kspace, mask, maps))


def test_multicoil_without_maps_or_estimator_is_an_error():
    kspace, mask, _, _ = make_batch(1, 4, 32, 32)
    with pytest.raises(ValueError, match="needs coil maps"):
        PlainGenerator(estimate_maps=False)(kspace, mask)


def test_mask_broadcasts_from_one_line_profile():
    kspace, mask, maps, _ = make_batch(2, 4, 32, 32, kind="equispaced", axis=-1)
    reduced = mask[:, :, :1]  # [B, 1, 1, W, 1]: columns sampled, same for every row
    g = UnrolledGenerator(chans=8)
    with torch.no_grad():
        torch.testing.assert_close(g(kspace, reduced), g(kspace, mask))


# --- reduction to the zero-filled image and the DC step -------------------------------------------
@pytest.mark.parametrize("size", SIZES)
def test_zero_cascades_is_zero_filled_sense(size):
    kspace, mask, maps, _ = make_batch(2, 4, *size)
    g = UnrolledGenerator(num_cascades=0, estimate_maps=False)
    with torch.no_grad():
        out = to_np(g(kspace, mask, maps))
    assert rel_err(out, np_zero_filled(kspace, mask, maps)) < 1e-5


def test_mu_zero_and_zero_cnn_is_zero_filled_sense():
    kspace, mask, maps, _ = make_batch(2, 4, 33, 47)
    g = UnrolledGenerator(num_cascades=3, estimate_maps=False)
    zero_cnn_tails(g)
    with torch.no_grad():
        for mu in g.mus:
            mu.zero_()
        out = to_np(g(kspace, mask, maps))
    assert rel_err(out, np_zero_filled(kspace, mask, maps)) < 1e-5


def test_one_cascade_is_the_gradient_step():
    kspace, mask, maps, _ = make_batch(2, 4, 33, 47, seed=3)
    g = UnrolledGenerator(num_cascades=1, estimate_maps=False, mu_init=0.7)
    zero_cnn_tails(g)
    with torch.no_grad():
        out = to_np(g(kspace, mask, maps))
    x0 = np_zero_filled(kspace, mask, maps)
    expected = x0 - 0.7 * (np_normal(x0, maps, mask) - x0)
    assert rel_err(out, expected) < 1e-5


def test_plain_generator_is_data_consistent_per_coil():
    kspace, mask, maps, _ = make_batch(2, 4, 33, 47, seed=1)
    g = PlainGenerator()
    with torch.no_grad():
        for given in (maps, None):  # given maps and estimated maps
            coils = g.coil_images(kspace, mask, given)
            assert coils.shape == kspace.shape
            k_out = fft2c(to_np(coils))
            sampled = np.broadcast_to(mask.numpy()[:, :, :, :, 0] > 0, k_out.shape)
            k_in = to_np(kspace)
            assert np.abs(k_out[sampled] - k_in[sampled]).max() < 1e-5 * np.abs(k_in).max()
            assert np.abs(k_out[~sampled]).max() > 1e-3  # the unsampled part is the network's, not zero
            # the output is the SENSE combination of those coil images
            used = maps if given is not None else g.sens_net(kspace, mask)
            expected = np.sum(np.conj(to_np(used)) * to_np(coils), axis=1)
            assert rel_err(to_np(g(kspace, mask, given)), expected) < 1e-5


def test_intensity_scale_equivariance():
    kspace, mask, _, _ = make_batch(1, 4, 32, 32)
    for name in NAMES:
        torch.manual_seed(0)
        g = build_generator(name)
        with torch.no_grad():
            a, b = g(kspace, mask), g(kspace * 1e-3, mask) * 1e3
        assert rel_err(b.numpy(), a.numpy()) < 1e-3, name


# --- coil sensitivity estimation ------------------------------------------------------------------
def _reference_calibration(m: np.ndarray) -> np.ndarray:
    """Loop implementation: centre-row run x centre-column run of sampled points, intersected with m."""
    h, w = m.shape

    def run(profile):
        n = len(profile)
        out = np.zeros(n, bool)
        c = n // 2
        if not profile[c]:
            return out
        lo = c
        while lo - 1 >= 0 and profile[lo - 1]:
            lo -= 1
        hi = c
        while hi + 1 < n and profile[hi + 1]:
            hi += 1
        out[lo : hi + 1] = True
        return out

    return (run(m[:, w // 2] > 0)[:, None] & run(m[h // 2] > 0)[None, :] & (m > 0)).astype(np.float32)


@pytest.mark.parametrize("kind,axis", [("random", -2), ("equispaced", -1), ("poisson", -2)])
@pytest.mark.parametrize("size", SIZES)
def test_calibration_mask_is_the_centre_block(kind, axis, size):
    h, w = size
    masks = np.stack([make_mask(kind, size, 3.0, center_fraction=0.15, seed=s, axis=axis) for s in range(3)])
    acs = calibration_mask(torch.from_numpy(masks)[:, None, :, :, None]).numpy()[:, 0, :, :, 0]
    for m, a in zip(masks, acs):
        np.testing.assert_array_equal(a, _reference_calibration(m))
        assert np.all(a <= m)
        # it contains the centre block mrcore.masks always samples
        if kind == "poisson":
            cy, cx = max(1, round(h * 0.15)), max(1, round(w * 0.15))
        else:
            n = size[axis]
            cy, cx = (max(1, round(n * 0.15)), w) if axis == -2 else (h, max(1, round(n * 0.15)))
        assert a[h // 2 - cy // 2 : h // 2 - cy // 2 + cy, w // 2 - cx // 2 : w // 2 - cx // 2 + cx].all()
        assert a.sum() < m.sum()


def test_calibration_mask_empty_when_centre_unsampled_and_maps_stay_finite():
    mask = torch.ones(1, 1, 16, 16, 1)
    mask[:, :, 8] = 0  # centre row missing
    assert calibration_mask(mask).sum() == 0
    kspace = torch.randn(1, 3, 16, 16, 2) * mask
    assert torch.isfinite(SensitivityNet()(kspace, mask)).all()


def test_fixed_band_mask():
    like = torch.zeros(1, 1, 33, 47, 2)
    rows = fixed_band_mask(like, 5, axis=-2)
    cols = fixed_band_mask(like, 6, axis=-1)
    assert rows.shape == (1, 1, 33, 1, 1) and cols.shape == (1, 1, 1, 47, 1)
    assert rows.flatten().nonzero().flatten().tolist() == list(range(14, 19))
    assert cols.flatten().nonzero().flatten().tolist() == list(range(20, 26))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("coils", [4, 1])
@pytest.mark.parametrize("low", [None, 5])
def test_sensitivity_maps_have_unit_rss(size, coils, low):
    kspace, mask, _, _ = make_batch(2, coils, *size)
    net = SensitivityNet(num_low_frequencies=low)
    with torch.no_grad():
        maps = net(kspace, mask)
    assert maps.shape == kspace.shape
    rss = maps.pow(2).sum(dim=(1, 4)).sqrt()
    torch.testing.assert_close(rss, torch.ones_like(rss), atol=1e-4, rtol=0)


def test_untrained_sensitivity_net_is_close_to_low_resolution_estimate():
    """With an all-zero U-Net output the maps are exactly low-res coil images / RSS."""
    kspace, mask, _, _ = make_batch(1, 4, 32, 32)
    net = SensitivityNet()
    with torch.no_grad():
        net.unet.out.weight.zero_()
        net.unet.out.bias.zero_()
        maps = to_np(net(kspace, mask))
    acs = calibration_mask(mask).numpy()[:, 0, :, :, 0]
    low = ifft2c(acs[:, None] * to_np(kspace))
    expected = low / np.sqrt(np.sum(np.abs(low) ** 2, axis=1, keepdims=True))
    assert rel_err(maps, expected) < 1e-4


# --- gradients, normalisation layers, Opacus ------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name):
    torch.manual_seed(0)
    kspace, mask, _, image = make_batch(2, 4, 32, 32)
    g = build_generator(name)
    loss = (magnitude(g(kspace, mask)) - magnitude(image)).abs().mean()
    loss.backward()
    for pname, p in g.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert sum(p.grad.abs().sum() for p in g.sens_net.parameters()) > 0
    if name == "unrolled":
        assert len(g.mus) == 3
        for mu in g.mus:
            assert mu.grad.abs().item() > 0


def _all_models():
    return [
        build_generator("unrolled"),
        build_generator("plain"),
        build_generator("unet"),
        build_critic(),
        build_critic(in_channels=2),
        DomainIdentifier(32, 3),
    ]


def test_no_batchnorm_anywhere():
    for model in _all_models():
        for mod in model.modules():
            assert not isinstance(mod, nn.modules.batchnorm._BatchNorm), type(mod)
            assert "BatchNorm" not in type(mod).__name__


def test_opacus_accepts_models_and_computes_per_sample_gradients():
    from opacus import GradSampleModule
    from opacus.validators import ModuleValidator

    for model in _all_models():
        assert ModuleValidator.validate(model, strict=False) == [], type(model).__name__
    torch.manual_seed(0)
    g = UnrolledGenerator(num_cascades=2, chans=4, num_res_blocks=1, sens_chans=4)
    gs = GradSampleModule(g)
    kspace, mask, _, image = make_batch(3, 2, 16, 16)
    out = gs(kspace, mask)
    (magnitude(out) - magnitude(image)).abs().mean().backward()
    for pname, p in g.named_parameters():
        assert p.grad_sample is not None and p.grad_sample.shape == (3, *p.shape), pname
    # Opacus' default loss_reduction="mean": per-sample gradients average to the batch gradient
    for pname, p in g.named_parameters():
        torch.testing.assert_close(p.grad_sample.mean(0), p.grad, rtol=1e-3, atol=1e-6, msg=pname)


# --- FFT backends -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_matmul_and_torch_fft_backends_agree(name):
    torch.manual_seed(0)
    kspace, mask, _, _ = make_batch(2, 4, 33, 47)
    g_torch = build_generator(name, fft_backend="torch")
    g_mm = build_generator(name, fft_backend="matmul")
    g_mm.load_state_dict(g_torch.state_dict())
    with torch.no_grad():
        a, b = g_torch(kspace, mask), g_mm(kspace, mask)
    assert (a - b).abs().max().item() <= 1e-5 * max(1.0, a.abs().max().item())


def test_unknown_fft_backend():
    with pytest.raises(ValueError, match="fft_backend"):
        UnrolledGenerator(fft_backend="cufft")


# --- critic -------------------------------------------------------------------------------------------
def test_critic_layout_and_output():
    critic = WGANCritic()
    convs = [m for m in critic.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 7
    assert [c.out_channels for c in convs] == [4, 8, 16, 32, 32, 32, 1]
    assert [c.in_channels for c in convs] == [1, 4, 8, 16, 32, 32, 32]
    assert [c.stride for c in convs] == [(2, 2)] * 4 + [(1, 1)] * 3
    assert sum(isinstance(m, nn.LeakyReLU) for m in critic.modules()) == 6
    assert all(m.negative_slope == 0.2 for m in critic.modules() if isinstance(m, nn.LeakyReLU))
    for h, w in SIZES:
        x = torch.rand(3, h, w)
        out = critic(x)
        assert out.shape == (3,)
        torch.testing.assert_close(critic(x[:, None]), out)
    complex_critic = WGANCritic(in_channels=2)
    z = torch.randn(2, 33, 47, 2)
    assert complex_critic(z).shape == (2,)
    torch.testing.assert_close(complex_critic(z.permute(0, 3, 1, 2)), complex_critic(z))
    with pytest.raises(ValueError):
        critic(z)


# --- domain identifier / latent features ------------------------------------------------------------
def test_latent_features_and_domain_identifier():
    kspace, mask, _, _ = make_batch(2, 4, 33, 47)
    for g in (UnrolledGenerator(chans=16), PlainGenerator(chans=16)):
        image, latent = g(kspace, mask, return_latent=True)
        assert image.shape == (2, 33, 47, 2) and latent.shape == (2, 16, 33, 47)
        torch.testing.assert_close(g.features(kspace, mask), latent)
        ident = DomainIdentifier(16, num_domains=3)
        logits = ident(grad_reverse(latent, 0.5))
        assert logits.shape == (2, 3)
        nn.functional.cross_entropy(logits, torch.tensor([0, 2])).backward()
        assert all(p.grad is not None for p in ident.parameters())
    with pytest.raises(ValueError):
        UnrolledGenerator(num_cascades=0)(kspace, mask, return_latent=True)
    with pytest.raises(ValueError):
        DomainIdentifier(16, num_domains=1)


def test_grad_reverse_flips_and_scales_gradient():
    x = torch.randn(4, requires_grad=True)
    grad_reverse(x, 0.5).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((4,), -0.5))


# --- registry and sizes ----------------------------------------------------------------------------
def test_registry():
    assert isinstance(build_generator("unrolled"), UnrolledGenerator)
    assert isinstance(build_generator("plain", num_res_blocks=5), PlainGenerator)
    assert isinstance(build_generator("unet", chans=4), UNetGenerator)
    assert isinstance(build_critic(in_channels=2), WGANCritic)
    with pytest.raises(ValueError, match="unknown generator 'gan'.*plain.*unet.*unrolled"):
        build_generator("gan")
    with pytest.raises(TypeError, match="num_cascades"):
        build_generator("plain", num_cascades=3)
    with pytest.raises(TypeError, match="featurez"):
        build_critic(featurez=(1,))


def test_default_parameter_counts():
    counts = {name: num_parameters(build_generator(name)) for name in NAMES}
    sens = num_parameters(SensitivityNet())
    g = UnrolledGenerator()
    assert num_parameters(g) == sens + 3 * num_parameters(g.cascades[0])
    assert len(g.cascades) == 3 and len(g.cascades[0].cnn.body) == 2
    assert len(PlainGenerator().cnn.body) == 5
    # the U-Net baseline has a similar size (within 25 %) to the unrolled generator
    assert abs(counts["unet"] - counts["unrolled"]) < 0.25 * counts["unrolled"]
    assert num_parameters(WGANCritic()) == sum(
        9 * i * o + o for i, o in [(1, 4), (4, 8), (8, 16), (16, 32), (32, 32), (32, 32), (32, 1)]
    )


# --- ONNX export ------------------------------------------------------------------------------------
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_unet_exports_with_dynamic_sizes_and_no_shape_guards(spatial_dims):
    """Plain torch.export (which, unlike torch.onnx.export, fails on unprovable guards) with dynamic H, W."""
    from torch.export import Dim

    from training.models import UNet

    net = UNet(2, 2, chans=2, num_pools=2, spatial_dims=spatial_dims).eval()
    x = torch.randn(2, 2, 32, 32) if spatial_dims == 2 else torch.randn(2, 2, 3, 32, 32)
    dims = {0: Dim("batch"), x.dim() - 2: Dim("height", min=16), x.dim() - 1: Dim("width", min=16)}
    if spatial_dims == 3:
        dims[2] = Dim("coils")
    ep = torch.export.export(net, (x,), dynamic_shapes={"x": dims}, strict=False)
    y = torch.randn(1, 2, 33, 47) if spatial_dims == 2 else torch.randn(1, 2, 5, 33, 47)
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(y), net(y))


@pytest.mark.slow
def test_onnx_export_dynamic_shapes(tmp_path):
    import onnxruntime as ort
    from torch.export import Dim

    torch.manual_seed(0)
    g = UnrolledGenerator(num_cascades=2, chans=4, num_res_blocks=1, sens_chans=4, fft_backend="matmul").eval()
    kspace, mask, _, _ = make_batch(2, 4, 32, 32)
    path = tmp_path / "unrolled.onnx"
    # H, W >= 16 lets torch.export prove every pooled size is >= 2 (no 0/1 guards)
    batch, coils = Dim("batch"), Dim("coils")
    height, width = Dim("height", min=16), Dim("width", min=16)
    torch.onnx.export(
        g,
        (kspace, mask),
        str(path),
        dynamo=True,
        input_names=["kspace", "mask"],
        output_names=["image"],
        dynamic_shapes={"kspace": {0: batch, 1: coils, 2: height, 3: width}, "mask": {0: batch, 2: height, 3: width}},
    )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b, c, h, w, seed in [(2, 4, 32, 32, 5), (1, 3, 33, 47, 6)]:
        kspace, mask, _, _ = make_batch(b, c, h, w, seed=seed)
        with torch.no_grad():
            ref = g(kspace, mask).numpy()
        (out,) = sess.run(None, {"kspace": kspace.numpy(), "mask": mask.numpy()})
        assert out.shape == (b, h, w, 2)
        assert np.abs(out - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
