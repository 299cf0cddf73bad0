"""Checks of a Triton model repository before the server starts: every problem named with its model.

A hospital's engineer gets "model 'recon_unrolled': 1/model.onnx is missing" instead of a server
that hangs or exits with a backend stack trace.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2


class RepositoryError(ValueError):
    """The model repository cannot be served; the message names the model and the cause."""


@dataclass(frozen=True)
class ModelEntry:
    """One servable model directory: name, newest version, its config file and model card."""

    name: str
    version: int
    config_path: Path
    card: dict


def parse_config(path: Path):
    """``config.pbtxt`` -> ``tritonclient.grpc.model_config_pb2.ModelConfig`` (RepositoryError when malformed)."""
    try:
        return text_format.Parse(Path(path).read_text(), model_config_pb2.ModelConfig())
    except (text_format.ParseError, OSError) as exc:
        raise RepositoryError(f"{path}: not a valid Triton model configuration ({exc})") from None


def _onnx_io(path: Path) -> tuple[dict[str, int], dict[str, int]]:
    """``({input: rank}, {output: rank})`` of an ONNX file, read without loading the weights' data."""
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf decode errors have many types
        raise RepositoryError(f"{path}: not a readable ONNX model ({exc})") from None

    def rank(v) -> int:
        return len(v.type.tensor_type.shape.dim)

    return {v.name: rank(v) for v in proto.graph.input}, {v.name: rank(v) for v in proto.graph.output}


def _check_version(name: str, vdir: Path, cfg, config_path: Path) -> None:
    """One version directory: ``model.onnx`` (and ``model.py`` for the python backend) whose inputs and outputs
    have the config's names and ranks (batch axis included)."""
    version = vdir.name
    onnx_path = vdir / "model.onnx"
    if not onnx_path.is_file():
        raise RepositoryError(f"model {name!r}: {version}/model.onnx is missing")
    if cfg.backend == "python" and not (vdir / "model.py").is_file():
        raise RepositoryError(f"model {name!r}: {version}/model.py (the ONNX Runtime runner) is missing")
    inputs, outputs = _onnx_io(onnx_path)
    batch = 1 if cfg.max_batch_size > 0 else 0
    for kind, declared, actual in (("input", cfg.input, inputs), ("output", cfg.output, outputs)):
        want = {t.name: len(t.dims) + batch for t in declared}
        if list(want) != list(actual):
            raise RepositoryError(f"model {name!r}: config {kind}s {list(want)} do not match {version}/model.onnx "
                                  f"{kind}s {list(actual)}")
        for tname, r in want.items():
            if actual[tname] != r:
                raise RepositoryError(f"model {name!r}: {kind} {tname!r} has rank {actual[tname]} in {version}/model.onnx "
                                      f"but {r} in {config_path.name} (dims plus batch axis)")


def check_model(model_dir: Path, config_name: str | None = "cpu") -> ModelEntry:
    """Validate one model directory for the configuration ``config_name`` (None: ``config.pbtxt``).

    Checks: the config exists and parses, its name is the directory's, every numeric version directory
    holds ``model.onnx`` (and ``model.py`` for the python backend), and each ONNX graph's inputs and
    outputs have the config's names and ranks (batch axis included). Returns the newest version's entry.
    """
    model_dir = Path(model_dir)
    name = model_dir.name
    config_path = model_dir / "configs" / f"{config_name}.pbtxt" if config_name else model_dir / "config.pbtxt"
    if not config_path.is_file():
        raise RepositoryError(f"model {name!r}: {config_path} is missing")
    cfg = parse_config(config_path)
    if cfg.name and cfg.name != name:
        raise RepositoryError(f"model {name!r}: {config_path} names the model {cfg.name!r}")
    versions = sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
    if not versions:
        raise RepositoryError(f"model {name!r}: no numeric version directory (e.g. {model_dir}/1/)")
    env = cfg.parameters.get("EXECUTION_ENV_PATH")
    if env is not None and env.string_value:
        resolved = Path(env.string_value.replace("$$TRITON_MODEL_DIRECTORY", str(model_dir.resolve())))
        if not (resolved / "bin" / "python").exists() and not resolved.is_file():
            raise RepositoryError(f"model {name!r}: EXECUTION_ENV_PATH {env.string_value!r} resolves to {resolved}, "
                                  "which is not a Python environment (the CPU configuration expects the project's "
                                  ".venv next to the model repository)")
    for version in versions:  # every version directory: a version policy may load any of them
        _check_version(name, model_dir / str(version), cfg, config_path)
    version = versions[-1]
    vdir = model_dir / str(version)
    card_path = vdir / "model_card.json"
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    return ModelEntry(name, version, config_path, card)


def check_repository(repo: Path, config_name: str | None = "cpu") -> list[ModelEntry]:
    """Validate every model directory of ``repo``; RepositoryError on the first problem or when empty."""
    repo = Path(repo)
    if not repo.is_dir():
        raise RepositoryError(f"model repository {repo} does not exist")
    dirs = sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise RepositoryError(f"model repository {repo} holds no model directories (run 'make export')")
    return [check_model(d, config_name) for d in dirs]
