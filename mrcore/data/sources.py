"""Open a data source from configuration: the embedded phantom or real data, one line apart.

.. code-block:: yaml

    kind: phantom        # phantom | nifti | fastmri | mrd
    root: null           # directory of real data (nifti, fastmri, mrd)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from mrcore.data.base import SliceSource

SOURCE_KINDS = ("phantom", "nifti", "fastmri", "mrd")


@dataclass(frozen=True)
class DataConfig:
    """Where training data comes from.

    Phantom keys: ``seed``, ``sites`` (empty = the default hospitals), ``subjects_per_site``,
    ``slices_per_subject``, ``matrix`` [ny, nx], ``cache_dir``, ``lesion_fraction``, ``skull_strip_fraction``,
    ``sequence_jitter`` (see :class:`mrcore.data.phantom.PhantomConfig`).
    Real-data keys: ``root`` (directory), ``layout`` ('ixi' | 'brats' for NIfTI), ``site`` (site name
    for sources whose files carry none), ``matrix`` (NIfTI resampling target).
    """

    kind: Literal["phantom", "nifti", "fastmri", "mrd"] = "phantom"
    seed: int = 0
    sites: tuple[str, ...] = ()
    subjects_per_site: int = 12
    slices_per_subject: int = 40
    matrix: tuple[int, int] = (256, 256)
    cache_dir: Path = Path(".cache/mrdata")
    root: Path | None = None
    layout: Literal["ixi", "brats"] = "ixi"
    site: str | None = None
    lesion_fraction: float = 0.5       # phantom: share of subjects with a lesion (tumour, necrosis, oedema)
    skull_strip_fraction: float = 0.0  # phantom: share of subjects delivered skull-stripped
    sequence_jitter: float = 0.0       # phantom: per-subject TR/TE/TI spread (fraction) around each site's protocol
    extra: dict = field(default_factory=dict)


def open_source(cfg: DataConfig) -> SliceSource:
    """Build the :class:`SliceSource` described by ``cfg``."""
    if cfg.kind == "phantom":
        from mrcore.data.phantom import PhantomConfig, PhantomSource  # deferred: each kind loads only its reader
        from mrcore.data.sites import DEFAULT_SITE_NAMES  # deferred: with the phantom

        sites = tuple(cfg.sites) if cfg.sites else DEFAULT_SITE_NAMES
        return PhantomSource(
            PhantomConfig(
                seed=cfg.seed,
                sites=sites,
                subjects_per_site=cfg.subjects_per_site,
                slices_per_subject=cfg.slices_per_subject,
                matrix=(int(cfg.matrix[0]), int(cfg.matrix[1])),
                cache_dir=Path(cfg.cache_dir),
                lesion_fraction=cfg.lesion_fraction,
                skull_strip_fraction=cfg.skull_strip_fraction,
                sequence_jitter=cfg.sequence_jitter,
                **cfg.extra,
            )
        )
    if cfg.root is None:
        raise ValueError(f"data source kind {cfg.kind!r} needs 'root' (the directory of the files)")
    root = Path(cfg.root)
    if not root.exists():
        raise FileNotFoundError(f"data root {str(root)!r} does not exist")
    if cfg.kind == "nifti":
        from mrcore.data.readers.nifti import NiftiSource  # deferred: nibabel, only for NIfTI data

        kwargs: dict[str, Any] = {"layout": cfg.layout, "matrix": tuple(cfg.matrix), **cfg.extra}
        if cfg.site is not None:
            kwargs["site"] = cfg.site
        return NiftiSource(root, **kwargs)
    if cfg.kind == "fastmri":
        from mrcore.data.readers.fastmri import FastMRISource  # deferred: h5py, only for fastMRI data

        site: dict[str, Any] = {"site": cfg.site} if cfg.site else {}
        return FastMRISource(root, **site, **cfg.extra)
    if cfg.kind == "mrd":
        from mrcore.data.readers.mrd import MRDSource  # deferred: ismrmrd, only for MRD data

        site = {"site": cfg.site} if cfg.site else {}
        return MRDSource(root, **site, **cfg.extra)
    raise ValueError(f"unknown data source kind {cfg.kind!r}; expected one of {', '.join(SOURCE_KINDS)}")
