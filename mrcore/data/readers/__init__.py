"""Real-data readers: every class implements :class:`mrcore.data.base.SliceSource`.

- :class:`NiftiSource`: IXI / BraTS NIfTI magnitude volumes, k-space simulated (``mrcore.data.readers.nifti``).
- :class:`FastMRISource`: fastMRI HDF5 raw k-space (``mrcore.data.readers.fastmri``).
- :class:`MRDSource`: ISMRMRD / MRD raw data, and :func:`write_mrd` (``mrcore.data.readers.mrd``).

Their shared per-site slice index lives in ``mrcore.data.readers.indexed`` (``IndexedSource``,
``IndexedFileSource``).
"""

from mrcore.data.readers.fastmri import FastMRISource
from mrcore.data.readers.mrd import MRDSource, write_mrd
from mrcore.data.readers.nifti import NiftiSource

__all__ = ["FastMRISource", "MRDSource", "NiftiSource", "write_mrd"]
