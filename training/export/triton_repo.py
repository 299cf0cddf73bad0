"""One model directory of a Triton model repository, written from a :class:`ServableModel`::

    model_repository/<name>/
        config.pbtxt            stock NGC Triton container: backend onnxruntime, KIND_GPU, dynamic batching
        configs/cpu.pbtxt       hosts without Docker/GPU: python backend running ONNX Runtime on CPU
                                (tritonserver --model-config-name=cpu)
        <version>/model.onnx    the exported graph (data consistency and coil-map estimation inside)
        <version>/model.py      the python backend's ONNX Runtime runner (serving/python_backend/model.py)
        <version>/model_card.json, model_card.md

Both configurations declare the same tensors, derived from the ONNX graph's declared inputs/outputs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mrcore.durable import fsync_dir, write_durable
from training.report import markdown_table

from .spec import ServableModel, TensorSpec

#: the python backend runner copied next to every model.onnx
RUNNER = Path(__file__).resolve().parents[2] / "serving" / "python_backend" / "model.py"
TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64"}
MAX_BATCH_SIZE = 8
QUEUE_DELAY_US = 2000
CPU_CONFIG = "cpu"
#: the python stub runs in isolated mode: it sees numpy/onnxruntime through this environment, the
#: project's virtual environment next to model_repository/ (Triton substitutes the model directory)
EXECUTION_ENV = "$$TRITON_MODEL_DIRECTORY/../../.venv"


def _tensors(kind: str, specs: list[TensorSpec]) -> str:
    items = []
    for t in specs:
        dims = ", ".join(str(d) for d in t.triton_dims)
        items.append(f'  {{\n    name: "{t.name}"\n    data_type: {TRITON_DTYPES[t.dtype]}\n    dims: [ {dims} ]\n  }}')
    return f"{kind} [\n" + ",\n".join(items) + "\n]\n"


def config_text(model: ServableModel, gpu: bool) -> str:
    """``config.pbtxt`` (``gpu=True``: onnxruntime backend, KIND_GPU) or the CPU python-backend variant."""
    head = f'name: "{model.name}"\n'
    if gpu:
        head += 'backend: "onnxruntime"\ndefault_model_filename: "model.onnx"\n'
    else:
        head += 'backend: "python"\n'
    text = head + f"max_batch_size: {MAX_BATCH_SIZE}\n" + _tensors("input", model.inputs) + _tensors("output", model.outputs)
    text += f"instance_group [\n  {{\n    count: 1\n    kind: {'KIND_GPU' if gpu else 'KIND_CPU'}\n  }}\n]\n"
    text += f"dynamic_batching {{\n  max_queue_delay_microseconds: {QUEUE_DELAY_US}\n}}\n"
    text += "version_policy: { all { } }\n" if model.all_versions else "version_policy: { latest: { num_versions: 1 } }\n"
    params = dict(model.parameters)
    if not gpu:
        params.update({"intra_op_threads": "0", "device": "cpu", "EXECUTION_ENV_PATH": EXECUTION_ENV})
    for key, value in params.items():
        text += f'parameters: {{\n  key: "{key}"\n  value: {{ string_value: "{value}" }}\n}}\n'
    return text


def card_markdown(card: dict) -> str:
    """A human-readable model card from the JSON card."""
    lines = [f"# {card['name']} (version {card['version']})", "", card.get("description", ""), ""]
    if card.get("limitations"):
        lines += ["## Limitations", "", card["limitations"], ""]
    lines += ["## Tensors", "", "| | name | shape | meaning |", "|---|---|---|---|"]
    for kind in ("inputs", "outputs"):
        for t in card[kind]:
            lines.append(f"| {kind[:-1]} | `{t['name']}` | {t['shape']} | {t['description']} |")
    if card.get("trained_for"):
        lines += ["", "## Training distribution (every range the training data was drawn from)", "",
                  *_bullets(card["trained_for"])]
    train = card.get("training", {})
    if train:
        lines += ["", "## Training", ""] + _bullets({k: v for k, v in train.items() if k != "config"})
    metrics = card.get("metrics", {})
    if metrics:
        lines += ["", "## Metrics", ""]
        for split, vals in metrics.items():
            shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in vals.items())
            lines.append(f"- {split}: {shown}")
    for key, evaluation in card.get("evaluation", {}).items():
        lines += ["", f"## Evaluation: {key.replace('_', ' ')}", "", evaluation.get("summary", ""), "",
                  f"Command: `{evaluation.get('command', '')}` (full report: {evaluation.get('doc', '')})", ""]
        rows = evaluation.get("rows", [])
        if rows:
            lines += markdown_table(list(rows[0]), [list(r.values()) for r in rows]).splitlines()
    if card.get("privacy"):
        lines += ["", "## Differential privacy", ""] + [f"- {k}: {v}" for k, v in card["privacy"].items()]
    exp = card.get("export", {})
    lines += ["", "## Export", ""] + [f"- {k}: {v}" for k, v in exp.items()]
    return "\n".join(lines) + "\n"


def _bullets(items: dict, depth: int = 0) -> list[str]:
    """Nested markdown bullets of a dict (a nested dict, e.g. the training data's randomisation ranges, indents)."""
    lines = []
    for key, value in items.items():
        if isinstance(value, dict) and value:
            lines += ["  " * depth + f"- {key}:", *_bullets(value, depth + 1)]
        else:
            lines.append("  " * depth + f"- {key}: {value}")
    return lines


def add_card_evaluation(version_dir: Path, key: str, evaluation: dict) -> dict:
    """Record an evaluation (``{"summary", "command", "doc", "rows": [...]}``) under ``evaluation.<key>`` of the
    model card in ``version_dir`` (JSON and Markdown rewritten durably; other evaluations kept). Returns the card."""
    path = Path(version_dir) / "model_card.json"
    card = json.loads(path.read_text())
    card.setdefault("evaluation", {})[key] = evaluation
    write_durable(path, json.dumps(card, indent=2, sort_keys=False) + "\n")
    write_durable(Path(version_dir) / "model_card.md", card_markdown(card))
    return card


def write_model(repo: Path, model: ServableModel, version: int, onnx_path: Path, card: dict) -> Path:
    """Write ``repo/<name>/`` for ``model`` with ``onnx_path`` as ``<version>/model.onnx``.

    An existing ``<version>`` directory is replaced; other versions are kept. Returns the version dir.
    """
    if version < 1:
        raise ValueError(f"model version must be >= 1, got {version}")
    model_dir = Path(repo) / model.name
    (model_dir / "configs").mkdir(parents=True, exist_ok=True)
    staging = model_dir / f".{version}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    shutil.copyfile(onnx_path, staging / "model.onnx")
    shutil.copyfile(RUNNER, staging / "model.py")
    (staging / "model_card.json").write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
    (staging / "model_card.md").write_text(card_markdown(card))
    final = model_dir / str(version)
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    fsync_dir(model_dir)
    write_durable(model_dir / "config.pbtxt", config_text(model, gpu=True))
    write_durable(model_dir / "configs" / f"{CPU_CONFIG}.pbtxt", config_text(model, gpu=False))
    return final


def versions(model_dir: Path) -> list[int]:
    """Numeric version directories of a model directory, ascending."""
    return sorted(int(p.name) for p in Path(model_dir).glob("*") if p.is_dir() and p.name.isdigit())
