"""Update compression (training/federation/compression.py, payload.py): float16 and top-k with error feedback."""

from __future__ import annotations

import numpy as np
import pytest

from mrcore.config import ConfigError, build
from training.federation.compression import (
    CompressionConfig,
    compress,
    decompress,
    encode_with_feedback,
    shapes_of,
    topk_count,
    weighted_mean,
)
from training.federation.config import FederationConfig
from training.federation.payload import (
    centre_decode,
    centre_receive_weights,
    from_bytes,
    site_encode,
    site_send_weights,
    to_bytes,
)


def _updates(n_sites: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Generator-like updates: a conv kernel, a bias, a scalar step; heavy-tailed like real gradients."""
    rng = np.random.default_rng(seed)
    return [{"conv.weight": (rng.standard_t(3, (16, 8, 3, 3)) * 1e-3).astype(np.float32),
             "conv.bias": (rng.standard_normal(16) * 1e-2).astype(np.float32),
             "mu": np.asarray([0.05 * rng.standard_normal()], np.float32)} for _ in range(n_sites)]


def _rel_err(a: dict, b: dict) -> float:
    num = sum(float(np.sum((a[k] - b[k]) ** 2)) for k in a)
    return float(np.sqrt(num / sum(float(np.sum(b[k] ** 2)) for k in b)))


def test_float16_average_within_tolerance():
    """fp16 round trip of every site's update: the average is within 1e-3 (relative L2) of the exact one
    (float16's unit roundoff is 2**-11 = 4.9e-4)."""
    ups = _updates(5)
    cfg = CompressionConfig(kind="float16")
    exact = weighted_mean([(u, 1.0) for u in ups])
    got = weighted_mean([(decompress(compress(u, cfg), shapes_of(u), cfg), 1.0) for u in ups])
    assert _rel_err(got, exact) < 1e-3
    assert compress(ups[0], cfg)["values"].dtype == np.float16


def test_topk_is_per_array_and_decodes_in_place():
    """Every array keeps its own top entries (a layer of small values is not starved by a layer of large
    ones), and the decoded arrays have the names, shapes and positions of the update."""
    x = {"big": np.array([[100.0, -200.0], [300.0, 1.0]], np.float32), "small": np.array([0.001, -0.003, 0.002], np.float32)}
    cfg = CompressionConfig(kind="topk", ratio=0.34)  # 2 of 4 and 2 of 3
    d = decompress(compress(x, cfg), shapes_of(x), cfg)
    assert list(d) == ["big", "small"]
    np.testing.assert_array_equal(d["big"], [[0, -200], [300, 0]])
    np.testing.assert_array_equal(d["small"], np.array([0, -0.003, 0.002], np.float32))


def test_topk_keeps_the_largest_entries_and_their_count():
    x = {"w": np.array([0.1, -5.0, 0.2, 3.0, -0.05, 0.0, 1.0, -2.0], np.float32)}
    cfg = CompressionConfig(kind="topk", ratio=0.3)  # ceil(0.3 * 8) = 3 entries
    payload = compress(x, cfg)
    assert topk_count(8, 0.3) == 3
    np.testing.assert_array_equal(payload["idx"], [1, 3, 7])
    np.testing.assert_array_equal(decompress(payload, shapes_of(x), cfg)["w"], [0, -5, 0, 3, 0, 0, 0, -2])
    assert topk_count(10, 1.0) == 10 and topk_count(3, 0.01) == 1


def test_topk_ratio_one_is_exact():
    ups = _updates(2)
    cfg = CompressionConfig(kind="topk", ratio=1.0)
    for u in ups:
        d = decompress(compress(u, cfg), shapes_of(u), cfg)
        assert all(np.array_equal(d[k], u[k]) for k in u)


def test_error_feedback_makes_the_accumulated_sum_converge():
    """Top-k 1 % of a fixed update sent T = 1000 times: with error feedback what the centre has received in total
    tracks T x the update (the gap is one residual, so the relative gap falls like 1/T); without it, the
    same 1 % of entries is sent every time and the gap stays at ~99 % of the mass."""
    u = _updates(1, seed=3)[0]
    cfg_ef = CompressionConfig(kind="topk", ratio=0.01, error_feedback=True)
    cfg_no = CompressionConfig(kind="topk", ratio=0.01, error_feedback=False)
    shapes = shapes_of(u)
    residual = None
    got_ef = {k: np.zeros_like(v) for k, v in u.items()}
    got_no = {k: np.zeros_like(v) for k, v in u.items()}
    gaps = []
    for t in range(1, 1001):
        payload, residual = encode_with_feedback(u, residual, cfg_ef)
        for k, v in decompress(payload, shapes, cfg_ef).items():
            got_ef[k] += v
        for k, v in decompress(encode_with_feedback(u, None, cfg_no)[0], shapes, cfg_no).items():
            got_no[k] += v
        if t in (100, 1000):
            gaps.append(_rel_err(got_ef, {k: t * v for k, v in u.items()}))
    assert gaps[1] < 0.05, gaps
    assert gaps[1] < gaps[0] / 4, gaps  # ~1/T: 10x more sends, at least 4x smaller relative gap
    assert _rel_err(got_no, {k: 1000 * v for k, v in u.items()}) > 0.5
    # the residual is exactly what has not been delivered yet
    for k in u:
        np.testing.assert_allclose(got_ef[k] + residual[k], 1000 * u[k], rtol=1e-3, atol=1e-5)


def test_topk_with_feedback_average_of_sites_within_tolerance_over_rounds():
    """Five sites, each sending top-k 10 % of its update with error feedback over 20 rounds: the running sum
    of the decoded averages is within 10 % (relative L2) of the running sum of the exact averages."""
    cfg = CompressionConfig(kind="topk", ratio=0.1)
    residuals: list = [None] * 5
    exact_sum = got_sum = None
    for r in range(20):
        ups = _updates(5, seed=100 + r % 4)  # sites' updates repeat with period 4, like a slowly moving gradient
        decoded = []
        for i, u in enumerate(ups):
            payload, residuals[i] = encode_with_feedback(u, residuals[i], cfg)
            decoded.append((decompress(payload, shapes_of(u), cfg), 1.0))
        exact, got = weighted_mean([(u, 1.0) for u in ups]), weighted_mean(decoded)
        exact_sum = exact if exact_sum is None else {k: exact_sum[k] + exact[k] for k in exact}
        got_sum = got if got_sum is None else {k: got_sum[k] + got[k] for k in got}
    assert _rel_err(got_sum, exact_sum) < 0.1


@pytest.mark.parametrize("kind,ratio", [("none", 1.0), ("float16", 1.0), ("topk", 0.01), ("topk", 0.1)])
def test_bytes_measured_are_the_payload_and_decode_back(tmp_path, kind, ratio):
    """The bytes a site reports are the serialised payload (Flower's ArrayRecord protobuf), the centre decodes
    exactly those bytes, and compression shrinks them as it should."""
    u = {**_updates(1)[0], "big.weight": np.random.default_rng(5).standard_normal((64, 32, 3, 3)).astype(np.float32)}
    cfg = CompressionConfig(kind=kind, ratio=ratio)
    data, payload = site_encode(u, cfg, tmp_path / "site", 1)
    assert data == to_bytes(payload)
    back = from_bytes(data)
    assert set(back) == set(payload) and all(np.array_equal(back[k], payload[k]) for k in payload)
    decoded = centre_decode(data, shapes_of(u), cfg)
    assert all(decoded[k].shape == u[k].shape for k in u)
    raw = sum(v.nbytes for v in u.values())  # 80 KB of float32
    assert len(data) > {"none": raw, "float16": raw / 2, "topk": 2 * ratio * raw}[kind]  # the data + headers
    assert len(data) < {"none": raw, "float16": raw / 2, "topk": 2 * ratio * raw}[kind] + 600  # two npy/protobuf headers


def test_site_residual_is_private_state_keyed_by_send(tmp_path):
    """Error feedback at a site: the residual after send t is in state_dir/compression/residual_t.npz and the
    next send adds it; re-running send t (a resumed round) starts from the same residual."""
    u = _updates(1)[0]
    cfg = CompressionConfig(kind="topk", ratio=0.05)
    d1, _ = site_encode(u, cfg, tmp_path, 1)
    d2, _ = site_encode(u, cfg, tmp_path, 2)
    d2_again, _ = site_encode(u, cfg, tmp_path, 2)
    assert d2 == d2_again and d1 != d2
    assert sorted(p.name for p in (tmp_path / "compression").glob("*.npz")) == ["residual_000001.npz", "residual_000002.npz"]


def test_fedavg_delta_round_trip(tmp_path):
    old = _updates(1, seed=1)[0]
    new = {k: v + u for (k, v), u in zip(old.items(), _updates(1, seed=2)[0].values(), strict=True)}
    none = CompressionConfig()
    data, payload = site_send_weights(new, old, none, tmp_path, 1)
    assert payload is new and data == to_bytes(new)
    f16 = CompressionConfig(kind="float16")
    data, payload = site_send_weights(new, old, f16, tmp_path, 1)
    back = centre_receive_weights(from_bytes(data), old, f16)
    assert _rel_err({k: back[k] - old[k] for k in old}, {k: new[k] - old[k] for k in old}) < 1e-3


def test_malformed_payload_is_refused():
    u = _updates(1)[0]
    cfg = CompressionConfig(kind="topk", ratio=0.1)
    payload = compress(u, cfg)
    payload["critic.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="extra \\['critic.weight'\\]"):
        decompress(payload, shapes_of(u), cfg)
    good = compress(u, cfg)
    with pytest.raises(ValueError, match="increasing int32 indices"):
        decompress({**good, "idx": good["idx"] + 10**6}, shapes_of(u), cfg)
    with pytest.raises(ValueError, match="increasing int32 indices"):
        decompress({**good, "idx": good["idx"][::-1].copy()}, shapes_of(u), cfg)
    with pytest.raises(ValueError, match="expected float16"):
        decompress({"values": np.zeros(5, np.float16)}, shapes_of(u), CompressionConfig(kind="float16"))


@pytest.mark.parametrize("ratio", [0.0, 0.005, 1.5, -1, float("nan")])
def test_ratio_out_of_range_is_refused_naming_the_key(ratio):
    with pytest.raises(ConfigError, match=r"federation\.compression\.ratio must be in \[0\.01, 1\]"):
        build(FederationConfig, {"compression": {"kind": "topk", "ratio": ratio}}, "federation.")


def test_unknown_kind_and_mode_are_refused():
    with pytest.raises(ConfigError, match="kind"):
        build(FederationConfig, {"compression": {"kind": "int8"}}, "federation.")
    with pytest.raises(ConfigError, match="mode"):
        build(FederationConfig, {"mode": "fedprox"}, "federation.")
    with pytest.raises(ConfigError, match="sync_every"):
        build(FederationConfig, {"mode": "gradient_average", "sync_every": 0}, "federation.")


@pytest.mark.parametrize("other", [{"compression": {"kind": "float16"}}, {"mode": "gradient_average"}])
def test_secure_aggregation_refuses_compression_and_gradient_averaging(other):
    with pytest.raises(ConfigError, match="secure_aggregation runs with federation.mode=fedavg"):
        build(FederationConfig, {"secure_aggregation": {"enabled": True}, **other}, "federation.")
    assert build(FederationConfig, {"secure_aggregation": {"enabled": True}}, "federation.").secure_aggregation.enabled
