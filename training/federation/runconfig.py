"""Run configurations: read a YAML file plus ``--set`` overrides, validate it with the family's schema
before anything starts, and return the plain dict that travels to the sites."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml

from mrcore.config import apply_overrides, read_config_file
from training.federation.registry import family_from_yaml


def load_run_config(path: Path | None, overrides: Sequence[str] = ()) -> dict:
    """Validated, defaults-filled run configuration as a plain dict (raises ConfigError on any mistake)."""
    data = read_config_file(path) if path is not None else {}
    data = apply_overrides(data, overrides)
    family = family_from_yaml(yaml.safe_dump(data, sort_keys=True))
    return family.config_dict()
