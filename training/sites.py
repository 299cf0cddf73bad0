"""What both model families do at a site outside their training loops: seeds derived from (run seed,
site, round, purpose), the data source of the run's sites, and the site's private state file per round."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from mrcore.data.base import SliceSource
from mrcore.data.sources import DataConfig, open_source
from mrcore.durable import durable_path


def derive_seed(*parts: int) -> int:
    """A 32-bit seed derived from integer ``parts`` (numpy ``SeedSequence``): independent streams per
    (run seed, site, round, purpose)."""
    return int(np.random.SeedSequence(tuple(int(p) for p in parts)).generate_state(1)[0])


def open_site_source(source_cfg: DataConfig, sites: tuple[str, ...]) -> SliceSource:
    """The data source of ``sites`` (the embedded phantom generates exactly these sites); every site is
    checked to exist before anything trains."""
    if source_cfg.kind == "phantom":
        source_cfg = replace(source_cfg, sites=sites)
    source = open_source(source_cfg)
    for s in sites:
        source.check_site(s)
    return source


def _state_path(state_dir: Path, server_round: int) -> Path:
    return Path(state_dir) / f"state_round_{server_round:03d}.pt"


def load_site_state(state_dir: Path, server_round: int, map_location: torch.device | str) -> dict | None:
    """The site state saved after ``server_round - 1`` (critics, discriminators, optimisers), or None."""
    previous = _state_path(state_dir, server_round - 1)
    return torch.load(previous, weights_only=True, map_location=map_location) if previous.exists() else None


def save_site_state(state_dir: Path, server_round: int, state: dict) -> None:
    """Write ``state_dir/state_round_NNN.pt`` atomically; older rounds' files are removed except the previous
    round's (a round re-run after an interruption starts from it)."""
    state_dir = Path(state_dir)
    with durable_path(_state_path(state_dir, server_round)) as tmp:
        torch.save(state, tmp)
    for old in state_dir.glob("state_round_*.pt"):
        if int(old.stem.split("_")[-1]) < server_round - 1:
            old.unlink()
