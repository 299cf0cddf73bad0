"""Starting weights pretrained outside a run's sites (``model.init_weights``): published from a real run,
loaded as round 0 of another, and refused when they do not fit the run or saw one of its sites."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from mrcore.config import ConfigError
from tests.conftest import cli_text
from tests.training.test_synthesis_family import simulate, tiny_config
from training.cli import app
from training.federation.coordinator import checkpoint_path
from training.federation.records import load_arrays, save_arrays
from training.federation.registry import family_from_config
from training.synthesis.pretrained import provenance_path, publish

runner = CliRunner()
PUBLIC = "data.train_sites=[hospital-c, hospital-d]"


def fake_finished_run(tmp_path, *extra) -> dict:
    """A run directory as a finished 1-round run leaves it (config, checkpoint, metrics), without training:
    the weights are the seeded initial ones plus 0.5, so that they differ from any fresh start."""
    cfg = tiny_config(tmp_path, "public", PUBLIC, *extra)
    run_dir = tmp_path / "public"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=True))
    arrays = {k: v + 0.5 for k, v in family_from_config(cfg).initial_arrays().items()}
    save_arrays(arrays, checkpoint_path(run_dir, 1))
    (run_dir / "metrics.jsonl").write_text(json.dumps({"round": 1, "heldout": {"psnr": 20.0}}) + "\n")
    return cfg


@pytest.fixture()
def published(tmp_path):
    fake_finished_run(tmp_path)
    out = tmp_path / "init" / "public.npz"
    result = runner.invoke(app, ["publish-init", str(tmp_path / "public"), str(out)])
    assert result.exit_code == 0, result.output
    assert "trained on hospital-c, hospital-d" in cli_text(result) and "held-out PSNR 20.00 dB" in cli_text(result)
    return out


def test_published_weights_are_round_zero_of_a_run_on_other_sites(tmp_path, published):
    info = json.loads(provenance_path(published).read_text())
    assert info["sites"] == ["hospital-c", "hospital-d"] and info["direction"] == "T1w->T2w" and info["rounds"] == 1
    fam = family_from_config(tiny_config(tmp_path, "run", f"model.init_weights={published}"))
    start = fam.initial_arrays()
    stored = load_arrays(published)
    random = family_from_config(tiny_config(tmp_path, "run")).initial_arrays()
    for k, v in start.items():
        np.testing.assert_array_equal(v, stored[k])
        np.testing.assert_allclose(v, random[k] + 0.5, rtol=1e-6, atol=1e-6)  # the source run's weights
    fam.prepare()  # logs the provenance; does not raise


@pytest.mark.parametrize("override, message", [
    ("synthesis.direction=T2w->T1w", "was trained for 'T1w->T2w', this run trains 'T2w->T1w'"),
    ("model.chans=8", "model.chans 4 in the file, 8 in this run"),
    ("data.train_sites=[hospital-a, hospital-c]", "was trained on hospital-c, a site of this run"),
    ("data.heldout_site=hospital-d", "was trained on hospital-d, a site of this run"),
])
def test_weights_that_do_not_fit_the_run_are_refused_before_training(tmp_path, published, override, message):
    fam = family_from_config(tiny_config(tmp_path, "run", f"model.init_weights={published}", override))
    with pytest.raises(ConfigError, match="model.init_weights") as err:
        fam.prepare()
    assert message in str(err.value)


def test_a_file_without_provenance_or_missing_is_refused(tmp_path, published):
    bare = tmp_path / "bare.npz"
    save_arrays(load_arrays(published), bare)
    for path, message in [(bare, "has no provenance file"), (tmp_path / "nope.npz", "no such file")]:
        fam = family_from_config(tiny_config(tmp_path, "run", f"model.init_weights={path}"))
        with pytest.raises(ConfigError, match=message):
            fam.initial_arrays()
    with pytest.raises(ConfigError, match="must be a .npz file"):
        tiny_config(tmp_path, "run", "model.init_weights=weights.pt")


def test_publish_init_refuses_what_is_not_a_finished_synthesis_run(tmp_path):
    result = runner.invoke(app, ["publish-init", str(tmp_path), str(tmp_path / "x.npz")])
    assert result.exit_code == 2 and "is not a run with checkpoints" in cli_text(result)
    fake_finished_run(tmp_path)
    result = runner.invoke(app, ["publish-init", str(tmp_path / "public"), str(tmp_path / "x.pt")])
    assert result.exit_code == 2 and "must end in .npz" in cli_text(result)
    cfg = yaml.safe_load((tmp_path / "public" / "config.yaml").read_text())
    (tmp_path / "public" / "config.yaml").write_text(yaml.safe_dump({**cfg, "family": "recon"}))
    with pytest.raises(ConfigError, match="not a synthesis run"):
        publish(tmp_path / "public", tmp_path / "x.npz")


@pytest.mark.slow
def test_a_federated_run_starts_from_the_published_weights(tmp_path, published):
    """Flower's real simulation, one round at a learning rate of 1e-9: the shared weights after it are the
    published ones (up to the step), not the seeded random start."""
    cfg = tiny_config(tmp_path, "run", f"model.init_weights={published}", "objective.lr=1.0e-9", "privacy.enabled=false")
    simulate(cfg)
    after = load_arrays(checkpoint_path(cfg["run_dir"], 1))
    stored = load_arrays(published)
    for k in stored:
        np.testing.assert_allclose(after[k], stored[k], atol=1e-6, err_msg=k)
