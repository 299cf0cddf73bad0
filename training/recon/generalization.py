"""Reconstruction on real anatomy: the served models against zero-filled and CS on images we did not make.

Cases (evaluation only: none of these images is ever used for training or to choose a hyper-parameter):

* **MNI152 T1** (``nilearn.datasets.load_mni152_template``, an average of real T1-weighted scans at 1 mm) as
  multi-coil k-space at scanner settings (:data:`MNI_SETTINGS`): 256x256 with 8 coils; 320x320 with 16; fastMRI
  brain's 640x368 with 15 coils and 2x read-out oversampling; the native odd, non-square 233x197 with 4 coils.
  Coils: SigPy's birdcage model (radius 1.5) with a smooth phase; complex noise of 1 % of the image maximum per
  real/imaginary part, the level measured on the in-vivo acquisition below (0.96 %).
* **TCGA-DU-7294 T2w** (a glioma patient, ``evaldata/``) as 240x240 k-space with 12 coils, the same coil model.
* **In-vivo 8-coil k-space** (``evaldata/invivo_brain_t1_8ch_kspace.npy``): real coils, real noise; phase
  encoding along its last axis.

Independence, stated plainly: the phantom that 40 % of the training examples come from is built on the same MNI152
template's grey/white-matter probability maps (randomly deformed per subject, signal from relaxation equations:
:mod:`mrcore.data.anatomy`), so the MNI152 cases share the phantom's anatomy though not its image (the template's
T1 intensities are an average of real scans). The glioma patient and the in-vivo acquisition share nothing with the
training data; they are the strictest cases here.

And, for comparison with v1's tables, the project's own simulator:

* **Phantom held-out hospital** (``data.heldout_site`` of the run config, hospital-c: 128x128, 8 coils, T2w) at
  v1's training setting, 4x equispaced with a 12.5 % centre; v1 scored 31.1 dB there.

Each real case is undersampled with fastMRI's equispaced masks at 4x (8 % centre) and 8x (4 % centre). Metrics are
fastMRI's (PSNR and SSIM with the volume maximum as data range, NMSE) on magnitudes against the RSS of the fully
sampled coil images, over the field of view (the read-out oversampling cropped, as fastMRI does). The models
run as served: the exported ONNX with ONNX Runtime, after the serving client's coil compression
(:func:`mrcore.coils.compress_coils` to the model's ``virtual_coils``).

The CS baseline (SigPy: ESPIRiT maps + L1-wavelet, 30 iterations) takes its weight and ESPIRiT crop from a grid,
chosen by PSNR on *training* data (six randomised examples per acceleration at 256x256 with 8 coils), never on these
cases.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from mrcore.coils import compress_coils
from mrcore.data.kspace_sim import smooth_phase
from mrcore.data.randomize import Geometry, RandomizationConfig, draw_example
from mrcore.fft import fft2c, ifft2c
from mrcore.masks import make_mask
from mrcore.metrics import nmse, psnr, ssim
from training.report import markdown_table

EVALDATA = Path(__file__).resolve().parents[2] / "evaldata"
INVIVO = EVALDATA / "invivo_brain_t1_8ch_kspace.npy"
TCGA_T2 = EVALDATA / "tcga_du_7294_t2.nii.gz"

#: fastMRI's brain protocols: (acceleration, centre fraction)
ACCELERATIONS: tuple[tuple[float, float], ...] = ((4.0, 0.08), (8.0, 0.04))
NOISE_FRACTION = 0.01  # per real/imaginary part, of the image maximum (in-vivo acquisition: 0.96 %)
MNI_SLICES = (70, 85, 100, 115)  # axial slices of the 197x233x189 template (voxel index along z)


@dataclass(frozen=True)
class Setting:
    """An acquisition to simulate from a real image."""

    name: str
    matrix: tuple[int, int]          # k-space matrix (ky, kx)
    coils: int
    axis: int                        # phase-encode axis of the mask
    zoom: float = 1.0                # image resampling before placing it in the field of view
    oversampled: bool = False        # 2x read-out oversampling along the non-phase-encode axis


MNI_SETTINGS: tuple[Setting, ...] = (
    Setting("MNI152 T1, 256x256, 8 coils", (256, 256), 8, -2),
    Setting("MNI152 T1, 320x320, 16 coils", (320, 320), 16, -1, zoom=1.25),
    Setting("MNI152 T1, 640x368 (2x read-out oversampling), 15 coils", (640, 368), 15, -1, zoom=1.4, oversampled=True),
    Setting("MNI152 T1, 233x197 (native 1 mm, odd), 4 coils", (233, 197), 4, -2),
)
TCGA_SETTING = Setting("TCGA-DU-7294 T2w (glioma), 240x240, 12 coils", (240, 240), 12, -2)


@dataclass
class Case:
    """Fully sampled k-space of one volume's slices and how to score them.

    kspace : complex64 [slices, coils, ky, kx]; axis : phase-encode axis of its masks;
    crop : rows (start, stop) of the field of view along ky (read-out oversampling), or None.
    """

    name: str
    kspace: np.ndarray
    axis: int
    crop: tuple[int, int] | None = None
    provenance: str = ""
    extra: dict = field(default_factory=dict)
    accelerations: tuple[tuple[float, float], ...] = ACCELERATIONS

    @property
    def target(self) -> np.ndarray:
        """float32 [slices, ky, kx]: RSS of the fully sampled coil images."""
        return np.sqrt((np.abs(ifft2c(self.kspace)) ** 2).sum(axis=1)).astype(np.float32)

    def fov(self, images: np.ndarray) -> np.ndarray:
        return images if self.crop is None else images[..., self.crop[0]:self.crop[1], :]


# --- cases ------------------------------------------------------------------------------------------------
def _place(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``image`` centred in a zero field of view of ``shape`` (cropped where larger)."""
    out = np.zeros(shape, dtype=np.float32)
    h, w = min(image.shape[0], shape[0]), min(image.shape[1], shape[1])
    iy, ix = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
    oy, ox = (shape[0] - h) // 2, (shape[1] - w) // 2
    out[oy:oy + h, ox:ox + w] = image[iy:iy + h, ix:ix + w]
    return out


def simulate(images: Iterable[np.ndarray], setting: Setting, seed: int) -> np.ndarray:
    """Multi-coil k-space ``complex64 [slices, coils, ky, kx]`` of real magnitude images at ``setting``."""
    import sigpy.mri  # deferred: sigpy imports torch (seconds)

    ky, kx = setting.matrix
    readout_rows = ky // 2 if setting.oversampled else ky
    maps = sigpy.mri.birdcage_maps((setting.coils, ky, kx), r=1.5).astype(np.complex64)
    rng = np.random.default_rng(seed)
    out = []
    for i, img in enumerate(images):
        img = np.clip(ndimage.zoom(img, setting.zoom, order=3), 0, None) if setting.zoom != 1 else img
        obj = _place(_place(img, (readout_rows, kx)), (ky, kx))
        obj = obj / obj.max() * np.exp(1j * smooth_phase((ky, kx), (seed, i), order=2, max_rad=np.pi / 2))
        k = fft2c((maps * obj).astype(np.complex64))
        noise = rng.standard_normal((2, *k.shape)).astype(np.float32)
        out.append(k + NOISE_FRACTION * (noise[0] + 1j * noise[1]))
    return np.stack(out).astype(np.complex64)


def mni_slices() -> list[np.ndarray]:
    """Axial slices of the MNI152 T1 template, ``[233, 197]`` (anterior up), float in [0, 1]."""
    from nilearn.datasets import load_mni152_template  # deferred: nilearn is slow to import

    volume = np.asarray(load_mni152_template(resolution=1).get_fdata(), dtype=np.float32)
    return [np.ascontiguousarray(np.rot90(volume[:, :, z])) for z in MNI_SLICES]


def tcga_slices(path: Path = TCGA_T2, picks: tuple[int, ...] = (60, 75, 90, 105)) -> list[np.ndarray]:
    import nibabel as nib  # deferred: only this case reads NIfTI

    volume = np.asarray(nib.load(str(path)).get_fdata(), dtype=np.float32)
    return [np.ascontiguousarray(np.rot90(volume[:, :, z])) for z in picks]


def real_cases(which: Iterable[str] = ("mni", "tcga", "invivo")) -> list[Case]:
    """The evaluation cases (see the module docstring)."""
    which = set(which)
    cases = []
    if "mni" in which:
        images = mni_slices()
        for i, s in enumerate(MNI_SETTINGS):
            crop = (s.matrix[0] // 4, s.matrix[0] // 4 + s.matrix[0] // 2) if s.oversampled else None
            cases.append(Case(s.name, simulate(images, s, seed=1000 + i), s.axis, crop,
                              "nilearn MNI152 2009 T1 template (real T1w scans, averaged), simulated coils and noise"))
    if "tcga" in which:
        cases.append(Case(TCGA_SETTING.name, simulate(tcga_slices(), TCGA_SETTING, seed=2000), TCGA_SETTING.axis,
                          None, "TCGA-DU-7294 T2w (evaldata/), simulated coils and noise"))
    if "invivo" in which:
        cases.append(Case("In-vivo T1w brain, 8 real coils, 320x168", np.load(INVIVO)[None], -1, None,
                          "Lustig's ESPIRiT demo acquisition (evaldata/): real coils and noise"))
    return cases


PHANTOM_BAR_DB = 31.1  # v1 on the phantom's held-out hospital (model card of version 1: 31.12 dB)
#: the phantom table's setting: v1's training setting (4x equispaced, 12.5 % centre)
PHANTOM_ACCELERATIONS: tuple[tuple[float, float], ...] = ((4.0, 0.125),)


def phantom_case(run_config: dict) -> Case:
    """The held-out hospital's tested slices of ``run_config`` (e.g. configs/recon-v2.yaml: hospital-c, 128x128,
    8 coils, T2w), the project's own simulator: the phantom table that v1 was measured on, kept for comparison."""
    from training.federation.registry import family_from_config  # deferred: the training families (seconds)

    family = family_from_config(run_config)
    site = run_config["data"]["heldout_site"]
    ds = family.dataset(site, "heldout")
    kspace = np.ascontiguousarray(ds.kspace.numpy()).view(np.complex64)[..., 0]  # [N, C, H, W]
    return Case(f"Phantom held-out {site}, {kspace.shape[-2]}x{kspace.shape[-1]}, {kspace.shape[1]} coils", kspace,
                -2, None, "the project's own phantom (simulator), held-out hospital", accelerations=PHANTOM_ACCELERATIONS)


def undersample(case: Case, acceleration: float, center_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """``(kspace complex64 [slices, coils, ky, kx] masked, mask float32 [slices, ky, kx])``: an equispaced mask per
    slice (offset seeded by the slice number)."""
    masks = np.stack([make_mask("equispaced", case.kspace.shape[-2:], acceleration, center_fraction, seed=i,
                                axis=case.axis) for i in range(case.kspace.shape[0])]).astype(np.float32)
    return (case.kspace * masks[:, None]).astype(np.complex64), masks


# --- methods ----------------------------------------------------------------------------------------------
Method = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (kspace [S, C, ky, kx], masks [S, ky, kx]) -> [S, ky, kx]


def zero_filled(kspace: np.ndarray, masks: np.ndarray) -> np.ndarray:
    return np.sqrt((np.abs(ifft2c(kspace)) ** 2).sum(axis=1)).astype(np.float32)


def _centre_run(profile: np.ndarray) -> int:
    c = len(profile) // 2
    if not profile[c]:
        return 0
    lo, hi = c, c
    while lo > 0 and profile[lo - 1]:
        lo -= 1
    while hi < len(profile) - 1 and profile[hi + 1]:
        hi += 1
    return hi - lo + 1


def calibration_lines(mask: np.ndarray) -> int:
    """Width of the fully sampled centre of a mask ``[ky, kx]`` along its phase-encode axis (the shorter of the
    centre runs along the centre column and the centre row)."""
    m = np.asarray(mask) != 0
    return min(_centre_run(m[:, m.shape[1] // 2]), _centre_run(m[m.shape[0] // 2, :]))


def cs_method(lamda: float, crop: float) -> Method:
    """SigPy CS: ESPIRiT maps (calibration width = the fully sampled centre, at most 24, at least 7) and
    L1-wavelet with weight ``lamda`` x the largest k-space magnitude (scale-free), 30 iterations."""
    import sigpy.mri.app  # deferred: sigpy imports torch

    def run(kspace: np.ndarray, masks: np.ndarray) -> np.ndarray:
        out = []
        for k, m in zip(kspace, masks):
            width = int(np.clip(calibration_lines(m), 7, 24))
            maps = np.asarray(sigpy.mri.app.EspiritCalib(k, calib_width=width, thresh=0.02, kernel_width=6, crop=crop,
                                                         show_pbar=False).run())
            lip = float(np.max(np.sum(np.abs(maps) ** 2, axis=0))) or 1.0
            x = sigpy.mri.app.L1WaveletRecon(k, maps, float(lamda * np.abs(k).max()), weights=m, max_iter=30,
                                             alpha=1.0 / lip, show_pbar=False).run()
            out.append(np.abs(np.asarray(x)))
        return np.stack(out).astype(np.float32)

    return run


def onnx_method(model_path: Path, virtual_coils: int | None, threads: int = 2) -> Method:
    """The exported model run as served: coil compression to ``virtual_coils`` (None: none), ONNX Runtime."""
    import onnxruntime as ort  # deferred: only the model rows need ONNX Runtime

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])

    def run(kspace: np.ndarray, masks: np.ndarray) -> np.ndarray:
        out = []
        for k, m in zip(kspace, masks):
            if virtual_coils:
                k = compress_coils(k, virtual_coils, m)
            feeds = {"kspace": np.stack([k.real, k.imag], axis=-1)[None].astype(np.float32), "mask": m[None]}
            out.append(session.run(["magnitude"], feeds)[0][0])
        return np.stack(out).astype(np.float32)

    return run


# --- scoring ----------------------------------------------------------------------------------------------
def score(case: Case, recon: np.ndarray) -> dict[str, float]:
    """fastMRI metrics of a volume ``[slices, ky, kx]`` over the field of view."""
    gt, pred = case.fov(case.target), case.fov(recon)
    maxval = float(gt.max())
    return {"psnr": psnr(gt, pred, maxval), "ssim": ssim(gt, pred, maxval), "nmse": nmse(gt, pred)}


def evaluate(cases: list[Case], methods: dict[str, Method | dict[str, Method]],
             progress: Callable[[str], None] | None = None, samples: dict | None = None) -> list[dict]:
    """Rows ``{case, acceleration, method, psnr, ssim, nmse, seconds_per_slice}`` for every case x acceleration x
    method. A method may be a dict ``{"4x": m4, "8x": m8}`` (e.g. CS with a weight chosen per acceleration).

    ``samples``, when given, receives the middle slice's field of view per case and acceleration:
    ``samples[(case, "4x")] = {"truth": [ky, kx], <method>: [ky, kx], ...}`` (for figures)."""
    rows = []
    for case in cases:
        for accel, cf in case.accelerations:
            kspace, masks = undersample(case, accel, cf)
            middle = len(kspace) // 2
            if samples is not None:
                samples[(case.name, f"{accel:g}x")] = {"truth": case.fov(case.target)[middle]}
            for name, method in methods.items():
                fn = method[f"{accel:g}x"] if isinstance(method, dict) else method
                t0 = time.perf_counter()
                recon = fn(kspace, masks)
                seconds = (time.perf_counter() - t0) / len(kspace)
                if samples is not None:
                    samples[(case.name, f"{accel:g}x")][name] = case.fov(recon)[middle]
                rows.append({"case": case.name, "acceleration": f"{accel:g}x (centre {cf:.0%})", "method": name,
                             **score(case, recon), "seconds_per_slice": seconds})
                if progress:
                    progress(f"{case.name} {accel:g}x {name}: PSNR {rows[-1]['psnr']:.2f} SSIM {rows[-1]['ssim']:.3f}")
    return rows


def write_rows(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1))


# --- the CS baseline's settings, chosen on training data ----------------------------------------------
CS_LAMBDAS = (3e-5, 1e-4, 3e-4, 1e-3)  # x the largest k-space magnitude
CS_CROPS = (0.0, 0.95)                 # ESPIRiT eigenvalue crop (0.95 zeroes the maps outside the object)


def tune_cs(randomization: RandomizationConfig, acceleration: float, center_fraction: float, examples: int = 6, seed: int = 4321,
            matrix: tuple[int, int] = (256, 256), coils: int = 8,
            progress: Callable[[str], None] | None = None) -> dict:
    """The CS weight and ESPIRiT crop with the best mean PSNR on ``examples`` randomised *training* examples
    (:mod:`mrcore.data.randomize`, ``randomization`` its config) at ``matrix``/``coils`` and this acceleration.

    Returns ``{"lamda", "crop", "scores": {"lamda/crop": mean PSNR}}``.
    """
    geometry = Geometry(tuple(matrix), coils, "equispaced", -2, False, acceleration, center_fraction)
    data = [draw_example(randomization, geometry, (seed, i)) for i in range(examples)]
    scores = {}
    for lam in CS_LAMBDAS:
        for crop in CS_CROPS:
            method = cs_method(lam, crop)
            values = []
            for ex in data:
                recon = method((ex.kspace * ex.mask)[None], ex.mask[None])[0]
                values.append(psnr(ex.target, recon, float(ex.target.max())))
            scores[f"{lam:g}/{crop:g}"] = float(np.mean(values))
            if progress:
                progress(f"CS tuning {acceleration:g}x lambda {lam:g} crop {crop:g}: {scores[f'{lam:g}/{crop:g}']:.2f} dB")
    best = max(scores, key=scores.__getitem__)
    lam, crop = (float(v) for v in best.split("/"))
    return {"lamda": lam, "crop": crop, "scores": scores}


# --- models of a repository, and the report ----------------------------------------------------------
def repository_models(repo: Path, name: str = "recon_unrolled") -> dict[str, tuple[Path, int | None]]:
    """``{"v1": (model.onnx, virtual_coils or None), ...}`` of every version of ``repo/name`` (coil compression
    from the model's Triton config, as the serving client applies it)."""
    model_dir = Path(repo) / name
    config = (model_dir / "config.pbtxt").read_text() if (model_dir / "config.pbtxt").is_file() else ""
    found = re.search(r'key:\s*"virtual_coils"\s*value:\s*\{\s*string_value:\s*"(\d+)"', config)
    virtual = int(found.group(1)) if found else None
    out = {}
    for d in sorted((p for p in model_dir.glob("*") if p.name.isdigit()), key=lambda p: int(p.name)):
        if (d / "model.onnx").is_file():
            out[f"recon_unrolled v{d.name}"] = (d / "model.onnx", virtual)
    if not out:
        raise FileNotFoundError(f"{model_dir} holds no <version>/model.onnx")
    return out


def write_figures(samples: dict, out_dir: Path, acceleration: str = "4x") -> list[Path]:
    """One PNG per case at ``acceleration``: the middle slice's truth, every method and their error maps."""
    from training.plots import plot_image_grid  # deferred: matplotlib

    written = []
    for (case, accel), images in samples.items():
        if accel != acceleration:
            continue
        slug = re.sub(r"[^a-z0-9]+", "_", case.lower()).strip("_")[:60]
        columns = {name: img[None] for name, img in images.items()}
        written.append(plot_image_grid(columns, "truth", Path(out_dir) / f"recon_generalization_{slug}.png",
                                       title=f"{case}, {accel}"))
    return written


def card_evaluation(rows: list[dict], model: str, command: str, doc: str) -> dict:
    """The model card's ``evaluation.real_anatomy`` of ``model``: its rows and the baselines' (rounded)."""
    keep = {"zero-filled", "CS (ESPIRiT + L1-wavelet)", model}
    table = [{"case": r["case"], "acceleration": r["acceleration"], "method": r["method"],
              "psnr": round(r["psnr"], 2), "ssim": round(r["ssim"], 3), "nmse": round(r["nmse"], 4),
              "seconds_per_slice": round(r["seconds_per_slice"], 3)} for r in rows if r["method"] in keep]
    summary = ("Real anatomy that no simulator of the project made and that was never used for training or "
               "tuning: the MNI152 T1 template as k-space at four scanner settings, a glioma patient's T2w, "
               "in-vivo 8-coil k-space; fastMRI equispaced masks at 4x (8 % centre) and 8x (4 % centre).")
    return {"summary": summary, "command": command, "doc": doc, "rows": table}


def report_body(rows: list[dict], cs: dict[str, dict], command_note: str = "") -> str:
    """The markdown body of ``docs/recon_generalization.md``: per-case tables, the checks, the CS settings."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    parts = [__doc__.split("\n\n", 1)[1].strip(), ""]
    if command_note:
        parts += [command_note, ""]
    parts += ["CS settings chosen on training data (PSNR on randomised training examples, 256x256, 8 coils): "
              + "; ".join(f"{a}: lambda {v['lamda']:g} x max|k|, ESPIRiT crop {v['crop']:g}" for a, v in cs.items()), ""]
    for case in dict.fromkeys(r["case"] for r in rows):
        parts += [f"## {case}", ""]
        table = []
        for r in rows:
            if r["case"] == case:
                table.append([r["acceleration"], r["method"], r["psnr"], r["ssim"], r["nmse"], r["seconds_per_slice"]])
        parts += [markdown_table(["acceleration", "method", "PSNR (dB)", "SSIM", "NMSE", "s / slice"], table), ""]
    parts += ["## Checks", ""] + _checks(rows, methods)
    return "\n".join(parts)


def _checks(rows: list[dict], methods: list[str]) -> list[str]:
    """For each model: at 4x PSNR >= CS + 1 dB and SSIM >= CS; at 8x PSNR >= zero-filled (the issue's bars)."""
    def get(case, accel, method, key):
        return next(r[key] for r in rows if r["case"] == case and r["acceleration"].startswith(accel) and r["method"] == method)

    lines = []
    models = [m for m in methods if m not in ("zero-filled", "CS (ESPIRiT + L1-wavelet)")]
    real = [c for c in dict.fromkeys(r["case"] for r in rows) if not c.startswith("Phantom")]
    phantom = [c for c in dict.fromkeys(r["case"] for r in rows) if c.startswith("Phantom")]
    for m in models:
        table = []
        for case in real:
            d4 = get(case, "4x", m, "psnr") - get(case, "4x", "CS (ESPIRiT + L1-wavelet)", "psnr")
            s4 = get(case, "4x", m, "ssim") - get(case, "4x", "CS (ESPIRiT + L1-wavelet)", "ssim")
            z8 = get(case, "8x", m, "psnr") - get(case, "8x", "zero-filled", "psnr")
            ok = d4 >= 1.0 and s4 >= 0 and z8 >= 0
            table.append(f"| {case} | {d4:+.2f} | {s4:+.3f} | {z8:+.2f} | {'yes' if ok else '**no**'} |")
        lines += [f"{m}:", "", "| case | 4x: PSNR - CS (dB) | 4x: SSIM - CS | 8x: PSNR - zero-filled (dB) | "
                  "all three met (>= +1 dB, >= 0, >= 0) |", "|---|---|---|---|---|", *table, ""]
        for case in phantom:
            p = get(case, "4x", m, "psnr")
            lines += [f"{case}, 4x: {m} {p:.2f} dB against v1's {PHANTOM_BAR_DB} dB (its model card): "
                      + ("not below" if p >= PHANTOM_BAR_DB else "**below**"), ""]
    return lines
