"""Brain lesions of the phantom: a glioma-like tumour core with necrosis, surrounded by oedema.

A lesion is drawn per subject (:func:`random_lesion`, seeded by the phantom) and rendered on a slice grid as
fractions of three lesion tissues (:func:`lesion_fractions`), which then replace the brain tissues (GM,
WM, CSF) of the pixels they cover (:func:`apply_lesions`):

* **necrosis**: the innermost part of the core, CSF-like (long T1 and T2): dark on T1w, bright on T2w,
  partly suppressed on FLAIR;
* **tumour** (solid core): T1 and T2 longer than grey matter: darker than WM on T1w, bright on T2w and FLAIR;
* **oedema** (vasogenic) around the core, spreading mostly in white matter: long T1 and T2, bright on T2w
  and FLAIR (above GM, unlike CSF on FLAIR), dark on T1w.

Shape: an ellipsoid of random size, axes and orientation whose radius is modulated by a smooth random
field (irregular borders); necrosis, core and oedema are nested level sets of the same distance, each with
its own scale. Positions are drawn inside the supratentorial brain; the parts outside the brain are cut by
the brain fraction.

Relaxation times (ms) and proton density (relative to CSF):

============  ==============  ==============  =====
lesion        T1 1.5 T / 3 T  T2 1.5 T / 3 T  PD
============  ==============  ==============  =====
necrosis      3000 / 3300     1000 / 900      0.97
tumour        1350 / 2000      160 / 150      0.90
oedema        1300 / 2100      200 / 180      0.92
============  ==============  ==============  =====

These are **approximations** chosen inside the ranges that quantitative MRI of gliomas and peritumoral
oedema reports (T1 and T2 of oedema and tumour longer than normal white and grey matter, necrosis close to
CSF), not measured values of any patient; they give the contrasts radiologists expect (oedema and tumour
FLAIR-bright at about 1.5-2 times the normal brain, T1-dark) through the signal equations of
:mod:`mrcore.data.signal`. Pure numpy/scipy, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from scipy import ndimage

from mrcore.data.anatomy import SliceGrid, smooth_field
from mrcore.data.tissues import TISSUES, TissueProperties, tissue_properties

#: Lesion tissues in the fixed order of every lesion-fraction array (``[lesion, ...]``).
LESION_TISSUES: tuple[str, ...] = ("necrosis", "tumour", "oedema")

#: ``LESION_PROPERTIES[field_strength_t][lesion]`` (see the module docstring).
LESION_PROPERTIES: Mapping[float, Mapping[str, TissueProperties]] = MappingProxyType({
    1.5: MappingProxyType({"necrosis": TissueProperties(3000.0, 1000.0, 0.97),
                           "tumour": TissueProperties(1350.0, 160.0, 0.90),
                           "oedema": TissueProperties(1300.0, 200.0, 0.92)}),
    3.0: MappingProxyType({"necrosis": TissueProperties(3300.0, 900.0, 0.97),
                           "tumour": TissueProperties(2000.0, 150.0, 0.90),
                           "oedema": TissueProperties(2100.0, 180.0, 0.92)}),
})

_BRAIN = tuple(TISSUES.index(t) for t in ("csf", "gm", "wm"))
_FIELD_GRID = 4


def lesion_arrays(field_strength_t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``pd, t1_ms, t2_ms``: float64 [lesion] in :data:`LESION_TISSUES` order at ``field_strength_t``."""
    tissue_properties(field_strength_t)  # the same check (and error) as the normal tissues
    table = LESION_PROPERTIES[1.5 if np.isclose(float(field_strength_t), 1.5) else 3.0]
    return tuple(np.array([getattr(table[name], k) for name in LESION_TISSUES], dtype=np.float64)  # type: ignore[return-value]
                 for k in ("pd", "t1_ms", "t2_ms"))


@dataclass(frozen=True, eq=False)
class Lesion:
    """One lesion in subject coordinates (mm, relative to the scan centre, like :class:`SliceGrid` points).

    Attributes
    ----------
    centre_mm : float64 [3]
    inverse_axes : float64 [3, 3]
        Maps ``p - centre`` to the lesion frame, where the core is the unit ball (divided by ``radius_mm``).
    radius_mm : float
        Mean radius of the tumour core, mm.
    necrosis_level, oedema_level : float
        Necrosis inside ``rho < necrosis_level`` (0: none), oedema inside ``rho < oedema_level`` (> 1), where
        ``rho`` is the irregular normalised distance (the core is ``rho < 1``).
    irregularity : float
        Relative amplitude of the smooth field that modulates ``rho``.
    field_coeffs : float64 [g, g, g]
        Prefiltered spline coefficients of that field over ``[-oedema extent, +oedema extent]`` around the centre.
    """

    centre_mm: np.ndarray
    inverse_axes: np.ndarray
    radius_mm: float
    necrosis_level: float
    oedema_level: float
    irregularity: float
    field_coeffs: np.ndarray

    @property
    def extent_mm(self) -> float:
        """Half width of the box that holds the whole lesion (oedema included), mm."""
        return float(self.radius_mm * self.oedema_level * 1.6 + 4.0)


def random_lesion(rng: np.random.Generator, brain_z_mm: tuple[float, float] = (-60.0, 60.0)) -> Lesion:
    """Draw one lesion: core radius U(5, 20) mm, axes U(0.7, 1.3), random orientation, necrosis level
    U(0, 0.65) (none below 0.2), oedema level U(1.4, 2.6), irregularity U(0.1, 0.3); centre uniform in
    x +-45 mm, y -55..+40 mm and the upper 15-85 % of the brain's z extent ``brain_z_mm``."""
    lo, hi = brain_z_mm
    centre = np.array([rng.uniform(-45.0, 45.0), rng.uniform(-55.0, 40.0),
                       rng.uniform(lo + 0.45 * (hi - lo), lo + 0.85 * (hi - lo))])
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    axes = rng.uniform(0.7, 1.3, 3)
    inverse = np.diag(1.0 / axes) @ q.T
    radius = float(rng.uniform(5.0, 20.0))
    necrosis = float(rng.uniform(0.0, 0.65))
    if necrosis < 0.2:
        necrosis = 0.0
    coeffs = ndimage.spline_filter(rng.standard_normal((_FIELD_GRID,) * 3), order=3, mode="nearest")
    return Lesion(centre, inverse, radius, necrosis, float(rng.uniform(1.4, 2.6)), float(rng.uniform(0.1, 0.3)),
                  coeffs)


def _rho(lesion: Lesion, points_mm: np.ndarray) -> np.ndarray:
    """Irregular normalised distance of ``points_mm [3, ...]`` from the lesion centre (core: < 1)."""
    d = points_mm - lesion.centre_mm.reshape((3,) + (1,) * (points_mm.ndim - 1))
    m = lesion.inverse_axes
    r = np.sqrt(sum((m[k, 0] * d[0] + m[k, 1] * d[1] + m[k, 2] * d[2]) ** 2 for k in range(3))) / lesion.radius_mm
    f = smooth_field(lesion.field_coeffs, lesion.extent_mm, d)
    return r * (1.0 + lesion.irregularity * np.tanh(f))


def _inside(rho: np.ndarray, level: float, radius_mm: float) -> np.ndarray:
    """Fraction of a pixel inside ``rho < level`` with a 1 mm partial-volume ramp."""
    if level <= 0:
        return np.zeros(rho.shape, dtype=np.float32)
    return np.clip(0.5 - (rho - level) * radius_mm, 0.0, 1.0).astype(np.float32)


def lesion_fractions(lesions: tuple[Lesion, ...], grid: SliceGrid) -> np.ndarray:
    """Nested lesion regions of ``lesions`` on ``grid``, before the brain cut.

    Returns
    -------
    float32 [lesion, n, ny, nx]
        In :data:`LESION_TISSUES` order, each pixel's necrosis, tumour and oedema share (summing to <= 1).
    """
    n = grid.points_mm.shape[1]
    out = np.zeros((len(LESION_TISSUES), n, *grid.matrix), dtype=np.float32)
    for lesion in lesions:
        rho = grid.upsample(_rho(lesion, grid.points_mm))
        nec = _inside(rho, lesion.necrosis_level, lesion.radius_mm)
        core = _inside(rho, 1.0, lesion.radius_mm)
        oed = _inside(rho, lesion.oedema_level, lesion.radius_mm)
        nec, core, oed = nec, np.maximum(core - nec, 0.0), np.maximum(oed - core, 0.0)
        free = 1.0 - out.sum(axis=0)  # a second lesion only fills what the first left
        for k, part in enumerate((nec, core, oed)):
            add = np.minimum(part, free)
            out[k] += add
            free -= add
    return out


def apply_lesions(fractions: np.ndarray, lesion_parts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Put lesions into the brain: lesion tissue replaces the brain tissue (CSF, GM, WM) of each pixel.

    Necrosis and tumour take their share of every brain tissue alike; oedema, which spreads in white
    matter, takes white matter and half of grey matter's share, never CSF.

    Parameters
    ----------
    fractions : float32 [tissue, ...] in :data:`mrcore.data.tissues.TISSUES` order (modified copy returned)
    lesion_parts : float32 [lesion, ...] from :func:`lesion_fractions`

    Returns
    -------
    (tissues, lesions) : float32 [tissue, ...] and float32 [lesion, ...], summing per pixel to the input's total.
    """
    fr = np.array(fractions, dtype=np.float32, copy=True)
    csf, gm, wm = (fr[i] for i in _BRAIN)
    brain = csf + gm + wm
    solid = np.clip(lesion_parts[0] + lesion_parts[1], 0.0, 1.0)
    nec_t = lesion_parts[0] * brain
    tum_t = lesion_parts[1] * brain
    keep = 1.0 - solid  # brain tissue left after the core
    fr[_BRAIN[0]] *= keep
    fr[_BRAIN[1]] *= keep
    fr[_BRAIN[2]] *= keep
    oed_gm = np.minimum(lesion_parts[2] * 0.5, 1.0) * fr[_BRAIN[1]]
    oed_wm = lesion_parts[2] * fr[_BRAIN[2]]
    fr[_BRAIN[1]] -= oed_gm
    fr[_BRAIN[2]] -= oed_wm
    les = np.stack([nec_t, tum_t, oed_gm + oed_wm]).astype(np.float32)
    return fr, les
