"""Synthesis on real anatomy, as served: a glioma patient and the MNI152 T1 template (evaluation only).

Every model row runs the exported ONNX graph of ``model_repository/synth_<source>_to_<target>/<newest>/``
on the series normalised exactly as the served path does (:func:`mrcore.intensity.normalise_series` over
the whole series, as :meth:`serving.client.TritonClient.synthesize`); the output is in normalised target
units. The truth is put in the same units (divided by its own robust scale).

**Patient** (``evaldata/tcga_du_7294_{t1,t2,fla}.nii.gz``, never used for training or tuning): 16 axial
slices (every 5th from voxel 50), 240 x 240 at 1 mm. Scores over brain voxels (the skull-stripped volumes'
non-zero voxels): PSNR (data range: the truth's brain maximum), SSIM (scikit-image map averaged over brain
voxels; every image zeroed outside the brain), NMSE. Baselines: **identity** (the normalised source) and
the **linear remap** ``a + b * source`` fitted by least squares to the truth over the brain voxels of the
same slices (an oracle floor: it sees the truth). Lesion: real FLAIR above 1.5 x its brain median, 3-D
connected parts over 300 voxels; reference: the brain more than 5 voxels away from it; ratio = lesion mean
/ reference median.

**MNI152 T1 template** (nilearn, 197 x 233 x 189 at 1 mm): 16 axial slices (every 5th from 60), tissue
labels from nilearn's GM and WM probability maps of the same template (GM: p_gm > 0.5, WM: p_wm > 0.5,
CSF: inside the brain mask with both below 0.2). Reported: synthesized mean per tissue, GM/WM, CSF/GM,
next to the phantom's signal equations for each training site's target sequence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from mrcore.data.phantom import sequence_signals
from mrcore.data.sites import get_site
from mrcore.data.tissues import TISSUES
from mrcore.intensity import normalise_series, robust_scale
from training.report import markdown_table

EVALDATA = Path(__file__).resolve().parents[2] / "evaldata"
PATIENT = "tcga_du_7294"
PATIENT_SLICES = tuple(range(50, 130, 5))
MNI_SLICES = tuple(range(60, 140, 5))
FILES = {"T1w": "t1", "T2w": "t2", "FLAIR": "fla"}

Model = Callable[[np.ndarray], np.ndarray]


def onnx_model(path: Path, threads: int = 1) -> Model:
    """The served graph: normalised ``[S, H, W]`` in, normalised ``[S, H, W]`` out (one slice at a time)."""
    import onnxruntime as ort  # deferred: only model rows need it

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(volume: np.ndarray) -> np.ndarray:
        return np.concatenate([session.run(["synthesized"], {"image": v[None, None].astype(np.float32)})[0][:, 0]
                               for v in volume]).astype(np.float32)

    return run


def served_model(repo: Path, source: str, target: str) -> tuple[str, Path] | None:
    """``(name vN, model.onnx)`` of the newest version of ``synth_<source>_to_<target>`` in ``repo``, or None."""
    d = Path(repo) / f"synth_{source.lower()}_to_{target.lower()}"
    versions = sorted(int(p.name) for p in d.glob("*") if p.name.isdigit() and (p / "model.onnx").is_file())
    if not versions:
        return None
    return f"{d.name} v{versions[-1]}", d / str(versions[-1]) / "model.onnx"


# --- patient ----------------------------------------------------------------------------------------------
@dataclass
class Patient:
    images: dict[str, np.ndarray]   # contrast -> float32 [S, H, W] of the picked slices (raw file scale)
    brain: np.ndarray               # bool [S, H, W]
    lesion: np.ndarray              # bool [S, H, W]
    reference: np.ndarray           # bool [S, H, W]


def load_patient(root: Path = EVALDATA, name: str = PATIENT, slices: tuple[int, ...] = PATIENT_SLICES) -> Patient:
    import nibabel as nib  # deferred: only this evaluation reads NIfTI

    vols = {c: np.asarray(nib.load(str(Path(root) / f"{name}_{f}.nii.gz")).get_fdata(), dtype=np.float32)
            for c, f in FILES.items()}
    brain3 = (vols["T1w"] > 0) & (vols["T2w"] > 0) & (vols["FLAIR"] > 0)
    lesion3 = lesion_mask(vols["FLAIR"], brain3)
    far = ~ndimage.binary_dilation(lesion3, iterations=5)
    pick = list(slices)

    def axial(v: np.ndarray) -> np.ndarray:  # [x, y, z] -> [z, rows, cols], anterior up
        return np.ascontiguousarray(np.rot90(v[:, :, pick], axes=(0, 1)).transpose(2, 0, 1))

    return Patient({c: axial(v) for c, v in vols.items()}, axial(brain3), axial(lesion3), axial(brain3 & far))


def lesion_mask(flair: np.ndarray, brain: np.ndarray, factor: float = 1.5, min_voxels: int = 300) -> np.ndarray:
    """FLAIR above ``factor`` x its brain median, 3-D connected parts over ``min_voxels`` voxels."""
    bright = brain & (flair > factor * np.median(flair[brain]))
    labels, n = ndimage.label(bright)
    if n == 0:
        return bright
    sizes = ndimage.sum_labels(bright, labels, index=np.arange(1, n + 1))
    return np.isin(labels, 1 + np.flatnonzero(sizes > min_voxels))


def brain_scores(truth: np.ndarray, pred: np.ndarray, brain: np.ndarray) -> dict[str, float]:
    """PSNR / SSIM / NMSE over ``brain`` voxels (images zeroed outside it; data range = truth's brain max)."""
    from skimage.metrics import structural_similarity  # deferred: scikit-image is slow to import

    t = np.where(brain, truth, 0).astype(np.float64)
    p = np.where(brain, pred, 0).astype(np.float64)
    rng = float(t[brain].max())
    mse = float(np.mean((t[brain] - p[brain]) ** 2))
    maps = [structural_similarity(a, b, data_range=rng, full=True)[1] for a, b in zip(t, p)]
    return {"psnr": float(10 * np.log10(rng ** 2 / mse)) if mse > 0 else float("inf"),
            "ssim": float(np.stack(maps)[brain].mean()),
            "nmse": float(np.sum((t[brain] - p[brain]) ** 2) / np.sum(t[brain] ** 2))}


def linear_remap(source: np.ndarray, truth: np.ndarray, brain: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``a + b * source`` fitted by least squares to ``truth`` over ``brain``: (remapped, a, b)."""
    x, y = source[brain].astype(np.float64), truth[brain].astype(np.float64)
    b, a = np.polyfit(x, y, 1)
    return (a + b * source).astype(np.float32), float(a), float(b)


def lesion_ratio(image: np.ndarray, lesion: np.ndarray, reference: np.ndarray) -> float:
    if not lesion.any() or not reference.any():
        return float("nan")
    return float(image[lesion].mean() / np.median(image[reference]))


def evaluate_patient(patient: Patient, models: dict[str, tuple[str, Model]],
                     directions: tuple[tuple[str, str], ...]) -> list[dict]:
    """One row per (direction, method): brain scores and lesion ratio; ``models`` keyed 'A->B'."""
    rows = []
    for src, dst in directions:
        source, _ = normalise_series(patient.images[src])
        truth = patient.images[dst] / np.float32(robust_scale(patient.images[dst]))
        remapped, a, b = linear_remap(source, truth, patient.brain)
        methods = {"identity (source)": source, f"linear remap (a={a:.2f}, b={b:.2f})": remapped}
        key = f"{src}->{dst}"
        if key in models:
            name, run = models[key]
            methods[name] = run(source)
        common = {"direction": key, "lesion_voxels": int(patient.lesion.sum())}
        rows.append({**common, "method": f"truth ({dst})", "lesion_ratio": lesion_ratio(truth, patient.lesion,
                                                                                        patient.reference)})
        rows.append({**common, "method": f"source ({src})", "lesion_ratio": lesion_ratio(source, patient.lesion,
                                                                                         patient.reference)})
        for method, pred in methods.items():
            rows.append({**common, "method": method, **brain_scores(truth, pred, patient.brain),
                         "lesion_ratio": lesion_ratio(pred, patient.lesion, patient.reference), "_pred": pred})
    return rows


def plot_patient(patient: Patient, rows: list[dict], direction: str, out: Path, picks=(5, 8, 11)) -> None:
    """PNG grid: source, synthesized (the model row, else linear), truth, |error|, lesion outline on the truth."""
    import matplotlib  # deferred: plotting only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: plotting only

    src, dst = direction.split("->")
    mine = [r for r in rows if r["direction"] == direction and "_pred" in r]
    model = [r for r in mine if r["method"].startswith("synth_")] or [r for r in mine if "linear" in r["method"]]
    pred = model[0]["_pred"]
    source, _ = normalise_series(patient.images[src])
    truth = patient.images[dst] / np.float32(robust_scale(patient.images[dst]))
    cols = [f"source {src}", f"{model[0]['method']}", f"truth {dst}", "|error|", "lesion outline"]
    fig, axes = plt.subplots(len(picks), 5, figsize=(12.5, 2.6 * len(picks)))
    vmax = float(np.percentile(truth[patient.brain], 99.5))
    for r, k in enumerate(picks):
        b = patient.brain[k]
        panels = [source[k], np.where(b, pred[k], 0), truth[k], np.abs(np.where(b, pred[k], 0) - truth[k]), truth[k]]
        for c, img in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray", vmin=0, vmax=vmax if c != 0 else float(np.percentile(source[k][b], 99.5)))
            if c == 4 and patient.lesion[k].any():
                ax.contour(patient.lesion[k], levels=[0.5], colors="r", linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=8)
    fig.suptitle(f"TCGA-DU-7294, {direction} (normalised units, display 0 .. truth p99.5)", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)


def patient_body(rows: list[dict], pngs: dict[str, str]) -> str:
    lines = ["Patient TCGA-DU-7294 (glioma; `evaldata/`, provenance in `evaldata/README.md`; **evaluation only**, "
             "never used for training or tuning). 16 axial slices (voxel z = 50, 55, ..., 125), 240 x 240 at 1 mm; "
             "each series normalised by the served rule (foreground median = 1, `mrcore.intensity`). Scores over "
             "brain voxels. The linear remap is fitted **to the truth** (an oracle floor).", ""]
    for direction in dict.fromkeys(r["direction"] for r in rows):
        mine = [r for r in rows if r["direction"] == direction]
        lines += [f"## {direction}", ""]
        table = [[r["method"], *((f"{r[k]:.2f}" if k == "psnr" else f"{r[k]:.3f}") if k in r else "" for k in
                                 ("psnr", "ssim", "nmse")), f"{r['lesion_ratio']:.2f}"] for r in mine]
        lines += [markdown_table(["method", "PSNR (dB)", "SSIM", "NMSE", "lesion / reference"], table), ""]
        model = [r for r in mine if r["method"].startswith("synth_")]
        linear = [r for r in mine if r["method"].startswith("linear")]
        if model and linear:
            dp, ds = model[0]["psnr"] - linear[0]["psnr"], model[0]["ssim"] - linear[0]["ssim"]
            ok = dp >= 1.0 and ds >= 0.05
            lines += [f"Model minus linear remap: {dp:+.2f} dB PSNR, {ds:+.3f} SSIM -> the target (+1 dB, +0.05) is "
                      f"**{'met' if ok else 'not met'}**.", ""]
        elif not model:
            lines += ["No served model for this direction.", ""]
        lines += [f"Lesion voxels in these slices: {mine[0]['lesion_voxels']}.", ""]
        if direction in pngs:
            lines += [f"![{direction}]({pngs[direction]})", ""]
    return "\n".join(lines)


# --- MNI152 template --------------------------------------------------------------------------------------
def load_mni(slices: tuple[int, ...] = MNI_SLICES) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """T1 ``[S, 233, 197]`` (anterior up) and tissue labels ``{gm, wm, csf}`` of the same slices."""
    from nilearn import datasets  # deferred: slow import

    def axial(img) -> np.ndarray:
        v = np.asarray(img.get_fdata(), dtype=np.float32)[:, :, list(slices)]
        return np.ascontiguousarray(np.rot90(v, axes=(0, 1)).transpose(2, 0, 1))

    t1 = axial(datasets.load_mni152_template(resolution=1))
    gm = axial(datasets.load_mni152_gm_template(resolution=1))
    wm = axial(datasets.load_mni152_wm_template(resolution=1))
    mask = axial(datasets.load_mni152_brain_mask(resolution=1)) > 0
    labels = {"gm": mask & (gm > 0.5), "wm": mask & (wm > 0.5), "csf": mask & (gm < 0.2) & (wm < 0.2) & (t1 > 0)}
    return t1, labels


def equation_ratios(contrast: str, sites: tuple[str, ...]) -> dict[str, tuple[float, float]]:
    """(min, max) over ``sites`` of GM/WM and CSF/GM of the pure-tissue signal of ``contrast``."""
    gm, wm, csf = (TISSUES.index(t) for t in ("gm", "wm", "csf"))
    vals = []
    for s in sites:
        p = get_site(s)
        sig = sequence_signals(p)[list(p.contrasts).index(contrast)]
        vals.append((sig[gm] / sig[wm], sig[csf] / sig[gm]))
    arr = np.asarray(vals)
    return {"gm/wm": (float(arr[:, 0].min()), float(arr[:, 0].max())),
            "csf/gm": (float(arr[:, 1].min()), float(arr[:, 1].max()))}


def evaluate_mni(t1: np.ndarray, labels: dict[str, np.ndarray], models: dict[str, tuple[str, Model]],
                 sites: tuple[str, ...]) -> list[dict]:
    source, _ = normalise_series(t1)
    rows = []

    def row(what: str, img: np.ndarray, target: str) -> dict:
        m = {t: float(img[labels[t]].mean()) for t in ("gm", "wm", "csf")}
        return {"what": what, "target": target, **m, "gm/wm": m["gm"] / m["wm"], "csf/gm": m["csf"] / m["gm"]}

    rows.append(row("MNI152 T1 (source)", source, "T1w"))
    for key, (name, run) in models.items():
        src, dst = key.split("->")
        if src != "T1w":
            continue
        r = row(name, run(source), dst)
        r["equations"] = equation_ratios(dst, sites)
        rows.append(r)
    return rows


def mni_body(rows: list[dict], sites: tuple[str, ...]) -> str:
    table = []
    for r in rows:
        eq = r.get("equations")
        eqs = (f"{eq['gm/wm'][0]:.2f}-{eq['gm/wm'][1]:.2f}", f"{eq['csf/gm'][0]:.2f}-{eq['csf/gm'][1]:.2f}") if eq \
            else ("", "")
        table.append([r["what"], r["target"], f"{r['gm']:.3f}", f"{r['wm']:.3f}", f"{r['csf']:.3f}",
                      f"{r['gm/wm']:.2f}", f"{r['csf/gm']:.2f}", *eqs])
    checks = []
    for r in rows:
        if r["target"] == "T2w":
            ok = r["gm/wm"] >= 1.15 and r["csf/gm"] >= 1.3
            checks.append(f"- {r['what']}: T2w needs GM/WM >= 1.15 and CSF/GM >= 1.3: **{'met' if ok else 'not met'}**")
        if r["target"] == "FLAIR":
            ok = r["gm/wm"] >= 1.1 and r["csf"] < min(r["gm"], r["wm"])
            checks.append(f"- {r['what']}: FLAIR needs GM/WM >= 1.1 and CSF below GM and WM: "
                          f"**{'met' if ok else 'not met'}**")
    return "\n".join([
        "Source: nilearn's MNI152 T1 template (an average of real T1-weighted scans; evaluation only), 16 axial "
        "slices (voxel z = 60, 65, ..., 135) at the native 1 mm grid (233 x 197), normalised by the served rule. "
        "Tissue labels from nilearn's GM/WM maps of the same template (GM: p > 0.5, WM: p > 0.5, CSF: inside the "
        "brain mask with both below 0.2). Means in normalised units.", "",
        markdown_table(["image", "contrast", "GM", "WM", "CSF", "GM/WM", "CSF/GM",
                        "equations GM/WM", "equations CSF/GM"], table), "",
        f"Equations: pure-tissue signals of `mrcore.data.signal` for the target sequence of each training site "
        f"({', '.join(sites)}), min-max over the sites.", "", *checks, ""])


# --- phantom held-out lesions -----------------------------------------------------------------------------
def phantom_lesion_rows(run_cfg: dict, models: dict[str, tuple[str, Model]],
                        directions: tuple[tuple[str, str], ...]) -> list[dict]:
    """Lesion / reference ratio on the held-out phantom subjects (the last ``data.test_subjects`` of each training
    site) of ``run_cfg``: source, truth and each served model. Lesion: lesion-tissue fraction > 0.5; reference:
    brain (CSF+GM+WM > 0.9) more than 5 pixels from any lesion tissue. Every subject volume normalised by the
    served rule."""
    from mrcore.config import build  # deferred: only the phantom table builds configs
    from mrcore.data.sources import DataConfig, open_source  # deferred: the phantom

    d = run_cfg["data"]
    source = open_source(build(DataConfig, d["source"], "data.source."))
    spp, sps = int(d["source"]["subjects_per_site"]), int(d["source"]["slices_per_subject"])
    subjects = range(spp - int(d.get("test_subjects", 1)), spp)
    rows = []
    for src, dst in directions:
        key = f"{src}->{dst}"
        acc: dict[str, list[float]] = {}
        for site in d["train_sites"]:
            for s in subjects:
                idx = range(s * sps, (s + 1) * sps)
                maps = [source.tissue_and_lesion_maps(site, i) for i in idx]
                lesion = np.stack([m[1].sum(0) > 0.5 for m in maps])
                if lesion.sum() < 20:
                    continue
                brain = np.stack([m[0][:3].sum(0) + m[1].sum(0) > 0.9 for m in maps])
                ref = brain & ~ndimage.binary_dilation(np.stack([m[1].sum(0) > 0.01 for m in maps]), iterations=5)
                a, _ = normalise_series(np.stack([source.image(site, i, src) for i in idx]))
                b, _ = normalise_series(np.stack([source.image(site, i, dst) for i in idx]))
                images = {f"source ({src})": a, f"truth ({dst})": b}
                if key in models:
                    images[models[key][0]] = models[key][1](a)
                for name, img in images.items():
                    acc.setdefault(name, []).append(lesion_ratio(img, lesion, ref))
        for name, vals in acc.items():
            rows.append({"direction": key, "method": name, "subjects": len(vals),
                         "lesion_ratio": float(np.mean(vals))})
    return rows


def phantom_lesion_body(rows: list[dict]) -> str:
    table = [[r["direction"], r["method"], str(r["subjects"]), f"{r['lesion_ratio']:.2f}"] for r in rows]
    return "\n".join(["## Phantom held-out lesions", "",
                      "Held-out phantom subjects with a lesion (lesion tissue > 0.5 of a pixel, at least 20 pixels); "
                      "ratio = lesion mean / median of the brain more than 5 pixels away, mean over subjects.", "",
                      markdown_table(["direction", "image", "subjects", "lesion / reference"], table), ""])
