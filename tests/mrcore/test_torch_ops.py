"""mrcore.torch_ops: torch twins of mrcore.fft / mrcore.sense on (real, imag) tensors, two FFT back-ends."""

import numpy as np
import pytest
import torch

from mrcore import fft as npfft
from mrcore import sense as npsense
from mrcore import torch_ops as ops

BACKENDS = ("torch", "matmul")
SHAPES = [(255, 257), (33, 47), (320, 288), (8, 8), (1, 5)]


def _cplx(shape, seed, dtype=np.complex64):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _setup(b=2, c=3, h=33, w=47, seed=0):
    image = _cplx((b, h, w), seed)
    maps = _cplx((b, c, h, w), seed + 1)
    maps /= np.sqrt(np.sum(np.abs(maps) ** 2, axis=1, keepdims=True))
    mask = (np.random.default_rng(seed + 2).random((b, h, w)) < 0.4).astype(np.float32)
    kspace = _cplx((b, c, h, w), seed + 3)
    return image, maps.astype(np.complex64), mask, kspace


def _tmask(mask):
    return torch.from_numpy(mask)[:, None, :, :, None]  # [B, 1, H, W, 1]


# --- conversions and complex arithmetic -------------------------------------------------------------
def test_numpy_round_trip():
    a = _cplx((2, 3, 5), 0)
    t = ops.from_complex_numpy(a)
    assert t.dtype == torch.float32 and t.shape == (2, 3, 5, 2)
    np.testing.assert_array_equal(t[..., 0].numpy(), a.real)
    np.testing.assert_array_equal(t[..., 1].numpy(), a.imag)
    back = ops.to_complex_numpy(t)
    assert back.dtype == np.complex64
    np.testing.assert_array_equal(back, a)
    assert ops.to_complex_numpy(ops.from_complex_numpy(a, torch.float64)).dtype == np.complex128
    with pytest.raises(ValueError, match="a must be complex64"):
        ops.from_complex_numpy(a.real)


def test_complex_arithmetic():
    a, b = _cplx((4, 6), 1), _cplx((4, 6), 2)
    ta, tb = ops.from_complex_numpy(a), ops.from_complex_numpy(b)
    np.testing.assert_allclose(ops.to_complex_numpy(ops.complex_mul(ta, tb)), a * b, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ops.to_complex_numpy(ops.complex_conj(ta)), np.conj(a))
    np.testing.assert_allclose(ops.complex_abs(ta).numpy(), np.abs(a), rtol=1e-6)


@pytest.mark.parametrize("n", [1, 2, 7, 8, 33])
def test_fftshift_matches_numpy(n):
    x = torch.arange(3 * n * (n + 1) * 2, dtype=torch.float32).reshape(3, n, n + 1, 2)
    expected = np.fft.fftshift(x.numpy(), axes=(1, 2))
    np.testing.assert_array_equal(ops.fftshift(x).numpy(), expected)
    np.testing.assert_array_equal(ops.ifftshift(x).numpy(), np.fft.ifftshift(x.numpy(), axes=(1, 2)))
    np.testing.assert_array_equal(ops.ifftshift(ops.fftshift(x)).numpy(), x.numpy())


# --- FFT ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_fft_matches_numpy(backend, shape):
    x = _cplx((2,) + shape, 4)
    t = ops.from_complex_numpy(x)
    ref = npfft.fft2c(x.astype(np.complex128))
    iref = npfft.ifft2c(x.astype(np.complex128))
    assert _rel(ops.to_complex_numpy(ops.fft2c(t, backend=backend)), ref) < 1e-5
    assert _rel(ops.to_complex_numpy(ops.ifft2c(t, backend=backend)), iref) < 1e-5


@pytest.mark.parametrize("shape", SHAPES)
def test_matmul_equals_torch_backend(shape):
    t = ops.from_complex_numpy(_cplx((3,) + shape, 5))
    for f in (ops.fft2c, ops.ifft2c):
        a, b = f(t, backend="matmul"), f(t, backend="torch")
        assert float((a - b).norm() / b.norm()) < 1e-5


# --- SENSE ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("hw", [(33, 47), (16, 16)])
def test_sense_matches_numpy(backend, hw):
    image, maps, mask, kspace = _setup(h=hw[0], w=hw[1])
    ti, tm, tk = map(ops.from_complex_numpy, (image, maps, kspace))
    forward = ops.to_complex_numpy(ops.sense_forward(ti, tm, _tmask(mask), backend=backend))
    adjoint = ops.to_complex_numpy(ops.sense_adjoint(tk, tm, _tmask(mask), backend=backend))
    for i in range(image.shape[0]):
        assert _rel(forward[i], npsense.sense_forward(image[i], maps[i], mask[i])) < 1e-5
        assert _rel(adjoint[i], npsense.sense_adjoint(kspace[i], maps[i], mask[i])) < 1e-5
    # a single mask broadcast over the batch, and no mask
    shared = ops.to_complex_numpy(ops.sense_forward(ti, tm, _tmask(mask[:1]), backend=backend))
    assert _rel(shared[1], npsense.sense_forward(image[1], maps[1], mask[0])) < 1e-5
    full = ops.to_complex_numpy(ops.sense_adjoint(tk, tm, None, backend=backend))
    assert _rel(full[0], npsense.sense_adjoint(kspace[0], maps[0])) < 1e-5


def test_expand_reduce_and_rss_match_numpy():
    image, maps, _, kspace = _setup()
    ti, tm, tk = map(ops.from_complex_numpy, (image, maps, kspace))
    coils = ops.to_complex_numpy(ops.sense_expand(ti, tm))
    np.testing.assert_allclose(coils, maps * image[:, None], rtol=1e-5, atol=1e-6)
    reduced = ops.to_complex_numpy(ops.sense_reduce(tk, tm))
    np.testing.assert_allclose(reduced, np.sum(np.conj(maps) * kspace, axis=1), rtol=1e-5, atol=1e-5)
    out = ops.rss(tk)
    assert out.shape == (2, 33, 47)
    for i in range(2):
        np.testing.assert_allclose(out[i].numpy(), npsense.rss(kspace[i]), rtol=1e-5)
    np.testing.assert_array_equal(ops.rss_complex(tk).numpy(), out.numpy())
    np.testing.assert_allclose(ops.rss(tk, dim=0).numpy(), npsense.rss(kspace, axis=0), rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_adjointness(backend):
    image, maps, mask, kspace = _setup(h=31, w=24, seed=7)
    ti, tm, tk, tmask = *map(ops.from_complex_numpy, (image, maps, kspace)), _tmask(mask)
    forward = ops.to_complex_numpy(ops.sense_forward(ti, tm, tmask, backend=backend)).astype(np.complex128)
    adjoint = ops.to_complex_numpy(ops.sense_adjoint(tk, tm, tmask, backend=backend)).astype(np.complex128)
    lhs = np.vdot(forward, kspace.astype(np.complex128))
    rhs = np.vdot(image.astype(np.complex128), adjoint)
    assert abs(lhs - rhs) <= 1e-5 * abs(lhs)


# --- autograd -------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_flow(backend):
    image, maps, mask, kspace = _setup(h=20, w=17, seed=9)
    x = ops.from_complex_numpy(image).requires_grad_(True)
    tm, tk, tmask = ops.from_complex_numpy(maps), ops.from_complex_numpy(kspace), _tmask(mask)
    with torch.no_grad():
        x[0, 0, 0] = 0  # a zero pixel: the magnitude must not produce NaN gradients
    residual = ops.sense_forward(x, tm, tmask, backend=backend) - tk * tmask
    back = ops.sense_adjoint(residual, tm, tmask, backend=backend)
    loss = (residual**2).sum() + ops.complex_abs(back).sum() + ops.rss(ops.sense_expand(x, tm)).sum()
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_gradients_agree_between_backends():
    image, maps, mask, _ = _setup(h=15, w=22, seed=11)
    grads = []
    for backend in BACKENDS:
        x = ops.from_complex_numpy(image).requires_grad_(True)
        k = ops.sense_forward(x, ops.from_complex_numpy(maps), _tmask(mask), backend=backend)
        ops.rss(ops.ifft2c(k, backend=backend)).sum().backward()
        grads.append(x.grad)
    assert float((grads[0] - grads[1]).norm() / grads[1].norm()) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck(backend):
    x = torch.randn(1, 3, 4, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ops.fft2c(t, backend=backend), (x,))
    assert torch.autograd.gradcheck(lambda t: ops.ifft2c(t, backend=backend), (x,))


# --- validation -----------------------------------------------------------------------------------
def test_validation():
    x = torch.zeros(1, 3, 8, 8, 2)
    with pytest.raises(ValueError, match="trailing"):
        ops.fft2c(torch.zeros(1, 8, 8, 3))
    with pytest.raises(ValueError, match="x must be a real floating tensor"):
        ops.fft2c(torch.zeros(8, 8, 2, dtype=torch.complex64))
    with pytest.raises(ValueError, match="unknown backend 'cufft'"):
        ops.ifft2c(x, backend="cufft")
    with pytest.raises(ValueError, match="mask must be a real tensor broadcastable"):
        ops.sense_forward(torch.zeros(1, 8, 8, 2), x, torch.ones(8, 8))
    with pytest.raises(ValueError, match="image must be"):
        ops.sense_expand(x, x)
    with pytest.raises(ValueError, match="dim must index"):
        ops.rss(x, dim=4)


# --- ONNX export of the matmul back-end with dynamic H, W -------------------------------------------
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
def test_onnx_export_dynamic_shapes(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")

    class Model(torch.nn.Module):
        def forward(self, kspace, maps, mask):
            image = ops.sense_adjoint(kspace, maps, mask, backend="matmul")
            return ops.rss(ops.ifft2c(ops.sense_forward(image, maps, mask, backend="matmul"), backend="matmul"))

    h, w = torch.export.Dim("H", min=2, max=512), torch.export.Dim("W", min=2, max=512)
    dyn = {2: h, 3: w}
    image, maps, mask, kspace = _setup(b=1, c=2, h=16, w=20)
    args = tuple(map(ops.from_complex_numpy, (kspace, maps))) + (_tmask(mask),)
    program = torch.onnx.export(Model().eval(), args, dynamic_shapes=(dyn, dyn, dyn), dynamo=True, verbose=False)
    path = tmp_path / "sense.onnx"
    program.save(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for hw in [(33, 47), (24, 24)]:  # sizes other than the traced one, odd included
        image, maps, mask, kspace = _setup(b=1, c=2, h=hw[0], w=hw[1], seed=3)
        inputs = tuple(map(ops.from_complex_numpy, (kspace, maps))) + (_tmask(mask),)
        (out,) = session.run(None, {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)})
        ref = Model()(*inputs).numpy()
        assert out.shape == ref.shape == (1,) + hw
        assert _rel(out, ref) < 1e-5


@pytest.mark.slow
def test_torch_export_dynamic_shapes_torch_backend():
    """The narrow + cat centring exports with dynamic H, W (Dim.DYNAMIC; sizes >= 4, odd included)."""

    class Model(torch.nn.Module):
        def forward(self, x):
            return ops.ifft2c(ops.fft2c(x, backend="torch") * 2, backend="torch")

    program = torch.export.export(Model(), (torch.randn(1, 16, 21, 2),),
                                  dynamic_shapes=({1: torch.export.Dim.DYNAMIC, 2: torch.export.Dim.DYNAMIC},))
    for hw in [(33, 47), (8, 9), (4, 5)]:
        x = torch.randn(1, *hw, 2)
        torch.testing.assert_close(program.module()(x), Model()(x), rtol=1e-5, atol=1e-5)


# --- the line-mask normal operator of the v2 generator ----------------------------------------------
@pytest.mark.parametrize("hw", [(16, 12), (17, 23), (33, 47)])
@pytest.mark.parametrize("axis", [-2, -1])
def test_gram_lines_equals_the_sense_normal_operator(hw, axis):
    """A^H A through the phase-encode projector P = F^H diag(m) F equals mask * FFT ... IFFT exactly."""
    h, w = hw
    image, maps, _, _ = _setup(h=h, w=w, seed=7)
    rng = np.random.default_rng(3)
    profile = (rng.random((2, h if axis == -2 else w)) < 0.4).astype(np.float64)
    mask = profile[:, :, None] * np.ones((1, 1, w)) if axis == -2 else profile[:, None, :] * np.ones((1, h, 1))
    x, s = ops.from_complex_numpy(image, torch.float64), ops.from_complex_numpy(maps, torch.float64)
    m = torch.from_numpy(mask)[:, None, :, :, None]
    want = ops.sense_adjoint(ops.sense_forward(x, s, m), s, m)
    got = ops.gram_lines(x, s, ops.line_projector(torch.from_numpy(profile)), axis)
    assert float((got - want).abs().max() / want.abs().max()) < 1e-12


def test_line_projector_is_hermitian_and_idempotent():
    profile = torch.from_numpy((np.random.default_rng(0).random((1, 21)) < 0.5).astype(np.float64))
    re, im = ops.line_projector(profile)
    p = torch.complex(re, im)[0]
    assert torch.allclose(p, p.conj().T, atol=1e-12)
    assert torch.allclose(p @ p, p, atol=1e-12)  # a projector: sampling twice samples the same lines
    assert abs(float(torch.trace(p).real) - float(profile.sum())) < 1e-9


@pytest.mark.parametrize("shape", [(255, 257), (16, 9)])
def test_dft2_pair_matches_numpy(shape):
    a = _cplx((2, *shape), 5, np.complex128)
    t = ops.from_complex_numpy(a, torch.float64)
    for inverse, ref in ((False, npfft.fft2c(a)), (True, npfft.ifft2c(a))):
        re, im = ops.dft2_pair((t[..., 0], t[..., 1]), inverse=inverse)
        assert _rel(re.numpy() + 1j * im.numpy(), ref) < 1e-12


@pytest.mark.parametrize(("hw", "band"), [((100, 70), 64), ((40, 33), 64), ((17, 90), 16)])
def test_centre_band_idft_is_the_inverse_dft_of_the_central_block(hw, band):
    h, w = hw
    a = _cplx((2, 3, h, w), 9, np.complex128)
    box = np.zeros((h, w))
    box[max(0, h // 2 - band // 2): h // 2 - band // 2 + band, max(0, w // 2 - band // 2): w // 2 - band // 2 + band] = 1
    t = ops.from_complex_numpy(a, torch.float64)
    re, im = ops.centre_band_idft2_pair((t[..., 0], t[..., 1]), band)
    assert _rel(re.numpy() + 1j * im.numpy(), npfft.ifft2c(a * box)) < 1e-12
