"""Config loading: overrides, type checks, unknown keys."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from mrcore.config import ConfigError, apply_overrides, build, load_config, to_dict


@dataclass(frozen=True)
class Inner:
    rounds: int = 3
    lr: float = 1e-4
    mask: Literal["equispaced", "random", "poisson"] = "equispaced"
    matrix: tuple[int, int] = (256, 256)


@dataclass(frozen=True)
class Outer:
    name: str = "run"
    out: Path = Path("runs")
    sites: tuple[str, ...] = ("a", "b")
    train: Inner = field(default_factory=Inner)
    budget: float | None = None


def test_defaults_and_file_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("name: x\ntrain:\n  rounds: 5\n  matrix: [128, 96]\n")
    cfg = load_config(Outer, f, ["train.lr=0.001", "sites=[h1, h2, h3]", "budget=8"])
    assert cfg.name == "x" and cfg.train.rounds == 5 and cfg.train.matrix == (128, 96)
    assert cfg.train.lr == pytest.approx(1e-3) and cfg.sites == ("h1", "h2", "h3") and cfg.budget == 8.0
    assert cfg.train.mask == "equispaced" and cfg.out == Path("runs")
    assert to_dict(cfg)["train"]["matrix"] == [128, 96]


def test_toml(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('name = "t"\n[train]\nrounds = 2\n')
    assert load_config(Outer, f).train.rounds == 2


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.rouns=3", "unknown config key 'train.rouns'"),
        ("train.rounds=three", "'train.rounds' must be an integer"),
        ("train.rounds=true", "'train.rounds' must be an integer"),
        ("train.mask=spiral", "'train.mask' must be one of"),
        ("train.matrix=[1, 2, 3]", "'train.matrix' must have 2 items"),
        ("train=5", "'train' must be a section"),
        ("nokey", "must look like 'section.key=value'"),
    ],
)
def test_bad_overrides(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("(", r"\(")):
        load_config(Outer, None, [override])


def test_missing_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="is not valid"):
        load_config(Outer, bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(Outer, lst)


def test_overrides_do_not_mutate_input():
    data = {"train": {"rounds": 1}}
    out = apply_overrides(data, ["train.rounds=2"])
    assert data["train"]["rounds"] == 1 and out["train"]["rounds"] == 2
    assert build(Outer, out).train.rounds == 2
