"""A run directory for training: the same configuration or none, resume from the last checkpoint, and each
round's record (checkpoint, metrics row, artefacts). Every engine uses it (Flower's coordinator, the
sequential engine, gradient averaging in process and through Flower); the layout is described in
:mod:`training.federation.coordinator`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import yaml

from mrcore.durable import append_durable, write_durable, write_json_durable
from training.federation.checkpoints import checkpoint_path, latest_checkpoint, read_metrics
from training.federation.records import load_arrays, save_arrays
from training.federation.registry import family_from_config, family_from_yaml
from training.federation.runconfig import absolute_paths

log = logging.getLogger(__name__)


def _truncate_metrics(run_dir: Path, last_round: int) -> None:
    rows = [r for r in read_metrics(run_dir) if r["round"] <= last_round]
    path = Path(run_dir) / "metrics.jsonl"
    if path.exists():
        write_durable(path, "".join(json.dumps(r) + "\n" for r in rows))


#: keys that may change between an interrupted run and its resumption
RESUMABLE_KEYS = ("rounds", "resume", "round_timeout_s", "evaluate_sites")


class RunMismatch(ValueError):
    """``run_dir`` holds checkpoints of a run with another configuration."""


def _with_defaults(cfg: dict) -> dict:
    """``cfg`` with every key of the schema filled in: keys added since a run was saved take their
    defaults, which keep the old behaviour. A config the schema refuses is returned as it is."""
    try:
        return absolute_paths(family_from_config(cfg).config_dict())
    except ValueError:
        return cfg


def check_same_run(run_dir: Path, run_cfg: dict) -> None:
    """Refuse to resume checkpoints that were trained with a different configuration."""
    saved_file = Path(run_dir) / "config.yaml"
    if not saved_file.exists() or latest_checkpoint(run_dir) is None:
        return

    def strip(cfg: dict) -> dict:
        cfg = {k: v for k, v in cfg.items()}
        cfg["federation"] = {k: v for k, v in cfg.get("federation", {}).items() if k not in RESUMABLE_KEYS}
        return cfg

    saved = _with_defaults(yaml.safe_load(saved_file.read_text()))
    run_cfg = _with_defaults(run_cfg)
    if strip(saved) != strip(run_cfg):
        changed = sorted(k for k in set(saved) | set(run_cfg) if strip(saved).get(k) != strip(run_cfg).get(k))
        raise RunMismatch(
            f"{run_dir} holds checkpoints of a run with a different configuration (changed: {', '.join(changed)}); "
            "start over with --fresh or choose another run_dir"
        )


def start_run(run_cfg: dict):
    """Open ``run_cfg``'s run directory for training: the same run or none (:func:`check_same_run`), its config
    written, the last checkpoint resumed (unless ``federation.resume`` is false) and later metric rows dropped.

    Returns ``(family, run_dir, arrays, rounds already done)``."""
    text = yaml.safe_dump(run_cfg, sort_keys=True)
    family = family_from_yaml(text)
    run_dir = Path(run_cfg["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    check_same_run(run_dir, run_cfg)
    write_durable(run_dir / "config.yaml", text)
    arrays = family.initial_arrays()
    offset = 0
    found = latest_checkpoint(run_dir) if run_cfg["federation"].get("resume", True) else None
    if found is not None:
        offset, path = found
        arrays = load_arrays(path)
        log.info("resuming from round %d (%s)", offset, path.name)
    _truncate_metrics(run_dir, offset)
    return family, run_dir, arrays, offset


def record_round(family, run_dir: Path, g: int, arrays, row: dict, progress=None) -> dict:
    """The end of round ``g`` of an in-process engine (sequential, gradient averaging): checkpoint ``arrays``,
    evaluate the held-out site, write the artefacts, append ``row`` (with ``round`` and ``heldout``) to
    metrics.jsonl and the round's JSON, log and report progress. Returns the row."""
    save_arrays(arrays, checkpoint_path(run_dir, g))
    heldout = family.evaluate_heldout(arrays)
    family.write_artifacts(arrays, g, run_dir)
    row = {"round": g, **row, "heldout": heldout}
    append_durable(run_dir / "metrics.jsonl", json.dumps(row) + "\n")
    write_json_durable(checkpoint_path(run_dir, g, ".json"), row, indent=1)
    log.info("round %d: %s", g, heldout)
    if progress is not None:
        progress(g, row)
    return row
