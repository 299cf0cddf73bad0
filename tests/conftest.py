"""Test-wide settings: small tensors run fastest single-threaded on the 2-core CI machine."""

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch

torch.set_num_threads(1)


# --- a real tritonserver serving the shipped model_repository (session-wide) -------------------------
from pathlib import Path  # noqa: E402 - after torch's thread setting, as the section says

import pytest  # noqa: E402 - likewise

from benchmarks.common import free_port  # noqa: E402  (tests import it from here)

ROOT = Path(__file__).resolve().parents[1]


def cli_text(result) -> str:
    """A typer/click ``CliRunner`` result's output as one line: rich wraps error messages in a box."""
    return " ".join(result.output.replace("│", " ").split())


def triton_settings(repository: Path, **kwargs):
    from serving.triton import TritonSettings

    return TritonSettings(repository=repository, http_port=free_port(), grpc_port=free_port(),
                          metrics_port=free_port(), **kwargs)


@pytest.fixture(scope="session")
def triton_server():
    """The real tritonserver binary (nvidia-pytriton wheel) with the shipped model repository, CPU config."""
    from serving.triton import TritonServer

    server = TritonServer(triton_settings(ROOT / "model_repository"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def triton_url(triton_server) -> str:
    """"127.0.0.1:<port>" of the session's Triton HTTP endpoint."""
    return triton_server.http_url


@pytest.fixture(scope="session")
def triton_grpc_url(triton_server) -> str:
    """"127.0.0.1:<port>" of the session's Triton gRPC endpoint."""
    return triton_server.grpc_url
