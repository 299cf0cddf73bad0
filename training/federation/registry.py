"""Build a :class:`~training.federation.family.Family` from the run configuration's YAML text.

The coordinator sends the run configuration to the sites every round, so a site needs nothing but its
own data directory to take part; families are cached per process (Flower reuses its workers).
"""

from __future__ import annotations

from functools import lru_cache

import yaml

from mrcore.config import ConfigError
from training.federation.family import Family

FAMILIES = ("recon", "synthesis")


@lru_cache(maxsize=4)
def family_from_yaml(text: str) -> Family:
    """The family named by the config's ``family`` key, built from the whole config."""
    data = yaml.safe_load(text) or {}
    kind = data.get("family")
    if kind == "recon":
        from training.recon.family import ReconFamily  # deferred: a family loads its own stack (torch, sigpy)

        return ReconFamily.from_dict(data)
    if kind == "synthesis":
        from training.synthesis.family import SynthesisFamily  # deferred: opacus, only for synthesis runs

        return SynthesisFamily.from_dict(data)
    raise ConfigError(f"unknown config key value family={kind!r}; expected one of {', '.join(map(repr, FAMILIES))}")


def family_from_config(cfg: dict) -> Family:
    """The family of the run configuration ``cfg`` (a dict, e.g. from
    :func:`~training.federation.runconfig.load_run_config`): its canonical YAML text (sorted keys) is the
    cache key of :func:`family_from_yaml`, so equal configs share one family per process."""
    return family_from_yaml(yaml.safe_dump(cfg, sort_keys=True))
