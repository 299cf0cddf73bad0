"""The real tritonserver with the shipped model repository: launcher, repository checks, client."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from mrcore.intensity import robust_scale
from mrcore.masks import make_mask
from serving.client import InferenceUnavailable, TritonClient, UnknownModel
from serving.repository import RepositoryError, check_repository
from serving.triton import TritonServer, TritonStartError
from tests.conftest import ROOT, free_port, triton_settings
from training.export.onnx_io import ort_session, relative_error

pytestmark = pytest.mark.e2e
REPO = ROOT / "model_repository"


def shipped_models() -> list[str]:
    return sorted(p.name for p in REPO.iterdir() if p.is_dir())


def undersampled(slices: int, coils: int, ky: int, kx: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    k = (rng.standard_normal((slices, coils, ky, kx)) + 1j * rng.standard_normal((slices, coils, ky, kx))).astype(np.complex64)
    mask = make_mask("equispaced", (ky, kx), 4, 0.125)
    return k * mask, mask


def newest(name: str) -> str:
    return str(max(int(p.name) for p in (REPO / name).iterdir() if p.name.isdigit()))


def onnx_reference(name: str, feed: dict[str, np.ndarray], output: str, version: str | None = None) -> np.ndarray:
    """``model.onnx`` of ``version`` (default: the newest, which Triton serves unless a request pins one)."""
    return ort_session(REPO / name / (version or newest(name)) / "model.onnx").run([output], feed)[0]


def test_shipped_repository_is_valid_and_holds_the_recon_model():
    entries = check_repository(REPO)
    names = [e.name for e in entries]
    assert "recon_unrolled" in names
    for e in entries:
        assert e.card["name"] == e.name and e.card["version"] == e.version
        assert e.card["export"]["parity_max_relative_error"] <= 1e-5
        assert e.card["metrics"], f"{e.name}: model card has no held-out/validation metrics"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("slices", [1, 9])  # 9 > max_batch_size 8: sent in two requests
def test_triton_reconstruction_equals_in_process_onnxruntime(triton_server, protocol, slices):
    url = triton_server.http_url if protocol == "http" else triton_server.grpc_url
    k, mask = undersampled(slices, 8, 64, 48, seed=slices)
    feed = {"kspace": np.stack([k.real, k.imag], -1).astype(np.float32),
            "mask": np.broadcast_to(mask, (slices, 64, 48)).astype(np.float32)}
    with TritonClient(url, protocol) as client:
        out = client.reconstruct(k, mask)
        inferred = client.reconstruct(k)  # mask inferred from the non-zero samples
        cplx = client.reconstruct(k, mask, complex_output=True)
    ref = onnx_reference("recon_unrolled", feed, "magnitude")
    assert out.shape == (slices, 64, 48) and out.dtype == np.float32
    assert relative_error(out, ref) <= 1e-5
    assert relative_error(inferred, ref) <= 1e-5
    np.testing.assert_allclose(np.abs(cplx), out, rtol=1e-4, atol=1e-6 * float(out.max()))


def test_triton_serves_odd_non_square_matrices_and_any_coil_count(triton_url):
    k, mask = undersampled(2, 3, 97, 75, seed=3)
    with TritonClient(triton_url) as client:
        out = client.reconstruct(k, mask)
    feed = {"kspace": np.stack([k.real, k.imag], -1).astype(np.float32), "mask": np.broadcast_to(mask, (2, 97, 75)).astype(np.float32)}
    assert relative_error(out, onnx_reference("recon_unrolled", feed, "magnitude")) <= 1e-5


def test_recon_versions_are_served_side_by_side(triton_url):
    """Every version of recon_unrolled stays loaded (version_policy all); a request pins one, or gets the newest."""
    versions = sorted((p.name for p in (REPO / "recon_unrolled").iterdir() if p.name.isdigit()), key=int)
    assert len(versions) >= 2, "v1 and the newest must both be shipped"
    k, mask = undersampled(1, 4, 40, 36, seed=5)
    feed = {"kspace": np.stack([k.real, k.imag], -1).astype(np.float32), "mask": mask[None].astype(np.float32)}
    with TritonClient(triton_url) as client:
        default = client.reconstruct(k, mask)
        for v in versions:
            pinned = client.reconstruct(k, mask, version=v)
            assert relative_error(pinned, onnx_reference("recon_unrolled", feed, "magnitude", v)) <= 1e-5, v
        with pytest.raises(UnknownModel, match="version 99"):
            client.reconstruct(k, mask, version="99")
    assert relative_error(default, onnx_reference("recon_unrolled", feed, "magnitude")) <= 1e-5


def test_more_coils_than_the_model_takes_are_compressed_by_the_client(triton_url):
    """The newest recon model declares virtual_coils; 16 coils reach it as that many SVD-compressed coils."""
    from mrcore.coils import compress_coils

    k, mask = undersampled(2, 16, 48, 40, seed=6)
    with TritonClient(triton_url) as client:
        virtual = client.virtual_coils("recon_unrolled")
        assert virtual is not None and virtual < 16
        out = client.reconstruct(k, mask)
    compressed = np.stack([compress_coils(s, virtual, mask) for s in k])
    assert compressed.shape[1] == virtual
    feed = {"kspace": np.stack([compressed.real, compressed.imag], -1).astype(np.float32),
            "mask": np.broadcast_to(mask, (2, 48, 40)).astype(np.float32)}
    assert relative_error(out, onnx_reference("recon_unrolled", feed, "magnitude")) <= 1e-5


def test_every_synthesis_model_equals_onnxruntime(triton_url):
    synth = [n for n in shipped_models() if n.startswith("synth_")]
    if not synth:
        pytest.fail("the shipped repository holds no synthesis model")
    rng = np.random.default_rng(1)
    x = rng.random((3, 61, 77)).astype(np.float32) * 400
    with TritonClient(triton_url) as client:
        for name in synth:
            out = client.synthesize(x, "", "", model=name)
            ref = onnx_reference(name, {"image": (x / robust_scale(x))[:, None]}, "synthesized")[:, 0]  # as the client sends it
            assert relative_error(out, ref) <= 1e-5, name


def test_client_errors_name_the_problem(triton_url):
    k, mask = undersampled(1, 4, 32, 32)
    with TritonClient(triton_url) as client:
        assert client.is_ready(("recon_unrolled",))
        with pytest.raises(ValueError, match="complex64"):
            client.reconstruct(np.abs(k))
        with pytest.raises(ValueError, match="mask must be"):
            client.reconstruct(k, np.ones((31, 32), np.float32))
        bad = k.copy()
        bad[0, 0, 0, 0] = np.nan
        with pytest.raises(ValueError, match="NaN"):
            client.reconstruct(bad)
        with pytest.raises(UnknownModel, match="synth_pd_to_flair"):
            client.synthesize(np.ones((1, 32, 32), np.float32), "PD", "FLAIR")


def test_unreachable_triton_is_reported_as_unavailable():
    with TritonClient(f"127.0.0.1:{free_port()}", timeout_s=2) as client:
        assert not client.is_ready()
        k, mask = undersampled(1, 2, 32, 32)
        with pytest.raises(InferenceUnavailable, match="unreachable"):
            client.reconstruct(k, mask)


# --- the launcher's refusals ---------------------------------------------------------------------
@pytest.fixture
def repo_copy(tmp_path) -> Path:
    """A copy of the shipped recon model with the project's .venv next to it (EXECUTION_ENV_PATH)."""
    repo = tmp_path / "model_repository"
    repo.mkdir()
    shutil.copytree(REPO / "recon_unrolled", repo / "recon_unrolled")
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    return repo


def test_missing_model_onnx_is_refused_before_start(repo_copy):
    (repo_copy / "recon_unrolled" / "1" / "model.onnx").unlink()
    with pytest.raises(RepositoryError, match=r"model 'recon_unrolled': 1/model.onnx is missing"):
        TritonServer(triton_settings(repo_copy)).start()


def test_config_not_matching_the_onnx_inputs_is_refused(repo_copy):
    cfg = repo_copy / "recon_unrolled" / "configs" / "cpu.pbtxt"
    cfg.write_text(cfg.read_text().replace('name: "mask"', 'name: "sampling_mask"'))
    with pytest.raises(RepositoryError, match=r"'recon_unrolled'.*sampling_mask.*mask"):
        TritonServer(triton_settings(repo_copy)).start()


def test_missing_execution_environment_is_refused(repo_copy):
    (repo_copy.parent / ".venv").unlink()
    with pytest.raises(RepositoryError, match="EXECUTION_ENV_PATH"):
        TritonServer(triton_settings(repo_copy)).start()


def test_gpu_requested_without_gpu_fails_loudly_and_cleans_up(repo_copy):
    cfg = repo_copy / "recon_unrolled" / "configs" / "cpu.pbtxt"
    cfg.write_text(cfg.read_text().replace('string_value: "cpu"', 'string_value: "cuda"'))
    server = TritonServer(triton_settings(repo_copy, startup_timeout_s=60))
    with pytest.raises(TritonStartError, match=r"recon_unrolled.*device=cuda.*ONNX Runtime runs on"):
        server.start()
    assert server.process is None
    assert not list(Path("/dev/shm").glob(f"{server.shm_prefix}*"))


def test_gpu_configuration_needs_the_ngc_container(repo_copy):
    with pytest.raises(TritonStartError, match="NGC Triton container"):
        TritonServer(triton_settings(repo_copy, model_config_name=None)).start()


def test_not_ready_in_time_is_an_error_and_the_process_is_stopped(repo_copy):
    server = TritonServer(triton_settings(repo_copy, startup_timeout_s=0.01))
    with pytest.raises(TritonStartError, match="not ready within"):
        server.start()
    assert server.process is None


def test_stop_removes_shared_memory_regions(repo_copy):
    server = TritonServer(triton_settings(repo_copy))
    with server:
        assert list(Path("/dev/shm").glob(f"{server.shm_prefix}*")), "the python backend should use shared memory"
    assert not list(Path("/dev/shm").glob(f"{server.shm_prefix}*"))
