"""Starting weights for the synthesis generators, pretrained on data none of a run's sites holds.

Under DP-SGD every step of a site's update carries noise, so the steps spent learning what any brain's
T1w-to-T2w mapping looks like are expensive; the field's usual remedy is to start from weights trained on
*public* data and spend the private steps on the sites' own data. Here "public" means sites of the
embedded phantom that are not sites of the run (by default hospital-e ... hospital-h: other field
strengths, sequence timings, noise and bias fields, other subjects), playing the part of a public data set
such as IXI.

A pretrained file is a pair written by :func:`publish` from a finished run:

* ``<name>.npz``: both generators' ``state_dict`` (``g_ab.*``, ``g_ba.*``), float32;
* ``<name>.json``: its provenance: the direction, the model settings, the sites and subjects it was
  trained on, whether DP was on, its rounds and its last round's held-out metrics, the source run's config.

:func:`load_init` is what a run with ``model.init_weights`` calls: it refuses a file whose direction or
architecture differs from the run's, or that was trained on any site the run trains on or holds out.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import yaml

from mrcore.config import ConfigError
from training.federation.checkpoints import latest_checkpoint, read_metrics
from training.federation.family import Arrays
from training.federation.records import load_arrays, save_arrays

#: model settings that fix the generators' tensors (the discriminators are never part of the file)
GENERATOR_KEYS = ("generator", "chans", "depth", "num_res_blocks", "norm", "residual")


def provenance_path(weights: Path) -> Path:
    """``x.npz`` -> ``x.json``."""
    return Path(weights).with_suffix(".json")


def publish(run_dir: Path, out: Path) -> dict:
    """Write the last checkpoint of the synthesis run in ``run_dir`` to ``out`` (.npz) with its provenance
    (``out`` with .json); return the provenance."""
    run_dir, out = Path(run_dir), Path(out)
    cfg_path = run_dir / "config.yaml"
    found = latest_checkpoint(run_dir)
    if not cfg_path.exists() or found is None:
        raise ConfigError(f"{run_dir} is not a run with checkpoints (config.yaml and checkpoints/round_NNN.npz)")
    cfg = yaml.safe_load(cfg_path.read_text())
    if cfg.get("family") != "synthesis":
        raise ConfigError(f"{run_dir} is a {cfg.get('family')!r} run, not a synthesis run")
    last_round, path = found
    rows = [r for r in read_metrics(run_dir) if r["round"] == last_round]
    d = cfg["data"]
    sites = list(d["train_sites"]) + ([d["heldout_site"]] if d.get("heldout_site") else [])
    info = {
        "direction": cfg["synthesis"]["direction"],
        "model": {k: cfg["model"][k] for k in GENERATOR_KEYS},
        "sites": sites,
        "data_source": {k: d["source"].get(k) for k in ("kind", "seed", "subjects_per_site", "slices_per_subject", "matrix")},
        "dp": bool(cfg["privacy"]["enabled"]),
        "rounds": last_round,
        "heldout": rows[-1].get("heldout", {}) if rows else {},
        "source_run": cfg["name"],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": cfg,
    }
    save_arrays(load_arrays(path), out)
    provenance_path(out).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    return info


def load_init(path: Path, run_cfg, expected: Arrays) -> Arrays:
    """The generators' starting weights of the run ``run_cfg`` (a ``SynthesisRunConfig``) from ``path``.

    ``expected``: the run's freshly initialised arrays (names and shapes to match).
    Raises ConfigError, naming ``model.init_weights``, when the file or its provenance is missing, or it
    was trained for another direction or architecture, or on a site of this run.
    """
    key = "model.init_weights"
    path = Path(path)
    meta = provenance_path(path)
    if not path.is_file():
        raise ConfigError(f"{key}: no such file {str(path)!r} (write one with `mri-train publish-init RUN_DIR OUT.npz`, "
                          "or set model.init_weights=null to start from random weights)")
    if not meta.is_file():
        raise ConfigError(f"{key}: {str(path)!r} has no provenance file {str(meta)!r}; only files written by "
                          "`mri-train publish-init` are accepted (they say which sites they were trained on)")
    info = json.loads(meta.read_text())
    if info.get("direction") != run_cfg.synthesis.direction:
        raise ConfigError(f"{key}: {str(path)!r} was trained for {info.get('direction')!r}, this run trains "
                          f"{run_cfg.synthesis.direction!r}; set model.init_weights=null or pretrain for this direction")
    model = asdict(run_cfg.model)
    differ = {k: (info.get("model", {}).get(k), model[k]) for k in GENERATOR_KEYS if info.get("model", {}).get(k) != model[k]}
    if differ:
        text = ", ".join(f"model.{k} {a!r} in the file, {b!r} in this run" for k, (a, b) in differ.items())
        raise ConfigError(f"{key}: {str(path)!r} has other generators: {text}")
    run_sites = set(run_cfg.data.train_sites) | ({run_cfg.data.heldout_site} if run_cfg.data.heldout_site else set())
    shared = sorted(run_sites & set(info.get("sites", [])))
    if shared:
        raise ConfigError(f"{key}: {str(path)!r} was trained on {', '.join(shared)}, a site of this run: starting weights "
                          "must come from data outside the run (its held-out metrics would not be held out)")
    arrays = load_arrays(path)
    if set(arrays) != set(expected):
        missing, extra = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
        raise ConfigError(f"{key}: {str(path)!r} lacks tensors {missing} / has unexpected {extra}")
    for k, v in expected.items():
        if arrays[k].shape != v.shape:
            raise ConfigError(f"{key}: tensor {k} has shape {arrays[k].shape} in {str(path)!r}, the run expects {v.shape}")
    return {k: np.asarray(arrays[k], dtype=v.dtype) for k, v in expected.items()}
