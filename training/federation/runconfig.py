"""Run configurations: read a YAML file plus ``--set`` overrides, validate it with the family's schema
before anything starts, and return the plain dict that travels to the sites."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mrcore.config import apply_overrides, read_config_file
from training.federation.registry import family_from_config


def load_run_config(path: Path | None, overrides: Sequence[str] = ()) -> dict:
    """Validated, defaults-filled run configuration as a plain dict (raises ConfigError on any mistake)."""
    data = read_config_file(path) if path is not None else {}
    data = apply_overrides(data, overrides)
    family = family_from_config(data)
    return absolute_paths(family.config_dict())


def absolute_paths(cfg: dict) -> dict:
    """Resolve the relative directories of a run (run_dir, caches) against the current directory, so the
    sites' worker processes find them whatever their own working directory is."""
    out = dict(cfg)
    if "run_dir" in out:
        out["run_dir"] = str(Path(out["run_dir"]).resolve())
    for key, value in out.items():
        if isinstance(value, dict):
            out[key] = absolute_paths(value) if key != "run_dir" else value
            for sub in ("cache_dir", "root"):
                if isinstance(out[key].get(sub), str):
                    out[key][sub] = str(Path(out[key][sub]).resolve())
    return out
