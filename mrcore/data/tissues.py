"""Relaxation times and relative proton density of the head tissues the phantom is built from.

Values per tissue at 1.5 T and 3 T (T1 and T2 in milliseconds, proton density relative to CSF = 1):

============  ==============  ==============  =====  =================================================
tissue        T1 1.5 T / 3 T  T2 1.5 T / 3 T  PD     source
============  ==============  ==============  =====  =================================================
csf           4300 / 4300     2000 / 1800     1.00   T1: Lu et al. 2005; Rooney et al. 2007. T2: approx.
gm            1124 / 1820       95 / 99       0.86   Stanisz et al. 2005; PD: BrainWeb
wm             884 / 1084       72 / 69       0.77   Stanisz et al. 2005; PD: BrainWeb
fat            343 / 382        58 / 68       0.90   Gold et al. 2004 (subcutaneous fat); PD approx.
muscle        1008 / 1412       44 / 50       0.80   Stanisz et al. 2005 (skeletal muscle); PD approx.
bone           250 / 250       1.0 / 0.8      0.05   approximation (cortical bone), see below
============  ==============  ==============  =====  =================================================

Sources
-------
- G. J. Stanisz et al., "T1, T2 relaxation and magnetization transfer in tissue at 3T",
  Magn. Reson. Med. 2005;54:507-512. White matter, grey matter and skeletal muscle at 1.5 T and 3 T
  (37 degrees C). They measured excised tissue; in vivo, white-matter T1 at 1.5 T is often reported
  somewhat shorter (about 0.6-0.8 s). So spin-echo T1-weighted grey/white contrast at 1.5 T comes out
  weaker here than on many real scanners. The 1.5 T sites in :mod:`mrcore.data.sites` use an
  inversion-recovery T1w sequence for that reason.
- H. Lu et al., "Routine clinical brain MRI sequences for use at 3.0 Tesla", J. Magn. Reson. Imaging
  2005;22:13-22, and J. Rooney et al., "Magnetic field and tissue dependencies of human brain
  longitudinal 1H2O relaxation in vivo", Magn. Reson. Med. 2007;57:308-318. CSF T1 is about
  4.1-4.4 s and nearly independent of field strength. 4300 ms is used at both fields (an approximation
  within that range).
- G. E. Gold et al., "Musculoskeletal MRI at 3.0 T: relaxation times and image contrast",
  AJR 2004;183:343-351. Subcutaneous fat T1 and T2 at 1.5 T and 3 T. The marrow fat of the skull's
  diploe is given the same values (an approximation).
- BrainWeb (R. K.-S. Kwan, A. C. Evans, G. B. Pike, IEEE TMI 1999;18:1085-1097; D. L. Collins et al.,
  IEEE TMI 1998;17:463-468): relative proton density CSF 1.0, GM 0.86, WM 0.77.

Approximations (chosen for plausible image contrast, not measured values):

- CSF T2 (about 2 s at 1.5 T and a little shorter at 3 T; reported values range from about
  1.4 to 2.5 s).
- Fat PD 0.90 and muscle/skin PD 0.80 (BrainWeb gives both a relative density close to CSF's).
- Cortical bone. Its T2 is well under 1 ms (T2* about 0.4 ms by ultrashort-TE imaging), so it gives
  no signal at any TE used here, whatever the exact T1 and PD. The values only keep the equations
  finite.

Relaxation-time uncertainty is ignored; every subject gets the same values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

#: Tissue classes in the fixed order used by every tissue-fraction array (``[tissue, ...]``).
TISSUES: tuple[str, ...] = ("csf", "gm", "wm", "fat", "muscle", "bone")

#: Field strengths (tesla) with a parameter table.
FIELD_STRENGTHS: tuple[float, ...] = (1.5, 3.0)


@dataclass(frozen=True)
class TissueProperties:
    """MR properties of one tissue at one field strength.

    Attributes
    ----------
    t1_ms : float
        Longitudinal relaxation time, milliseconds.
    t2_ms : float
        Transverse relaxation time, milliseconds.
    pd : float
        Proton density relative to CSF (= 1), dimensionless.
    """

    t1_ms: float
    t2_ms: float
    pd: float


def _table(rows: dict[str, tuple[float, float, float]]) -> Mapping[str, TissueProperties]:
    assert tuple(rows) == TISSUES
    return MappingProxyType({name: TissueProperties(*values) for name, values in rows.items()})


#: ``TISSUE_PROPERTIES[field_strength_t][tissue]``; see the module docstring for the sources.
TISSUE_PROPERTIES: Mapping[float, Mapping[str, TissueProperties]] = MappingProxyType(
    {
        1.5: _table(
            {
                "csf": (4300.0, 2000.0, 1.00),
                "gm": (1124.0, 95.0, 0.86),
                "wm": (884.0, 72.0, 0.77),
                "fat": (343.0, 58.0, 0.90),
                "muscle": (1008.0, 44.0, 0.80),
                "bone": (250.0, 1.0, 0.05),
            }
        ),
        3.0: _table(
            {
                "csf": (4300.0, 1800.0, 1.00),
                "gm": (1820.0, 99.0, 0.86),
                "wm": (1084.0, 69.0, 0.77),
                "fat": (382.0, 68.0, 0.90),
                "muscle": (1412.0, 50.0, 0.80),
                "bone": (250.0, 0.8, 0.05),
            }
        ),
    }
)


def tissue_properties(field_strength_t: float) -> Mapping[str, TissueProperties]:
    """Tissue table at ``field_strength_t`` (tesla; one of :data:`FIELD_STRENGTHS`).

    Raises
    ------
    ValueError
        If there is no table for that field strength.
    """
    for field in FIELD_STRENGTHS:
        if np.isclose(float(field_strength_t), field):
            return TISSUE_PROPERTIES[field]
    raise ValueError(
        f"field_strength_t must be one of {', '.join(map(str, FIELD_STRENGTHS))} T, got {field_strength_t!r}"
    )


def tissue_arrays(field_strength_t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The table as arrays in :data:`TISSUES` order.

    Returns
    -------
    pd, t1_ms, t2_ms : float64 [tissue]
        Relative proton density; T1 and T2 in milliseconds.
    """
    table = tissue_properties(field_strength_t)
    pd = np.array([table[t].pd for t in TISSUES], dtype=np.float64)
    t1 = np.array([table[t].t1_ms for t in TISSUES], dtype=np.float64)
    t2 = np.array([table[t].t2_ms for t in TISSUES], dtype=np.float64)
    return pd, t1, t2
