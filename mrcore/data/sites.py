"""Simulated acquisition sites ("hospitals"): field strength, sequence timing, noise, bias field, resolution.

Each default site differs from the others in ways that produce a real, measurable domain shift:

- field strength (1.5 T or 3 T), which changes tissue T1/T2 (:mod:`mrcore.data.tissues`) and so the
  contrast;
- sequence type and timing: T1w is a short-TR spin echo at some 3 T sites and an inversion-recovery
  "T1-FLAIR" elsewhere. T2w, PD and FLAIR TR/TE differ from site to site. The FLAIR TI nulls CSF at
  that site's field and TR (:func:`mrcore.data.signal.flair_null_ti`);
- thermal noise level ``noise_sigma``: the standard deviation of the real and of the imaginary part
  of the complex Gaussian noise, in the signal units of :mod:`mrcore.data.signal` (fully relaxed
  CSF = 1). The 3 T sites have roughly half the noise of the 1.5 T sites;
- receive/transmit bias: ``bias_strength`` scales a smooth log-field, about the standard deviation of
  its natural log. Each site has its own fixed pattern, and each subject adds a random part;
- resolution: ``resolution_fraction`` is the fraction of the k-space extent acquired (1.0, 0.85 or
  0.7) on the common reconstruction matrix.

The numbers are plausible clinical protocols for illustration, not any real hospital's or vendor's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from mrcore.data.base import CONTRASTS
from mrcore.data.signal import flair_null_ti
from mrcore.data.tissues import FIELD_STRENGTHS, tissue_properties
from mrcore.validate import check_choice, check_positive

#: Sequence kinds understood by the simulator: spin echo and (magnitude) inversion recovery.
SEQUENCE_KINDS: tuple[str, ...] = ("SE", "IR")


@dataclass(frozen=True)
class SequenceParams:
    """Timing of one 2-D sequence.

    Attributes
    ----------
    kind : {'SE', 'IR'}
        Spin echo or magnitude inversion recovery (see :mod:`mrcore.data.signal`).
    tr_ms, te_ms : float
        Repetition and echo time, ms (0 <= te < tr).
    ti_ms : float or None
        Inversion time, ms (0 < ti < tr). Required for 'IR' and must be ``None`` for 'SE'.
    """

    kind: str
    tr_ms: float
    te_ms: float
    ti_ms: float | None = None

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, SEQUENCE_KINDS)
        check_positive("tr_ms", self.tr_ms)
        check_positive("te_ms", self.te_ms, strict=False)
        if self.te_ms >= self.tr_ms:
            raise ValueError(f"te_ms must be shorter than tr_ms, got te_ms={self.te_ms!r}, tr_ms={self.tr_ms!r}")
        if self.kind == "IR":
            if self.ti_ms is None:
                raise ValueError("ti_ms is required for an 'IR' sequence")
            check_positive("ti_ms", self.ti_ms)
            if self.ti_ms >= self.tr_ms:
                raise ValueError(f"ti_ms must be shorter than tr_ms, got ti_ms={self.ti_ms!r}, tr_ms={self.tr_ms!r}")
        elif self.ti_ms is not None:
            raise ValueError(f"ti_ms must be None for an 'SE' sequence, got {self.ti_ms!r}")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "tr_ms": self.tr_ms, "te_ms": self.te_ms, "ti_ms": self.ti_ms}


@dataclass(frozen=True)
class SiteProtocol:
    """One simulated site.

    Attributes
    ----------
    name : str
        Site name, e.g. ``'hospital-a'``.
    field_strength_t : float
        Main field, tesla (one of :data:`mrcore.data.tissues.FIELD_STRENGTHS`).
    sequences : Mapping[str, SequenceParams]
        Contrast name (from :data:`mrcore.data.base.CONTRASTS`) to sequence. Stored read-only.
    noise_sigma : float
        Standard deviation of each of the real and imaginary parts of the complex Gaussian thermal
        noise, in the signal units of :mod:`mrcore.data.signal`. It applies to the image domain and
        per coil in k-space, since the FFT is orthonormal.
    bias_strength : float
        Scale of the smooth multiplicative bias field, about the standard deviation of ``log(bias)``
        (>= 0; 0 disables it).
    resolution_fraction : float
        Fraction of the k-space extent acquired along each axis, in (0, 1].
    description : str
        Free text for tables and plots.
    """

    name: str
    field_strength_t: float
    sequences: Mapping[str, SequenceParams] = field(hash=False)
    noise_sigma: float
    bias_strength: float
    resolution_fraction: float
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        tissue_properties(self.field_strength_t)  # raises for an unsupported field
        if not isinstance(self.sequences, Mapping) or not self.sequences:
            raise ValueError(
                f"sequences must be a non-empty mapping contrast -> SequenceParams, got {self.sequences!r}"
            )
        for contrast, seq in self.sequences.items():
            check_choice("contrast", contrast, CONTRASTS)
            if not isinstance(seq, SequenceParams):
                raise ValueError(f"sequences[{contrast!r}] must be a SequenceParams, got {type(seq).__name__}")
        ordered = {c: self.sequences[c] for c in CONTRASTS if c in self.sequences}
        object.__setattr__(self, "sequences", MappingProxyType(ordered))
        check_positive("noise_sigma", self.noise_sigma, strict=False)
        check_positive("bias_strength", self.bias_strength, strict=False)
        if not (math.isfinite(self.resolution_fraction) and 0 < self.resolution_fraction <= 1):
            raise ValueError(f"resolution_fraction must be in (0, 1], got {self.resolution_fraction!r}")

    @property
    def contrasts(self) -> tuple[str, ...]:
        """Contrasts this site acquires, in :data:`CONTRASTS` order."""
        return tuple(self.sequences)

    def to_dict(self) -> dict:
        """JSON-serialisable description (used for cache keys and sidecars)."""
        return {
            "name": self.name,
            "field_strength_t": self.field_strength_t,
            "sequences": {c: s.to_dict() for c, s in self.sequences.items()},
            "noise_sigma": self.noise_sigma,
            "bias_strength": self.bias_strength,
            "resolution_fraction": self.resolution_fraction,
        }


def _flair(field_t: float, tr: float, te: float) -> SequenceParams:
    """FLAIR whose TI (rounded to 1 ms) nulls CSF at ``field_t`` and ``tr``."""
    t1_csf = tissue_properties(field_t)["csf"].t1_ms
    return SequenceParams("IR", tr, te, float(round(flair_null_ti(t1_csf, tr))))


def _site(name, field_t, t1w, t2w, pd, flair, noise, bias, res, description) -> SiteProtocol:
    seqs = {
        "T1w": SequenceParams(*(float(v) if not isinstance(v, str) else v for v in t1w)),
        "T2w": SequenceParams("SE", *map(float, t2w)),
        "PD": SequenceParams("SE", *map(float, pd)),
        "FLAIR": _flair(field_t, *map(float, flair)),
    }
    return SiteProtocol(name, field_t, seqs, noise, bias, res, description)


# name, B0 (T), T1w (kind, TR, TE[, TI]) ms, T2w (TR, TE), PD (TR, TE), FLAIR (TR, TE), noise sigma, bias, resolution
# (times in ms; FLAIR TI is computed to null CSF)
_TABLE = (
    ("hospital-a", 3.0, ("SE", 600, 10), (5000, 100), (5500, 35), (9000, 120), 0.006, 0.10, 1.00),
    ("hospital-b", 1.5, ("IR", 2000, 10, 800), (4500, 100), (6000, 35), (8000, 110), 0.012, 0.15, 0.85),
    ("hospital-c", 3.0, ("IR", 2000, 10, 900), (6000, 110), (6000, 32), (10000, 125), 0.008, 0.25, 0.70),
    ("hospital-d", 1.5, ("IR", 1900, 12, 700), (4000, 90), (6500, 30), (9000, 100), 0.018, 0.12, 1.00),
    ("hospital-e", 3.0, ("SE", 500, 9), (4500, 95), (5000, 38), (8000, 110), 0.005, 0.25, 0.85),
    ("hospital-f", 1.5, ("IR", 2100, 9, 850), (5000, 110), (5500, 32), (10000, 140), 0.015, 0.08, 0.70),
    ("hospital-g", 3.0, ("IR", 2300, 11, 1000), (5500, 105), (6000, 30), (9500, 130), 0.007, 0.20, 1.00),
    ("hospital-h", 1.5, ("IR", 2000, 14, 750), (4200, 95), (5200, 35), (8500, 120), 0.022, 0.12, 0.85),
)


#: The default sites by name, in a fixed order (``hospital-a`` ... ``hospital-h``).
DEFAULT_SITES: Mapping[str, SiteProtocol] = MappingProxyType(
    {
        row[0]: _site(*row, f"{row[1]:g} T, resolution {row[8]:.2f}, noise sigma {row[6]:g}, bias {row[7]:g}")
        for row in _TABLE
    }
)

#: Every known site name, in order (8 sites, for experiments with more sites).
SITE_NAMES: tuple[str, ...] = tuple(DEFAULT_SITES)

#: The four sites a phantom data set uses unless told otherwise (two at 1.5 T, two at 3 T).
DEFAULT_SITE_NAMES: tuple[str, ...] = SITE_NAMES[:4]

assert {s.field_strength_t for s in DEFAULT_SITES.values()} == set(FIELD_STRENGTHS)


def get_site(name: str) -> SiteProtocol:
    """The default site called ``name``.

    Raises
    ------
    ValueError
        If ``name`` is not a default site; the message lists the known names.
    """
    if name not in DEFAULT_SITES:
        raise ValueError(f"unknown site {name!r}; expected one of {', '.join(map(repr, SITE_NAMES))}")
    return DEFAULT_SITES[name]
