"""training.models.unrolled_fast: the v2 generator's invariances and its three data-consistency paths."""

import numpy as np
import pytest
import torch

from mrcore import torch_ops as ops
from mrcore.masks import make_mask
from training.models import unrolled_fast as uf
from training.models.unrolled_fast import FastUnrolledGenerator


def _case(coils, h, w, kind="equispaced", axis=-2, seed=0, batch=1):
    rng = np.random.default_rng(seed)
    k = rng.standard_normal((batch, coils, h, w, 2)).astype(np.float32)
    masks = np.stack([make_mask(kind, (h, w), 4.0, 0.1, seed=seed + i, axis=axis) for i in range(batch)])
    m = torch.from_numpy(masks.astype(np.float32))[:, None, :, :, None]
    return torch.from_numpy(k) * m, m


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    g = FastUnrolledGenerator(num_cascades=2, chans=4, num_pools=2).eval()
    with torch.no_grad():  # make the U-Nets do something (fresh output layers are near zero)
        for cnn in g.cnns:
            cnn.unet.out.weight.normal_(0, 0.3)
    return g


@pytest.mark.parametrize("factor", [1000.0, 1e-3])
def test_global_scale_passes_straight_through(net, factor):
    k, m = _case(4, 40, 36, seed=1)
    with torch.no_grad():
        a, b = net(k, m), net(k * factor, m)
    assert float((b - a * factor).abs().max() / (a * factor).abs().max()) < 1e-4


@pytest.mark.parametrize("coils", [1, 3, 32])
@pytest.mark.parametrize("hw", [(33, 47), (48, 31)])
def test_any_coil_count_and_odd_non_square_size(net, coils, hw):
    k, m = _case(coils, *hw, seed=2)
    with torch.no_grad():
        out = net(k, m)
    assert out.shape == (1, *hw, 2) and torch.isfinite(out).all()


@pytest.mark.parametrize("axis", [-2, -1])
def test_line_mask_paths_equal_the_general_normal_operator(net, axis):
    """The projector paths (rows, columns) compute the same A^H A as the general FFT path."""
    k, m = _case(3, 30, 26, axis=axis, seed=3, batch=2)
    mask = m[:, 0, :, :, 0]
    rows, cols, rp, cp = uf.line_profiles(mask)
    assert bool(rows) == (axis == -2) and bool(cols) == (axis == -1)
    x = (torch.randn(2, 30, 26, dtype=torch.float32), torch.randn(2, 30, 26))
    maps = (torch.randn(2, 3, 30, 26), torch.randn(2, 3, 30, 26))
    args = (*x, mask, *maps, *uf._transpose(maps), *ops.line_projector(rp), *ops.line_projector(cp), cols)
    fast = (uf._gram_rows if axis == -2 else uf._gram_cols)(*args)
    general = uf._gram_general(*args)
    for f, g in zip(fast, general):
        assert float((f - g).abs().max() / g.abs().max()) < 1e-5


def test_two_dimensional_masks_take_the_general_path(net):
    k, m = _case(2, 64, 64, kind="poisson", seed=4)
    rows, cols, _, _ = uf.line_profiles(m[:, 0, :, :, 0])
    assert not bool(rows) and not bool(cols)
    with torch.no_grad():
        assert torch.isfinite(net(k, m)).all()


def test_with_silent_cnns_single_coil_returns_the_zero_filled_image():
    """Zero U-Net outputs: x0 = A^H y is a fixed point of the DC step (single coil, unit-modulus map), so the
    output is the zero-filled image in the input's scale; a bug in the scaling or the projector breaks this."""
    torch.manual_seed(0)
    g = FastUnrolledGenerator(num_cascades=2, chans=4, num_pools=1).eval()
    with torch.no_grad():
        for cnn in g.cnns:
            for p in cnn.unet.out.parameters():
                p.zero_()
    k, m = _case(1, 32, 30, seed=5)
    with torch.no_grad():
        out = ops.complex_abs(g(k * 37.0, m))
    zero_filled = ops.rss(ops.ifft2c(k * 37.0, "torch"), dim=1)
    # (only where the calibration image vanishes does the maps' noise floor make |S| < 1)
    assert float(torch.linalg.norm(out - zero_filled) / torch.linalg.norm(zero_filled)) < 1e-3
