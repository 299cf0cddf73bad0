"""Head anatomy for the phantom: tissue fractions in MNI space, and random 'subjects' sampled slice by slice.

The template is the MNI152 ICBM 2009a nonlinear symmetric atlas, 1 mm. Its grey- and white-matter
probability maps and brain mask ship with nilearn (``nilearn.datasets.load_mni152_*``); see
``NOTICE_MNI152.txt`` next to this module for the copyright and attribution. The template holds no
individual's data.

Tissue model (fractions in ``[0, 1]``, summing to at most 1; the rest is air):

- ``gm``, ``wm``: the MNI152 probability maps;
- ``csf``: ``clip(brain - gm - wm, 0, 1)`` inside the (hole-filled, partial-volume) brain mask, which
  gives the ventricles and sulci, plus a 2.5 mm subarachnoid rim outside it;
- skull and scalp as shells at fixed distances outside the brain mask: inner table (bone), diploe
  (marrow, modelled as fat), outer table (bone), galea/muscle, subcutaneous fat, skin (modelled as
  muscle). The edges carry 1 mm partial volume.

No face, orbits, sinuses or neck are modelled, so slices cover only 40 % to 90 % of the way up the
brain (:data:`SLICE_RANGE`): above the orbits, and short of the small top slices.

A subject is the template under a random 3-D affine transform (rotations of a few degrees, per-axis
scaling within +-8 %, translations of a few mm) and a smooth elastic displacement, a coarse random grid
interpolated by cubic splines. Only the requested axial slices are sampled, straight onto the output
grid with :func:`scipy.ndimage.map_coordinates` (order 1). No whole volume is ever warped.

Output grid convention: axial slices, rows from anterior (row 0) to posterior and columns from the
patient's right (column 0) to left (radiological display). Pixel centres are symmetric about the
field-of-view centre.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from mrcore.data.tissues import TISSUES

#: Identifies the template in cache keys.
TEMPLATE_ID = "MNI152-ICBM2009a-nlin-sym-1mm/nilearn-gm-wm-mask"

#: Shells outside the brain mask: (tissue, inner distance mm, outer distance mm).
SHELLS_MM: tuple[tuple[str, float, float], ...] = (
    ("csf", 0.0, 2.5),  # subarachnoid space
    ("bone", 2.5, 4.5),  # inner table
    ("fat", 4.5, 7.0),  # diploe (fatty marrow)
    ("bone", 7.0, 8.5),  # outer table
    ("muscle", 8.5, 10.0),  # galea / temporalis
    ("fat", 10.0, 13.5),  # subcutaneous fat
    ("muscle", 13.5, 15.5),  # skin
)

#: Axial slices are spread over this part of the brain's superior-inferior extent (0 = bottom, 1 = top).
SLICE_RANGE: tuple[float, float] = (0.40, 0.90)

#: Elastic displacement: control grid points per axis, half-width of the grid (mm), and std per component (mm).
ELASTIC_GRID = 7
ELASTIC_HALF_WIDTH_MM = 130.0
ELASTIC_STD_MM = 2.5


@dataclass(frozen=True, eq=False)
class TissueTemplate:
    """Tissue fractions on the MNI152 1 mm grid.

    Attributes
    ----------
    fractions : float32 [tissue, k, j, i]
        Fraction of each tissue of :data:`mrcore.data.tissues.TISSUES` per voxel (read-only). The voxel
        axes are reversed (z slowest) so that sampling an axial slice reads contiguous memory.
    affine : float64 [4, 4]
        Voxel index ``(i, j, k)`` to MNI millimetres (RAS).
    centre_mm : float64 [3]
        Centre of the brain's bounding box, MNI mm. Subject coordinates are relative to it.
    brain_z_mm : (float, float)
        Inferior and superior extent of the brain relative to ``centre_mm``, mm.
    """

    fractions: np.ndarray
    affine: np.ndarray
    centre_mm: np.ndarray
    brain_z_mm: tuple[float, float]


def _ramp(sd: np.ndarray, at_mm: float) -> np.ndarray:
    """Fraction of a voxel lying beyond signed distance ``at_mm`` (1 mm linear partial volume)."""
    return np.clip(sd - (at_mm - 0.5), 0.0, 1.0)


@functools.lru_cache(maxsize=1)
def load_template() -> TissueTemplate:
    """Build the tissue-fraction template from nilearn's MNI152 maps (about 10 s once per process).

    Returns
    -------
    TissueTemplate
        Cached: later calls return the same object.
    """
    from nilearn import datasets  # deferred: slow to import, unneeded when the data is cached

    gm_img = datasets.load_mni152_gm_template()
    affine = np.asarray(gm_img.affine, dtype=np.float64)
    gm = np.asarray(gm_img.get_fdata(dtype=np.float32))
    wm = np.asarray(datasets.load_mni152_wm_template().get_fdata(dtype=np.float32))
    mask = np.asarray(datasets.load_mni152_brain_mask().dataobj) > 0
    inside = ndimage.binary_fill_holes(mask)
    spacing = np.abs(np.diag(affine)[:3])

    # Signed distance to the brain surface (mm, > 0 outside); the surface lies half a voxel off the
    # voxel centres. Smoothing turns the staircase into partial volume.
    outside_d = ndimage.distance_transform_edt(~inside, sampling=spacing)
    inside_d = ndimage.distance_transform_edt(inside, sampling=spacing)
    sd = np.where(inside, 0.5 - inside_d, outside_d - 0.5).astype(np.float32)
    del outside_d, inside_d
    sd = ndimage.gaussian_filter(sd, 1.0)

    fr = np.zeros((len(TISSUES), *gm.shape), dtype=np.float32)
    idx = {t: i for i, t in enumerate(TISSUES)}
    brain = 1.0 - _ramp(sd, 0.0)
    fr[idx["gm"]] = gm
    fr[idx["wm"]] = wm
    fr[idx["csf"]] = np.clip(brain - gm - wm, 0.0, 1.0)
    for tissue, inner, outer in SHELLS_MM:
        fr[idx[tissue]] += _ramp(sd, inner) - _ramp(sd, outer)
    del brain, gm, wm
    total = fr.sum(axis=0)
    over = total > 1.0
    fr[:, over] /= total[over]
    # z-slowest layout: an axial slice then reads a few contiguous planes (2-3x faster sampling).
    fr = np.ascontiguousarray(fr.transpose(0, 3, 2, 1))
    fr.setflags(write=False)

    ii, jj, kk = np.nonzero(inside)
    lo = affine[:3, :3] @ np.array([ii.min(), jj.min(), kk.min()]) + affine[:3, 3]
    hi = affine[:3, :3] @ np.array([ii.max(), jj.max(), kk.max()]) + affine[:3, 3]
    centre = (lo + hi) / 2.0
    return TissueTemplate(fr, affine, centre, (float(lo[2] - centre[2]), float(hi[2] - centre[2])))


@dataclass(frozen=True, eq=False)
class SubjectAnatomy:
    """One random subject: where each subject-space point comes from in the template.

    A point ``s`` (mm, relative to the scan centre) maps to template MNI mm
    ``centre + linear @ s + translation_mm + displacement(s)``.

    Attributes
    ----------
    linear : float64 [3, 3]
        Rotation times per-axis scaling.
    translation_mm : float64 [3]
    elastic : float64 [3, g, g, g]
        Spline coefficients (order 3) of the displacement in mm on a ``g``-point grid per axis spanning
        ``[-ELASTIC_HALF_WIDTH_MM, ELASTIC_HALF_WIDTH_MM]``.
    slice_offset_mm : float
        Shift of this subject's slice stack along z, mm.
    """

    linear: np.ndarray
    translation_mm: np.ndarray
    elastic: np.ndarray
    slice_offset_mm: float


def random_subject(rng: np.random.Generator) -> SubjectAnatomy:
    """Draw a subject: rotations N(0, 2.5 deg) clipped to +-6 deg, scaling U(0.92, 1.08) per axis,
    translation N(0, 3 mm) clipped to +-6 mm, elastic N(0, 2.5 mm) on a 7^3 grid, slice offset U(-1.5, 1.5) mm.
    """
    ax, ay, az = np.deg2rad(np.clip(rng.normal(0.0, 2.5, 3), -6.0, 6.0))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    scale = rng.uniform(0.92, 1.08, 3)
    translation = np.clip(rng.normal(0.0, 3.0, 3), -6.0, 6.0)
    grid = rng.normal(0.0, ELASTIC_STD_MM, (3, ELASTIC_GRID, ELASTIC_GRID, ELASTIC_GRID))
    coeffs = np.stack([ndimage.spline_filter(g, order=3, mode="nearest") for g in grid])
    offset = float(rng.uniform(-1.5, 1.5))
    return SubjectAnatomy(rz @ ry @ rx @ np.diag(scale), translation, coeffs, offset)


def slice_positions_mm(num_slices: int, template: TissueTemplate, offset_mm: float = 0.0) -> np.ndarray:
    """Axial slice positions (z, mm relative to the brain centre) spread over :data:`SLICE_RANGE`.

    Returns
    -------
    float64 [num_slices]
        Inferior to superior.
    """
    lo, hi = template.brain_z_mm
    a, b = (lo + f * (hi - lo) for f in SLICE_RANGE)
    z = np.linspace(a, b, num_slices) if num_slices > 1 else np.array([(a + b) / 2.0])
    return z + offset_mm


#: Coordinates and smooth fields are computed every this many pixels and interpolated linearly in between.
COARSE_STEP = 4


def _axis_interp(n: int, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coarse sample positions along an axis of ``n`` pixels and the linear-interpolation index/weights."""
    pos = np.arange(0, n, step)
    if pos[-1] != n - 1:
        pos = np.append(pos, n - 1)
    full = np.arange(n)
    i0 = np.clip(np.searchsorted(pos, full, side="right") - 1, 0, max(len(pos) - 2, 0))
    if len(pos) == 1:
        return pos, np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.float32)
    w = ((full - pos[i0]) / (pos[i0 + 1] - pos[i0])).astype(np.float32)
    return pos, i0, w


@dataclass(frozen=True, eq=False)
class SliceGrid:
    """Pixel geometry of a stack of axial slices, evaluated on a coarse grid and interpolated.

    Subject-space coordinates (mm, relative to the scan centre) are ``x`` from the patient's right
    (column 0) to left, ``y`` from anterior (row 0) to posterior, and ``z`` the slice positions.
    Smooth quantities (coordinate maps, elastic displacement, bias fields) are evaluated at
    every :data:`COARSE_STEP`-th pixel and the last one, then interpolated bilinearly by
    :meth:`upsample`. Bilinear interpolation reproduces affine maps exactly.

    Attributes
    ----------
    matrix : (ny, nx)
    fov_mm : (fy, fx)
    points_mm : float64 [3, n, cy, cx]
        Coordinates of the coarse grid points.
    """

    matrix: tuple[int, int]
    fov_mm: tuple[float, float]
    points_mm: np.ndarray
    _rows: tuple[np.ndarray, np.ndarray]
    _cols: tuple[np.ndarray, np.ndarray]

    @classmethod
    def axial(cls, matrix: tuple[int, int], fov_mm: tuple[float, float], z_mm) -> SliceGrid:
        ny, nx = (int(v) for v in matrix)
        z = np.asarray(z_mm, dtype=np.float64).reshape(-1)
        ry, iy, wy = _axis_interp(ny, COARSE_STEP)
        rx, ix, wx = _axis_interp(nx, COARSE_STEP)
        x = ((nx - 1) / 2.0 - rx) * (fov_mm[1] / nx)  # column 0 = patient right (+x)
        y = ((ny - 1) / 2.0 - ry) * (fov_mm[0] / ny)  # row 0 = anterior (+y)
        pts = np.empty((3, z.size, ry.size, rx.size))
        pts[0] = x[None, None, :]
        pts[1] = y[None, :, None]
        pts[2] = z[:, None, None]
        return cls((ny, nx), (float(fov_mm[0]), float(fov_mm[1])), pts, (iy, wy), (ix, wx))

    def upsample(self, coarse: np.ndarray) -> np.ndarray:
        """Bilinear interpolation of ``coarse [..., cy, cx]`` (values at :attr:`points_mm`) to ``[..., ny, nx]``."""
        (iy, wy), (ix, wx) = self._rows, self._cols
        ny1 = np.minimum(iy + 1, coarse.shape[-2] - 1)
        nx1 = np.minimum(ix + 1, coarse.shape[-1] - 1)
        rows = coarse[..., iy, :] * (1 - wy)[:, None] + coarse[..., ny1, :] * wy[:, None]
        return rows[..., ix] * (1 - wx) + rows[..., nx1] * wx


def smooth_field(coeffs: np.ndarray, half_width_mm: float, points_mm: np.ndarray) -> np.ndarray:
    """Evaluate a cubic-spline field given by prefiltered ``coeffs [g, g, g]`` at ``points_mm [3, ...]``.

    The grid spans ``[-half_width_mm, half_width_mm]`` on each axis; outside it the field is extended
    by its edge values.

    Returns
    -------
    float64 [...]
    """
    g = np.asarray(coeffs.shape, dtype=np.float64)
    scale = ((g - 1) / (2.0 * half_width_mm)).reshape((3,) + (1,) * (points_mm.ndim - 1))
    idx = (points_mm + half_width_mm) * scale
    return ndimage.map_coordinates(coeffs, idx, order=3, mode="nearest", prefilter=False)


def _affine(matrix: np.ndarray, offset: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``matrix @ p + offset`` for every point of ``points [3, ...]`` (element-wise, no BLAS)."""
    out = np.empty_like(points)
    for k in range(3):
        out[k] = matrix[k, 0] * points[0] + matrix[k, 1] * points[1] + matrix[k, 2] * points[2] + offset[k]
    return out


def sample_slices(subject: SubjectAnatomy, grid: SliceGrid, template: TissueTemplate | None = None) -> np.ndarray:
    """Tissue fractions of ``subject`` on the slices of ``grid``.

    Parameters
    ----------
    subject : SubjectAnatomy
    grid : SliceGrid
        Output geometry (see :meth:`SliceGrid.axial` and :func:`slice_positions_mm`).
    template : TissueTemplate, optional
        Defaults to :func:`load_template`.

    Returns
    -------
    float32 [tissue, n, ny, nx]
        Fractions in :data:`mrcore.data.tissues.TISSUES` order. Every pixel is computed on its own
        with element-wise arithmetic, so a slice does not depend on which other slices are requested,
        and results are bit-identical from run to run.
    """
    tpl = template if template is not None else load_template()
    s = grid.points_mm
    q = _affine(subject.linear, tpl.centre_mm + subject.translation_mm, s)
    for k in range(3):
        q[k] += smooth_field(subject.elastic[k], ELASTIC_HALF_WIDTH_MM, s)
    inv = np.linalg.inv(tpl.affine)
    # Template voxel index, reversed to (k, j, i) to match the z-slowest layout of ``fractions``.
    # (C-contiguous coordinates make map_coordinates about 3x faster.)
    vox = np.ascontiguousarray(grid.upsample(_affine(inv[:3, :3], inv[:3, 3], q)[::-1]))
    out = np.empty((len(TISSUES), *vox.shape[1:]), dtype=np.float32)
    for t in range(len(TISSUES)):
        ndimage.map_coordinates(tpl.fractions[t], vox, output=out[t], order=1, mode="constant", cval=0.0)
    return out
