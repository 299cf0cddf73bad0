"""Patient-space geometry of a stack of parallel slices: the leaf both directions of the DICOM layer share.

:mod:`serving.dicom.series` reads it from MR images, :mod:`serving.dicom.rawdata` from (and into) the k-space
private block, :mod:`serving.dicom.derived` writes it into the Image Plane module of derived series.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SeriesGeometry"]


@dataclass(frozen=True)
class SeriesGeometry:
    """Patient-space geometry of a stack of parallel slices.

    Attributes
    ----------
    positions : float64 [slices, 3]
        ``ImagePositionPatient`` of each slice (mm, centre of the first transmitted pixel), sorted order.
    orientation : float64 [6]
        ``ImageOrientationPatient``: row direction cosines then column direction cosines.
    pixel_spacing : (row_spacing, col_spacing)
        ``PixelSpacing`` in mm (distance between rows, between columns).
    slice_thickness : float or None
        ``SliceThickness`` in mm.
    frame_of_reference_uid : str or None
    """

    positions: np.ndarray
    orientation: np.ndarray
    pixel_spacing: tuple[float, float]
    slice_thickness: float | None = None
    frame_of_reference_uid: str | None = None

    @property
    def normal(self) -> np.ndarray:
        """Unit slice normal ``row x col`` (float64 [3])."""
        n = np.cross(self.orientation[:3], self.orientation[3:])
        return n / max(float(np.linalg.norm(n)), 1e-12)

    @property
    def num_slices(self) -> int:
        return int(self.positions.shape[0])

    @classmethod
    def axial(cls, num_slices: int, shape: tuple[int, int], *, pixel_spacing=(1.0, 1.0), slice_thickness=1.0,
              frame_of_reference_uid: str | None = None) -> SeriesGeometry:
        """Default axial stack centred on the origin (for k-space that arrives without geometry)."""
        rows, cols = int(shape[0]), int(shape[1])
        dr, dc = float(pixel_spacing[0]), float(pixel_spacing[1])
        z = (np.arange(num_slices) - (num_slices - 1) / 2) * float(slice_thickness)
        pos = np.stack([np.full(num_slices, -(cols - 1) / 2 * dc), np.full(num_slices, -(rows - 1) / 2 * dr), z], 1)
        return cls(pos.astype(np.float64), np.array([1.0, 0, 0, 0, 1.0, 0]), (dr, dc), float(slice_thickness),
                   frame_of_reference_uid)
