"""k-space self-validation: a reconstruction's error measured from the acquired data alone (no ground truth).

The idea behind SSDU's validation split and k-space cross-validation. For each slice:

1. :func:`holdout_split` holds out a seeded fraction of the acquired phase-encode lines *outside* the fully
   sampled calibration region (for a 2-D mask: acquired samples outside the calibration block). The count is
   ``max(1, round(fraction x acquired lines))``, drawn without replacement by ``numpy.random.default_rng(
   [seed, slice])``, so the same input gives the same split.
2. The model reconstructs ``x_h`` from the remaining ("seen") samples.
3. :func:`predict_kspace` predicts every coil's k-space from that image, ``F S x_h``, with coil sensitivities
   ``S`` from the calibration region: ``S_c = L(y_c) conj(L(x)) / (RSS_c(L(y)) |L(x)|)``, where ``L`` keeps the
   Hann-windowed calibration band of k-space (low-resolution images). The magnitude of ``S`` is fixed by the data
   (``sum_c |S_c|^2 = 1``, the RSS convention of the reference images) and only its smooth *phase* follows the
   image, so a wrong intensity scale of the image shows, while the model's own phase convention (each model
   combines coils its own way) does not count as an error.
4. ``holdout_nmse = ||M_h (F S x_h) - y_h||^2 / ||y_h||^2`` (zero-filled predicts 0 there: 1 by construction),
   and ``dc_residual = ||M_s (F S x_h) - y_s||^2 / ||y_s||^2`` on the seen samples.
5. ``est_nmse``, the estimated NMSE of the answer: the held-out lines stand for the lines that were never acquired,
   whose signal energy is interpolated from the acquired lines' energy profile (:func:`signal_energy`), so
   ``est_nmse = (holdout_nmse x E_missing + dc_residual x E_acquired) / (E_missing + E_acquired)``; zero-filled's
   estimate is ``E_missing / (E_missing + E_acquired)``, and a slice is flagged when the ratio of the two exceeds a
   threshold (:func:`is_flagged`): the answer is estimated to be that much worse than zero-filled.

Acquisition noise on the held-out lines cannot be predicted by any image, so the value of even a perfect
reconstruction is the noise's share of those lines' energy (about 0.3 for 1 % noise at 256x256, measured in
``docs/quality_guardrail.md``). The answer the user receives is still the reconstruction from all acquired lines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mrcore.fft import fft2c, ifft2c

#: Documented defaults (``docs/quality_guardrail.md``).
DEFAULT_HOLDOUT_FRACTION = 0.08
DEFAULT_SEED = 19
#: held-out lines are drawn from the inner band of k-space, within this fraction of the matrix of its centre
#: (where the signal, not the acquisition noise, carries the energy); all lines outside the calibration region
#: when the band holds none
DEFAULT_BAND = 0.125
#: the held-out fraction allowed (of the acquired lines)
FRACTION_RANGE = (0.01, 0.5)
#: default flag threshold of est_nmse / est_nmse_zero_filled (chosen by the calibration study,
#: docs/quality_guardrail.md); holdout_nmse and dc_residual have no threshold by default
DEFAULT_RATIO_THRESHOLD = 1.4


def is_flagged(estimate: SliceEstimate, ratio_threshold: float | None = DEFAULT_RATIO_THRESHOLD,
               holdout_threshold: float | None = None, dc_threshold: float | None = None) -> bool:
    """The flag rule: the estimated error over zero-filled's (:attr:`SliceEstimate.error_ratio`) above
    ``ratio_threshold``, or holdout_nmse / dc_residual above theirs; a threshold None and an unavailable value flag
    nothing."""
    def above(value: float | None, threshold: float | None) -> bool:
        return value is not None and threshold is not None and value > threshold

    return bool(above(estimate.error_ratio, ratio_threshold) or above(estimate.holdout_nmse, holdout_threshold)
                or above(estimate.dc_residual, dc_threshold))


class QualityInputError(ValueError):
    """A quality setting or input that cannot work; ``key`` names the setting (e.g. ``holdout_fraction``)."""

    def __init__(self, message: str, *, key: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class Split:
    """One slice's split of its acquired samples.

    seen, held : float32 [ky, kx] masks (disjoint, their sum is the acquired mask); held is all zero when the
    estimate is unavailable. axis : the phase-encode axis of a line mask (-2 or -1), None for a 2-D mask.
    calibration : width of the fully sampled centre. reason : why the estimate is unavailable ("" when available).
    """

    seen: np.ndarray
    held: np.ndarray
    axis: int | None
    calibration: int
    reason: str = ""

    @property
    def available(self) -> bool:
        return not self.reason


def check_fraction(fraction: float, key: str = "holdout_fraction") -> float:
    lo, hi = FRACTION_RANGE
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not math.isfinite(fraction) \
            or not lo <= float(fraction) <= hi:
        raise QualityInputError(f"{key} must be a number in [{lo}, {hi}] (the share of acquired lines held out), "
                                f"got {fraction!r}", key=key)
    return float(fraction)


def line_axis(mask: np.ndarray) -> int | None:
    """-2 when the mask samples whole rows (ky lines), -1 for whole columns, None for a 2-D pattern."""
    m = np.asarray(mask) != 0
    if (m == m[:, :1]).all():
        return -2
    if (m == m[:1, :]).all():
        return -1
    return None


def _centre_run(profile: np.ndarray) -> tuple[int, int]:
    """[lo, hi) of the run of True around the centre index ``n // 2`` (empty when the centre is not sampled)."""
    c = len(profile) // 2
    if not profile[c]:
        return c, c
    lo, hi = c, c + 1
    while lo > 0 and profile[lo - 1]:
        lo -= 1
    while hi < len(profile) and profile[hi]:
        hi += 1
    return lo, hi


def _centre_block(m: np.ndarray) -> int:
    """Side of the largest fully sampled square centred on (ky // 2, kx // 2) of a 2-D mask."""
    cy, cx = m.shape[0] // 2, m.shape[1] // 2
    side = 0
    while True:
        s = side + 1
        y0, x0 = cy - s // 2, cx - s // 2
        if y0 < 0 or x0 < 0 or y0 + s > m.shape[0] or x0 + s > m.shape[1] or not m[y0:y0 + s, x0:x0 + s].all():
            return side
        side = s


def holdout_split(mask: np.ndarray, fraction: float = DEFAULT_HOLDOUT_FRACTION, seed: int = DEFAULT_SEED,
                  slice_index: int = 0, min_seen_outside: int = 1, band: float = DEFAULT_BAND) -> Split:
    """Split one slice's acquired samples (``mask`` real [ky, kx], non-zero = acquired) into seen and held out.

    Raises :class:`QualityInputError` (key ``holdout_fraction``) when the fraction would leave fewer than
    ``min_seen_outside`` acquired lines outside the calibration region for the model; returns an unavailable split
    (``reason`` set, nothing held out) when no line lies outside the calibration region.
    """
    fraction = check_fraction(fraction)
    m = np.asarray(mask) != 0
    if m.ndim != 2:
        raise QualityInputError(f"mask must be [ky, kx], got shape {list(m.shape)}", key="mask")
    axis = line_axis(m)
    rng = np.random.default_rng([int(seed), int(slice_index)])
    if axis is not None:
        profile = m[:, 0] if axis == -2 else m[0, :]
        lo, hi = _centre_run(profile)
        calibration = hi - lo
        outside = np.flatnonzero(profile)
        outside = outside[(outside < lo) | (outside >= hi)]
        inner = outside[np.abs(outside - len(profile) // 2) <= band * len(profile)]
        total = int(profile.sum())
    else:
        calibration = _centre_block(m)
        cy, cx = m.shape[0] // 2, m.shape[1] // 2
        y0, x0 = cy - calibration // 2, cx - calibration // 2
        inside = np.zeros_like(m)
        inside[y0:y0 + calibration, x0:x0 + calibration] = True
        outside = np.flatnonzero(m & ~inside)
        yy, xx = np.unravel_index(outside, m.shape)
        inner = outside[(np.abs(yy - cy) <= band * m.shape[0]) & (np.abs(xx - cx) <= band * m.shape[1])]
        total = int(m.sum())
    empty = np.zeros(m.shape, np.float32)
    if calibration == 0:
        return Split(m.astype(np.float32), empty, axis, 0, "no fully sampled calibration region at the k-space centre")
    if outside.size == 0:
        return Split(m.astype(np.float32), empty, axis, calibration,
                     "no acquired line outside the calibration region")
    count = max(1, round(fraction * total))
    if inner.size > count:
        outside = inner
    if outside.size - count < min_seen_outside:
        raise QualityInputError(
            f"holdout_fraction {fraction:g} holds out {count} of the {outside.size} acquired "
            f"{'lines' if axis is not None else 'samples'} outside the calibration region, leaving fewer than "
            f"{min_seen_outside} for the model; use a smaller holdout_fraction", key="holdout_fraction")
    picked = rng.choice(outside, size=count, replace=False)
    held = np.zeros(m.shape, bool)
    if axis == -2:
        held[picked, :] = True
    elif axis == -1:
        held[:, picked] = True
    else:
        held.flat[picked] = True
    held &= m
    return Split((m & ~held).astype(np.float32), held.astype(np.float32), axis, calibration)


def _band(shape: tuple[int, int], axis: int | None, width: int) -> np.ndarray:
    """Real [ky, kx] Hann window over the centred calibration band (along the phase-encode axis for a line mask,
    a square for a 2-D mask)."""
    def window(n: int, w: int) -> np.ndarray:
        out = np.zeros(n, np.float32)
        start = n // 2 - w // 2
        out[start:start + w] = np.hanning(w + 2)[1:-1]
        return out

    ky, kx = shape
    if axis == -2:
        return np.repeat(window(ky, width)[:, None], kx, axis=1)
    if axis == -1:
        return np.repeat(window(kx, width)[None, :], ky, axis=0)
    return np.outer(window(ky, width), window(kx, width))


def coil_maps(kspace: np.ndarray, image: np.ndarray, axis: int | None, calibration: int,
              eps: float = 1e-3) -> np.ndarray:
    """complex64 [coils, ky, kx]: sensitivities ``S_c = L(y_c) conj(L(x)) / (RSS(L(y)) |L(x)|)`` (module docstring)."""
    band = _band((kspace.shape[-2], kspace.shape[-1]), axis, max(2, calibration))
    low_y = ifft2c(kspace * band)
    low_x = ifft2c(fft2c(image) * band)
    rss = np.sqrt((np.abs(low_y) ** 2).sum(axis=0))
    mag_x = np.abs(low_x)
    phase = np.conj(low_x) / np.maximum(mag_x, eps * float(mag_x.max()) + 1e-30)
    return (low_y * phase / np.maximum(rss, eps * float(rss.max()) + 1e-30)).astype(np.complex64)


def predict_kspace(kspace: np.ndarray, image: np.ndarray, axis: int | None, calibration: int) -> np.ndarray:
    """``F S x``: every coil's k-space predicted from the complex ``image`` [ky, kx]."""
    return fft2c(coil_maps(kspace, image, axis, calibration) * image[None])


def noise_power(kspace: np.ndarray, mask: np.ndarray, edge: float = 0.1) -> float:
    """Noise energy per k-space sample, summed over coils, from the acquired samples in the four corners of k-space
    (the outer ``edge`` of both axes, where an MR image has next to no signal); 0 when no corner sample is acquired.
    An upper bound where the corners still hold signal."""
    k = np.asarray(kspace)
    ky, kx = k.shape[-2:]
    ry, rx = max(1, int(edge * ky)), max(1, int(edge * kx))
    corner = np.zeros((ky, kx), bool)
    for ys in (slice(0, ry), slice(ky - ry, ky)):
        for xs in (slice(0, rx), slice(kx - rx, kx)):
            corner[ys, xs] = True
    corner &= np.asarray(mask) != 0
    if not corner.any():
        return 0.0
    return float(np.sum(np.abs(k[:, corner]) ** 2) / corner.sum())


def _ratio(residual: np.ndarray, reference: np.ndarray, noise: float = 0.0, samples: int = 0) -> float | None:
    """``||r||^2 / ||y||^2``, both less the expected noise energy ``noise x samples`` (the part of the measured lines
    no image can predict); the reference keeps at least a tenth of its energy."""
    energy = float(np.sum(np.abs(reference) ** 2))
    if energy <= 0:
        return None
    expected = noise * samples
    return max(float(np.sum(np.abs(residual) ** 2)) - expected, 0.0) / max(energy - expected, 0.1 * energy)


def signal_energy(kspace: np.ndarray, mask: np.ndarray, axis: int | None, noise: float = 0.0) -> tuple[float, float]:
    """``(acquired, missing)``: the signal energy (summed over coils, less the acquisition noise ``noise`` per sample)
    of the acquired samples of ``kspace`` complex [coils, ky, kx] under ``mask`` [ky, kx], and an estimate of the
    signal energy of the samples that were not acquired.

    The estimate interpolates, linearly in log energy, the acquired samples' energy profile: per phase-encode line
    for a line mask (``axis`` -2 or -1), per k-space radius (elliptic, one sample wide) for a 2-D mask (``axis``
    None); beyond the outermost acquired line or radius the profile is held constant. Each acquired value keeps at
    least 1 % of its raw energy after the noise is subtracted."""
    k = np.asarray(kspace)
    m = np.asarray(mask) != 0
    energy = (np.abs(k) ** 2).sum(axis=0)  # [ky, kx]
    if axis is not None:
        profile = energy.sum(axis=1) if axis == -2 else energy.sum(axis=0)
        acquired = m[:, 0] if axis == -2 else m[0, :]
        per_unit = noise * (k.shape[-1] if axis == -2 else k.shape[-2])
        counts: np.ndarray = np.ones(profile.shape)
    else:
        ky, kx = m.shape
        yy, xx = np.mgrid[:ky, :kx]
        side = min(ky, kx)
        radius = np.rint(np.hypot((yy - ky // 2) * side / ky, (xx - kx // 2) * side / kx)).astype(int).ravel()
        bins = radius.max() + 1
        profile = np.bincount(radius, (energy * m).ravel(), bins)
        counts = np.bincount(radius, m.ravel().astype(float), bins)
        total = np.bincount(radius, None, bins).astype(float)
        acquired = counts > 0
        profile = np.where(acquired, profile / np.maximum(counts, 1), 0.0)  # mean energy per acquired sample
        per_unit = noise
        counts = total - counts  # missing samples per radius
    signal = np.maximum(profile - per_unit, 0.01 * profile)
    idx = np.flatnonzero(acquired)
    if idx.size == 0 or not np.all(signal[idx] > 0):
        return float(max(energy[m].sum() - noise * m.sum(), 0.0)), 0.0
    gaps = np.flatnonzero(~acquired) if axis is not None else np.flatnonzero(counts > 0)
    estimate = np.exp(np.interp(gaps, idx, np.log(signal[idx]))) * counts[gaps]
    if axis is not None:
        acquired_energy = float(signal[idx].sum())
    else:
        acquired_energy = float(max(energy[m].sum() - noise * m.sum(), 0.01 * energy[m].sum()))
    return acquired_energy, float(estimate.sum())


@dataclass(frozen=True)
class SliceEstimate:
    """One slice's self-check. ``holdout_nmse`` and ``dc_residual``: see the module docstring (None: unavailable).

    est_nmse : estimated NMSE of the answer, the share of the slice's k-space signal energy in error (Parseval: the
        image-domain NMSE of the complex image): ``(holdout_nmse x E_missing + dc_residual x E_acquired) / (E_missing
        + E_acquired)``, where the held-out lines stand for the lines that were never acquired and the energies come
        from :func:`signal_energy`.
    est_nmse_zero_filled : the same estimate for zero-filled (which predicts nothing on the missing lines and is
        exact on the acquired ones): ``E_missing / (E_missing + E_acquired)``.
    """

    holdout_nmse: float | None
    dc_residual: float | None
    est_nmse: float | None = None
    est_nmse_zero_filled: float | None = None

    @property
    def error_ratio(self) -> float | None:
        """est_nmse / est_nmse_zero_filled: above 1, the answer is estimated to be worse than zero-filled."""
        if self.est_nmse is None or not self.est_nmse_zero_filled:
            return None
        return self.est_nmse / self.est_nmse_zero_filled


def slice_quality(kspace: np.ndarray, image: np.ndarray, split: Split, denoise: bool = True) -> SliceEstimate:
    """The self-check of one slice: ``kspace`` complex [coils, ky, kx] as acquired (all lines), ``image`` complex
    [ky, kx] reconstructed from ``split.seen``.

    ``denoise``: the ratios and energies less the acquisition noise's expected share (:func:`noise_power`), so a
    slice's value measures the prediction of the signal and not how noisy its held-out lines happen to be."""
    k = np.asarray(kspace)
    pred = predict_kspace(k * split.seen, np.asarray(image), split.axis, split.calibration)
    residual = pred - k
    acquired_mask = split.seen + split.held
    noise = noise_power(k, acquired_mask) if denoise else 0.0
    dc = _ratio(residual * split.seen, k * split.seen, noise, int(np.count_nonzero(split.seen)))
    if not split.available:
        return SliceEstimate(None, dc)
    holdout = _ratio(residual * split.held, k * split.held, noise, int(np.count_nonzero(split.held)))
    if holdout is None or dc is None:
        return SliceEstimate(holdout, dc)
    acquired, missing = signal_energy(k, acquired_mask, split.axis, noise)
    total = acquired + missing
    if total <= 0:
        return SliceEstimate(holdout, dc)
    return SliceEstimate(holdout, dc, (holdout * missing + dc * acquired) / total, missing / total)
