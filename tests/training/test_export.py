"""Export of a trained run: ONNX (dynamo, DC in the graph), parity with PyTorch, Triton model directory."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from serving.repository import check_model, parse_config
from tests.conftest import ROOT
from training.cli import app
from training.export.onnx_io import PARITY_TOLERANCE, check_parity, ort_session, relative_error, sha256
from training.export.run import export_run
from training.federation.records import save_arrays
from training.federation.registry import family_from_yaml
from training.federation.runconfig import load_run_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny finished reconstruction run: config, one trained round's checkpoint, its metrics."""
    tmp = tmp_path_factory.mktemp("export")
    cfg = load_run_config(None, [
        "family=recon", f"run_dir={tmp / 'run'}", f"data.source.cache_dir={tmp / 'cache'}",
        "data.source.matrix=[40, 40]", "data.source.subjects_per_site=3", "data.source.slices_per_subject=2",
        "data.train_sites=[hospital-a]", "data.heldout_site=hospital-b", "data.num_coils=4",
        "data.val_subjects=1", "model.chans=8", "model.num_cascades=2", "model.sens_chans=4",
        "objective.batch_size=2", "federation.rounds=1",
    ])
    text = yaml.safe_dump(cfg, sort_keys=True)
    fam = family_from_yaml(text)
    run = tmp / "run"
    run.mkdir()
    (run / "config.yaml").write_text(text)
    update = fam.train_site("hospital-a", fam.initial_arrays(), 1, tmp / "state")
    save_arrays(update.arrays, run / "checkpoints" / "round_001.npz")
    row = {"round": 1, "train": {"hospital-a": {**update.metrics, "num-examples": update.num_examples}},
           "val": {}, "heldout": fam.evaluate_heldout(update.arrays)}
    (run / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    return run


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    """The run exported once as version 3: (repository, model card)."""
    repo = tmp_path_factory.mktemp("repo") / "model_repository"
    (card,) = export_run(run_dir, repo, version=3)
    return repo, card


def test_export_writes_a_servable_model_directory(exported, tmp_path):
    repo, card = exported
    model = repo / "recon_unrolled"
    assert sorted(p.name for p in (model / "3").iterdir()) == ["model.onnx", "model.py", "model_card.json", "model_card.md"]
    gpu = parse_config(model / "config.pbtxt")
    cpu = parse_config(model / "configs" / "cpu.pbtxt")
    assert (gpu.backend, gpu.instance_group[0].kind) == ("onnxruntime", 1)  # KIND_GPU
    assert (cpu.backend, cpu.instance_group[0].kind) == ("python", 2)       # KIND_CPU
    assert gpu.max_batch_size == cpu.max_batch_size == 8 and gpu.HasField("dynamic_batching")
    assert [t.name for t in gpu.input] == [t.name for t in cpu.input] == ["kspace", "mask"]
    if not (repo.parent / ".venv").exists():
        (repo.parent / ".venv").symlink_to(ROOT / ".venv")
    entry = check_model(model, "cpu")  # names and ranks match the ONNX graph
    assert entry.version == 3
    assert card["export"]["parity_max_relative_error"] <= PARITY_TOLERANCE
    assert set(card["export"]["parity_cases"]) >= {"random-8coil-256x256/magnitude", "random-4coil-97x75/magnitude"}
    assert card["metrics"]["heldout"]["psnr"] > 0 and card["training"]["sites"] == ["hospital-a"]
    assert card["export"]["onnx_sha256"] == sha256(model / "3" / "model.onnx")
    assert "# recon_unrolled (version 3)" in (model / "3" / "model_card.md").read_text()


def test_export_is_reproducible(run_dir, exported, tmp_path):
    export_run(run_dir, tmp_path / "again", version=3)
    assert sha256(tmp_path / "again/recon_unrolled/3/model.onnx") == sha256(exported[0] / "recon_unrolled/3/model.onnx")


def test_onnx_matches_pytorch_on_fresh_random_real_and_odd_inputs(run_dir, exported):
    from training.export.run import load_run

    fam, arrays, _, _ = load_run(run_dir)
    (model,) = fam.servable_models(arrays)
    path = exported[0] / "recon_unrolled" / "3" / "model.onnx"
    errors = check_parity(model, path)
    assert len(errors) == 6 and max(errors.values()) <= 1e-5
    # a fresh case not among the exporter's own: 1 coil, 33x64, batch 3
    rng = np.random.default_rng(7)
    k = rng.standard_normal((3, 1, 33, 64, 2)).astype(np.float32)
    m = (rng.random((3, 33, 64)) < 0.4).astype(np.float32)
    m[:, 12:21] = 1
    import torch

    with torch.no_grad():
        ref = model.module(torch.from_numpy(k), torch.from_numpy(m))[1].numpy()
    out = ort_session(path).run(["magnitude"], {"kspace": k, "mask": m})[0]
    assert relative_error(out, ref) <= 1e-5


def test_parity_failure_is_reported_with_model_and_case(run_dir, exported):
    from training.export.run import load_run

    fam, arrays, _, _ = load_run(run_dir)
    (model,) = fam.servable_models(arrays)
    path = exported[0] / "recon_unrolled" / "3" / "model.onnx"
    with torch_no_grad():
        for p in model.module.parameters():  # the PyTorch side drifts from what was exported
            p.add_(0.05)
    with pytest.raises(AssertionError, match=r"recon_unrolled: case 'random-8coil-256x256' output 'image': relative error"):
        check_parity(model, path)


def torch_no_grad():
    import torch

    return torch.no_grad()


def flat(output: str) -> str:
    """CLI output without rich's box drawing and line wrapping."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", output).split())


def test_cli_export_and_its_errors(run_dir, tmp_path):
    runner = CliRunner(env={"COLUMNS": "1000"})  # long paths stay on one line
    ok = runner.invoke(app, ["export", "--run-dir", str(run_dir), "--repo", str(tmp_path / "r")])
    assert ok.exit_code == 0, ok.output
    assert "recon_unrolled v1" in ok.output and "parity" in ok.output
    missing = runner.invoke(app, ["export", "--run-dir", str(tmp_path / "nope"), "--repo", str(tmp_path / "r")])
    assert missing.exit_code == 2 and "config.yaml is missing" in flat(missing.output)
    unknown = runner.invoke(app, ["export", "--run-dir", str(run_dir), "--repo", str(tmp_path / "r"), "-m", "foo"])
    assert unknown.exit_code == 2 and "unknown model" in flat(unknown.output)
    bad_round = runner.invoke(app, ["export", "--run-dir", str(run_dir), "--round", "7"])
    assert bad_round.exit_code == 2 and "round_007.npz does not exist" in flat(bad_round.output)


def test_real_anatomy_rows_reach_the_model_card(exported, tmp_path):
    """The generalization evaluation runs an exported version as served (ONNX) on the real in-vivo k-space, scores
    it against zero-filled, and records its rows (with the baselines') in the version's model card."""
    import shutil

    from training.export.triton_repo import add_card_evaluation
    from training.recon import generalization as gen

    repo = tmp_path / "repo"
    shutil.copytree(exported[0] / "recon_unrolled", repo / "recon_unrolled")
    models = gen.repository_models(repo)
    assert list(models) == ["recon_unrolled v3"]
    path, virtual = models["recon_unrolled v3"]
    methods = {"zero-filled": gen.zero_filled, "recon_unrolled v3": gen.onnx_method(path, virtual, threads=1)}
    (case,) = gen.real_cases(["invivo"])
    samples: dict = {}
    rows = gen.evaluate([case], methods, samples=samples)
    assert set(samples[(case.name, "4x")]) == {"truth", "zero-filled", "recon_unrolled v3"}
    (figure,) = gen.write_figures(samples, tmp_path / "img")
    assert figure.stat().st_size > 10_000 and figure.read_bytes()[:4] == b"\x89PNG"
    assert [(r["acceleration"][:2], r["method"]) for r in rows] == [
        ("4x", "zero-filled"), ("4x", "recon_unrolled v3"), ("8x", "zero-filled"), ("8x", "recon_unrolled v3")]
    zf4, zf8 = rows[0], rows[2]
    assert 15 < zf8["psnr"] < zf4["psnr"] < 40 and 0 < zf4["ssim"] <= 1  # fewer lines, a worse zero-filled image
    card = add_card_evaluation(path.parent, "real_anatomy", gen.card_evaluation(rows, "recon_unrolled v3", "cmd", "doc.md"))
    assert [r["method"] for r in card["evaluation"]["real_anatomy"]["rows"]] == [r["method"] for r in rows]
    text = (path.parent / "model_card.md").read_text()
    assert "## Evaluation: real anatomy" in text and f"{rows[1]['psnr']:.2f}" in text
    assert "# recon_unrolled (version 3)" in text  # the rest of the card is kept
