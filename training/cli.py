"""`mri-train`: federated training of the reconstruction and synthesis families.

    mri-train federated --config configs/recon.yaml
    mri-train federated --config configs/recon.yaml --set federation.rounds=3 --set objective.kind=hybrid
    mri-train federated --config configs/synthesis.yaml --set privacy.noise_multiplier=2.0
    mri-train show-config --config configs/recon.yaml
    mri-train export --run-dir runs/recon-default --repo model_repository --version 1
    mri-train publish-init runs/synthesis-public pretrained/synthesis-public-T1w-T2w.npz
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import typer
import yaml
from tqdm import tqdm

from mrcore.config import ConfigError, build
from mrcore.data.randomize import RandomizationConfig
from mrcore.quality import DEFAULT_RATIO_THRESHOLD
from training.federation.checkpoints import checkpoint_path, latest_checkpoint, read_metrics
from training.federation.coordinator import RunMismatch, check_same_run
from training.federation.family import StopRun
from training.federation.pki import PkiError, create_pki, public_key_fingerprint
from training.federation.records import load_arrays
from training.federation.registry import family_from_config, family_from_yaml
from training.federation.runconfig import load_run_config
from training.plots import plot_curves
from training.report import markdown_table, write_report
from training.synthesis.pretrained import publish

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
log = logging.getLogger("mri-train")

CONFIG_OPT = typer.Option(..., "--config", "-c", help="Run configuration (YAML/TOML), e.g. configs/recon.yaml.")
SET_OPT = typer.Option([], "--set", "-s", help="Override a key: --set federation.rounds=3 (repeatable).")


def _load(config: Path, overrides: list[str]) -> dict:
    try:
        return load_run_config(config, overrides)
    except (ConfigError, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--config/--set") from exc


@app.command("show-config")
def show_config(config: Path = CONFIG_OPT, set_: list[str] = SET_OPT) -> None:
    """Print the validated run configuration with every default filled in."""
    typer.echo(yaml.safe_dump(_load(config, set_), sort_keys=False))


@app.command()
def federated(
    config: Path = CONFIG_OPT,
    set_: list[str] = SET_OPT,
    fresh: bool = typer.Option(False, "--fresh", help="Ignore existing checkpoints in run_dir and start over."),
    engine: str = typer.Option("flower", help="flower: Flower's simulation engine (Ray); sequential: the same FedAvg "
                               "rounds with the sites trained in turn in this process (no Ray; for a saturated CPU). "
                               "federation.mode=gradient_average runs its own in-process engine here; between "
                               "hospitals (flwr run) each of its synchronisations is a Flower round."),
) -> None:
    """Train across the configured sites with Flower's simulation engine (resumes from the last checkpoint)."""
    if engine not in ("flower", "sequential"):
        raise typer.BadParameter(f"expected 'flower' or 'sequential', got {engine!r}", param_hint="--engine")

    run_cfg = _load(config, set_)
    if engine == "sequential" and run_cfg["federation"]["secure_aggregation"]["enabled"]:
        raise typer.BadParameter("federation.secure_aggregation needs Flower's engine (SecAgg+ runs between the "
                                 "sites' nodes); the sequential engine has none", param_hint="--engine")
    run_dir = Path(run_cfg["run_dir"])
    if fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    try:
        check_same_run(run_dir, run_cfg)
    except RunMismatch as exc:
        raise typer.BadParameter(str(exc), param_hint="--config/--set/--fresh") from exc
    family = family_from_config(run_cfg)
    family.prepare()  # validate sites/contrasts and build the data cache before any process starts
    total = int(run_cfg["federation"]["rounds"])
    done = latest_checkpoint(run_dir)
    start = done[0] if done else 0
    target = f", FL-MRCM target {family.target_site}" if family.target_site else ""
    typer.echo(f"run {run_cfg['name']}: sites {', '.join(family.train_sites)}{target}, rounds {start}->{total}, dir {run_dir}")
    bar = tqdm(total=total, initial=start, desc="federated rounds", unit="round")

    def progress(rnd: int, row: dict) -> None:
        held = row.get("heldout", {})
        eps = [m["epsilon"] for m in row.get("train", {}).values() if "epsilon" in m]
        bar.set_postfix({**{k: f"{v:.3f}" for k, v in held.items() if k in ("psnr", "ssim")},
                         **({"max eps": f"{max(eps):.2f}"} if eps else {})})
        bar.update(1)
        rows = read_metrics(run_dir)
        write_summaries(run_dir, rows)
        plot_curves(rows, run_dir / "plots" / "curves.png")
        family.plot_run(rows, run_dir)

    t0 = time.perf_counter()
    try:
        if run_cfg["federation"]["mode"] == "gradient_average":
            from training.federation.gradient_average import run_gradient_average  # deferred: this mode only

            typer.echo("federation.mode=gradient_average: the in-process gradient-averaging engine (sites in turn)")
            run_gradient_average(run_cfg, progress=progress)
        elif engine == "sequential":
            from training.federation.sequential import run_sequential  # deferred: this engine only

            run_sequential(run_cfg, progress=progress)
        else:
            from training.federation.simulation import simulate  # deferred: Ray + Flower simulation (~4 s)

            simulate(run_cfg, progress=progress)
    except StopRun as exc:  # e.g. a site's privacy budget: the checkpoints so far are the result
        bar.close()
        typer.echo(f"run stopped: {exc.reason}", err=True)
        raise typer.Exit(3) from None
    bar.close()
    rows = read_metrics(run_dir)
    write_summaries(run_dir, rows)
    if rows:
        plot_curves(rows, run_dir / "plots" / "curves.png")
        family.plot_run(rows, run_dir)
        typer.echo(f"done in {time.perf_counter() - t0:.0f} s; last round: {rows[-1]['heldout']}")
    typer.echo(f"metrics: {run_dir / 'metrics.csv'}; plots: {run_dir / 'plots'}")


def write_summaries(run_dir: Path, rows: list[dict]) -> None:
    """metrics.jsonl -> metrics.csv (one row per round x site x split)."""
    out = Path(run_dir) / "metrics.csv"
    keys = sorted({k for r in rows for part in ("train", "val") for s in r.get(part, {}).values() for k in s}
                  | {k for r in rows for k in r.get("heldout", {})})
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["round", "split", "site", *keys])
        for r in rows:
            for part in ("train", "val"):
                for site, vals in sorted(r.get(part, {}).items()):
                    w.writerow([r["round"], part, site, *[vals.get(k, "") for k in keys]])
            if r.get("heldout"):
                w.writerow([r["round"], "heldout", "", *[r["heldout"].get(k, "") for k in keys]])



@app.command("evaluate-recon")
def evaluate_recon(
    config: Path = CONFIG_OPT,
    set_: list[str] = SET_OPT,
    model: list[str] = typer.Option([], "--model", "-m", help="NAME=RUN_DIR[@ROUND] of a trained run (repeatable); its last checkpoint, or that round's."),
    out: Path = typer.Option(Path("docs/recon_results.md"), help="Markdown table to write."),
    cs: bool = typer.Option(True, help="Include the compressed-sensing baseline (slow: ESPIRiT + L1-wavelet per slice)."),
) -> None:
    """Seed-style tables: zero-filled, CS-wavelet and each trained model, on the held-out site (Scenario 1)
    and on every training site's validation subjects (Scenario 2); test data and masks from --config."""
    from training.recon.evaluate import evaluate_split, tune_cs_lambda  # deferred: sigpy, skimage (~4 s)

    run_cfg = _load(config, set_)
    family = family_from_config(run_cfg)
    models = {}
    for item in model:
        if "=" not in item:
            raise typer.BadParameter(f"--model must be NAME=RUN_DIR, got {item!r}")
        name, run_dir = item.split("=", 1)
        run_dir, _, at = run_dir.partition("@")
        if at:  # NAME=RUN_DIR@ROUND: that round's checkpoint (compare runs at equal rounds)
            path = checkpoint_path(run_dir, int(at))
            if not path.exists():
                raise typer.BadParameter(f"--model {name}: no checkpoint {path}")
            found = (int(at), path)
        else:
            found = latest_checkpoint(Path(run_dir))
        if found is None:
            raise typer.BadParameter(f"--model {name}: no checkpoint in {run_dir}/checkpoints")
        trained = family_from_yaml((Path(run_dir) / "config.yaml").read_text())
        models[name] = (trained, load_arrays(found[1]), found[0], run_dir)
    lam = tune_cs_lambda(family) if cs else None
    splits = ([(family.cfg.data.heldout_site, "heldout", "Scenario 1: unseen site")] if family.cfg.data.heldout_site else [])
    splits += [(s, "val", "Scenario 2: own site") for s in family.train_sites]
    rows = []
    for site, split, scenario in splits:
        results = evaluate_split(family, site, split, cs_lambda=lam)
        for name, (trained, arrays, _, _) in models.items():
            # the trained run's architecture, the evaluation config's data and masks
            net = trained.generator_from(arrays)
            results[name] = evaluate_split(family, site, split, generator=net, progress=False)["model"]
        for method, m in results.items():
            rows.append([scenario, site, method, m["psnr"], m["ssim"], m["nmse"]])
        typer.echo(f"{site} ({split}): " + ", ".join(f"{k} {v['psnr']:.2f} dB/{v['ssim']:.3f}" for k, v in results.items()))
    d = run_cfg["data"]
    body = (
        f"Test data: {d['source']['kind']} {d['source']['matrix']}, {d['num_coils']} coils, contrasts {d['contrasts']}, "
        f"{run_cfg['mask']['kind']} mask R={run_cfg['mask']['acceleration']:g} (centre {run_cfg['mask']['center_fraction']:g}). "
        f"Metrics per subject volume (fastMRI: data range = volume max), mean over subjects. "
        + (f"CS: SigPy L1-wavelet, 30 iterations, ESPIRiT maps per slice, lambda={lam:g} chosen on training-site validation slices.\n\n" if lam else "\n\n")
        + "Models:\n\n" + "".join(
            f"* `{n}`: `{m[3]}` round {m[2]}; objective {m[0].cfg.objective.kind}, sites {', '.join(m[0].train_sites)}"
            + (f", FL-MRCM target {m[0].target_site}" if m[0].target_site else "") + "\n" for n, m in models.items()) + "\n"
        + markdown_table(["scenario", "test site", "method", "PSNR (dB)", "SSIM", "NMSE"], rows)
    )
    write_report(out, "Reconstruction results", "mri-train " + " ".join(sys.argv[1:]), body)
    typer.echo(f"wrote {out}")


@app.command("recon-generalization")
def recon_generalization(
    repo: Path = typer.Option(Path("model_repository"), help="Model repository: every version of recon_unrolled is evaluated."),
    out: Path = typer.Option(Path("docs/recon_generalization.md"), help="Markdown report to write (rows also as .json)."),
    cases: list[str] = typer.Option(["mni", "tcga", "invivo", "phantom"], "--case",
                                    help="Which cases: mni, tcga, invivo (real) and phantom (the config's held-out hospital) (repeatable)."),
    cs: bool = typer.Option(True, help="Include SigPy CS (slow: ESPIRiT + L1-wavelet per slice; its settings are tuned on training data first)."),
    config: Path = typer.Option(Path("configs/recon-v2.yaml"), help="Run config whose data.randomize ranges are the training data CS is tuned on."),
    threads: int = typer.Option(2, min=1, help="ONNX Runtime threads."),
    update_cards: bool = typer.Option(True, help="Record each version's rows (with the baselines') in its model card."),
) -> None:
    """Reconstruction on real anatomy (MNI152 T1 template, a glioma patient's T2w, in-vivo 8-coil k-space) at
    scanner settings, 4x and 8x: zero-filled, SigPy CS and every served model version, as served (ONNX)."""
    from training.recon import generalization as gen  # deferred: sigpy, nilearn, onnxruntime (seconds)

    for c in cases:
        if c not in ("mni", "tcga", "invivo", "phantom"):
            raise typer.BadParameter(f"unknown case {c!r}; expected mni, tcga, invivo or phantom", param_hint="--case")
    models = gen.repository_models(repo)
    run_cfg = _load(config, [])
    randomize = build(RandomizationConfig, run_cfg["data"].get("randomize") or {}, "data.randomize.")
    methods: dict = {"zero-filled": gen.zero_filled}
    cs_settings: dict = {}
    if cs:
        for accel, cf in gen.ACCELERATIONS:
            cs_settings[f"{accel:g}x"] = gen.tune_cs(randomize, accel, cf, progress=typer.echo)
        methods["CS (ESPIRiT + L1-wavelet)"] = {a: gen.cs_method(v["lamda"], v["crop"]) for a, v in cs_settings.items()}
    for name, (path, virtual) in models.items():
        methods[name] = gen.onnx_method(path, virtual, threads)
    evaluated = gen.real_cases(cases) + ([gen.phantom_case(run_cfg)] if "phantom" in cases else [])
    samples: dict = {}
    rows = gen.evaluate(evaluated, methods, progress=typer.echo, samples=samples)
    gen.write_rows(rows, out.with_suffix(".json"))
    figures = gen.write_figures(samples, out.parent / "img")
    note = "Models: " + "; ".join(f"`{n}` ({p}, coil compression to {v or 'none'})" for n, (p, v) in models.items())
    note += "\n\nThe middle slice of every case at 4x (truth, each method, error maps): " + ", ".join(
        f"[{f.name}](img/{f.name})" for f in figures)
    write_report(out, "Reconstruction on real anatomy", "mri-train " + " ".join(sys.argv[1:]),
                 gen.report_body(rows, cs_settings, note))
    (out.with_suffix(".cs.json")).write_text(json.dumps(cs_settings, indent=1))
    typer.echo(f"wrote {out}")
    if update_cards:
        from training.export.triton_repo import add_card_evaluation  # deferred: onnx and the export package (seconds)

        command = "mri-train " + " ".join(sys.argv[1:])
        for name, (path, _) in models.items():
            add_card_evaluation(path.parent, "real_anatomy", gen.card_evaluation(rows, name, command, str(out)))
            typer.echo(f"recorded the real-anatomy rows in {path.parent / 'model_card.json'}")


@app.command("recon-guardrail")
def recon_guardrail(
    repo: Path = typer.Option(Path("model_repository"), help="Model repository: every version of recon_unrolled is studied."),
    config: Path = typer.Option(Path("configs/recon-v2.yaml"), help="Run config of the phantom's held-out hospital and its masks."),
    out: Path = typer.Option(Path("docs/quality_guardrail.md"), help="Markdown report (rows also as .json, plot as .png under docs/img/)."),
    current: str = typer.Option("", help="The current model's version (default: the newest in the repository)."),
    cases: list[str] = typer.Option(["mni", "tcga", "invivo"], "--case", help="Real cases: mni, tcga, invivo (repeatable)."),
    holdout_fraction: float = typer.Option(0.08, help="Share of the acquired lines held out (serving: quality.holdout_fraction)."),
    seed: int = typer.Option(19, help="Seed of the held-out lines (serving: quality.seed)."),
    ratio_threshold: float = typer.Option(DEFAULT_RATIO_THRESHOLD, min=0.0,
                                          help="Flag threshold of est_nmse / est_nmse_zero_filled (serving: quality.ratio_threshold)."),
    cache: Path = typer.Option(Path(".cache/guardrail"), help="Keeps each slice's reconstructions (a rerun skips the models)."),
    threads: int = typer.Option(1, min=1, help="ONNX Runtime threads."),
) -> None:
    """Calibration study of the reconstruction self-check (k-space self-validation): holdout_nmse against the true
    NMSE on real anatomy (4x, 8x) and the phantom's held-out hospital, for every served recon_unrolled version."""
    from training.recon import generalization as gen  # deferred: sigpy, nilearn, onnxruntime (seconds)
    from training.recon import guardrail  # deferred: imports generalization (sigpy, nilearn, onnxruntime)

    for c in cases:
        if c not in ("mni", "tcga", "invivo"):
            raise typer.BadParameter(f"unknown case {c!r}; expected mni, tcga or invivo", param_hint="--case")
    models = gen.repository_models(repo)
    name = f"recon_unrolled v{current}" if current else list(models)[-1]
    if name not in models:
        raise typer.BadParameter(f"no version {current} in {repo}/recon_unrolled (have {', '.join(models)})",
                                 param_hint="--current")
    family = family_from_config(_load(config, []))
    slices = guardrail.real_slices(cases) + guardrail.phantom_slices(family)
    rows = guardrail.study(slices, models, holdout_fraction, seed, threads, progress=typer.echo, cache=cache)
    guardrail.write_rows(rows, out.with_suffix(".json"))
    png = out.parent / "img" / (out.stem + ".png")
    guardrail.scatter(rows, ratio_threshold, png)
    summ = guardrail.summary(rows, ratio_threshold, name)
    chosen = guardrail.choose_threshold(rows, name)
    body = guardrail.report_body(rows, summ, str(png.relative_to(out.parent)), chosen)
    write_report(out, "Reconstruction self-check: calibration study", "mri-train " + " ".join(sys.argv[1:]),
                 (guardrail.__doc__ or "").strip() + "\n\n" + body)
    typer.echo(json.dumps(summ | {"chosen": chosen}, indent=1))
    typer.echo(f"wrote {out}")


@app.command("evaluate-synthesis")
def evaluate_synthesis(
    real: bool = typer.Option(True, "--real/--no-real", help="Real anatomy (the only evaluation this command runs)."),
    repo: Path = typer.Option(Path("model_repository"), help="Model repository: the newest version of each synth_* model."),
    patients_out: Path = typer.Option(Path("docs/synthesis_patients.md"), help="Patient report (rows also as .json)."),
    mni_out: Path = typer.Option(Path("docs/synthesis_generalization.md"), help="MNI152 template report."),
    config: Path = typer.Option(Path("configs/synthesis.yaml"), help="Run config whose training sites give the equation ratios."),
    threads: int = typer.Option(1, min=1, help="ONNX Runtime threads."),
) -> None:
    """Served synthesis models on real anatomy: the glioma patient in evaldata/ (PSNR/SSIM/NMSE over brain voxels
    against identity and a fitted linear remap, lesion table, PNG grids) and the MNI152 T1 template (tissue means,
    GM/WM and CSF/GM next to the phantom's signal equations). Evaluation only: nothing here trains or tunes."""
    from training.synthesis import real_eval as ev  # deferred: nibabel, nilearn, onnxruntime

    if not real:
        raise typer.BadParameter("only --real is implemented (the phantom tables come from the training runs)")
    directions = (("T1w", "T2w"), ("T1w", "FLAIR"), ("T2w", "T1w"))
    models = {}
    for src, dst in directions:
        found = ev.served_model(repo, src, dst)
        if found is not None:
            models[f"{src}->{dst}"] = (found[0], ev.onnx_model(found[1], threads))
    sites = tuple(_load(config, [])["data"]["train_sites"])
    command = "mri-train " + " ".join(sys.argv[1:])
    patient = ev.load_patient()
    rows = ev.evaluate_patient(patient, models, directions)
    pngs = {}
    for src, dst in directions:
        png = patients_out.parent / "img" / f"synthesis_patient_{src.lower()}_to_{dst.lower()}.png"
        ev.plot_patient(patient, rows, f"{src}->{dst}", png)
        pngs[f"{src}->{dst}"] = str(png.relative_to(patients_out.parent))
    patients_out.with_suffix(".json").write_text(json.dumps(
        [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows], indent=1))
    lesion_rows = ev.phantom_lesion_rows(_load(config, []), models, directions[:2])
    write_report(patients_out, "Synthesis on a real glioma patient", command,
                 ev.patient_body(rows, pngs) + "\n" + ev.phantom_lesion_body(lesion_rows))
    typer.echo(f"wrote {patients_out}")
    t1, labels = ev.load_mni()
    mrows = ev.evaluate_mni(t1, labels, models, sites)
    mni_out.with_suffix(".json").write_text(json.dumps(mrows, indent=1))
    write_report(mni_out, "Synthesis on real anatomy: the MNI152 T1 template", command, ev.mni_body(mrows, sites))
    typer.echo(f"wrote {mni_out}")


@app.command("federation-certs")
def federation_certs(
    out: Path = typer.Option(Path(".cache/federation-pki"), help="PKI directory (0700; private keys 0600)."),
    sites: list[str] = typer.Option(..., "--sites", help="Site names (repeatable or space separated): one key pair each."),
    hosts: list[str] = typer.Option([], "--host", help="Name or address the SuperLink is reached at (repeatable), "
                                    "besides localhost/127.0.0.1/::1."),
    days: int = typer.Option(365, min=1, help="Validity of the CA and the server certificate, in days."),
) -> None:
    """Create the federation's private CA, the SuperLink's TLS certificate and each site's SuperNode
    authentication key (docs/federation.md). Existing files are kept: name a new site to add a hospital."""
    names = [n for s in sites for n in s.replace(",", " ").split()]
    try:
        pki = create_pki(out, names, hosts, days)
    except PkiError as exc:
        raise typer.BadParameter(str(exc), param_hint="--sites/--host/--days") from exc
    typer.echo(f"CA {pki.ca_cert}; SuperLink certificate {pki.server_cert} (key {pki.server_key})")
    for site in names:
        typer.echo(f"  {site}: private key {pki.site_key(site)} (stays at the site), public key "
                   f"{pki.site_public_key(site)} {public_key_fingerprint(pki.site_public_key(site))}")


@app.command("publish-init")
def publish_init(
    run_dir: Path = typer.Argument(..., help="A finished synthesis run, e.g. runs/synthesis-public."),
    out: Path = typer.Argument(..., help="Where to write the generators (.npz; the provenance goes next to it as .json)."),
) -> None:
    """Publish a synthesis run's last generators as starting weights for other runs (``model.init_weights``),
    with their provenance: direction, architecture, the sites they were trained on, held-out metrics."""
    if out.suffix != ".npz":
        raise typer.BadParameter(f"must end in .npz, got {str(out)!r}", param_hint="OUT")
    try:
        info = publish(run_dir, out)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="RUN_DIR") from exc
    psnr = info["heldout"].get("psnr")
    typer.echo(f"wrote {out} ({out.stat().st_size / 1e3:.0f} kB): {info['direction']}, trained on {', '.join(info['sites'])}, "
               f"{info['rounds']} rounds" + (f", held-out PSNR {psnr:.2f} dB" if psnr is not None else ""))


@app.command("export")
def export(
    run_dir: list[Path] = typer.Option(..., "--run-dir", "-r", help="A finished training run (repeatable), e.g. runs/recon-default."),
    repo: Path = typer.Option(Path("model_repository"), help="Triton model repository to write into."),
    version: int = typer.Option(1, min=1, help="Numeric model version to write (replaced if it exists)."),
    round_: int = typer.Option(None, "--round", min=1, help="Checkpoint round to export (default: the last)."),
    model: list[str] = typer.Option([], "--model", "-m", help="Export only this model name (repeatable)."),
) -> None:
    """Export the runs' generators to ONNX (dynamo, DC in the graph), check ONNX Runtime against PyTorch
    (relative error <= 1e-5) and write them with Triton configs (GPU and CPU) and model cards."""
    from training.export.run import export_run  # deferred: onnx, onnxscript, both families (~2 s)

    for rd in run_dir:
        try:
            cards = export_run(rd, repo, version=version, round_=round_, only=model or None)
        except (FileNotFoundError, ValueError, ConfigError) as exc:
            raise typer.BadParameter(str(exc), param_hint="--run-dir/--model") from exc
        for card in cards:
            e = card["export"]
            typer.echo(f"{card['name']} v{card['version']}: {e['onnx_bytes'] / 1e6:.2f} MB, round {card['training']['round']}, "
                       f"parity {e['parity_max_relative_error']:.1e} -> {repo / card['name'] / str(card['version'])}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "flwr", "ray"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    app()
