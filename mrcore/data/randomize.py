"""Domain randomisation for reconstruction training: multi-coil k-space drawn from wide, configured ranges.

The served reconstruction must hold up on data no simulator of ours produced: any scanner matrix (odd,
non-square, read-out oversampled), any coil count and geometry, any contrast, noise level and phase, any
Cartesian mask along either phase-encode axis. A network trained on one phantom setting does not (v1 lost
to zero-filling on real anatomy), so every training example here is drawn at random from the ranges of a
:class:`RandomizationConfig`, deterministically from a seed:

* **image** (the object, magnitude in about [0, 1]) from one of three sources, by weight:
  ``phantom`` (the embedded brain anatomy of :mod:`mrcore.data.anatomy` in any of the four contrasts, with
  field strength and TR/TE/TI drawn from ranges rather than fixed per site), ``natural`` (grey-scale natural
  images that ship inside the scikit-image wheel, texture-rich; training unrolled networks on natural images
  transfers to MRI: Dar et al. 2020, Knoll et al. 2019), ``body`` (random smooth body outlines filled with
  organ-like regions and texture);
* a smooth multiplicative **bias field** and a smooth random **phase**;
* **geometry**: a k-space matrix from ``matrix`` along each axis, and with probability ``readout_oversampling``
  2x read-out oversampling (the object fills the central half of the read-out axis, as fastMRI's brain data);
  examples larger than ``max_pixels`` are cropped in image space *before* k-space is simulated, so data
  consistency stays exact for the crop;
* **coils**: 1 to 32 receive coils, birdcage-like rings of random radius, ellipticity and rotation, or random
  smooth complex sensitivities; correlated complex Gaussian **noise** of a peak SNR drawn in ``snr_db``;
* **mask**: equispaced or random lines with a fully sampled centre, or 2-D variable-density Poisson, at an
  acceleration in ``acceleration`` and a centre fraction in ``center_fraction`` (capped so that the centre
  never holds more lines than the acceleration leaves), phase encoding along either axis.

Everything here is pure numpy/scipy (no I/O beyond the images that ship inside installed wheels). The
evaluation images of ``evaldata/`` are never read by this module.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, fields

import numpy as np
from scipy import ndimage

from mrcore.data.anatomy import SliceGrid, load_template, random_subject, sample_slices
from mrcore.data.base import CONTRASTS
from mrcore.data.kspace_sim import smooth_phase
from mrcore.data.signal import flair_null_ti, inversion_recovery, spin_echo
from mrcore.data.tissues import FIELD_STRENGTHS, tissue_arrays, tissue_properties
from mrcore.fft import fft2c, ifft2c
from mrcore.masks import MASK_KINDS, POISSON_MIN_ACCELERATION, PoissonDiscMask, make_mask

#: Image sources of the randomised data.
IMAGE_SOURCES: tuple[str, ...] = ("phantom", "natural", "body")

#: Grey-scale-convertible images bundled in the scikit-image wheel (no download; checked offline).
NATURAL_IMAGES: tuple[str, ...] = (
    "astronaut", "brick", "camera", "cat", "cell", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
    "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "rocket", "text",
)

#: Typical sequence timings (kind, TR, TE, TI) in ms around which each contrast's timings are drawn.
SEQUENCES_MS: dict[str, tuple[str, float, float, float | None]] = {
    "T1w": ("SE", 550.0, 10.0, None),
    "T2w": ("SE", 5000.0, 100.0, None),
    "PD": ("SE", 5500.0, 32.0, None),
    "FLAIR": ("IR", 9000.0, 120.0, None),  # TI: CSF null at the drawn TR, jittered
}


def _pair(name: str, value, low: float, high: float | None = None, integer: bool = False) -> tuple:
    try:
        a, b = value
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a range [low, high], got {value!r}") from None
    if integer and not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (a, b)):
        raise ValueError(f"{name} must be two integers [low, high], got {value!r}")
    if not all(isinstance(v, (int, float, np.integer, np.floating)) and math.isfinite(v) for v in (a, b)):
        raise ValueError(f"{name} must be two finite numbers [low, high], got {value!r}")
    if a > b:
        raise ValueError(f"{name} is a range [low, high] with low <= high, got {value!r}")
    if a < low or (high is not None and b > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must lie in {bound}, got {value!r}")
    return (int(a), int(b)) if integer else (float(a), float(b))


def _weights(name: str, value: dict, known: tuple[str, ...]) -> dict[str, float]:
    if not isinstance(value, dict) or not value:
        raise ValueError(f"{name} must map names to weights, got {value!r}")
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise ValueError(f"{name}: unknown {unknown[0]!r}; expected some of {', '.join(known)}")
    if any(not isinstance(w, (int, float)) or isinstance(w, bool) or not w >= 0 for w in value.values()) \
            or not sum(value.values()) > 0:
        raise ValueError(f"{name}: weights must be numbers >= 0 with a positive sum, got {value!r}")
    return {k: float(w) for k, w in value.items()}


@dataclass(frozen=True)
class RandomizationConfig:
    """Every range of the randomised training data (``data.randomize`` in ``configs/recon*.yaml``).

    Ranges are ``[low, high]``, drawn uniformly (``coils`` log-uniformly); weights need not sum to 1.
    """

    sources: dict = field(default_factory=lambda: {"phantom": 0.4, "natural": 0.35, "body": 0.25})
    contrasts: tuple[str, ...] = CONTRASTS
    field_strengths: tuple[float, ...] = FIELD_STRENGTHS
    sequence_jitter: float = 0.35           # TR, TE, TI drawn within +-35 % of the typical values
    natural_images: tuple[str, ...] = NATURAL_IMAGES
    matrix: tuple[int, int] = (96, 400)     # k-space matrix along each axis (odd and non-square included)
    max_pixels: int = 160 * 160             # training crop: larger examples are cropped in image space
    readout_oversampling: float = 0.2       # probability of 2x read-out oversampling
    coils: tuple[int, int] = (1, 32)
    birdcage_radius: tuple[float, float] = (1.05, 2.5)  # coil ring radius relative to half the field of view
    smooth_coils: float = 0.25              # probability of random smooth sensitivities instead of a ring
    noise_correlation: float = 0.3          # largest coil-noise correlation coefficient (about)
    snr_db: tuple[float, float] = (20.0, 45.0)  # peak image amplitude / noise standard deviation, dB
    phase_max_rad: tuple[float, float] = (0.0, math.pi)
    phase_order: tuple[int, int] = (1, 4)
    bias_strength: tuple[float, float] = (0.0, 0.5)  # standard deviation of log(bias)
    mask_kinds: dict = field(default_factory=lambda: {"equispaced": 0.5, "random": 0.4, "poisson": 0.1})
    acceleration: tuple[float, float] = (2.0, 10.0)
    center_fraction: tuple[float, float] = (0.04, 0.16)
    phase_encode_axes: tuple[int, ...] = (-2, -1)

    def __post_init__(self) -> None:
        set_ = functools.partial(object.__setattr__, self)
        set_("sources", _weights("sources", self.sources, IMAGE_SOURCES))
        set_("mask_kinds", _weights("mask_kinds", self.mask_kinds, MASK_KINDS))
        for name, values, known in (("contrasts", self.contrasts, CONTRASTS),
                                    ("natural_images", self.natural_images, NATURAL_IMAGES),
                                    ("phase_encode_axes", self.phase_encode_axes, (-2, -1))):
            if not values or any(v not in known for v in values):
                bad = next((v for v in values if v not in known), None)
                raise ValueError(f"{name}: unknown {bad!r}; expected some of {', '.join(map(str, known))}")
        for f in self.field_strengths:
            tissue_properties(f)  # names the supported field strengths
        set_("matrix", _pair("matrix", self.matrix, 16, 1024, integer=True))
        set_("coils", _pair("coils", self.coils, 1, 64, integer=True))
        set_("phase_order", _pair("phase_order", self.phase_order, 0, 8, integer=True))
        set_("birdcage_radius", _pair("birdcage_radius", self.birdcage_radius, 1.0 + 1e-6))
        set_("snr_db", _pair("snr_db", self.snr_db, -20.0, 100.0))
        set_("phase_max_rad", _pair("phase_max_rad", self.phase_max_rad, 0.0, 2 * math.pi))
        set_("bias_strength", _pair("bias_strength", self.bias_strength, 0.0, 2.0))
        set_("acceleration", _pair("acceleration", self.acceleration, 1.0 + 1e-6, 64.0))
        set_("center_fraction", _pair("center_fraction", self.center_fraction, 1e-6, 0.5))
        for name in ("sequence_jitter", "readout_oversampling", "smooth_coils", "noise_correlation"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v < 1:
                raise ValueError(f"{name} must be a number in [0, 1), got {v!r}")
        if not isinstance(self.max_pixels, int) or self.max_pixels < 32 * 32:
            raise ValueError(f"max_pixels must be an int >= 1024 (a 32x32 crop), got {self.max_pixels!r}")
        lo_cf, hi_r = self.center_fraction[0], self.acceleration[1]
        if lo_cf * hi_r >= 0.8:
            raise ValueError(
                f"acceleration up to {hi_r:g} leaves {1 / hi_r:.3f} of the lines, fewer than the smallest centre "
                f"(center_fraction {lo_cf:g}) needs with room for outer lines: lower acceleration[1] or center_fraction[0]")
        if self.mask_kinds.get("poisson", 0) > 0 and self.acceleration[1] < POISSON_MIN_ACCELERATION:
            raise ValueError(f"mask_kinds: poisson needs acceleration >= {POISSON_MIN_ACCELERATION}, but acceleration "
                             f"is at most {self.acceleration[1]:g}")
        if self.snr_db[1] - self.snr_db[0] < 0:
            raise ValueError(f"snr_db must be [low, high], got {self.snr_db!r}")

    def as_dict(self) -> dict:
        """Plain dict of every range (for model cards)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Geometry:
    """The acquisition drawn for one batch: shared by its examples so they stack."""

    shape: tuple[int, int]          # k-space matrix of the (cropped) example
    coils: int
    mask_kind: str
    axis: int                       # phase-encode axis of line masks (-2 rows, -1 columns)
    oversampled: bool               # 2x read-out oversampling (along the other axis)
    acceleration: float
    center_fraction: float


@dataclass(frozen=True)
class Example:
    """One fully sampled training example.

    kspace : complex64 [coils, ky, kx] (fully sampled, noisy); mask : float32 [ky, kx];
    target : float32 [ky, kx], root-sum-of-squares of the fully sampled coil images (fastMRI's target);
    source : which image source made it.
    """

    kspace: np.ndarray
    mask: np.ndarray
    target: np.ndarray
    source: str


# --- drawing ------------------------------------------------------------------------------------------
def _rng(seed) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed))


def _choice(rng: np.random.Generator, weights: dict[str, float]) -> str:
    names = sorted(weights)
    p = np.array([weights[n] for n in names], dtype=np.float64)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def draw_geometry(cfg: RandomizationConfig, rng: np.random.Generator) -> Geometry:
    """Matrix (after cropping to ``max_pixels``), coils, mask kind, axis and acceleration of one batch."""
    lo, hi = cfg.matrix
    full = [int(rng.integers(lo, hi + 1)) for _ in range(2)]
    axis = int(rng.choice(cfg.phase_encode_axes))
    oversampled = bool(rng.random() < cfg.readout_oversampling)
    readout = 0 if axis == -1 else 1  # the read-out axis is the one the lines run along
    if oversampled:
        full[readout] = min(2 * full[readout], 2 * hi)
    shape = _crop_shape((full[0], full[1]), cfg.max_pixels, rng)
    coils = math.floor(math.exp(rng.uniform(math.log(cfg.coils[0]), math.log(cfg.coils[1] + 1))))  # log-uniform
    coils = int(np.clip(coils, *cfg.coils))
    kind = _choice(rng, cfg.mask_kinds)
    r_lo, r_hi = cfg.acceleration
    if kind == "poisson":
        r_lo = max(r_lo, POISSON_MIN_ACCELERATION)
    accel = float(rng.uniform(r_lo, r_hi))
    cf_hi = min(cfg.center_fraction[1], 0.8 / accel)
    cf = float(rng.uniform(min(cfg.center_fraction[0], cf_hi), cf_hi))
    return Geometry(shape, coils, kind, axis, oversampled, accel, cf)


def _crop_shape(full: tuple[int, int], max_pixels: int, rng: np.random.Generator) -> tuple[int, int]:
    h, w = full
    if h * w <= max_pixels:
        return h, w
    # keep the aspect ratio loosely, never below 48 pixels along an axis
    aspect = math.exp(rng.uniform(-0.4, 0.4)) * h / w
    ch = int(min(h, max(48, round(math.sqrt(max_pixels * aspect)))))
    cw = int(min(w, max(48, max_pixels // ch)))
    return ch, cw


def draw_mask(geometry: Geometry, seed: int) -> np.ndarray:
    """The undersampling mask of ``geometry``: float32 [ky, kx], deterministic for ``seed``.

    Poisson-disc masks are drawn with a 15 % acceleration tolerance (SigPy's search for a tighter one takes
    seconds per mask; the acceleration is random anyway).
    """
    if geometry.mask_kind == "poisson":
        cy, cx = (max(1, round(n * geometry.center_fraction)) for n in geometry.shape)
        return PoissonDiscMask(geometry.acceleration, (cy, cx), tolerance=0.15)(geometry.shape, seed=seed)
    return make_mask(geometry.mask_kind, geometry.shape, geometry.acceleration, geometry.center_fraction,
                     seed=seed, axis=geometry.axis).astype(np.float32)


def draw_example(cfg: RandomizationConfig, geometry: Geometry, seed, mask: np.ndarray | None = None) -> Example:
    """One example of ``geometry``, deterministic for ``seed`` (an int or a tuple of ints); ``mask`` given: that
    mask instead of a drawn one (a batch may share one 2-D Poisson mask, which takes up to seconds to draw)."""
    rng = _rng(seed)
    full = _full_shape(geometry, rng)
    source = _choice(rng, cfg.sources)
    readout = 0 if geometry.axis == -1 else 1
    obj_shape = list(full)
    if geometry.oversampled:
        obj_shape[readout] = full[readout] // 2
    magnitude = _draw_image(cfg, source, tuple(obj_shape), rng)
    magnitude = magnitude * _bias(obj_shape, rng.uniform(*cfg.bias_strength), rng)
    if geometry.oversampled:
        magnitude = _embed(magnitude, full)
    phase = smooth_phase(full, int(rng.integers(1 << 31)), order=int(rng.integers(cfg.phase_order[0],
                         cfg.phase_order[1] + 1)), max_rad=float(rng.uniform(*cfg.phase_max_rad)))
    image = magnitude * np.exp(1j * phase)
    maps = _coil_maps(cfg, full, geometry.coils, rng)
    image, maps = _crop(image, maps, geometry.shape, rng)
    kspace = fft2c((maps * image).astype(np.complex64))
    peak = float(np.percentile(np.sqrt((np.abs(maps * image) ** 2).sum(axis=0)), 99.5)) or 1.0
    sigma = peak * 10 ** (-rng.uniform(*cfg.snr_db) / 20)
    kspace = kspace + _correlated_noise(kspace.shape, sigma, cfg.noise_correlation, rng)
    mask_seed = int(rng.integers(1 << 31))
    mask = draw_mask(geometry, mask_seed) if mask is None else mask
    target = np.sqrt((np.abs(ifft2c(kspace)) ** 2).sum(axis=0)).astype(np.float32)
    return Example(kspace.astype(np.complex64), np.asarray(mask, dtype=np.float32), target, source)


def _full_shape(geometry: Geometry, rng: np.random.Generator) -> tuple[int, int]:
    """The acquisition the crop comes from: at least the crop, up to 1.6x it (so crops see edges and interior)."""
    h, w = (int(n * rng.uniform(1.0, 1.6)) if rng.random() < 0.5 else n for n in geometry.shape)
    return h, w


def _embed(image: np.ndarray, shape) -> np.ndarray:
    out = np.zeros(shape, dtype=image.dtype)
    oy, ox = (shape[0] - image.shape[0]) // 2, (shape[1] - image.shape[1]) // 2
    out[oy:oy + image.shape[0], ox:ox + image.shape[1]] = image
    return out


def _crop(image: np.ndarray, maps: np.ndarray, shape, rng: np.random.Generator):
    h, w = shape
    oy = int(rng.integers(0, image.shape[0] - h + 1))
    ox = int(rng.integers(0, image.shape[1] - w + 1))
    return image[oy:oy + h, ox:ox + w], maps[:, oy:oy + h, ox:ox + w]


# --- images -------------------------------------------------------------------------------------------
def _draw_image(cfg: RandomizationConfig, source: str, shape, rng: np.random.Generator) -> np.ndarray:
    if source == "phantom":
        img = _phantom_image(cfg, shape, rng)
    elif source == "natural":
        img = _natural_image(cfg, shape, rng)
        if rng.random() < 0.7:
            img = img * _body_support(shape, rng)
    else:
        img = _body_image(cfg, shape, rng)
    img = _orient(img, rng)
    if img.shape != tuple(shape):
        img = np.ascontiguousarray(_resize(img, shape))
    peak = float(img.max())
    return (img / peak if peak > 0 else img).astype(np.float32)


def _orient(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.5:
        img = img[::-1]
    if rng.random() < 0.5:
        img = img[:, ::-1]
    return img


def _resize(img: np.ndarray, shape) -> np.ndarray:
    zoom = (shape[0] / img.shape[0], shape[1] / img.shape[1])
    out = ndimage.zoom(img, zoom, order=1, prefilter=False, grid_mode=True, mode="nearest")
    return out[: shape[0], : shape[1]]


def _sequence_signal(cfg: RandomizationConfig, contrast: str, field_t: float, rng: np.random.Generator) -> np.ndarray:
    """Pure-tissue signals ``[tissue]`` of ``contrast`` at ``field_t`` with TR/TE/TI jittered around typical values."""
    kind, tr, te, ti = SEQUENCES_MS[contrast]
    j = cfg.sequence_jitter
    tr, te = tr * rng.uniform(1 - j, 1 + j), te * rng.uniform(1 - j, 1 + j)
    pd, t1, t2 = tissue_arrays(field_t)
    if contrast == "T1w" and rng.random() < 0.5:  # inversion-prepared T1w (as most sites' 3-D T1)
        kind, tr, ti = "IR", 2000.0 * rng.uniform(1 - j, 1 + j), 850.0 * rng.uniform(1 - j, 1 + j)
    if kind == "IR":
        if ti is None:
            ti = flair_null_ti(tissue_properties(field_t)["csf"].t1_ms, tr) * rng.uniform(1 - j / 4, 1 + j / 4)
        return inversion_recovery(pd, t1, t2, tr, te, min(ti, 0.95 * tr))
    return spin_echo(pd, t1, t2, tr, te)


def _phantom_image(cfg: RandomizationConfig, shape, rng: np.random.Generator) -> np.ndarray:
    """A random subject's axial slice of the embedded brain anatomy in a random contrast and sequence,
    rotated by a multiple of 90 degrees (square pixels: the slice is sampled on the rotated grid)."""
    tpl = load_template()
    subject = random_subject(rng)
    lo, hi = tpl.brain_z_mm
    z = rng.uniform(lo + 0.15 * (hi - lo), hi - 0.1 * (hi - lo))
    turns = int(rng.integers(0, 4))
    grid_shape = tuple(shape) if turns % 2 == 0 else (shape[1], shape[0])
    pixel_mm = rng.uniform(0.7, 1.3) * 220.0 / max(shape)
    grid = SliceGrid.axial(grid_shape, (grid_shape[0] * pixel_mm, grid_shape[1] * pixel_mm), [z])
    fractions = sample_slices(subject, grid, tpl)[:, 0]  # [tissue, y, x]
    contrast = str(rng.choice(cfg.contrasts))
    signal = _sequence_signal(cfg, contrast, float(rng.choice(cfg.field_strengths)), rng)
    return np.rot90(np.clip(np.tensordot(signal.astype(np.float32), fractions, axes=1), 0, None), turns)


@functools.cache
def natural_image(name: str) -> np.ndarray:
    """A grey-scale image bundled with scikit-image, float32 in [0, 1] (read-only, cached)."""
    import skimage.data  # deferred: scikit-image's data module loads its file registry

    if name not in NATURAL_IMAGES:
        raise ValueError(f"unknown natural image {name!r}; expected one of {', '.join(NATURAL_IMAGES)}")
    img = np.asarray(getattr(skimage.data, name)(), dtype=np.float32)
    if img.ndim == 3:
        img = img[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    img = (img - img.min()) / max(float(img.max() - img.min()), 1e-6)
    img.setflags(write=False)
    return img


def _natural_image(cfg: RandomizationConfig, shape, rng: np.random.Generator) -> np.ndarray:
    src = natural_image(str(rng.choice(cfg.natural_images)))
    # a random window of the source, of the target aspect ratio, 40-100 % of the source's extent
    aspect = shape[0] / shape[1]
    frac = rng.uniform(0.4, 1.0)
    h = min(src.shape[0], int(round(frac * min(src.shape[0], src.shape[1] * aspect))))
    w = min(src.shape[1], max(8, int(round(h / aspect))))
    oy, ox = int(rng.integers(0, src.shape[0] - h + 1)), int(rng.integers(0, src.shape[1] - w + 1))
    img = np.rot90(src[oy:oy + h, ox:ox + w], int(rng.integers(0, 4)))
    img = _resize(np.ascontiguousarray(img), shape)
    return np.power(np.clip(img, 0, 1), rng.uniform(0.6, 1.8))  # random gamma: contrast variety


def _smooth_field(shape, rng: np.random.Generator, cells: int = 4) -> np.ndarray:
    """A smooth random field of unit standard deviation (cubic spline of a ``cells``-point grid per axis)."""
    coarse = rng.standard_normal((cells, cells))
    field_ = ndimage.zoom(coarse, (shape[0] / cells, shape[1] / cells), order=3, mode="nearest")[: shape[0], : shape[1]]
    if field_.shape != tuple(shape):
        field_ = np.pad(field_, [(0, shape[0] - field_.shape[0]), (0, shape[1] - field_.shape[1])], mode="edge")
    return (field_ - field_.mean()) / (field_.std() + 1e-6)


def _bias(shape, strength: float, rng: np.random.Generator) -> np.ndarray:
    return np.exp(strength * _smooth_field(shape, rng)).astype(np.float32)


def _body_support(shape, rng: np.random.Generator) -> np.ndarray:
    """A smooth-edged body outline (union of 1-3 random superellipses) with dark background around it."""
    y, x = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    inside = np.zeros(shape, dtype=bool)
    for _ in range(int(rng.integers(1, 4))):
        cy, cx = rng.uniform(-0.25, 0.25, 2)
        ry, rx = rng.uniform(0.35, 0.9, 2)
        angle = rng.uniform(0, np.pi)
        p = rng.uniform(1.6, 4.0)
        u = ((x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)) / rx
        v = (-(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)) / ry
        inside |= np.abs(u) ** p + np.abs(v) ** p <= 1
    edge = max(0.5, rng.uniform(0.3, 1.5) * max(shape) / 200)
    return np.clip(ndimage.gaussian_filter(inside.astype(np.float32), edge), 0, 1)


def _body_image(cfg: RandomizationConfig, shape, rng: np.random.Generator) -> np.ndarray:
    """A random body: outline, a fat-like rim, organ-like regions of their own intensity, and texture."""
    support = _body_support(shape, rng)
    img = support * rng.uniform(0.2, 0.6)
    for _ in range(int(rng.integers(2, 8))):  # organs: smaller outlines of their own intensity
        oh, ow = (max(8, int(n * rng.uniform(0.15, 0.5))) for n in shape)
        oy, ox = int(rng.integers(0, shape[0] - oh + 1)), int(rng.integers(0, shape[1] - ow + 1))
        region = np.zeros(shape, dtype=np.float32)
        region[oy:oy + oh, ox:ox + ow] = _body_support((oh, ow), rng)
        img = img * (1 - region) + region * rng.uniform(0.05, 1.0)
    if rng.random() < 0.6:  # fat rim under the skin: bright on most sequences
        core = ndimage.binary_erosion(support > 0.5, iterations=max(1, max(shape) // 40))
        img = np.maximum(img, np.clip(support - core, 0, 1) * rng.uniform(0.6, 1.0))
    texture = _natural_image(cfg, shape, rng) if rng.random() < 0.6 else _smooth_field(shape, rng, cells=16)
    texture = (texture - texture.min()) / max(float(np.ptp(texture)), 1e-6)
    weight = rng.uniform(0.1, 0.5)
    return img * support * (1 - weight + weight * texture)


# --- coils and noise ------------------------------------------------------------------------------------
def _coil_maps(cfg: RandomizationConfig, shape, coils: int, rng: np.random.Generator) -> np.ndarray:
    """Unnormalised complex sensitivities ``[coils, y, x]``, peak root-sum-of-squares 1 (real coils are not
    normalised to unit RSS everywhere: their combined sensitivity falls off towards the centre)."""
    if coils == 1 or rng.random() < cfg.smooth_coils:
        return _smooth_maps(shape, coils, rng)
    return _ring_maps(shape, coils, rng.uniform(*cfg.birdcage_radius), rng)


def _ring_maps(shape, coils: int, radius: float, rng: np.random.Generator) -> np.ndarray:
    """Coils on a ring (ellipse) around the object, Biot-Savart-like ``1/r`` falloff and geometric phase
    (the model of ``sigpy.mri.birdcage_maps``, with random radius, ellipticity, rotation and gains)."""
    ny, nx = shape
    y, x = np.meshgrid((np.arange(ny) - ny / 2) / (ny / 2), (np.arange(nx) - nx / 2) / (nx / 2), indexing="ij")
    theta = rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.arange(coils) / coils + rng.normal(0, 0.1, coils)
    ry, rx = radius * rng.uniform(0.85, 1.15, 2)
    depth = rng.uniform(0.0, 0.5)  # out-of-plane offset of the coil ring (softens the falloff)
    out = np.empty((coils, ny, nx), dtype=np.complex64)
    for c in range(coils):
        dx, dy = x - rx * np.cos(theta[c]), y - ry * np.sin(theta[c])
        rr = np.sqrt(dx**2 + dy**2 + depth**2)
        out[c] = rng.uniform(0.7, 1.3) / rr * np.exp(1j * (np.arctan2(dx, -dy) - theta[c]))
    return out / np.sqrt((np.abs(out) ** 2).sum(axis=0).max())


def _smooth_maps(shape, coils: int, rng: np.random.Generator) -> np.ndarray:
    """Random smooth complex sensitivities: each coil a sum of smooth Gaussian-bump magnitudes and phases."""
    out = np.empty((coils, *shape), dtype=np.complex64)
    for c in range(coils):
        magnitude = np.exp(0.8 * _smooth_field(shape, rng, 3))
        phase = 1.5 * _smooth_field(shape, rng, 3)
        out[c] = magnitude * np.exp(1j * phase)
    return out / np.sqrt((np.abs(out) ** 2).sum(axis=0).max())


def _correlated_noise(shape, sigma: float, correlation: float, rng: np.random.Generator) -> np.ndarray:
    """Complex Gaussian noise ``[coils, ...]`` of standard deviation ``sigma`` per real/imag part, coils mixed
    by ``L`` with unit-norm rows so that neighbouring coils correlate (up to about ``correlation``)."""
    coils = shape[0]
    white = rng.standard_normal((2, *shape), dtype=np.float32)
    noise = (white[0] + 1j * white[1]).astype(np.complex64)
    if coils == 1 or correlation == 0:
        return sigma * noise
    mix = np.eye(coils, dtype=np.complex64)
    rho = rng.uniform(0, correlation)
    for c in range(coils):
        mix[c, (c + 1) % coils] += rho * np.exp(1j * rng.uniform(0, 2 * np.pi))
    mix /= np.linalg.norm(mix, axis=1, keepdims=True)
    return sigma * np.tensordot(mix, noise, axes=1).astype(np.complex64)

