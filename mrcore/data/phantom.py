"""The embedded, offline, multi-site brain MRI data set: physics-based T1w/T2w/PD/FLAIR slices of synthetic subjects.

Per site (:mod:`mrcore.data.sites`) and subject, the tissue fractions of :mod:`mrcore.data.anatomy` are
turned into images by the signal equations of :mod:`mrcore.data.signal`, using the tissue table of
:mod:`mrcore.data.tissues` at the site's field strength. Each pixel is the partial-volume sum over its
tissues. The image is then multiplied by a smooth bias field (a fixed pattern per site plus a random
part per subject, of the site's strength) and band-limited to the site's acquired k-space extent.
The result is cached on disk. On access, a smooth random phase is applied, then thermal noise of the
site's sigma: :meth:`PhantomSource.image` returns the Rician magnitude, :meth:`PhantomSource.kspace`
noisy multi-coil k-space.

Everything is deterministic. Each random draw is seeded from
``numpy.random.SeedSequence((seed, site_number, ...))``, where ``site_number`` is the CRC-32 of the site
name. The same configuration gives bit-identical arrays in every process and run on a given machine.
(Transcendental functions may differ in the last bit between CPU types.)

Anatomy comes from the MNI152 ICBM 2009a template as shipped by nilearn. Copyright (C) 1993-2009 Louis
Collins, McConnell Brain Imaging Centre, Montreal Neurological Institute, McGill University. See
``NOTICE_MNI152.txt`` in this directory for the full notice and the references to cite (Fonov et al.,
NeuroImage 2011 and 2009). No patient data is used or produced.

Cache layout: one ``phantom-<site>-<key>.npy`` per site, float16 ``[slice, contrast, y, x]``. It holds the
noise-free, bias-weighted, resolution-limited real image before phase is applied; the phase is
regenerated from its seed. A JSON sidecar ``phantom-<site>-<key>.json`` records the configuration and
:data:`FORMAT_VERSION`. ``key`` hashes everything that determines the data. Both files are written to a
temporary name and renamed, so an interrupted run never leaves a corrupt entry, and the sidecar is
written last. Arrays are memory-mapped on load. The default data set (4 sites x 480 slices x 4
contrasts at 256 x 256) takes about 1 GB.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import time
import zlib
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from mrcore.coils import simulate_coil_maps
from mrcore.data.anatomy import (
    TEMPLATE_ID,
    SliceGrid,
    TissueTemplate,
    load_template,
    random_subject,
    sample_slices,
    slice_positions_mm,
    smooth_field,
)
from mrcore.data.base import CONTRASTS, KSpaceSlice, SliceSource
from mrcore.data.kspace_sim import simulate_kspace, smooth_phase, truncate_resolution
from mrcore.data.lesions import LESION_TISSUES, Lesion, apply_lesions, lesion_arrays, lesion_fractions, random_lesion
from mrcore.data.signal import flair_null_ti, inversion_recovery, spin_echo
from mrcore.data.sites import DEFAULT_SITE_NAMES, SITE_NAMES, SequenceParams, SiteProtocol, get_site
from mrcore.data.tissues import TISSUES, tissue_arrays, tissue_properties
from mrcore.durable import durable_path
from mrcore.fft import ifft2c

#: Bump whenever the generator changes what it writes; old cache entries are then ignored.
FORMAT_VERSION = 2

#: Maximum absolute image phase, radians, and its polynomial order.
PHASE_MAX_RAD = float(np.pi)
PHASE_ORDER = 2

# Stream tags: every random draw gets its own SeedSequence entropy (seed, site_number, ..., tag).
_TAG_ANATOMY, _TAG_BIAS_SITE, _TAG_BIAS_SUBJECT, _TAG_PHASE, _TAG_IMAGE_NOISE, _TAG_KSPACE_NOISE, _TAG_COILS = range(
    1, 8
)
_TAG_LESION, _TAG_STRIP, _TAG_SEQUENCE = range(8, 11)
_NON_BRAIN = tuple(TISSUES.index(t) for t in ("fat", "muscle", "bone"))
_BIAS_GRID = 4
_BIAS_HALF_WIDTH_MM = 130.0


def site_number(site: str) -> int:
    """Stable number of a site name (CRC-32 of its UTF-8 bytes), used in seeds. Never Python's ``hash()``."""
    return zlib.crc32(site.encode("utf-8"))


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


@dataclass(frozen=True)
class PhantomConfig:
    """What to generate.

    Attributes
    ----------
    seed : int
        Master seed (>= 0). Everything random derives from it.
    sites : tuple of str
        Site names from :data:`mrcore.data.sites.SITE_NAMES`, distinct; defaults to the four
        :data:`mrcore.data.sites.DEFAULT_SITE_NAMES`.
    subjects_per_site : int
        Synthetic subjects per site (>= 1).
    slices_per_subject : int
        Axial slices per subject (>= 1), spread through the brain.
    matrix : (ny, nx)
        Image size, pixels (each 16 to 1024).
    fov_mm : (fy, fx)
        Field of view, mm (each in (0, 1000]); 240 mm holds the whole head.
    cache_dir : pathlib.Path or None
        Directory of the on-disk cache; ``None`` keeps generated data in memory only.
    lesion_fraction : float
        Share of subjects (each drawn at random, seeded) with a brain lesion (tumour core, necrosis,
        oedema: :mod:`mrcore.data.lesions`), in [0, 1]; a quarter of those get a second one. 0: none.
    skull_strip_fraction : float
        Share of subjects delivered skull-stripped (fat, muscle and bone removed, as real pre-processed
        series are), in [0, 1].
    sequence_jitter : float
        Per subject, TR, TE and TI of every sequence are scaled by U(1 - j, 1 + j) (FLAIR TI re-computed to
        null CSF), so that the contrast varies within a site as between real protocols; in [0, 0.5).
    """

    seed: int = 0
    sites: tuple[str, ...] = DEFAULT_SITE_NAMES
    subjects_per_site: int = 12
    slices_per_subject: int = 40
    matrix: tuple[int, int] = (256, 256)
    fov_mm: tuple[float, float] = (240.0, 240.0)
    cache_dir: Path | None = Path(".cache/mrdata")
    lesion_fraction: float = 0.5
    skull_strip_fraction: float = 0.0
    sequence_jitter: float = 0.0

    def __post_init__(self) -> None:
        for name, top in (("lesion_fraction", 1.0), ("skull_strip_fraction", 1.0), ("sequence_jitter", 0.49)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0 <= value <= top:
                raise ValueError(f"PhantomConfig.{name} must be a number in [0, {top:g}], got {value!r}")
            object.__setattr__(self, name, float(value))
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"PhantomConfig.seed must be an int >= 0, got {self.seed!r}")
        if isinstance(self.sites, str) or not hasattr(self.sites, "__iter__"):
            raise ValueError(f"PhantomConfig.sites must be a sequence of site names, got {self.sites!r}")
        sites = tuple(self.sites)
        if not sites:
            raise ValueError("PhantomConfig.sites must name at least one site")
        for s in sites:
            if s not in SITE_NAMES:
                raise ValueError(
                    f"PhantomConfig.sites: unknown site {s!r}; expected one of {', '.join(map(repr, SITE_NAMES))}"
                )
        if len(set(sites)) != len(sites):
            raise ValueError(f"PhantomConfig.sites must be distinct, got {sites!r}")
        object.__setattr__(self, "sites", sites)
        for name in ("subjects_per_site", "slices_per_subject"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"PhantomConfig.{name} must be an int >= 1, got {value!r}")
            object.__setattr__(self, name, int(value))
        object.__setattr__(self, "seed", int(self.seed))
        try:
            matrix = tuple(self.matrix)
        except TypeError:
            matrix = ()
        if len(matrix) != 2 or not all(_is_int(m) and 16 <= m <= 1024 for m in matrix):
            raise ValueError(f"PhantomConfig.matrix must be two ints (ny, nx) in [16, 1024], got {self.matrix!r}")
        object.__setattr__(self, "matrix", (int(matrix[0]), int(matrix[1])))
        try:
            fov = tuple(float(f) for f in self.fov_mm)
        except (TypeError, ValueError):
            fov = ()
        if len(fov) != 2 or not all(np.isfinite(f) and 0 < f <= 1000 for f in fov):
            raise ValueError(f"PhantomConfig.fov_mm must be two numbers (fy, fx) in (0, 1000] mm, got {self.fov_mm!r}")
        object.__setattr__(self, "fov_mm", fov)
        if self.cache_dir is not None:
            if not isinstance(self.cache_dir, (str, os.PathLike)) or str(self.cache_dir) == "":
                raise ValueError(f"PhantomConfig.cache_dir must be a path or None, got {self.cache_dir!r}")
            object.__setattr__(self, "cache_dir", Path(self.cache_dir))

    @property
    def slices_per_site(self) -> int:
        return self.subjects_per_site * self.slices_per_subject

    def site_key(self, site: str) -> str:
        """Hash of everything that determines ``site``'s cached data (16 hex digits)."""
        return hashlib.sha256(json.dumps(_key_payload(self, get_site(site)), sort_keys=True).encode()).hexdigest()[:16]


def _key_payload(config: PhantomConfig, protocol: SiteProtocol) -> dict:
    try:
        nilearn_version = metadata.version("nilearn")
    except metadata.PackageNotFoundError:  # pragma: no cover - nilearn is a dependency
        nilearn_version = "unknown"
    return {
        "format_version": FORMAT_VERSION,
        "seed": config.seed,
        "protocol": protocol.to_dict(),
        "subjects_per_site": config.subjects_per_site,
        "slices_per_subject": config.slices_per_subject,
        "matrix": list(config.matrix),
        "fov_mm": list(config.fov_mm),
        "template": TEMPLATE_ID,
        "nilearn": nilearn_version,
        "lesion_fraction": config.lesion_fraction,
        "skull_strip_fraction": config.skull_strip_fraction,
        "sequence_jitter": config.sequence_jitter,
    }


# --- generation ---------------------------------------------------------------------------------


def _seq(*entropy: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(tuple(int(e) for e in entropy))


def sequence_signals(protocol: SiteProtocol) -> np.ndarray:
    """Pure-tissue signal of every contrast of ``protocol``.

    Returns
    -------
    float64 [contrast, tissue]
        Contrasts in ``protocol.contrasts`` order, tissues in :data:`mrcore.data.tissues.TISSUES` order,
        in units of fully relaxed CSF magnetisation.
    """
    pd, t1, t2 = tissue_arrays(protocol.field_strength_t)
    rows = []
    for seq in protocol.sequences.values():
        rows.append(_signal(seq, pd, t1, t2))
    return np.stack(rows)


def lesion_sequence_signals(protocol: SiteProtocol) -> np.ndarray:
    """Pure-lesion-tissue signal of every contrast of ``protocol``: float64 [contrast, lesion] in
    :data:`mrcore.data.lesions.LESION_TISSUES` order (the same units as :func:`sequence_signals`)."""
    pd, t1, t2 = lesion_arrays(protocol.field_strength_t)
    return np.stack([_signal(seq, pd, t1, t2) for seq in protocol.sequences.values()])


def _signal(seq: SequenceParams, pd, t1, t2) -> np.ndarray:
    if seq.kind == "SE":
        return spin_echo(pd, t1, t2, seq.tr_ms, seq.te_ms)
    return inversion_recovery(pd, t1, t2, seq.tr_ms, seq.te_ms, seq.ti_ms)


def _bias_coeffs(*entropy: int) -> np.ndarray:
    grid = np.random.default_rng(_seq(*entropy)).standard_normal((_BIAS_GRID,) * 3)
    return ndimage.spline_filter(grid, order=3, mode="nearest")


def bias_field(config: PhantomConfig, site: str, subject: int, grid: SliceGrid) -> np.ndarray:
    """Multiplicative bias field of ``subject`` at ``site`` on ``grid``.

    ``exp(strength * (f_site + f_subject) / sqrt(2))``, where ``f_site`` (fixed per site) and
    ``f_subject`` are smooth unit-variance random fields over the scanner coordinates.

    Returns
    -------
    float32 [n, ny, nx]
    """
    strength = get_site(site).bias_strength
    sn = site_number(site)
    f = smooth_field(_bias_coeffs(config.seed, sn, _TAG_BIAS_SITE), _BIAS_HALF_WIDTH_MM, grid.points_mm)
    f += smooth_field(_bias_coeffs(config.seed, sn, subject, _TAG_BIAS_SUBJECT), _BIAS_HALF_WIDTH_MM, grid.points_mm)
    return grid.upsample(np.exp(strength / np.sqrt(2.0) * f)).astype(np.float32)


def _subject_setup(config: PhantomConfig, site: str, subject: int, template: TissueTemplate, slices=None):
    anatomy = random_subject(np.random.default_rng(_seq(config.seed, site_number(site), subject, _TAG_ANATOMY)))
    z = slice_positions_mm(config.slices_per_subject, template, anatomy.slice_offset_mm)
    if slices is not None:
        z = z[slices]
    return anatomy, SliceGrid.axial(config.matrix, config.fov_mm, z)


def subject_lesions(config: PhantomConfig, site: str, subject: int, template: TissueTemplate) -> tuple[Lesion, ...]:
    """The lesions of ``subject`` at ``site`` (none, one or two; deterministic per seed)."""
    rng = np.random.default_rng(_seq(config.seed, site_number(site), subject, _TAG_LESION))
    has, second = rng.random(2)
    if has >= config.lesion_fraction:
        return ()
    count = 2 if second < 0.25 else 1
    return tuple(random_lesion(rng, template.brain_z_mm) for _ in range(count))


def skull_stripped(config: PhantomConfig, site: str, subject: int) -> bool:
    """Whether ``subject`` at ``site`` is delivered skull-stripped (deterministic per seed)."""
    rng = np.random.default_rng(_seq(config.seed, site_number(site), subject, _TAG_STRIP))
    return bool(rng.random() < config.skull_strip_fraction)


def subject_protocol(config: PhantomConfig, site: str, subject: int) -> SiteProtocol:
    """``site``'s protocol with TR/TE/TI of ``subject`` jittered by ``config.sequence_jitter`` (FLAIR TI
    re-computed to null CSF at the jittered TR); the site's own protocol when the jitter is 0."""
    protocol = get_site(site)
    j = config.sequence_jitter
    if j == 0:
        return protocol
    rng = np.random.default_rng(_seq(config.seed, site_number(site), subject, _TAG_SEQUENCE))
    seqs = {}
    t1_csf = tissue_properties(protocol.field_strength_t)["csf"].t1_ms
    for contrast, seq in protocol.sequences.items():
        f_tr, f_te, f_ti = rng.uniform(1.0 - j, 1.0 + j, 3)
        tr, te = seq.tr_ms * f_tr, seq.te_ms * f_te
        ti = None
        if seq.kind == "IR":
            ti = float(flair_null_ti(t1_csf, tr)) if contrast == "FLAIR" else min(float(seq.ti_ms) * f_ti, 0.9 * tr)
        seqs[contrast] = SequenceParams(seq.kind, float(tr), float(min(te, 0.5 * tr)), ti)
    return SiteProtocol(protocol.name, protocol.field_strength_t, seqs, protocol.noise_sigma, protocol.bias_strength,
                        protocol.resolution_fraction, protocol.description)


def _subject_fractions(config: PhantomConfig, site: str, subject: int, anatomy, grid: SliceGrid,
                       tpl: TissueTemplate) -> tuple[np.ndarray, np.ndarray]:
    """Tissue and lesion fractions ``[tissue, n, y, x]``, ``[lesion, n, y, x]`` of ``subject`` on ``grid``."""
    fractions = sample_slices(anatomy, grid, tpl)
    if skull_stripped(config, site, subject):
        fractions[list(_NON_BRAIN)] = 0.0
    lesions = subject_lesions(config, site, subject, tpl)
    if not lesions:
        return fractions, np.zeros((len(LESION_TISSUES), *fractions.shape[1:]), dtype=np.float32)
    return apply_lesions(fractions, lesion_fractions(lesions, grid))


def generate_subject(
    config: PhantomConfig, site: str, subject: int, template: TissueTemplate | None = None
) -> np.ndarray:
    """Noise-free images of every slice and contrast of one subject, before phase.

    Returns
    -------
    float32 [slice, contrast, y, x]
        Real-valued (band-limiting may ring slightly below zero), in units of fully relaxed CSF
        magnetisation. Contrasts are in the site's :attr:`~mrcore.data.sites.SiteProtocol.contrasts` order.
    """
    tpl = template if template is not None else load_template()
    protocol = subject_protocol(config, site, subject)
    anatomy, grid = _subject_setup(config, site, subject, tpl)
    fractions, lesions = _subject_fractions(config, site, subject, anatomy, grid, tpl)  # [tissue|lesion, n, y, x]
    bias = bias_field(config, site, subject, grid)
    signals = sequence_signals(protocol).astype(np.float32)
    lesion_signals = lesion_sequence_signals(protocol).astype(np.float32)
    n = fractions.shape[1]
    out = np.empty((n, signals.shape[0], *config.matrix), dtype=np.float32)
    for c in range(signals.shape[0]):
        acc = np.zeros((n, *config.matrix), dtype=np.float32)
        for t in range(len(TISSUES)):  # fixed order, element-wise: bit-reproducible
            acc += signals[c, t] * fractions[t]
        for t in range(len(LESION_TISSUES)):
            acc += lesion_signals[c, t] * lesions[t]
        out[:, c] = acc * bias
    return truncate_resolution(out, protocol.resolution_fraction)


def _generate_site(config: PhantomConfig, site: str, out: np.ndarray, progress: bool | None) -> None:
    tpl = load_template()
    spp, sps = config.subjects_per_site, config.slices_per_subject
    disable = None if progress is None else not progress  # None: tqdm shows the bar only on a terminal
    with tqdm(total=spp * sps, desc=f"phantom {site}", unit="slice", disable=disable) as bar:
        for subject in range(spp):
            out[subject * sps : (subject + 1) * sps] = generate_subject(config, site, subject, tpl)
            bar.update(sps)


# --- cache -------------------------------------------------------------------------------------


def _host() -> str:
    return socket.gethostname().replace(".", "-") or "localhost"


def _tmp_name(path: Path) -> Path:
    """A unique temporary name next to ``path``: ``<name>.<host>.<pid>.<random>.tmp``."""
    return path.with_name(f"{path.name}.{_host()}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _reap_stale_tmp(path: Path) -> None:
    """Delete temporary files of ``path`` left by dead processes on this host (an interrupted run)."""
    host = _host()
    for tmp in path.parent.glob(f"{path.name}.*.tmp"):
        parts = tmp.name[len(path.name) + 1 :].split(".")
        if len(parts) != 4 or parts[0] != host or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except PermissionError:
            pass


def _write_json_atomic(path: Path, payload: dict) -> None:
    with durable_path(path, tmp=_tmp_name(path)) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))


class PhantomSource(SliceSource):
    """The multi-site phantom as a :class:`~mrcore.data.base.SliceSource`.

    Data for a site is generated (or loaded from the cache) on first use; :meth:`prepare` does it for
    every site at once. Slice ``index`` of a site belongs to subject ``index // slices_per_subject``,
    with its slices ordered inferior to superior.

    Parameters
    ----------
    config : PhantomConfig, optional
        Defaults to ``PhantomConfig()`` (4 sites x 12 subjects x 40 slices, 256 x 256).
    progress : bool or None
        Show a tqdm bar while generating: ``None`` (default) only on a terminal.
    """

    def __init__(self, config: PhantomConfig | None = None, *, progress: bool | None = None) -> None:
        if config is None:
            config = PhantomConfig()
        if not isinstance(config, PhantomConfig):
            raise ValueError(f"config must be a PhantomConfig, got {type(config).__name__}")
        self.config = config
        self._progress = progress
        self._data: dict[str, np.ndarray] = {}

    # --- SliceSource --------------------------------------------------------------------------
    @property
    def sites(self) -> tuple[str, ...]:
        return self.config.sites

    def contrasts(self, site: str) -> tuple[str, ...]:
        self.check_site(site)
        return get_site(site).contrasts

    def num_slices(self, site: str) -> int:
        self.check_site(site)
        return self.config.slices_per_site

    def subject(self, site: str, index: int) -> str:
        self.check_index(site, index)
        return f"{site}-sub{int(index) // self.config.slices_per_subject:03d}"

    def image(self, site: str, index: int, contrast: str) -> np.ndarray:
        """Magnitude image with Rician noise: ``|clean + n|``, ``n`` complex Gaussian of the site's sigma.

        Returns
        -------
        float32 [y, x]
            Units of fully relaxed CSF magnetisation. The noise is deterministic per
            (seed, site, index, contrast).
        """
        clean = self.clean_image(site, index, contrast)
        sigma = np.float32(get_site(site).noise_sigma)
        rng = np.random.default_rng(self._entropy(site, index, contrast, _TAG_IMAGE_NOISE))
        noise = rng.standard_normal((2, *clean.shape), dtype=np.float32)
        return np.abs(clean + sigma * (noise[0] + 1j * noise[1])).astype(np.float32)

    def kspace(self, site: str, index: int, contrast: str, num_coils: int = 8) -> KSpaceSlice:
        """Fully sampled noisy multi-coil k-space of ``clean_image`` (see :func:`simulate_kspace`).

        Coil maps (:func:`mrcore.coils.simulate_coil_maps`) are deterministic per (seed, site, index);
        the noise (the site's sigma per coil, independent coils) per (seed, site, index, contrast).
        ``target`` is the root-sum-of-squares of the inverse FFT of the returned k-space, noise
        included (fastMRI's convention). Its noise floor therefore grows with ``num_coils``.

        Parameters
        ----------
        num_coils : int
            Number of simulated receive coils, 1 to 64.

        Returns
        -------
        KSpaceSlice
            ``kspace`` complex64 [coils, ky, kx], ``target`` float32 [y, x], ``maps`` complex64 [coils, y, x].
        """
        if not _is_int(num_coils) or not 1 <= num_coils <= 64:
            raise ValueError(f"num_coils must be an int in [1, 64], got {num_coils!r}")
        clean = self.clean_image(site, index, contrast)
        coil_seed = int(_seq(*self._entropy(site, index, None, _TAG_COILS)).generate_state(1)[0])
        maps = _coil_maps(clean.shape, int(num_coils), coil_seed).copy()
        rng = np.random.default_rng(self._entropy(site, index, contrast, _TAG_KSPACE_NOISE))
        kspace = simulate_kspace(clean, maps, get_site(site).noise_sigma, rng)
        target = np.sqrt(np.sum(np.abs(ifft2c(kspace)) ** 2, axis=0)).astype(np.float32)
        return KSpaceSlice(kspace, target, maps, site, self.subject(site, index), contrast)

    # --- phantom-specific ---------------------------------------------------------------------
    def protocol(self, site: str) -> SiteProtocol:
        """Acquisition protocol of ``site``."""
        self.check_site(site)
        return get_site(site)

    def clean_image(self, site: str, index: int, contrast: str) -> np.ndarray:
        """Noise-free complex image: cached magnitude times ``exp(1j * smooth_phase)``.

        Returns
        -------
        complex64 [y, x]
        """
        self.check_index(site, index)
        self.check_contrast(site, contrast)
        stored = np.asarray(self.site_data(site)[int(index), self.contrasts(site).index(contrast)], dtype=np.float32)
        phase = smooth_phase(
            stored.shape, self._entropy(site, index, contrast, _TAG_PHASE), order=PHASE_ORDER, max_rad=PHASE_MAX_RAD
        )
        return (stored * np.exp(1j * phase)).astype(np.complex64)

    def tissue_maps(self, site: str, index: int) -> np.ndarray:
        """Tissue fractions of slice ``index`` (recomputed from the template, at full resolution, no bias).

        Returns
        -------
        float32 [tissue, y, x]
            In :data:`mrcore.data.tissues.TISSUES` order.
        """
        return self.tissue_and_lesion_maps(site, index)[0]

    def lesion_maps(self, site: str, index: int) -> np.ndarray:
        """Lesion-tissue fractions of slice ``index``: float32 [lesion, y, x] in
        :data:`mrcore.data.lesions.LESION_TISSUES` order (all zero for a subject without a lesion)."""
        return self.tissue_and_lesion_maps(site, index)[1]

    def tissue_and_lesion_maps(self, site: str, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Tissue fractions ``[tissue, y, x]`` (lesion tissue taken out of the brain tissues, non-brain tissue
        removed for a skull-stripped subject) and lesion fractions ``[lesion, y, x]`` of slice ``index``."""
        self.check_index(site, index)
        tpl = load_template()
        sps = self.config.slices_per_subject
        subject, k = divmod(int(index), sps)
        anatomy, grid = _subject_setup(self.config, site, subject, tpl, slices=slice(k, k + 1))
        tissues, lesions = _subject_fractions(self.config, site, subject, anatomy, grid, tpl)
        return tissues[:, 0], lesions[:, 0]

    def prepare(self) -> None:
        """Generate (or load) every site now rather than on first use."""
        for site in self.sites:
            self.site_data(site)

    def cache_paths(self, site: str) -> tuple[Path, Path] | None:
        """``(array .npy, sidecar .json)`` of ``site``'s cache entry; ``None`` without a cache directory."""
        self.check_site(site)
        if self.config.cache_dir is None:
            return None
        stem = f"phantom-{site}-{self.config.site_key(site)}"
        return self.config.cache_dir / f"{stem}.npy", self.config.cache_dir / f"{stem}.json"

    def site_data(self, site: str) -> np.ndarray:
        """The cached noise-free images of ``site`` before phase, generating them if needed.

        Returns
        -------
        float16 [slice, contrast, y, x]
            Read-only (memory-mapped when cached on disk).
        """
        self.check_site(site)
        if site not in self._data:
            self._data[site] = self._load_or_generate(site)
        return self._data[site]

    # --- internals ----------------------------------------------------------------------------
    def _entropy(self, site: str, index: int, contrast: str | None, tag: int) -> tuple[int, ...]:
        c = -1 if contrast is None else CONTRASTS.index(contrast)
        return (self.config.seed, site_number(site), int(index), c + 1, tag)

    def _shape(self, site: str) -> tuple[int, ...]:
        return (self.config.slices_per_site, len(get_site(site).contrasts), *self.config.matrix)

    def _sidecar(self, site: str) -> dict:
        return {
            **_key_payload(self.config, get_site(site)),
            "key": self.config.site_key(site),
            "site": site,
            "contrasts": list(get_site(site).contrasts),
            "layout": "[slice, contrast, y, x]",
            "shape": list(self._shape(site)),
            "dtype": "float16",
            "content": "noise-free, bias-weighted, resolution-limited real image before phase; "
            "units of fully relaxed CSF magnetisation",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def _load_or_generate(self, site: str) -> np.ndarray:
        shape = self._shape(site)
        paths = self.cache_paths(site)
        if paths is None:
            data = np.empty(shape, dtype=np.float16)
            _generate_site(self.config, site, data, self._progress)
            data.setflags(write=False)
            return data
        npy, sidecar = paths
        cached = self._try_load(site, npy, sidecar, shape)
        if cached is not None:
            return cached
        npy.parent.mkdir(parents=True, exist_ok=True)
        _reap_stale_tmp(npy)
        _reap_stale_tmp(sidecar)
        with durable_path(npy, tmp=_tmp_name(npy)) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
            _generate_site(self.config, site, out, self._progress)
            out.flush()
            del out
        _write_json_atomic(sidecar, self._sidecar(site))
        return np.load(npy, mmap_mode="r")

    def _try_load(self, site: str, npy: Path, sidecar: Path, shape: tuple[int, ...]) -> np.ndarray | None:
        if not (npy.is_file() and sidecar.is_file()):
            return None
        try:
            meta = json.loads(sidecar.read_text())
            if meta.get("format_version") != FORMAT_VERSION or meta.get("key") != self.config.site_key(site):
                return None
            data = np.load(npy, mmap_mode="r")
        except (OSError, ValueError):
            return None
        if data.shape != shape or data.dtype != np.float16:
            return None
        return data


@lru_cache(maxsize=8)
def _coil_maps(shape: tuple[int, int], num_coils: int, seed: int) -> np.ndarray:
    maps = simulate_coil_maps(shape, num_coils, seed=seed)
    maps.setflags(write=False)
    return maps
