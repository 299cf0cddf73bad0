"""The calibration table of the synthesis input check (:mod:`mrcore.synthesis_input`) on the project's own data.

    python -m benchmarks.synthesis_input --out docs/synthesis_input_calibration.md

Data (the only data the thresholds were chosen on; ``evaldata/`` is never read here):

* the embedded phantom, 4 sites x 4 subjects x 4 contrasts, 16 axial slices of 192x192 per volume, half the
  subjects skull-stripped, half with lesions, sequence timings jittered by +-20 %, 2 % complex Gaussian noise
  (Rician magnitude);
* nilearn's MNI152 T1 template (16 axial slices, 1 mm);
* 8 random body shapes of :mod:`mrcore.data.randomize` (3 slices each), the 18 natural images bundled in
  scikit-image (2 slices each), |Gaussian| noise, a uniform disc ("bottle").

Every phantom volume is checked against the route of its own contrast; every other series against a T1w route.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import numpy as np

from mrcore.data.phantom import PhantomConfig, generate_subject, skull_stripped, subject_protocol
from mrcore.data.randomize import NATURAL_IMAGES, RandomizationConfig, _draw_image, natural_image
from mrcore.data.sites import DEFAULT_SITE_NAMES
from mrcore.intensity import normalise_series
from mrcore.synthesis_input import CONTRASTS, THRESHOLDS, InputCheck, check_synthesis_input


def _noisy(volume: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of ``volume`` plus complex Gaussian noise of ``fraction`` x its 99th percentile."""
    s = fraction * float(np.percentile(volume, 99))
    return np.abs(volume + rng.normal(0, s, volume.shape) + 1j * rng.normal(0, s, volume.shape)).astype(np.float32)


def phantom_volumes(rng: np.random.Generator) -> list[tuple[str, str, np.ndarray]]:
    """(name, contrast, float32 [16, 192, 192]) of every phantom volume of the calibration set."""
    cfg = PhantomConfig(seed=0, subjects_per_site=4, slices_per_subject=16, matrix=(192, 192), cache_dir=None,
                        skull_strip_fraction=0.5, lesion_fraction=0.5, sequence_jitter=0.2)
    out = []
    for site in DEFAULT_SITE_NAMES:
        for subject in range(cfg.subjects_per_site):
            volume = generate_subject(cfg, site, subject)
            skull = "stripped" if skull_stripped(cfg, site, subject) else "skull"
            for i, contrast in enumerate(subject_protocol(cfg, site, subject).contrasts):
                out.append((f"{site} {subject} {skull}", contrast, _noisy(np.abs(volume[:, i]), 0.02, rng)))
    return out


def other_volumes(rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    """(name, float32 [slices, rows, cols]) of the MNI template and the non-brain series."""
    from nilearn import datasets  # deferred: slow to import, needed only for the template row

    template = datasets.load_mni152_template().get_fdata().astype(np.float32)
    out = [("MNI152 T1 template", _noisy(np.transpose(template, (2, 1, 0))[60:140:5], 0.01, rng))]
    cfg = RandomizationConfig()
    for j in range(8):
        r = np.random.default_rng(100 + j)
        out.append((f"body shape {j}", _noisy(np.stack([_draw_image(cfg, "body", (192, 192), r) for _ in range(3)]),
                                              0.02, rng)))
    for name in NATURAL_IMAGES:
        image = natural_image(name)
        out.append((f"scikit-image {name}", _noisy(np.stack([image, image]), 0.02, rng)))
    out.append(("|noise|", np.abs(rng.normal(size=(8, 128, 128))).astype(np.float32)))
    y, x = np.mgrid[-1:1:192j, -1:1:192j]
    out.append(("uniform disc (bottle)", _noisy(np.stack([(x ** 2 + y ** 2 < 0.5).astype(np.float32)] * 8), 0.02, rng)))
    return out


def _row(name: str, route: str, c: InputCheck) -> str:
    f = c.features.public()
    answer = "refused" if c.refusal else ("warned" if c.warnings else "answered")
    codes = ", ".join(x.code for x in c.findings) or "-"
    cells = [name, route, answer, codes, str(c.looks_like)] + [str(f[k]) for k in (
        "fill", "object_share", "flat_fraction", "symmetry", "p5", "p95", "dark_fraction", "dark_rim")]
    return "| " + " | ".join(cells) + " |"


HEADER = ("| series | route | answer | findings | looks like | fill | object share | flat | symmetry | p5 | p95 | "
          "dark fraction | dark rim |\n|" + "---|" * 13)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="markdown file to write")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    rows: list[str] = []
    confusion: collections.Counter[tuple[str, str | None]] = collections.Counter()
    for name, contrast, volume in phantom_volumes(rng):
        c = check_synthesis_input(normalise_series(volume)[0], contrast)
        confusion[(contrast, c.looks_like)] += 1
        rows.append(_row(f"phantom {name} {contrast}", contrast, c))
    others = [_row(name, "T1w", check_synthesis_input(normalise_series(v)[0], "T1w")) for name, v in other_volumes(rng)]
    looks = [*CONTRASTS, None]
    table = ["| phantom contrast | " + " | ".join(f"looks {x}" for x in looks) + " |", "|---|" + "---|" * len(looks)]
    table += [f"| {c} | " + " | ".join(str(confusion[(c, x)]) for x in looks) + " |" for c in CONTRASTS]
    text = ["# Synthesis input check: calibration on the project's own data", "",
            "Made by `python -m benchmarks.synthesis_input --out docs/synthesis_input_calibration.md` "
            "(the data: see that module's docstring; `evaldata/` is never read). The check and its thresholds: "
            "[synthesis_input.md](synthesis_input.md).", "",
            "Thresholds: " + ", ".join(f"`{k}` {v:g}" for k, v in THRESHOLDS.items()) + ".", "",
            "## What the phantom volumes look like (64 volumes, 16 per contrast)", "", *table, "",
            "## Every series", "", HEADER, *rows, *others, ""]
    args.out.write_text("\n".join(text))
    print("\n".join(table))


if __name__ == "__main__":
    main()
