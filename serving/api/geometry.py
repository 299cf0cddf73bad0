"""NIfTI affine <-> DICOM slice geometry (:class:`serving.dicom.SeriesGeometry`), for format conversion only.

Array layout: the API's volumes are ``[slices, rows, cols]``; a NIfTI data array is ``[i, j, k]`` with
``volume[s, r, c] = data[c, r, s]`` (columns along ``i``, rows along ``j``, slices along ``k``).

Coordinates: NIfTI affines map voxel indices to RAS+ millimetres, DICOM uses LPS+; the two differ by
``diag(-1, -1, 1)``. With ``M`` the LPS affine: ``ImageOrientationPatient`` = unit columns ``M[:, 0]`` (along a
row, increasing column index) and ``M[:, 1]`` (down a column), ``PixelSpacing`` = (``|M[:, 1]|``,
``|M[:, 0]|``) (between rows, between columns), ``ImagePositionPatient`` of slice ``k`` = ``M @ (0, 0, k, 1)``.
"""

from __future__ import annotations

import numpy as np

from serving.dicom import SeriesGeometry

__all__ = ["affine_from_geometry", "geometry_from_affine"]

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def geometry_from_affine(affine: np.ndarray, num_slices: int, frame_of_reference_uid: str | None = None
                         ) -> SeriesGeometry:
    """Slice geometry of a NIfTI volume with ``num_slices`` slices along its third axis."""
    m = _LPS @ np.asarray(affine, dtype=np.float64)
    cols, rows, step = m[:3, 0], m[:3, 1], m[:3, 2]
    dc, dr, ds = (float(np.linalg.norm(v)) for v in (cols, rows, step))
    if min(dc, dr) <= 0 or not np.all(np.isfinite(m)):
        raise ValueError(f"NIfTI affine has a zero or non-finite voxel axis: {np.round(affine, 4).tolist()}")
    orientation = np.concatenate([cols / dc, rows / dr])
    positions = np.stack([m[:3, 3] + k * step for k in range(num_slices)])
    return SeriesGeometry(positions, orientation, (dr, dc), ds or None, frame_of_reference_uid)


def affine_from_geometry(geometry: SeriesGeometry) -> np.ndarray:
    """RAS+ NIfTI affine of a ``[slices, rows, cols]`` volume with this geometry (``data[c, r, s]`` layout)."""
    row_dir, col_dir = np.asarray(geometry.orientation[:3]), np.asarray(geometry.orientation[3:])
    dr, dc = geometry.pixel_spacing
    pos = np.asarray(geometry.positions, dtype=np.float64)
    if pos.shape[0] > 1:
        step = (pos[-1] - pos[0]) / (pos.shape[0] - 1)
    else:
        step = geometry.normal * float(geometry.slice_thickness or 1.0)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = row_dir * dc, col_dir * dr, step, pos[0]
    return _LPS @ m
