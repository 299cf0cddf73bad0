"""What SecAgg+ costs against plain FedAvg, per training round, on the real SuperLink and SuperNodes (TLS,
authenticated sites) of :class:`training.federation.deploy.LocalDeployment`.

For each number of sites, one deployment runs the same small reconstruction config twice, plain FedAvg and
SecAgg+, ``--rounds`` rounds each; the numbers come from the coordinator's ``traffic`` record of every
round (``metrics.jsonl``): seconds from sending the training messages to holding the aggregate (SecAgg+:
its four stages), and payload bytes of the training messages sent and received (array data, bytes and
strings of config records; no TLS/HTTP framing). The table replaces the block between the markers in
``docs/federation.md`` (section "Secure aggregation cost").

    python -m benchmarks.federation_secagg --sites 2 --sites 5 --out docs/federation.md
"""

from __future__ import annotations

import re
import statistics
import tempfile
from pathlib import Path

import typer
import yaml

from benchmarks.common import machine_line, markdown_table
from training.federation.checkpoints import read_metrics
from training.federation.deploy import LocalDeployment
from training.federation.registry import family_from_config

app = typer.Typer(add_completion=False, help=__doc__)
SITE_NAMES = ("hospital-a", "hospital-b", "hospital-c", "hospital-d", "hospital-e", "hospital-f")
START, END = "<!-- secagg-cost:start -->", "<!-- secagg-cost:end -->"


def bench_config(workdir: Path, name: str, sites: tuple[str, ...], rounds: int, secure: bool) -> dict:
    """The small reconstruction run of the benchmark (64x64, 4 coils, 2 cascades x 8 channels)."""
    return {
        "family": "recon", "name": name, "run_dir": str(workdir / name), "seed": 0,
        "data": {"source": {"matrix": [64, 64], "subjects_per_site": 3, "slices_per_subject": 2, "sites": list(sites),
                            "cache_dir": str(workdir / "cache")},
                 "train_sites": list(sites), "heldout_site": None, "num_coils": 4, "val_subjects": 1},
        "model": {"chans": 8, "num_cascades": 2, "sens_chans": 4},
        "objective": {"batch_size": 2},
        "federation": {"rounds": rounds, "evaluate_sites": False,
                       "secure_aggregation": {"enabled": secure, "max_weight": 16.0}},
    }


def measure(workdir: Path, num_sites: int, rounds: int) -> list[list]:
    """Rows (sites, mode, seconds/round, site training seconds, MB sent, MB received, received/site) for
    FedAvg and SecAgg+. Runs already in ``workdir`` with at least ``rounds`` rounds are read, not rerun
    (their first ``rounds`` rounds)."""
    sites = SITE_NAMES[:num_sites]
    names = {secure: f"{'secagg' if secure else 'fedavg'}-{num_sites}" for secure in (False, True)}
    todo = [secure for secure, name in names.items()
            if not (workdir / name / "metrics.jsonl").exists() or len(read_metrics(workdir / name)) < rounds]
    if todo:
        family_from_config(bench_config(workdir, "cache", sites, 1, False)).prepare()  # data cache before timing
        with LocalDeployment(workdir / "flower", {s: workdir / "state" / s for s in sites}) as dep:
            for secure in todo:
                cfg_file = workdir / f"{names[secure]}.yaml"
                cfg_file.write_text(yaml.safe_dump(bench_config(workdir, names[secure], sites, rounds, secure)))
                dep.run(cfg_file, timeout_s=3600)
    rows = []
    for secure, name in names.items():
        metrics = read_metrics(workdir / name)[:rounds]
        traffic = [r["traffic"] for r in metrics]
        train_s = [float(site["seconds"]) for r in metrics for site in r["train"].values()]
        sent = statistics.mean(t["train_sent_bytes"] for t in traffic) / 1e6
        received = statistics.mean(t["train_received_bytes"] for t in traffic) / 1e6
        rows.append([num_sites, "SecAgg+" if secure else "FedAvg",
                     round(statistics.mean(t["train_seconds"] for t in traffic), 1),
                     round(statistics.mean(train_s), 1), round(sent, 3), round(received, 3),
                     round(received / num_sites, 3)])
    return rows


def write_table(out: Path, rows: list[list], command: str, params: int) -> None:
    """Replace the block between the markers in ``out`` with the table."""
    table = markdown_table(["sites", "aggregation", "s / round (coordinator)", "s / site training",
                            "MB sent / round", "MB received / round", "MB received / site"], rows)
    block = (f"{START}\nProduced by `{command}` on {machine_line()}; generator of {params} float32 parameters "
             f"({params * 4 / 1e6:.3f} MB); means over the rounds.\n\n{table}\n{END}")
    text = out.read_text()
    if START not in text:
        raise typer.BadParameter(f"{out} has no {START} ... {END} block", param_hint="--out")
    out.write_text(re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S))


@app.command()
def main(sites: list[int] = typer.Option([2, 5], "--sites", help="Numbers of sites to measure (2 to 6)."),
         rounds: int = typer.Option(2, min=1, help="Rounds per run."),
         out: Path = typer.Option(Path("docs/federation.md"), help="Markdown file with the table markers."),
         workdir: Path = typer.Option(None, help="Where the deployment runs (default: a temporary directory); "
                                      "finished runs found there are reused.")) -> None:
    """Measure FedAvg and SecAgg+ at each number of sites and write the table into ``out``."""
    if any(not 2 <= n <= len(SITE_NAMES) for n in sites):
        raise typer.BadParameter(f"numbers of sites must be in [2, {len(SITE_NAMES)}], got {sites}", param_hint="--sites")
    params = sum(a.size for a in family_from_config(bench_config(Path("."), "x", SITE_NAMES[:2], 1, False))
                 .initial_arrays().values())
    rows = []
    with tempfile.TemporaryDirectory(prefix="secagg-bench-") as tmp:
        base = Path(workdir) if workdir else Path(tmp)
        for n in sites:
            rows += measure(base / f"sites-{n}", n, rounds)
            typer.echo(markdown_table(["sites", "mode", "s/round", "s/site", "MB sent", "MB recv", "MB recv/site"], rows))
    command = "python -m benchmarks.federation_secagg " + " ".join(f"--sites {n}" for n in sites) + f" --rounds {rounds}"
    write_table(out, rows, command, int(params))
    typer.echo(f"wrote the table into {out}")


if __name__ == "__main__":
    app()
