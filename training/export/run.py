"""Export a training run: its checkpoint -> ONNX -> parity check -> a version in the model repository."""

from __future__ import annotations

import datetime as dt
import json
import logging
import tempfile
from pathlib import Path

import onnx
import onnxruntime
import torch

from training.federation.checkpoints import checkpoint_path, latest_checkpoint, read_metrics
from training.federation.records import load_arrays
from training.federation.registry import family_from_yaml

from .onnx_io import OPSET, PARITY_TOLERANCE, check_parity, export_onnx, sha256
from .spec import ServableModel
from .triton_repo import write_model

log = logging.getLogger(__name__)
# torch's exporter warns once per missing torchvision op; irrelevant here
for _noisy in ("torch.onnx._internal.exporter._registration", "onnx_ir", "onnxscript"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)


def load_run(run_dir: Path, round_: int | None = None):
    """``(family, arrays, round, checkpoint path)`` of a finished run's checkpoint (latest by default)."""
    run_dir = Path(run_dir)
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"{run_dir} is not a training run: {config} is missing")
    if round_ is None:
        found = latest_checkpoint(run_dir)
        if found is None:
            raise FileNotFoundError(f"{run_dir}/checkpoints holds no round_NNN.npz checkpoint")
        round_, path = found
    else:
        path = checkpoint_path(run_dir, round_)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
    family = family_from_yaml(config.read_text())
    return family, load_arrays(path), int(round_), path


def _round_metrics(run_dir: Path, round_: int) -> dict:
    rows = [r for r in read_metrics(run_dir) if int(r.get("round", -1)) == round_]
    return rows[-1] if rows else {}


def _portable(value, root: str):
    """Paths under the project directory made relative (model cards travel with the repository)."""
    if isinstance(value, dict):
        return {k: _portable(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_portable(v, root) for v in value]
    if isinstance(value, str) and value.startswith(root):
        return value[len(root):] or "."
    return value


def _examples(cfg: dict, train: dict) -> dict:
    """How much data each site trained on: fixed slices, or fresh randomised examples every round."""
    counts = {s: int(v.get("num-examples", 0)) for s, v in sorted(train.items())}
    if cfg.get("data", {}).get("randomize") is not None:
        return {"examples_per_site_per_round": counts,
                "data": "domain-randomised, drawn afresh every round (see trained_for); held-out table: "
                        + str(cfg.get("data", {}).get("source", {}).get("kind"))}
    return {"examples_per_site": counts, "data": cfg.get("data", {}).get("source", {}).get("kind")}


def model_card(model: ServableModel, version: int, family, run_dir: Path, round_: int, checkpoint: Path,
               onnx_path: Path, parity: dict[str, float]) -> dict:
    """The JSON model card of one exported version (training data, config, metrics, privacy, export)."""
    cfg = _portable(family.config_dict(), str(Path.cwd().resolve()) + "/")
    row = _round_metrics(run_dir, round_)
    train = row.get("train", {})
    metrics = {}
    if row.get("heldout"):
        metrics["heldout"] = row["heldout"]
    for site, vals in sorted(row.get("val", {}).items()):
        metrics[f"val/{site}"] = vals
    card = {
        "name": model.name,
        "version": version,
        "task": model.task,
        **{k: v for k, v in model.card.items() if k not in ("training", "privacy")},
        "inputs": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype, "description": t.description} for t in model.inputs],
        "outputs": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype, "description": t.description} for t in model.outputs],
        "training": {
            "family": family.name,
            "run": cfg.get("name"),
            "round": round_,
            "sites": list(family.train_sites),
            **_examples(cfg, train),
            **model.card.get("training", {}),
            "config": cfg,
        },
        "metrics": metrics,
        "export": {
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "checkpoint": f"{Path(run_dir).name}/checkpoints/{checkpoint.name}",
            "checkpoint_sha256": sha256(checkpoint),
            "onnx_sha256": sha256(onnx_path),
            "onnx_bytes": onnx_path.stat().st_size,
            "opset": OPSET,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "parity_max_relative_error": max(parity.values()) if parity else None,
            "parity_tolerance": PARITY_TOLERANCE,
            "parity_cases": parity,
        },
    }
    privacy = dict(model.card.get("privacy", {}))
    eps = {s: v["epsilon"] for s, v in sorted(train.items()) if "epsilon" in v}
    if eps:
        privacy.setdefault("epsilon_per_site", eps)
    if privacy:
        card["privacy"] = privacy
    return card


def export_run(run_dir: Path, repo: Path, version: int = 1, round_: int | None = None,
               only: list[str] | None = None) -> list[dict]:
    """Export every servable model of the run in ``run_dir`` as ``version`` into ``repo``.

    Each model is exported to ONNX, checked against PyTorch on its parity cases (AssertionError beyond
    1e-5), then written with its Triton configs and model card. Returns the model cards.
    """
    family, arrays, round_, checkpoint = load_run(run_dir, round_)
    models = family.servable_models(arrays)
    if only:
        unknown = set(only) - {m.name for m in models}
        if unknown:
            raise ValueError(f"unknown model(s) {sorted(unknown)}; this run exports {[m.name for m in models]}")
        models = [m for m in models if m.name in only]
    cards = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            onnx_path = export_onnx(model, Path(tmp) / f"{model.name}.onnx")
            parity = check_parity(model, onnx_path)
            card = model_card(model, version, family, Path(run_dir), round_, checkpoint, onnx_path, parity)
            out = write_model(Path(repo), model, version, onnx_path, card)
            log.info("exported %s version %d (%s, parity %.1e)", model.name, version, out, max(parity.values()))
            cards.append(card)
    return cards


def read_card(version_dir: Path) -> dict:
    """The JSON model card of a version directory."""
    return json.loads((Path(version_dir) / "model_card.json").read_text())


__all__ = ["export_run", "load_run", "model_card", "read_card"]
