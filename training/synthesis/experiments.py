"""Seed-style evaluation tables of the synthesis family (FedMed-GAN), reproducible with one command::

    python -m training.synthesis.experiments all            # every table -> docs/synthesis_results.md
    python -m training.synthesis.experiments compare        # centralized vs federated vs federated + DP
    python -m training.synthesis.experiments partitions     # average / gradual / extreme (federated + DP)
    python -m training.synthesis.experiments dp-grid        # noise multiplier x clip bound (federated + DP)
    python -m training.synthesis.experiments ablation       # where the federated + DP gap comes from

The tables of ``docs/synthesis.md`` come from ``all`` (the 'compare' row 'federated + DP' is the default run
``runs/synthesis-default``, reused). When the configuration starts from pretrained generators
(``model.init_weights``), 'compare' also trains its four runs from random weights (``SCRATCH``, run
directories ``*-scratch``); the other tables are measured from random weights. One table alone is written to ``<runs-root>/<table>.md`` (e.g.
``runs/synthesis-exp/ablation.md``) unless ``--out`` names another file.

Every experiment is a real run with Flower's simulation engine under ``--runs-root`` (one run directory per
row); a finished run is reused, an interrupted one resumed, so the command can be re-run to add rows.
'compare' uses the configuration as given (the default run); 'partitions' and 'dp-grid' are short runs
(``--partition-short`` / ``--grid-short`` overrides, fewer rounds). Metrics are the last round's held-out numbers (A->B and B->A),
with the identity baseline (target vs source contrast) and every site's epsilon.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import typer
import yaml
from tqdm import tqdm

from training.federation.checkpoints import checkpoint_path, latest_checkpoint, read_metrics
from training.federation.coordinator import check_same_run
from training.federation.records import load_arrays
from training.federation.registry import family_from_config, family_from_yaml
from training.federation.runconfig import load_run_config
from training.federation.simulation import simulate
from training.report import markdown_table, write_report

log = logging.getLogger(__name__)
app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

#: overrides of the runs from random starting weights (``model.init_weights`` unset) at the learning rate
#: tuned for DP-SGD from scratch (the default before pretrained starting weights): 'compare' adds them after
#: the configuration's own runs when those start from pretrained weights; 'compare-small', the short runs of
#: 'partitions' and 'dp-grid' and 'ablation' were measured so and stay so
SCRATCH = ["model.init_weights=null", "objective.lr=0.08"]
#: overrides of the short runs: fewer rounds; 'partitions' needs more subjects (the 'extreme' site holds 70 %
#: of the slices), 'dp-grid' halves the data and the batch (same sample rate q as the default run)
SHORT = ["federation.rounds=4", "federation.evaluate_sites=false", *SCRATCH]
PARTITION_SHORT = [*SHORT, "data.source.subjects_per_site=30", "data.train_slices_total=1600", "privacy.clipping=flat"]
GRID_SHORT = [*SHORT, "data.source.subjects_per_site=12", "data.train_slices_total=800", "objective.batch_size=32",
              "privacy.clipping=flat"]
#: the smaller data set and flat clipping of the first default (400 records per site): the 'compare' rows
#: on it show what 2x data per site and per-layer clipping each bring
SMALL = ["data.source.subjects_per_site=12", "data.train_slices_total=1600", "privacy.clipping=flat", *SCRATCH]
NOISES = (0.5, 1.07, 2.0)
#: rounds of the longer federated + DP run of 'compare' (does more compute close the gap?)
LONG_ROUNDS = 24
CLIPS = (0.7, 1.0, 1.3)
#: full runs of 'ablation' (label, overrides of the configuration, run directory): DP's clipping without
#: meaningful noise, the noise multiplier at full size, the seed's Adam beta1 (0.5) against the usual DP
#: choice (0.9), twice the rounds, a larger batch and a smaller generator (the table puts the default run,
#: sigma 1.07, after the first two)
ABLATION = (
    ("federated + DP clipping only (sigma 0.01: no meaningful privacy)", ["privacy.noise_multiplier=0.01"], "dp-clip-only"),
    ("federated + DP-SGD, sigma 0.5", ["privacy.noise_multiplier=0.5"], "dp-sigma0.5-full"),
    ("federated + DP-SGD, sigma 2.0", ["privacy.noise_multiplier=2.0"], "dp-sigma2-full"),
    ("federated + DP-SGD, Adam betas (0.9, 0.999)", ["objective.betas=[0.9,0.999]"], "dp-beta0.9"),
    (f"federated + DP-SGD, {LONG_ROUNDS} rounds (2x steps, compute and more epsilon)", [f"federation.rounds={LONG_ROUNDS}"],
     f"dp-{LONG_ROUNDS}r-full"),
    (f"federated (FedAvg, no DP), {LONG_ROUNDS} rounds", [f"federation.rounds={LONG_ROUNDS}", "privacy.enabled=false"],
     f"federated-{LONG_ROUNDS}r"),
    ("federated + DP-SGD, expected batch 128 (q = 0.16: half the steps, less noise per step)",
     ["objective.batch_size=128"], "dp-batch128"),
    ("federated + DP-SGD, no residual block (3.1 k instead of 7.7 k parameters per generator)",
     ["model.num_res_blocks=0"], "dp-no-resblock"),
)
#: 'ablation' also evaluates the mean of the default run's last k rounds of shared weights
TAIL_AVERAGES = (2, 4)
#: index of the configuration's federated + DP run among the 'compare' rows (after the identity row)
DP_ROW = 3
#: 'compare' also trains the centralized reference at this generator learning rate: the configuration's
#: own lr is tuned for DP-SGD (0.004 from the pretrained start, 0.08 from random weights), the reference
#: should be centralized training at its best
CENTRAL_REFERENCE_LR = 0.01

CONFIG_OPT = typer.Option(Path("configs/synthesis.yaml"), "--config", "-c", help="Base run configuration.")
SET_OPT = typer.Option([], "--set", "-s", help="Override for every run of the experiment (repeatable).")
PSHORT_OPT = typer.Option(PARTITION_SHORT, "--partition-short", help="Overrides of the partition runs (repeatable).")
GSHORT_OPT = typer.Option(GRID_SHORT, "--grid-short", help="Overrides of the DP-grid runs (repeatable).")
ROOT_OPT = typer.Option(Path("runs/synthesis-exp"), "--runs-root", help="Directory of the experiments' runs.")
SEEDS_OPT = typer.Option([], "--seed", help="'compare' only: train every row again with this seed besides the "
                                            "configuration's own (repeatable; runs '<row>-seedN'); a table of the "
                                            "means over the seeds follows.")
#: where 'all' writes its tables; a single table goes to ``<runs-root>/<table>.md`` unless ``--out`` says otherwise,
#: so that re-running one table never replaces the full report with part of it
RESULTS_MD = Path("docs/synthesis_results.md")
#: the tables of the report, in its order ('all' writes them all unless --table names some)
TABLES = ("compare", "compare-small", "partitions", "dp-grid", "ablation")
TABLES_OPT = typer.Option(list(TABLES), "--table", "-t", help=f"Only these tables (repeatable): {', '.join(TABLES)}.")
OUT_OPT = typer.Option(None, "--out", help=f"Markdown file with the tables (default: {RESULTS_MD} for several tables, "
                                            "<runs-root>/<table>.md for one table).")


def run_one(config: Path, overrides: list[str], run_dir: Path) -> dict:
    """Train (or resume, or reuse) one run; returns its summary: last held-out metrics, epsilon per site,
    seconds of training and the run's overrides."""
    own = run_dir == _default_run_dir(config)
    cfg = load_run_config(config, [*overrides, *([] if own else [f"run_dir={run_dir}", f"name={run_dir.name}"])])
    check_same_run(run_dir, cfg)  # a run of another configuration is never reused (RunMismatch names the keys)
    rows = read_metrics(run_dir)
    if not rows or rows[-1]["round"] < cfg["federation"]["rounds"]:
        family = family_from_config(cfg)
        family.prepare()
        log.info("training %s (%s)", run_dir.name, " ".join(overrides) or "base config")
        total = int(cfg["federation"]["rounds"])
        with tqdm(total=total, initial=rows[-1]["round"] if rows else 0, desc=run_dir.name, unit="round") as bar:
            def progress(rnd: int, row: dict) -> None:
                bar.set_postfix(psnr=f"{row.get('heldout', {}).get('psnr', float('nan')):.2f}")
                bar.update(1)

            simulate(cfg, progress=progress)
        rows = read_metrics(run_dir)
    return _summary(run_dir.name, rows, rows[-1]["heldout"], overrides)


def _summary(name: str, rows: list[dict], heldout: dict, overrides: list[str]) -> dict:
    """A run's summary from its metrics ``rows``: its last round and epsilon per site, the held-out metrics
    given, and the seconds of training."""
    last = rows[-1]
    eps = {s: m["epsilon"] for s, m in last.get("train", {}).items() if "epsilon" in m}
    return {"name": name, "round": last["round"], "heldout": heldout, "epsilon": eps,
            "seconds": sum(r.get("seconds", 0.0) for r in rows), "overrides": overrides}


def _default_run_dir(config: Path) -> Path:
    """The configuration's own run directory (the default run, e.g. ``runs/synthesis-default``): the
    federated + DP row of 'compare' without overrides *is* that run, reused when it is complete."""
    return Path(load_run_config(config)["run_dir"])


def _row(label: str, r: dict) -> list:
    h = r["heldout"]
    eps = r["epsilon"]
    eps_text = ", ".join(f"{s.removeprefix('hospital-')} {v:.2f}" for s, v in sorted(eps.items())) if eps else "no DP"
    return [label, f"{h['psnr']:.2f}", f"{h['ssim']:.3f}", f"{h['mae']:.3f}", f"{h['psnr_rev']:.2f}",
            f"{h['ssim_rev']:.3f}", eps_text, r["round"], f"{r['seconds'] / 60:.1f}"]


HEADER = ["run", "PSNR A->B (dB)", "SSIM A->B", "MAE A->B", "PSNR B->A (dB)", "SSIM B->A",
          "epsilon per site (delta 1e-5)", "rounds", "train min"]
#: shares of the partition schemes for 4 sites (hospital-a first), for the table
SHARES = {"average": "0.25 each", "gradual": "a 0.4, b 0.3, c 0.2, d 0.1", "extreme": "a 0.7, b/c/d 0.1"}


def _identity_row(r: dict) -> list:
    h = r["heldout"]
    return ["identity baseline (target vs source)", f"{h['identity_psnr']:.2f}", f"{h['identity_ssim']:.3f}",
            f"{h['identity_mae']:.3f}", f"{h['identity_psnr']:.2f}", f"{h['identity_ssim']:.3f}", "-", "-", "-"]


def _dp_run_dir(config: Path, base: list[str], root: Path, seed: int | None = None, suffix: str = "") -> Path:
    """Where the federated + DP run of the configuration is: the default run itself without overrides (and
    at the configuration's own seed); ``suffix`` as in :func:`full_runs`."""
    if seed is not None:
        return root / f"federated-dp{suffix}-seed{seed}"
    return _default_run_dir(config) if not base else root / f"federated-dp{suffix}"


def _seeded(base: list[str], seed: int | None) -> tuple[list[str], str]:
    """(overrides, run-directory suffix) of a run at ``seed``: ``seed=N`` and ``-seedN``; the configuration's
    own seed (None): ``base`` and no suffix."""
    return ([*base, f"seed={seed}"], f"-seed{seed}") if seed is not None else (base, "")


def full_runs(config: Path, base: list[str], root: Path, seed: int | None = None, suffix: str = "") -> dict[str, dict]:
    """The full runs of the configuration that 'compare' and 'ablation' both report: 'central' (pooled, no
    DP), 'federated' (no DP) and 'dp' (federated + DP). ``seed``: another seed than the configuration's
    (``seed=N`` added to the overrides, run directories suffixed ``-seedN``); ``suffix``: of the run
    directories (``-scratch`` for the random-init runs, :data:`SCRATCH`)."""
    seeded, tag = _seeded(base, seed)
    return {
        "central": run_one(config, [*seeded, "data.pooled=true", "privacy.enabled=false"], root / f"central-800{suffix}{tag}"),
        "federated": run_one(config, [*seeded, "privacy.enabled=false"], root / f"federated-800{suffix}{tag}"),
        "dp": run_one(config, seeded, _dp_run_dir(config, base, root, seed, suffix)),
    }


def _compare_set(config: Path, base: list[str], root: Path, seed: int | None, suffix: str, note: str) -> list[tuple[str, dict]]:
    """(label, summary) of the four 'compare' runs of ``base`` (central at the configuration's lr and at
    ``CENTRAL_REFERENCE_LR``, federated, federated + DP, in that order); ``note`` ends every label."""
    full = full_runs(config, base, root, seed, suffix)
    lr = CENTRAL_REFERENCE_LR
    seeded, tag = _seeded(base, seed)
    own = f"lr {load_run_config(config, seeded)['objective']['lr']:g}{note}"
    return [
        (f"centralized (pooled data, no DP), {own}", full["central"]),
        (f"centralized (pooled data, no DP), lr {lr:g}{note}",
         run_one(config, [*seeded, "data.pooled=true", "privacy.enabled=false", f"objective.lr={lr:g}"],
                 root / f"central-800-lr{lr:g}{suffix}{tag}")),
        (f"federated (FedAvg, no DP), {own}", full["federated"]),
        (f"federated + DP-SGD (per-layer clipping), {own}", full["dp"]),
    ]


def _init_weights(config: Path, base: list[str]) -> str | None:
    """The configuration's ``model.init_weights`` (pretrained starting weights), or None."""
    return load_run_config(config, base)["model"].get("init_weights")


def _compare_runs(config: Path, base: list[str], root: Path, seed: int | None = None) -> list[tuple[str, dict]]:
    """(label, summary) of the 'compare' rows at the configuration's seed or at ``seed``: the configuration's
    four runs (federated + DP is row :data:`DP_ROW`); when it starts from pretrained weights, the same four
    from random weights follow (run directories ``*-scratch``)."""
    init = _init_weights(config, base)
    rows = _compare_set(config, base, root, seed, "", f", init {Path(init).stem}" if init else "")
    if init:
        rows += _compare_set(config, [*base, *SCRATCH], root, seed, "-scratch", ", random init")
    return rows


def compare(config: Path, base: list[str], root: Path, seeds: Sequence[int] = ()) -> tuple[str, list[dict]]:
    """Centralized (pooled, no DP; at the configuration's lr and at ``CENTRAL_REFERENCE_LR``) vs federated
    (no DP) vs federated + DP, same model, rounds and data. ``seeds``: further seeds than the configuration's
    own; every row is trained once per seed, and a table of the means over the seeds, with the gap of
    federated + DP to each row, follows."""
    own = _compare_runs(config, base, root)
    others = {s: _compare_runs(config, base, root, s) for s in seeds}
    rows = [_identity_row(own[0][1])] + [_row(label, r) for label, r in own]
    rows += [_row(f"{label}, seed {s}", r) for s, runs in others.items() for label, r in runs]
    table = markdown_table(HEADER, rows)
    if others:
        per_row = [[r for _, r in runs] for runs in (own, *others.values())]
        means = [sum(rs[i]["heldout"]["psnr"] for rs in per_row) / len(per_row) for i in range(len(own))]
        ssims = [sum(rs[i]["heldout"]["ssim"] for rs in per_row) / len(per_row) for i in range(len(own))]
        dp = means[DP_ROW]
        header = ["run", "seeds", "PSNR A->B per seed (dB)", "mean PSNR A->B (dB)", "mean SSIM A->B",
                  "federated + DP minus this row (dB)"]
        seed_names = ", ".join(str(s) for s in (load_run_config(config, base)["seed"], *others))
        table += "\n\nMeans over the seeds:\n\n" + markdown_table(header, [
            [label, seed_names, " / ".join(f"{rs[i]['heldout']['psnr']:.2f}" for rs in per_row), f"{means[i]:.2f}",
             f"{ssims[i]:.3f}", f"{dp - means[i]:+.2f}"]
            for i, (label, _) in enumerate(own)])
    return table, [r for _, r in own] + [r for runs in others.values() for _, r in runs]


def compare_small(config: Path, base: list[str], root: Path) -> tuple[str, list[dict]]:
    """The same comparison on 400 records per site (``SMALL``), with flat and per-layer clipping, and flat
    clipping with twice the rounds."""
    small = [*base, *SMALL]
    runs = [
        ("centralized (pooled data, no DP)", run_one(config, [*small, "data.pooled=true", "privacy.enabled=false"], root / "central")),
        ("federated (FedAvg, no DP)", run_one(config, [*small, "privacy.enabled=false"], root / "federated")),
        ("federated + DP-SGD, flat clipping", run_one(config, small, root / "federated-dp-400-flat")),
        ("federated + DP-SGD, per-layer clipping", run_one(config, [*small, "privacy.clipping=per_layer"], root / "federated-dp-400-layer")),
        (f"federated + DP-SGD, flat clipping, {LONG_ROUNDS} rounds (2x compute)",
         run_one(config, [*small, f"federation.rounds={LONG_ROUNDS}"], root / f"federated-dp-{LONG_ROUNDS}r")),
    ]
    rows = [_identity_row(runs[0][1])] + [_row(label, r) for label, r in runs]
    return markdown_table(HEADER, rows), [r for _, r in runs]


def partitions(config: Path, base: list[str], short: list[str], root: Path) -> tuple[str, list[dict]]:
    """The three partition schemes of the training slices over the sites (federated + DP, short runs)."""
    runs = [(p, run_one(config, [*base, *short, f"data.partition={p}"], root / f"partition-{p}"))
            for p in ("average", "gradual", "extreme")]
    rows = [_identity_row(runs[0][1])] + [_row(f"{p} ({SHARES.get(p, '')})", r) for p, r in runs]
    return markdown_table(HEADER, rows), [r for _, r in runs]


def dp_grid(config: Path, base: list[str], short: list[str], root: Path) -> tuple[str, list[dict]]:
    """Noise multiplier x clip bound (federated + DP, short runs): PSNR A->B and the largest site epsilon."""
    results = {}
    for s in NOISES:
        for c in CLIPS:
            results[s, c] = run_one(config, [*base, *short, f"privacy.noise_multiplier={s}", f"privacy.max_grad_norm={c}"],
                                    root / f"dp-sigma{s:g}-clip{c:g}")
    rows = [[f"sigma = {s:g}", *[f"{results[s, c]['heldout']['psnr']:.2f} dB / {results[s, c]['heldout']['ssim']:.3f}"
                                  for c in CLIPS], f"{max(results[s, CLIPS[0]]['epsilon'].values()):.2f}"]
            for s in NOISES]
    header = ["noise multiplier", *[f"clip C = {c:g}: PSNR / SSIM A->B" for c in CLIPS], "epsilon (any C)"]
    return markdown_table(header, rows), list(results.values())


def ablation(config: Path, base: list[str], root: Path) -> tuple[str, list[dict]]:
    """Where the gap between federated + DP and centralized comes from: full runs with one change each
    (``ABLATION``: DP's clipping without its noise, the noise multiplier, Adam's beta1, the rounds, the batch,
    the generator's size) and the mean of the default run's last rounds, beside the 'compare' runs (reused)."""
    base = [*base, *SCRATCH]
    full = full_runs(config, base, root, suffix="-scratch")
    runs = [
        ("centralized (pooled data, no DP)", full["central"]),
        ("federated (FedAvg, no DP)", full["federated"]),
        *[(label, run_one(config, [*base, *extra], root / name)) for label, extra, name in ABLATION[:2]],
        ("federated + DP-SGD, sigma 1.07 (the default run)", full["dp"]),
        *[(label, run_one(config, [*base, *extra], root / name)) for label, extra, name in ABLATION[2:]],
        *[(f"federated + DP-SGD, sigma 1.07, mean of the last {k} rounds' shared weights (post-processing)",
           averaged_rounds(_dp_run_dir(config, base, root, suffix="-scratch"), k)) for k in TAIL_AVERAGES],
    ]
    ref = full["central"]["heldout"]["psnr"]

    def row(label: str, r: dict) -> list:
        h, eps = r["heldout"], r["epsilon"]
        eps_text = f"{max(eps.values()):.3g}" if eps else "no DP"
        return [label, f"{h['psnr']:.2f}", f"{h['psnr'] - ref:+.2f}", f"{h['ssim']:.3f}", f"{h['psnr_rev']:.2f}",
                eps_text, r["round"], f"{r['seconds'] / 60:.1f}"]

    header = ["run", "PSNR A->B (dB)", "vs centralized (dB)", "SSIM A->B", "PSNR B->A (dB)",
              "largest site epsilon (delta 1e-5)", "rounds", "train min"]
    return markdown_table(header, [row(label, r) for label, r in runs]), [r for _, r in runs]


def averaged_rounds(run_dir: Path, k: int) -> dict:
    """Held-out metrics of the mean of a finished run's last ``k`` rounds of shared weights (a summary like
    :func:`run_one`'s). Averaging released weights is post-processing: it costs no privacy."""
    last, _ = latest_checkpoint(run_dir)
    checkpoints = [load_arrays(checkpoint_path(run_dir, r)) for r in range(last - k + 1, last + 1)]
    mean = {name: np.mean([c[name] for c in checkpoints], axis=0).astype(np.float32) for name in checkpoints[-1]}
    family = family_from_yaml((run_dir / "config.yaml").read_text())
    return _summary(f"{run_dir.name}-mean{k}", read_metrics(run_dir), family.evaluate_heldout(mean), [])


def _report(out: Path, sections: list[tuple[str, str]], config: Path, base: list[str], root: Path) -> None:
    cfg = yaml.safe_load(Path(config).read_text())
    d, priv = cfg.get("data", {}), cfg.get("privacy", {})
    intro = (
        f"Base config `{config}` (direction {cfg.get('synthesis', {}).get('direction', 'T1w->T2w')}, sites "
        f"{', '.join(d.get('train_sites', []))}, {d.get('train_slices_total')} training slices, paired ratio "
        f"{d.get('paired_ratio')}, DP sigma {priv.get('noise_multiplier')} / clip {priv.get('max_grad_norm')} "
        f"({priv.get('clipping', 'flat')} clipping), generator lr {cfg.get('objective', {}).get('lr')}, starting weights "
        f"{'`' + str(cfg.get('model', {}).get('init_weights')) + '`' if cfg.get('model', {}).get('init_weights') else 'random'}"
        + (f"; overrides for every run: `{' '.join(base)}`" if base else "") + "). Each table names the overrides of its runs.\n"
        "Held out: the test subjects of every site (never trained on); metrics per subject volume in normalised "
        "units (each image divided by its mean), PSNR/SSIM with the volume maximum as data range (fastMRI), "
        "mean over subjects. 'A->B' is the configured direction, 'B->A' the second generator. Finished runs "
        f"under `{root}` are reused (the command trains only what is missing), so the date above may be later "
        "than the training; 'train min' is each run's own training time.\n"
    )
    body = intro + "".join(f"\n## {title}\n\n{table}\n" for title, table in sections)
    write_report(out, "Synthesis results (FedMed-GAN)", "python -m training.synthesis.experiments " + " ".join(sys.argv[1:]), body)


def _main(tables: list[str], config: Path, set_: list[str], pshort: list[str], gshort: list[str], runs_root: Path,
          out: Path | None, seeds: Sequence[int] = ()) -> None:
    t0 = time.perf_counter()
    unknown = sorted(set(tables) - set(TABLES))
    if unknown:
        raise typer.BadParameter(f"unknown table(s) {', '.join(unknown)}; choose from {', '.join(TABLES)}")
    if seeds:
        own = load_run_config(config, set_)["seed"]
        if own in seeds or len(set(seeds)) < len(seeds):
            raise typer.BadParameter(f"--seed {' '.join(map(str, seeds))}: give distinct seeds other than the "
                                     f"configuration's own seed {own} (its runs are the table's first rows)")
    if out is None:
        out = RESULTS_MD if len(tables) > 1 else runs_root / f"{tables[0]}.md"
    sections = []
    if "compare" in tables:
        sections.append(("Centralized vs federated vs federated + DP (full runs of the configuration; when it starts from "
                         f"pretrained weights, the same four runs from random weights follow: `{' '.join(SCRATCH)}`)",
                         compare(config, set_, runs_root, seeds)[0]))
    if "compare-small" in tables:
        sections.append((f"The same on 400 records per site, flat vs per-layer clipping (`{' '.join(SMALL)}`)",
                         compare_small(config, set_, runs_root)[0]))
    if "partitions" in tables:
        sections.append((f"Partitions of the training slices over the sites (federated + DP; `{' '.join(pshort)}`)",
                         partitions(config, set_, pshort, runs_root)[0]))
    if "dp-grid" in tables:
        sections.append((f"Noise multiplier x clip bound (federated + DP; `{' '.join(gshort)}`)",
                         dp_grid(config, set_, gshort, runs_root)[0]))
    if "ablation" in tables:
        sections.append(("Where the federated + DP gap comes from (full runs of the configuration, one change each)",
                         ablation(config, set_, runs_root)[0]))
    _report(out, sections, config, set_, runs_root)
    typer.echo(f"wrote {out} in {time.perf_counter() - t0:.0f} s")


@app.command("all")
def all_(config: Path = CONFIG_OPT, set_: list[str] = SET_OPT, partition_short: list[str] = PSHORT_OPT,
         grid_short: list[str] = GSHORT_OPT, runs_root: Path = ROOT_OPT, out: Path | None = OUT_OPT,
         tables: list[str] = TABLES_OPT, seeds: list[int] = SEEDS_OPT) -> None:
    """Every table (or those named by --table) in one report: compare, compare-small, partitions, the DP grid
    and the ablation."""
    _main(list(tables), config, set_, partition_short, grid_short, runs_root, out, seeds)


@app.command("compare")
def compare_cmd(config: Path = CONFIG_OPT, set_: list[str] = SET_OPT, runs_root: Path = ROOT_OPT,
                out: Path | None = OUT_OPT, seeds: list[int] = SEEDS_OPT) -> None:
    """Centralized vs federated vs federated + DP (full runs of the configuration)."""
    _main(["compare"], config, set_, PARTITION_SHORT, GRID_SHORT, runs_root, out, seeds)


@app.command("compare-small")
def compare_small_cmd(config: Path = CONFIG_OPT, set_: list[str] = SET_OPT, runs_root: Path = ROOT_OPT,
                      out: Path | None = OUT_OPT) -> None:
    """The comparison on 400 records per site: flat vs per-layer clipping, and flat clipping with 2x rounds."""
    _main(["compare-small"], config, set_, PARTITION_SHORT, GRID_SHORT, runs_root, out)


@app.command("partitions")
def partitions_cmd(config: Path = CONFIG_OPT, set_: list[str] = SET_OPT, partition_short: list[str] = PSHORT_OPT,
                   runs_root: Path = ROOT_OPT, out: Path | None = OUT_OPT) -> None:
    """average / gradual / extreme partitions (short federated + DP runs)."""
    _main(["partitions"], config, set_, partition_short, GRID_SHORT, runs_root, out)


@app.command("dp-grid")
def dp_grid_cmd(config: Path = CONFIG_OPT, set_: list[str] = SET_OPT, grid_short: list[str] = GSHORT_OPT,
                runs_root: Path = ROOT_OPT, out: Path | None = OUT_OPT) -> None:
    """Noise multiplier {0.5, 1.07, 2.0} x clip bound {0.7, 1.0, 1.3} (short federated + DP runs)."""
    _main(["dp-grid"], config, set_, PARTITION_SHORT, grid_short, runs_root, out)


@app.command("ablation")
def ablation_cmd(config: Path = CONFIG_OPT, set_: list[str] = SET_OPT, runs_root: Path = ROOT_OPT,
                 out: Path | None = OUT_OPT) -> None:
    """Where the federated + DP gap comes from: clipping without noise, sigma 0.5 / 2.0, Adam beta1 0.9, 2x rounds,
    batch 128, no residual block."""
    _main(["ablation"], config, set_, PARTITION_SHORT, GRID_SHORT, runs_root, out)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("flwr", "ray", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    app()
