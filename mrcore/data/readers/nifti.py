"""NIfTI magnitude volumes (IXI, BraTS) as :class:`~mrcore.data.base.SliceSource`, with simulated k-space.

Layouts
-------
``layout="ixi"``
    Files ``IXI002-Guys-0828-T1.nii.gz`` anywhere under ``root`` (e.g. the IXI-T1/, IXI-T2/, IXI-PD/
    folders of the distribution). Subject ``IXI002``; site from the name (``Guys``, ``HH``, ``IOP``);
    contrast ``T1 -> T1w``, ``T2 -> T2w``, ``PD -> PD`` (IXI has no FLAIR; MRA and DTI files are ignored).
    ``site=`` (optional) keeps only that IXI site.
``layout="brats"``
    One folder per subject, ``BraTS20_Training_001/BraTS20_Training_001_{t1,t1ce,t2,flair}.nii.gz``
    (also the 2023 suffixes ``t1n``, ``t1c``, ``t2w``, ``t2f``); subject = the name before the suffix;
    ``t1 -> T1w``, ``t2 -> T2w``, ``flair -> FLAIR``. **t1ce (post-contrast T1) is ignored** by default;
    ``t1ce_as_t1w=True`` uses it as ``T1w`` only for subjects that have no plain ``t1``. BraTS names carry
    no site: every subject is at ``site`` (default ``"brats"``). Segmentations (``seg``) are ignored.

Conventions and decisions
-------------------------
* Contrasts: ``contrasts(site)`` is the union of the contrasts found at the site (or the ``contrasts``
  argument). Subjects that lack one of them are left out (listed in :attr:`NiftiSource.skipped`), so every
  slice index exists in every contrast of its site.
* Geometry: the reference volume of a subject is its first available contrast in the order of
  :data:`~mrcore.data.base.CONTRASTS` (T1w, T2w, PD, FLAIR) or ``reference_contrast``. It is reoriented to
  RAS with ``nibabel.as_closest_canonical``. Every other contrast of the subject whose grid (shape and
  affine) differs is resampled onto that canonical reference grid with
  ``nibabel.processing.resample_from_to`` (trilinear, zero outside), using the affines, so slice ``i`` is
  the same anatomy in every contrast (IXI: T1 is sagittal 256x256x150, T2/PD axial 256x256x130; with the
  default order the T2/PD volumes are resampled onto the T1 grid). Co-registered contrasts (BraTS) are
  only reoriented.
* Slices: axial = the last (S) axis of the RAS volume, inferior to superior. Image ``[y, x]`` rows run
  anterior -> posterior and columns the patient's right -> left (radiological display).
* Slices are kept where the fraction of reference-contrast pixels above ``foreground_threshold`` (after
  scaling, on the native in-plane grid) is at least ``min_foreground``; the same slices for all contrasts.
* Intensities: per volume (after resampling) divided by the 99.5th percentile (``percentile``) of its
  positive voxels and clipped to ``[0, 1]``.
* ``matrix=(ny, nx)``: ``matrix_mode="pad"`` (default) zero-pads / centre-crops the native in-plane grid
  (pixel size unchanged); ``"fit"`` first resamples in-plane (bilinear) to square pixels so that the whole
  field of view fits the matrix, then pads / crops. ``None`` keeps the native grid.
* ``kspace()``: complex image ``magnitude * exp(1j * smooth_phase)``, coil maps from ``simulate_coil_maps``,
  ``simulate_kspace`` with ``noise_sigma`` (default 0.002 of the [0, 1] intensity scale); phase and coil maps
  are determined by ``(seed, site, index)``, the noise by ``(seed, site, index, contrast)``, so repeated
  calls return identical data. ``target`` = RSS of ``ifft2c`` of that k-space; ``maps`` returned.
* Volumes are loaded lazily and the last ``cache_size`` processed volumes are kept (LRU). Building the
  index reads each subject's reference volume once for the foreground test; with ``min_foreground=0``
  it reads headers only (all slices kept).
"""

from __future__ import annotations

import logging
import re
import threading
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import nibabel.processing
import numpy as np
import scipy.ndimage

from mrcore.coils import simulate_coil_maps
from mrcore.data.base import CONTRASTS, KSpaceSlice
from mrcore.data.kspace_sim import simulate_kspace, smooth_phase
from mrcore.data.readers.indexed import IndexedSource, rss
from mrcore.fft import ifft2c
from mrcore.validate import check_choice

__all__ = ["NiftiSource", "LAYOUTS", "IXI_SITES"]

log = logging.getLogger(__name__)

LAYOUTS: tuple[str, ...] = ("ixi", "brats")
IXI_SITES: tuple[str, ...] = ("Guys", "HH", "IOP")
MATRIX_MODES: tuple[str, ...] = ("pad", "fit")

_IXI_RE = re.compile(r"^(IXI\d+)-([A-Za-z]+)-(\d+)-(T1|T2|PD)\.nii(\.gz)?$")
_IXI_CONTRAST = {"T1": "T1w", "T2": "T2w", "PD": "PD"}
_BRATS_RE = re.compile(r"^(.+?)[_-](t1|t1ce|t1n|t1c|t2|t2w|flair|t2f)\.nii(\.gz)?$")  # lower-case suffixes only
_BRATS_CONTRAST = {"t1": "T1w", "t1n": "T1w", "t2": "T2w", "t2w": "T2w", "flair": "FLAIR", "t2f": "FLAIR"}
_BRATS_T1CE = ("t1ce", "t1c")


@dataclass
class _Subject:
    site: str
    subject: str
    files: dict[str, Path]  # contrast -> file
    reference: str = ""
    grid: tuple[tuple[int, int, int], np.ndarray] | None = None  # canonical reference (shape, affine)
    source_grid: tuple[tuple[int, ...], np.ndarray] | None = None  # reference file's own (shape, affine)
    pixel: tuple[float, float] = (1.0, 1.0)  # (dy, dx) mm of the image grid
    slices: np.ndarray | None = None  # kept z indices of the canonical grid


def _squeeze3(img, path: Path):
    if len(img.shape) > 3:
        img = nib.funcs.squeeze_image(img)
    if len(img.shape) != 3:
        raise ValueError(f"{path}: expected a 3-D volume, got shape {tuple(img.shape)}")
    return img


def _load(path: Path):
    try:
        img = nib.load(str(path))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    except Exception as e:  # noqa: BLE001 - nibabel raises ImageFileError and others for non-NIfTI files
        raise ValueError(f"{path}: not a readable NIfTI volume ({e.__class__.__name__})") from None
    return _squeeze3(img, path)


def _pad_crop(stack: np.ndarray, ny: int, nx: int) -> np.ndarray:
    """Centred zero-pad / crop of ``[..., h, w]`` to ``[..., ny, nx]``."""
    h, w = stack.shape[-2:]
    out = np.zeros((*stack.shape[:-2], ny, nx), dtype=stack.dtype)
    sy, sx = max((h - ny) // 2, 0), max((w - nx) // 2, 0)  # source start (crop)
    dy, dx = max((ny - h) // 2, 0), max((nx - w) // 2, 0)  # destination start (pad)
    cy, cx = min(h, ny), min(w, nx)
    out[..., dy : dy + cy, dx : dx + cx] = stack[..., sy : sy + cy, sx : sx + cx]
    return out


def _stable(*parts) -> int:
    return zlib.crc32("|".join(map(str, parts)).encode("utf-8"))


class NiftiSource(IndexedSource[_Subject]):
    """Axial slices of NIfTI volumes in the IXI or BraTS layout; k-space simulated from the magnitudes.

    Parameters
    ----------
    root : directory of the data set.
    layout : ``"ixi"`` or ``"brats"``.
    site : BraTS: site name of all subjects (default ``"brats"``); IXI: keep only this site (default all).
    matrix : (ny, nx), optional; see ``matrix_mode``.
    matrix_mode : ``"pad"`` or ``"fit"``.
    contrasts : contrasts to use (default: all found at each site).
    reference_contrast : contrast whose grid is the geometry of each subject (default: first available).
    min_foreground, foreground_threshold : slice selection (see module docstring).
    percentile : robust maximum for the intensity scaling.
    t1ce_as_t1w : BraTS only: use t1ce as T1w for subjects without t1.
    noise_sigma : k-space noise standard deviation (image intensity units, [0, 1] scale).
    seed : base seed of the simulated k-space.
    cache_size : processed volumes kept in memory.
    """

    phase_encode_axis: int = -2

    def __init__(
        self,
        root: str | Path,
        *,
        layout: str = "ixi",
        site: str | None = None,
        matrix: tuple[int, int] | None = None,
        matrix_mode: str = "pad",
        contrasts: Sequence[str] | None = None,
        reference_contrast: str | None = None,
        min_foreground: float = 0.05,
        foreground_threshold: float = 0.05,
        percentile: float = 99.5,
        t1ce_as_t1w: bool = False,
        noise_sigma: float = 0.002,
        seed: int = 0,
        cache_size: int = 4,
    ) -> None:
        check_choice("layout", layout, LAYOUTS)
        check_choice("matrix_mode", matrix_mode, MATRIX_MODES)
        if contrasts is not None:
            contrasts = tuple(contrasts)
            if not contrasts:
                raise ValueError("contrasts must not be empty")
            for c in contrasts:
                check_choice("contrast", c, CONTRASTS)
        if reference_contrast is not None:
            check_choice("reference_contrast", reference_contrast, CONTRASTS)
        if matrix is not None:
            try:
                ny, nx = (int(v) for v in matrix)
            except (TypeError, ValueError):
                raise ValueError(f"matrix must be (ny, nx), got {matrix!r}") from None
            if ny < 1 or nx < 1:
                raise ValueError(f"matrix must be two positive ints (ny, nx), got {matrix!r}")
            matrix = (ny, nx)
        if not 0 <= min_foreground <= 1:
            raise ValueError(f"min_foreground must be in [0, 1], got {min_foreground!r}")
        if not 0 < percentile <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {percentile!r}")
        if not (np.isfinite(noise_sigma) and noise_sigma >= 0):
            raise ValueError(f"noise_sigma must be >= 0, got {noise_sigma!r}")
        if int(cache_size) < 1:
            raise ValueError(f"cache_size must be >= 1, got {cache_size!r}")
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"NiftiSource: {root} does not exist (expected a directory of NIfTI files)")
        if not root.is_dir():
            raise ValueError(f"NiftiSource: {root} is not a directory (expected a directory of NIfTI files)")

        self.root = root
        self.layout = layout
        self.matrix = matrix
        self.matrix_mode = matrix_mode
        self.min_foreground = float(min_foreground)
        self.foreground_threshold = float(foreground_threshold)
        self.percentile = float(percentile)
        self.noise_sigma = float(noise_sigma)
        self.seed = int(seed)
        self._cache: OrderedDict[tuple[str, str, str], np.ndarray] = OrderedDict()
        self._cache_size = int(cache_size)
        self._lock = threading.RLock()
        #: (site, subject, reason) of subjects left out
        self.skipped: list[tuple[str, str, str]] = []

        found = self._discover_ixi(root, site) if layout == "ixi" else self._discover_brats(root, site, t1ce_as_t1w)
        if not found:
            pattern = (
                "IXI<nnn>-<Guys|HH|IOP>-<nnnn>-<T1|T2|PD>.nii[.gz]"
                if layout == "ixi"
                else "<subject>/<subject>_<t1|t2|flair>.nii[.gz]"
            )
            extra = f" at site {site!r}" if (layout == "ixi" and site) else ""
            raise ValueError(f"NiftiSource: no {layout} files{extra} under {root} (expected names like {pattern})")

        # contrasts per site, subjects with all of them
        by_site: dict[str, list[_Subject]] = {}
        for subj in found.values():
            by_site.setdefault(subj.site, []).append(subj)
        self._contrasts: dict[str, tuple[str, ...]] = {}
        self._subjects: dict[str, list[_Subject]] = {}
        for s in sorted(by_site):
            present = set().union(*(sub.files for sub in by_site[s]))
            wanted = tuple(c for c in CONTRASTS if c in present and (contrasts is None or c in contrasts))
            if not wanted:
                continue
            keep = []
            for sub in sorted(by_site[s], key=lambda x: x.subject):
                missing = [c for c in wanted if c not in sub.files]
                if missing:
                    self.skipped.append((s, sub.subject, f"missing {', '.join(missing)}"))
                    continue
                sub.files = {c: sub.files[c] for c in wanted}
                sub.reference = (
                    reference_contrast if reference_contrast in wanted else wanted[0]
                )
                keep.append(sub)
            if keep:
                self._contrasts[s] = wanted
                self._subjects[s] = keep
        if not self._subjects:
            want = f" with contrasts {', '.join(contrasts)}" if contrasts else ""
            raise ValueError(f"NiftiSource: no {layout} subject under {root} has all its site's contrasts{want}")

        # geometry and slice selection from the reference volumes
        self._index: dict[str, list[tuple[_Subject, int]]] = {}
        for s in list(self._subjects):
            kept = []
            for sub in self._subjects[s]:
                self._set_grid(sub)
                if self.min_foreground > 0:
                    native = self._native(sub, sub.reference)
                    frac = (native > self.foreground_threshold).mean(axis=(1, 2))
                    sub.slices = np.flatnonzero(frac >= self.min_foreground)
                    if sub.slices.size == 0:
                        self.skipped.append((s, sub.subject, "no slice with enough foreground"))
                        continue
                    self._put((s, sub.subject, sub.reference), self._to_matrix(native, sub))
                else:  # header only: nothing loaded until a slice is asked for
                    sub.slices = np.arange(sub.grid[0][2])
                kept.append(sub)
            if kept:
                self._subjects[s] = kept
                self._index[s] = [(sub, k) for sub in kept for k in range(sub.slices.size)]
            else:
                del self._subjects[s]
                del self._contrasts[s]
        if not self._index:
            raise ValueError(f"NiftiSource: no slice under {root} has a foreground fraction >= {self.min_foreground}")
        self._sites = tuple(sorted(self._index))
        for s, name, why in self.skipped:
            log.info("NiftiSource: left out subject %s at site %s (%s)", name, s, why)

    # --- discovery ---------------------------------------------------------------------------------
    @staticmethod
    def _discover_ixi(root: Path, site: str | None) -> dict[tuple[str, str], _Subject]:
        if site is not None:
            check_choice("IXI site", site, IXI_SITES)
        out: dict[tuple[str, str], _Subject] = {}
        for p in sorted(root.rglob("IXI*.nii*")):
            m = _IXI_RE.match(p.name)
            if m is None or not p.is_file():
                continue
            subject, s, contrast = m.group(1), m.group(2), _IXI_CONTRAST[m.group(4)]
            canonical_site = {x.lower(): x for x in IXI_SITES}.get(s.lower(), s)
            if site is not None and canonical_site != site:
                continue
            sub = out.setdefault((canonical_site, subject), _Subject(canonical_site, subject, {}))
            sub.files.setdefault(contrast, p)
        return out

    @staticmethod
    def _discover_brats(root: Path, site: str | None, t1ce_as_t1w: bool) -> dict[tuple[str, str], _Subject]:
        site = "brats" if site is None else str(site)
        out: dict[tuple[str, str], _Subject] = {}
        t1ce: dict[str, Path] = {}
        for p in sorted(root.rglob("*.nii*")):
            m = _BRATS_RE.match(p.name)
            if m is None or not p.is_file():
                continue
            subject, suffix = m.group(1), m.group(2)
            if suffix in _BRATS_T1CE:
                t1ce.setdefault(subject, p)
                continue
            sub = out.setdefault((site, subject), _Subject(site, subject, {}))
            sub.files.setdefault(_BRATS_CONTRAST[suffix], p)
        if t1ce_as_t1w:
            for subject, p in t1ce.items():
                sub = out.setdefault((site, subject), _Subject(site, subject, {}))
                sub.files.setdefault("T1w", p)
        return out

    # --- volume loading ----------------------------------------------------------------------------
    @staticmethod
    def _set_grid(sub: _Subject) -> None:
        """The reference file's grid and its RAS-canonical grid, from the header only (no voxel data)."""
        img = _load(sub.files[sub.reference])
        affine = np.asarray(img.affine, dtype=float)
        ornt = nib.orientations.io_orientation(affine)
        shape = tuple(int(n) for n in np.asarray(img.shape)[np.argsort(ornt[:, 0])])
        canonical = affine @ nib.orientations.inv_ornt_aff(ornt, img.shape)
        sub.source_grid = (tuple(int(n) for n in img.shape), affine)
        sub.grid = (shape, canonical)
        zooms = np.sqrt((canonical[:3, :3] ** 2).sum(axis=0))
        sub.pixel = (float(zooms[1]), float(zooms[0]))  # (dy, dx): image rows are A-P, columns R-L

    def _native(self, sub: _Subject, contrast: str) -> np.ndarray:
        """float32 [z, y, x] of ``contrast`` on the subject's canonical reference grid, scaled to [0, 1]."""
        path = sub.files[contrast]
        img = _load(path)
        if sub.grid is None or sub.source_grid is None:
            self._set_grid(sub)
        if contrast == sub.reference:
            img = nib.as_closest_canonical(img)
            if tuple(img.shape) != sub.grid[0] or not np.allclose(img.affine, sub.grid[1], atol=1e-4):
                raise ValueError(f"{path}: changed on disk while in use (grid differs from the one indexed)")
            return self._scale(img.get_fdata(dtype=np.float32))
        src_shape, src_affine = sub.source_grid
        if tuple(img.shape) == src_shape and np.allclose(img.affine, src_affine, atol=1e-4):
            img = nib.as_closest_canonical(img)  # co-registered: same reorientation as the reference
        else:
            img = nibabel.processing.resample_from_to(img, sub.grid, order=1, mode="constant", cval=0.0)
        return self._scale(img.get_fdata(dtype=np.float32))

    def _scale(self, vol: np.ndarray) -> np.ndarray:
        """RAS volume [x, y, z] -> scaled slices [z, y (A->P), x (R->L)]."""
        vol = np.nan_to_num(vol, nan=0.0, posinf=0.0, neginf=0.0)
        positive = vol[vol > 0]
        top = float(np.percentile(positive, self.percentile)) if positive.size else 1.0
        vol = np.clip(vol / (top if top > 0 else 1.0), 0.0, 1.0)
        return np.ascontiguousarray(vol.transpose(2, 1, 0)[:, ::-1, ::-1], dtype=np.float32)

    def _to_matrix(self, stack: np.ndarray, sub: _Subject) -> np.ndarray:
        if self.matrix is None:
            return stack
        ny, nx = self.matrix
        if self.matrix_mode == "fit":
            h, w = stack.shape[-2:]
            dy, dx = sub.pixel
            pix = max(h * dy / ny, w * dx / nx)
            zy, zx = dy / pix, dx / pix
            if not (np.isclose(zy, 1.0) and np.isclose(zx, 1.0)):
                stack = scipy.ndimage.zoom(
                    stack, (1.0, zy, zx), order=1, mode="grid-constant", cval=0.0, grid_mode=True
                )
                stack = np.clip(stack, 0.0, 1.0).astype(np.float32, copy=False)
        return _pad_crop(stack, ny, nx)

    def _put(self, key, value: np.ndarray) -> None:
        with self._lock:
            self._cache[key] = value
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def _volume(self, sub: _Subject, contrast: str) -> np.ndarray:
        key = (sub.site, sub.subject, contrast)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            vol = self._to_matrix(self._native(sub, contrast), sub)
            self._put(key, vol)
            return vol

    # --- SliceSource (sites, contrasts, num_slices, subject from IndexedSource) ---------------------
    def slice_position(self, site: str, index: int) -> int:
        """Index of slice ``index`` along the S axis of its subject's canonical reference volume."""
        sub, k = self._entry(site, index)
        return int(sub.slices[k])

    def image(self, site: str, index: int, contrast: str) -> np.ndarray:
        """The stored magnitude slice, scaled to [0, 1]: float32 [y, x] (``matrix`` if given)."""
        self.check_contrast(site, contrast)
        sub, k = self._entry(site, index)
        return self._volume(sub, contrast)[int(sub.slices[k])].copy()

    def kspace(self, site: str, index: int, contrast: str, num_coils: int = 8) -> KSpaceSlice:
        """Simulated ``num_coils`` k-space of the slice (deterministic), its RSS target and the coil maps."""
        if isinstance(num_coils, bool) or not isinstance(num_coils, (int, np.integer)) or num_coils < 1:
            raise ValueError(f"num_coils must be an int >= 1, got {num_coils!r}")
        magnitude = self.image(site, index, contrast)
        sub, _ = self._entry(site, index)
        shape = magnitude.shape
        phase = smooth_phase(shape, seed=[self.seed, _stable(site), int(index), 1])
        maps = simulate_coil_maps(shape, int(num_coils), seed=_stable(self.seed, site, index) & 0x7FFFFFFF)
        rng = np.random.default_rng([self.seed, _stable(site), int(index), CONTRASTS.index(contrast), 2])
        k = simulate_kspace(magnitude * np.exp(1j * phase), maps, self.noise_sigma, rng)
        return KSpaceSlice(
            kspace=k, target=rss(ifft2c(k)), maps=maps, site=site, subject=sub.subject, contrast=contrast
        )
