"""Is a source series something synthesis can handle? One check for the REST API and the DICOM node.

The synthesis models were trained on axial brain series of four contrasts (T1w, T2w, PD, FLAIR). This module
looks at a whole **normalised** source series (float32 ``[slices, rows, cols]``, divided by its foreground
median by :func:`mrcore.intensity.normalise_series`) and the contrast the route expects, and returns
:class:`Finding` s of two kinds:

* **refusal** (``no_head``): there is no head-sized object with tissue contrast in the field of view; the
  answer would mean nothing, so none is made (REST 422, DICOM node job failure naming the reason);
* **warning** (``not_brain_like``, ``contrast_mismatch``): the series is legal but out of the training
  distribution; the answer is made and carries the warning (REST ``X-Synthesis-Warning``, DICOM
  ``ImageComments``).

Features (all in normalised units, on at most 48 evenly spaced slices of the series, computed on the *central
slab*: the slices whose head object is at least half the largest one's area; the head object of a slice is its
largest connected foreground component, holes filled):

``fill``
    mean area of the head object / slice area. An elliptical head inside its field of view covers at most
    pi/4 = 0.785 of it; a natural photograph, a texture or noise fills the whole frame.
``object_share``
    head-object voxels / foreground voxels (a single compact object: about 1; scattered noise: low).
``flat_fraction``
    share of the interior (deeper than 20 % of the object's equivalent radius) within 10 % of its median.
    Brain tissue has grey, white matter and CSF; a uniform bottle phantom is flat.
``symmetry``
    left-right mirror correlation of the object (best over both in-plane axes and tilts of -15..15 degrees),
    median over the slab: the brain is bilaterally symmetric, a knee, an abdomen or a random body is not.
``p5``, ``p95``
    5th and 95th percentiles of the interior relative to its median. T2w: CSF bright (high ``p95``) and
    no dark tissue (high ``p5``).
``dark_fraction``, ``dark_rim``
    share of the interior below 0.6 x its median (CSF on T1w and FLAIR), and the median of the voxels 2-3
    pixels away from those dark voxels relative to the interior median: CSF borders grey matter, which is
    *darker* than the median on T1w (GM < WM) and *brighter* on FLAIR (GM > WM).

The series "looks like" (:func:`looks_like`): T2w when ``p95 >= 1.6`` and ``p5 >= 0.55``; else, with dark
CSF (``dark_fraction >= 0.03``), FLAIR when ``dark_rim >= 0.98`` and T1w otherwise; else PD, which here means
"no distinctive CSF" (neither bright nor dark: PD, but also a weakly weighted T1w or a slab with little CSF).
A series that looks T1w, T2w or FLAIR, sent to a route expecting another contrast, gets a ``contrast_mismatch``
warning; a PD look warns nobody (any contrast can look that way).

Thresholds were chosen on data the project makes for training and testing only (the embedded phantom at all
four contrasts, with and without skull and lesions; scikit-image's bundled images; the random body shapes
of :mod:`mrcore.data.randomize`; noise; a uniform disc) and are documented with their error rates in
``docs/synthesis_input.md``. Pure numpy/scipy, no I/O.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from mrcore.data.base import CONTRASTS

__all__ = ["CONTRASTS", "Finding", "InputCheck", "InputFeatures", "SynthesisInputError", "THRESHOLDS",
           "check_synthesis_input", "input_features", "looks_like"]

#: Every threshold of the check (``docs/synthesis_input.md`` gives the values seen on the calibration data).
THRESHOLDS = {
    "fill_max": 0.85,          # refuse: the foreground fills the field of view (no object surrounded by air)
    "fill_min": 0.02,          # refuse: the largest object is smaller than 2 % of the field of view
    "object_share_min": 0.5,   # refuse: the foreground is scattered (no single head-sized object)
    "flat_max": 0.8,           # refuse: no tissue contrast (a uniform object)
    "symmetry_min": 0.8,       # warn: no left-right symmetry (not an axial brain)
    "t2_p95_min": 1.6,         # looks T2w: bright CSF ...
    "t2_p5_min": 0.55,         # ... and no dark tissue
    "dark_fraction_min": 0.03,  # dark CSF (T1w or FLAIR)
    "flair_rim_min": 0.98,     # the tissue next to the dark CSF is brighter than the median: FLAIR
}
_INTERIOR_DEPTH = 0.2   # interior: deeper than this fraction of the object's equivalent radius
_DARK = 0.6             # dark voxels: below this x the interior median
_SYMMETRY_SIZE = 64     # the symmetry is measured on slices resized to this many pixels (longest side)
_SYMMETRY_SLICES = 16   # ... on at most this many slices of the slab, evenly spaced
_MAX_SLICES = 48        # a longer series is examined on this many evenly spaced slices


class SynthesisInputError(ValueError):
    """The series is refused for synthesis; ``finding`` says why (``code``, ``message``)."""

    def __init__(self, finding: Finding) -> None:
        super().__init__(finding.message)
        self.finding = finding


@dataclass(frozen=True)
class Finding:
    """One finding. code: ``no_head`` | ``not_brain_like`` | ``contrast_mismatch``; refuse: True for a refusal
    (no answer), False for a warning (the answer carries it); message: one line naming the reason."""

    code: str
    refuse: bool
    message: str

    def public(self) -> dict:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True)
class InputFeatures:
    """The features of a normalised series (see the module docstring); NaN where undefined."""

    fill: float
    object_share: float
    flat_fraction: float
    symmetry: float
    p5: float
    p95: float
    dark_fraction: float
    dark_rim: float

    def public(self) -> dict:
        return {k: (None if not np.isfinite(v) else round(float(v), 3)) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class InputCheck:
    """The check's answer: the expected source contrast, the features, what the series looks like (None when
    there is no head object) and the findings (refusals first)."""

    expected: str
    features: InputFeatures
    looks_like: str | None
    findings: tuple[Finding, ...]

    @property
    def refusal(self) -> Finding | None:
        return next((f for f in self.findings if f.refuse), None)

    @property
    def warnings(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if not f.refuse)

    def raise_if_refused(self) -> InputCheck:
        """SynthesisInputError for a refusal, else ``self``."""
        if self.refusal is not None:
            raise SynthesisInputError(self.refusal)
        return self


def _head_objects(volume: np.ndarray, fg: np.ndarray) -> np.ndarray:
    """bool [S, H, W]: each slice's largest connected foreground component, holes filled."""
    out = np.zeros_like(fg)
    for i, s in enumerate(fg):
        lab, k = ndimage.label(s)
        if k == 0:
            continue
        sizes = ndimage.sum(s, lab, range(1, k + 1))
        out[i] = ndimage.binary_fill_holes(lab == 1 + int(np.argmax(sizes)))
    return out


def _slice_symmetry(image: np.ndarray) -> float:
    """Best mirror correlation of one masked slice ``float [H, W]`` over both axes and tilts of -15..15 degrees."""
    img = ndimage.zoom(image.astype(np.float32), _SYMMETRY_SIZE / max(image.shape), order=1)
    img = ndimage.gaussian_filter(img, 1.0)
    best = -1.0
    for angle in range(-15, 16, 5):
        r = ndimage.rotate(img, angle, reshape=False, order=1) if angle else img
        top = float(r.max())
        if top <= 0:
            continue
        centre = ndimage.center_of_mass(r > 0.1 * top)
        for axis in (0, 1):
            shift = [0.0, 0.0]
            shift[axis] = (r.shape[axis] - 1) / 2 - centre[axis]
            s = ndimage.shift(r, shift, order=1)
            f = np.flip(s, axis)
            m = (s > 0) | (f > 0)
            a, b = s[m] - s[m].mean(), f[m] - f[m].mean()
            den = float(np.sqrt((a * a).sum() * (b * b).sum()))
            if den > 0:
                best = max(best, float((a * b).sum()) / den)
    return best


def input_features(normalised: np.ndarray) -> InputFeatures:
    """The features of ``normalised`` float32 [slices, rows, cols] (or [rows, cols]), a series divided by its
    foreground median (:func:`mrcore.intensity.normalise_series`); see the module docstring."""
    n = np.asarray(normalised, dtype=np.float32)
    if n.ndim == 2:
        n = n[None]
    if n.ndim != 3 or 0 in n.shape:
        raise ValueError(f"normalised must be float32 [slices, rows, cols], got {list(n.shape)}")
    if n.shape[0] > _MAX_SLICES:
        n = n[np.unique(np.linspace(0, n.shape[0] - 1, _MAX_SLICES).round().astype(int))]
    nan = float("nan")
    fg = n > 0.1 * float(np.percentile(n, 99.5))  # mrcore.intensity.foreground_mask's rule
    obj = _head_objects(n, fg)
    areas = obj.sum(axis=(1, 2))
    if areas.max() == 0:
        return InputFeatures(0.0, 0.0, nan, nan, nan, nan, nan, nan)
    keep = areas >= 0.5 * areas.max()
    fill = float(areas[keep].mean()) / (n.shape[1] * n.shape[2])
    share = float(obj[keep].sum()) / max(1.0, float(fg[keep].sum()))
    depth = np.zeros(n.shape, dtype=np.float32)
    for i in np.flatnonzero(keep):
        depth[i] = ndimage.distance_transform_edt(obj[i]) / np.sqrt(areas[i] / np.pi)
    inner = keep[:, None, None] & (depth > _INTERIOR_DEPTH)
    if inner.sum() < 16:
        return InputFeatures(fill, share, nan, nan, nan, nan, nan, nan)
    median = float(np.median(n[inner]))
    if not median > 0:
        return InputFeatures(fill, share, nan, nan, nan, nan, nan, nan)
    x = n / median
    xi = x[inner]
    flat = float((np.abs(xi - 1) < 0.1).mean())
    p5, p95 = (float(v) for v in np.percentile(xi, [5, 95]))
    dark = inner & (x < _DARK)
    plane = np.zeros((1, 3, 3), dtype=bool)  # in-plane neighbours only
    plane[0] = ndimage.generate_binary_structure(2, 1)
    rim = ndimage.binary_dilation(dark, plane, iterations=3) & ~ndimage.binary_dilation(dark, plane, iterations=1)
    rim &= inner & (x >= _DARK)
    dark_rim = float(np.median(x[rim])) if rim.any() else nan
    slab = np.flatnonzero(keep)
    slab = slab[np.linspace(0, len(slab) - 1, min(len(slab), _SYMMETRY_SLICES)).round().astype(int)]
    sym = float(np.median([_slice_symmetry(np.where(fg[i], n[i], 0)) for i in slab]))
    return InputFeatures(fill, share, flat, sym, p5, p95, float(dark.sum() / inner.sum()), dark_rim)


def looks_like(f: InputFeatures) -> str | None:
    """The contrast the interior's intensities look like (see the module docstring); None when undefined."""
    t = THRESHOLDS
    if not (np.isfinite(f.p5) and np.isfinite(f.p95)):
        return None
    if f.p95 >= t["t2_p95_min"] and f.p5 >= t["t2_p5_min"]:
        return "T2w"
    if f.dark_fraction >= t["dark_fraction_min"]:
        return "FLAIR" if np.isfinite(f.dark_rim) and f.dark_rim >= t["flair_rim_min"] else "T1w"
    return "PD"


def _no_head(f: InputFeatures) -> str | None:
    """Why the series holds no head-sized object with tissue contrast (None: it does)."""
    t = THRESHOLDS
    if f.fill > t["fill_max"]:
        return (f"the foreground fills {f.fill:.0%} of the field of view (a head covers at most about 80 %, "
                "surrounded by air): not a head series")
    if f.fill < t["fill_min"]:
        return f"the largest object covers {f.fill:.1%} of the field of view (at least {t['fill_min']:.0%} expected)"
    if f.object_share < t["object_share_min"]:
        return (f"the foreground is scattered: the largest object holds {f.object_share:.0%} of it (noise, "
                "several objects)")
    if not np.isfinite(f.flat_fraction):
        return "the object has no interior to examine"
    if f.flat_fraction > t["flat_max"]:
        return (f"the object has no tissue contrast ({f.flat_fraction:.0%} of its interior within 10 % of its "
                "median: a uniform phantom?)")
    return None


def check_synthesis_input(normalised: np.ndarray, expected: str) -> InputCheck:
    """Check a normalised source series ``float32 [slices, rows, cols]`` for a route whose source contrast is
    ``expected`` (one of :data:`CONTRASTS`). Never raises for a refusal: see :meth:`InputCheck.raise_if_refused`.
    """
    if expected not in CONTRASTS:
        raise ValueError(f"expected must be one of {', '.join(CONTRASTS)}, got {expected!r}")
    f = input_features(normalised)
    reason = _no_head(f)
    if reason is not None:
        return InputCheck(expected, f, None, (Finding("no_head", True, f"no head in the source series: {reason}"),))
    findings = []
    if f.symmetry < THRESHOLDS["symmetry_min"]:
        findings.append(Finding("not_brain_like", False, (
            f"the source does not look like an axial brain series (left-right symmetry {f.symmetry:.2f}, brains "
            f"{THRESHOLDS['symmetry_min']:g} or more): the models know only brains, the result may be meaningless")))
    seen = looks_like(f)
    if seen not in (None, "PD", expected):
        findings.append(Finding("contrast_mismatch", False, (
            f"the source's intensity histogram looks {seen}, not {expected} as the route expects "
            f"(interior p5 {f.p5:.2f}, p95 {f.p95:.2f}, dark CSF {f.dark_fraction:.0%}, tissue next to it "
            f"{f.dark_rim:.2f} x median): check the series and the route's source contrast")))
    return InputCheck(expected, f, seen, tuple(findings))
