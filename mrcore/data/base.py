"""The one interface every data source implements: the embedded phantom and real data alike.

Training, evaluation and the preview read slices only through :class:`SliceSource`, so a user with real
data (NIfTI, fastMRI HDF5, ISMRMRD/MRD) changes one configuration line and nothing else.

Conventions (see ``mrcore.fft``): images are ``[y, x]``, multi-coil k-space ``[coils, ky, kx]`` with the
centred orthonormal FFT, coil maps ``[coils, y, x]`` normalised so that ``sum_c |S_c|^2 == 1`` where
there is signal.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

#: Contrast names understood everywhere (config files, REST, DICOM routing).
CONTRASTS: tuple[str, ...] = ("T1w", "T2w", "PD", "FLAIR")


@dataclass(frozen=True)
class KSpaceSlice:
    """One fully sampled multi-coil slice and its reference.

    Attributes
    ----------
    kspace : complex64 [coils, ky, kx]
        Fully sampled k-space (undersampling is applied later by a mask function).
    target : float32 [y, x]
        Reference magnitude image: root-sum-of-squares of the fully sampled coil images (fastMRI's
        ``reconstruction_rss`` convention).
    maps : complex64 [coils, y, x] or None
        Coil sensitivities where known (simulated) or estimated; ``None`` when the source has none.
    site : str
    subject : str
        Subject identifier inside the site (used for subject-level splits; never patient data).
    contrast : str
    """

    kspace: np.ndarray
    target: np.ndarray
    maps: np.ndarray | None
    site: str
    subject: str
    contrast: str


class SliceSource(ABC):
    """A multi-site collection of 2-D slices.

    Indexing is per site: ``index`` runs over ``range(num_slices(site))``. Sources that hold only
    images (phantom, NIfTI) simulate k-space from them; sources that hold only raw data (fastMRI,
    ISMRMRD) reconstruct images from it.
    """

    @property
    @abstractmethod
    def sites(self) -> tuple[str, ...]:
        """Site (hospital) names in a fixed order."""

    @abstractmethod
    def contrasts(self, site: str) -> tuple[str, ...]:
        """Contrasts available at ``site`` (a subset of :data:`CONTRASTS`)."""

    @abstractmethod
    def num_slices(self, site: str) -> int:
        """Number of slices at ``site``."""

    @abstractmethod
    def subject(self, site: str, index: int) -> str:
        """Subject identifier of slice ``index`` at ``site``."""

    @abstractmethod
    def image(self, site: str, index: int, contrast: str) -> np.ndarray:
        """Magnitude image as the scanner delivers it (with noise): float32 [y, x]."""

    @abstractmethod
    def kspace(self, site: str, index: int, contrast: str, num_coils: int = 8) -> KSpaceSlice:
        """Fully sampled multi-coil k-space of slice ``index``; ``num_coils`` applies to simulated data."""

    # --- helpers shared by every source -------------------------------------------------------
    def check_site(self, site: str) -> None:
        if site not in self.sites:
            raise ValueError(f"unknown site {site!r}; expected one of {', '.join(map(repr, self.sites))}")

    def check_index(self, site: str, index: int) -> None:
        self.check_site(site)
        n = self.num_slices(site)
        if not 0 <= int(index) < n:
            raise ValueError(f"slice index {index} out of range for site {site!r} with {n} slices")

    def check_contrast(self, site: str, contrast: str) -> None:
        self.check_site(site)
        if contrast not in CONTRASTS:
            raise ValueError(f"unknown contrast {contrast!r}; expected one of {', '.join(map(repr, CONTRASTS))}")
        available = self.contrasts(site)
        if contrast not in available:
            raise ValueError(
                f"contrast {contrast!r} is not available at site {site!r}; it has {', '.join(map(repr, available))}"
            )

    def subjects(self, site: str) -> list[str]:
        """Distinct subjects at ``site`` in order of first appearance."""
        seen: dict[str, None] = {}
        for i in range(self.num_slices(site)):
            seen.setdefault(self.subject(site, i), None)
        return list(seen)
