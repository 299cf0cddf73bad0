"""ISMRMRD / MRD raw-data reader (and a minimal writer) as :class:`~mrcore.data.base.SliceSource`.

Reads Cartesian 2-D multi-slice acquisitions with the ``ismrmrd`` package (``ismrmrd.Dataset``,
``read_xml_header``, ``ismrmrd.xsd.CreateFromDocument``, ``read_acquisition``) and assembles them into
``complex64 [coils, ky, kx]`` per slice.

Conventions and decisions
-------------------------
* Layout: ``ky`` (axis ``-2``) is ``idx.kspace_encode_step_1`` (phase encoding), ``kx`` (axis ``-1``) the
  readout, at the encoded matrix size of encoding 0 (``encodedSpace.matrixSize``); slices are the distinct
  ``idx.slice`` values present, in increasing order. Lines that were not acquired stay exactly zero, so
  prospectively undersampled files are read as they are. :attr:`MRDSource.phase_encode_axis` is ``-2``
  (fastMRI files have it on ``-1``).
* Acquisitions skipped: noise measurements, navigators, phase-correction, HP/RT feedback, dummy scans,
  surface-coil-correction and phase-stabilisation data, and acquisitions that belong to another encoding
  space (``encoding_space_ref != 0``). Only the first ``contrast``/``phase``/``repetition``/``set`` counter
  value present is kept; repeated lines (``average``) are averaged. Lines flagged only as parallel
  calibration are used where no imaging line exists for that ``ky``.
* ``kspace_encode_step_1`` is shifted so that ``encodingLimits.kspace_encoding_step_1.center`` lands on
  ``ky // 2``; a readout shorter than the matrix (asymmetric echo) is placed so that ``center_sample`` lands
  on ``kx // 2``; ``discard_pre``/``discard_post`` samples are dropped; ``ACQ_IS_REVERSE`` lines are flipped.
* Readout oversampling: when ``encodedSpace.matrixSize.x == 2 * reconSpace.matrixSize.x`` the readout is
  inverse-FFT'd along x (centred, orthonormal), the central ``reconSpace`` x samples are kept and it is
  FFT'd back. With the orthonormal convention the image values are unchanged: ``ifft2c`` of the returned
  k-space is exactly the central crop of ``ifft2c`` of the full readout. Other ratios are left as encoded.
  Phase-encoding oversampling is not removed.
* 3-D encodings (``encodedSpace.matrixSize.z > 1``) and non-Cartesian trajectories are refused.
* Contrast: from ``measurementInformation.protocolName`` (then ``seriesDescription``) name heuristics,
  then ``sequenceParameters`` TR/TE/TI heuristics, else the ``contrast`` argument (which always wins with
  ``contrast_from_header=False``). Site: the ``site`` argument (or a per-file mapping). Subject: the file
  stem. ``subjectInformation``, ``studyInformation`` and institution fields are never read.
* Like fastMRI files, one MRD file holds one contrast: see :class:`~mrcore.data.readers.fastmri.FastMRISource`
  for how indices and contrasts interact (:meth:`MRDSource.slice_contrast`, ``contrasts=`` filter).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from mrcore.contrast import contrast_from_header, contrast_from_protocol, contrast_from_sequence
from mrcore.data.base import CONTRASTS, KSpaceSlice
from mrcore.data.readers.indexed import IndexedFileSource, list_files, site_of
from mrcore.validate import as_array, check_choice, check_complex, check_finite, check_ndim

with warnings.catch_warnings():  # ismrmrd.image calls warnings.simplefilter("default") for the whole process
    import ismrmrd
    import ismrmrd.xsd

__all__ = [
    "MRDSource",
    "SKIPPED_FLAGS",
    "contrast_from_header",
    "contrast_from_protocol",
    "contrast_from_sequence",
    "read_header",
    "write_mrd",
]

#: acquisitions carrying any of these flags are not image data and are skipped.
SKIPPED_FLAGS: tuple[int, ...] = (
    ismrmrd.ACQ_IS_NOISE_MEASUREMENT,
    ismrmrd.ACQ_IS_NAVIGATION_DATA,
    ismrmrd.ACQ_IS_PHASECORR_DATA,
    ismrmrd.ACQ_IS_HPFEEDBACK_DATA,
    ismrmrd.ACQ_IS_DUMMYSCAN_DATA,
    ismrmrd.ACQ_IS_RTFEEDBACK_DATA,
    ismrmrd.ACQ_IS_SURFACECOILCORRECTIONSCAN_DATA,
    ismrmrd.ACQ_IS_PHASE_STABILIZATION_REFERENCE,
    ismrmrd.ACQ_IS_PHASE_STABILIZATION,
)

_SUFFIXES = (".h5", ".hdf5", ".mrd")


def _bit(flag: int) -> int:
    return 1 << (flag - 1)


_SKIP_MASK = 0
for _f in SKIPPED_FLAGS:
    _SKIP_MASK |= _bit(_f)


# --------------------------------------------------------------------------------------------------
# writer
# --------------------------------------------------------------------------------------------------
def write_mrd(
    path: str | Path,
    kspace: np.ndarray,
    *,
    protocol_name: str | None = None,
    sampled: np.ndarray | None = None,
    recon_matrix: tuple[int, int] | None = None,
    fov_mm: tuple[float, float, float] = (220.0, 220.0, 5.0),
    sequence_parameters: Mapping[str, float] | None = None,
    noise_scan: bool = False,
    dataset: str = "dataset",
    overwrite: bool = False,
) -> Path:
    """Write a minimal valid MRD (ISMRMRD HDF5) file of Cartesian 2-D multi-slice k-space.

    Parameters
    ----------
    path : output file (refused if it exists unless ``overwrite``).
    kspace : complex64 [slices, coils, ky, kx]
        ``ky`` becomes ``kspace_encode_step_1``, ``kx`` the readout (all samples, ``center_sample = kx // 2``).
    protocol_name : written to ``measurementInformation.protocolName`` (the reader's contrast heuristic).
    sampled : bool [ky] or [slices, ky], optional
        Lines to write; default: lines with any non-zero sample. Unwritten lines read back as zeros.
    recon_matrix : (ry, rx), optional
        ``reconSpace`` matrix (default ``(ky, kx)``); ``rx = kx // 2`` declares 2x readout oversampling.
    fov_mm : encoded field of view (x = readout, y = phase, z = slice thickness).
    sequence_parameters : optional ``TR``, ``TE``, ``TI`` (ms) and ``flipAngle_deg``.
    noise_scan : also write one noise-measurement acquisition (flag ``ACQ_IS_NOISE_MEASUREMENT``) first.
    dataset : HDF5 group name (MRD default ``"dataset"``).

    Returns
    -------
    The path written. No patient or institution information is written.
    """
    path = Path(path)
    k = as_array("kspace", kspace)
    check_ndim("kspace", k, 4, "[slices, coils, ky, kx]")
    check_complex("kspace", k, "[slices, coils, ky, kx]")
    check_finite("kspace", k)
    k = k.astype(np.complex64, copy=False)
    ns, nc, ny, nx = k.shape
    if sampled is None:
        lines = np.any(k != 0, axis=(1, 3))  # [slices, ky]
    else:
        m = np.asarray(sampled, dtype=bool)
        if m.shape == (ny,):
            lines = np.broadcast_to(m, (ns, ny))
        elif m.shape == (ns, ny):
            lines = m
        else:
            raise ValueError(f"sampled must be bool [ky] {(ny,)} or [slices, ky] {(ns, ny)}, got {m.shape}")
    ry, rx = (ny, nx) if recon_matrix is None else (int(recon_matrix[0]), int(recon_matrix[1]))
    if ry <= 0 or rx <= 0:
        raise ValueError(f"recon_matrix must be positive (ry, rx), got {recon_matrix}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists (pass overwrite=True to replace it)")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path.parent} is not a directory (cannot write {path.name})")

    x = ismrmrd.xsd
    fx, fy, fz = (float(v) for v in fov_mm)
    enc = x.encodingType(
        encodedSpace=x.encodingSpaceType(
            matrixSize=x.matrixSizeType(x=nx, y=ny, z=1), fieldOfView_mm=x.fieldOfViewMm(x=fx, y=fy, z=fz)
        ),
        reconSpace=x.encodingSpaceType(
            matrixSize=x.matrixSizeType(x=rx, y=ry, z=1),
            fieldOfView_mm=x.fieldOfViewMm(x=fx * rx / nx, y=fy * ry / ny, z=fz),
        ),
        encodingLimits=x.encodingLimitsType(
            kspace_encoding_step_0=x.limitType(minimum=0, maximum=nx - 1, center=nx // 2),
            kspace_encoding_step_1=x.limitType(minimum=0, maximum=ny - 1, center=ny // 2),
            kspace_encoding_step_2=x.limitType(minimum=0, maximum=0, center=0),
            slice=x.limitType(minimum=0, maximum=ns - 1, center=0),
            average=x.limitType(minimum=0, maximum=0, center=0),
            contrast=x.limitType(minimum=0, maximum=0, center=0),
            phase=x.limitType(minimum=0, maximum=0, center=0),
            repetition=x.limitType(minimum=0, maximum=0, center=0),
            set=x.limitType(minimum=0, maximum=0, center=0),
            segment=x.limitType(minimum=0, maximum=0, center=0),
        ),
        trajectory=x.trajectoryType.CARTESIAN,
    )
    header = x.ismrmrdHeader(
        version=1,
        experimentalConditions=x.experimentalConditionsType(H1resonanceFrequency_Hz=63_500_000),
        measurementInformation=x.measurementInformationType(
            protocolName=protocol_name, patientPosition=x.patientPositionType.HFS
        ),
        acquisitionSystemInformation=x.acquisitionSystemInformationType(receiverChannels=nc),
        encoding=[enc],
    )
    if sequence_parameters:
        sp = dict(sequence_parameters)
        unknown = set(sp) - {"TR", "TE", "TI", "flipAngle_deg"}
        if unknown:
            raise ValueError(f"sequence_parameters: unknown keys {sorted(unknown)}; expected TR, TE, TI, flipAngle_deg")
        header.sequenceParameters = x.sequenceParametersType(
            **{key: [float(v)] for key, v in sp.items() if v is not None}
        )
    xml = header.toXML("utf-8")

    ds = ismrmrd.Dataset(str(path), dataset, mode="w")
    try:
        ds.write_xml_header(xml)
        counter = 0
        if noise_scan:
            rng = np.random.default_rng(0)
            noise = (rng.standard_normal((nc, nx)) + 1j * rng.standard_normal((nc, nx))).astype(np.complex64)
            acq = ismrmrd.Acquisition.from_array(noise)
            acq.set_flag(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
            acq.scan_counter = counter
            acq.sample_time_us = 5.0
            for c in range(nc):
                acq.setChannelActive(c)
            ds.append_acquisition(acq)
            counter += 1
        total = int(lines.sum())
        written = 0
        for s in range(ns):
            ys = np.flatnonzero(lines[s])
            for j, y in enumerate(ys):
                acq = ismrmrd.Acquisition.from_array(np.ascontiguousarray(k[s, :, y, :]))
                acq.version = 1
                acq.scan_counter = counter
                acq.center_sample = nx // 2
                acq.sample_time_us = 5.0
                acq.read_dir[:] = (1.0, 0.0, 0.0)
                acq.phase_dir[:] = (0.0, 1.0, 0.0)
                acq.slice_dir[:] = (0.0, 0.0, 1.0)
                acq.position[:] = (0.0, 0.0, float((s - (ns - 1) / 2) * fz))
                acq.idx.kspace_encode_step_1 = int(y)
                acq.idx.slice = s
                for c in range(nc):
                    acq.setChannelActive(c)
                acq.set_flag(ismrmrd.ACQ_FIRST_IN_ENCODE_STEP1)
                acq.set_flag(ismrmrd.ACQ_LAST_IN_ENCODE_STEP1)
                if j == 0:
                    acq.set_flag(ismrmrd.ACQ_FIRST_IN_SLICE)
                if j == len(ys) - 1:
                    acq.set_flag(ismrmrd.ACQ_LAST_IN_SLICE)
                written += 1
                if written == total:
                    acq.set_flag(ismrmrd.ACQ_LAST_IN_MEASUREMENT)
                ds.append_acquisition(acq)
                counter += 1
    finally:
        ds.close()
    return path


# --------------------------------------------------------------------------------------------------
# reader
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Geometry:
    nx: int  # encoded readout samples
    ny: int  # encoded phase-encoding lines
    rx: int  # recon readout samples
    ky_shift: int  # added to kspace_encode_step_1


@dataclass(frozen=True)
class _MRDFile:
    path: Path
    site: str
    subject: str
    contrast: str
    num_coils: int
    geometry: _Geometry
    slices: tuple[int, ...]  # idx.slice values, sorted
    acquisitions: tuple[np.ndarray, ...]  # per slice: acquisition numbers, imaging lines first
    calibration: tuple[np.ndarray, ...]  # per slice: bool, acquisition is parallel calibration only

    @property
    def num_slices(self) -> int:
        return len(self.slices)


def read_header(path: Path, dataset: str = "dataset"):
    """(parsed ``ismrmrd.xsd.ismrmrdHeader``, number of acquisitions) of an MRD file; ValueError naming what is
    missing when it is not one."""
    try:
        ds = ismrmrd.Dataset(str(path), dataset, create_if_needed=False, mode="r")
    except OSError as e:
        raise ValueError(f"{path}: cannot be opened as an MRD/ISMRMRD HDF5 file ({e.__class__.__name__})") from None
    try:
        try:
            xml = ds.read_xml_header()
        except LookupError:
            raise ValueError(f"{path}: no MRD XML header ('/{dataset}/xml'); expected an ISMRMRD file") from None
        try:
            header = ismrmrd.xsd.CreateFromDocument(xml)
        except Exception as e:  # noqa: BLE001 - xsdata raises several parser errors
            raise ValueError(f"{path}: the MRD XML header does not parse ({e.__class__.__name__})") from None
        try:
            n = ds.number_of_acquisitions()
        except LookupError:
            raise ValueError(f"{path}: no acquisitions ('/{dataset}/data'); expected MRD raw data") from None
    finally:
        ds.close()
    return header, n


class MRDSource(IndexedFileSource[_MRDFile]):
    """Slices of ISMRMRD/MRD raw-data files (Cartesian 2-D, one contrast per file).

    Parameters
    ----------
    root : path or list of paths
        A directory (searched recursively for ``*.h5``, ``*.hdf5``, ``*.mrd``), one file or a list of files.
    site : str or mapping
        Site of every file, or a mapping from file name / stem to site.
    contrast : str, optional
        Contrast of files whose header gives none (or of every file with ``contrast_from_header=False``).
    contrasts : sequence of str, optional
        Keep only files of these contrasts.
    contrast_from_header : bool
        Use the header heuristics (default) before ``contrast``.
    crop_readout : bool
        Remove 2x readout oversampling (see module docstring); default True.
    dataset : HDF5 group of the MRD data (``"dataset"``).
    """

    phase_encode_axis: int = -2
    _format_name = "MRD"

    def __init__(
        self,
        root: str | Path | Sequence[str | Path],
        *,
        site: str | Mapping[str, str] = "mrd",
        contrast: str | None = None,
        contrasts: Sequence[str] | None = None,
        contrast_from_header: bool = True,
        crop_readout: bool = True,
        dataset: str = "dataset",
    ) -> None:
        what = "MRDSource"
        if contrast is not None:
            check_choice("contrast", contrast, CONTRASTS)
        if contrasts is not None:
            contrasts = tuple(contrasts)
            for c in contrasts:
                check_choice("contrast", c, CONTRASTS)
        if not contrast_from_header and contrast is None:
            raise ValueError("MRDSource: contrast_from_header=False needs a contrast argument")
        self._dataset = dataset
        self._crop_readout = bool(crop_readout)

        files: list[_MRDFile] = []
        for path in list_files(root, what, _SUFFIXES):
            if not h5py.is_hdf5(path):
                raise ValueError(f"{path}: not an HDF5 file (expected an MRD/ISMRMRD file)")
            f = self._inspect(path, site_of(path, site, what), contrast, contrast_from_header)
            if contrasts is None or f.contrast in contrasts:
                files.append(f)
        if not files:
            want = f" with contrasts {', '.join(contrasts)}" if contrasts else ""
            raise ValueError(f"{what}: no usable MRD files under {root}{want}")
        self._index_files(files)

    # --- construction --------------------------------------------------------------------------
    def _inspect(self, path: Path, site: str, contrast: str | None, from_header: bool) -> _MRDFile:
        header, n_acq = read_header(path, self._dataset)
        if not header.encoding:
            raise ValueError(f"{path}: the MRD header has no <encoding>")
        enc = header.encoding[0]
        traj = getattr(enc.trajectory, "value", enc.trajectory)
        if str(traj).lower() != "cartesian":
            raise ValueError(f"{path}: trajectory {traj!r} is not supported (expected cartesian)")
        em, rm = enc.encodedSpace.matrixSize, enc.reconSpace.matrixSize
        if int(em.z) > 1:
            raise ValueError(f"{path}: 3-D encoding (encodedSpace matrix z={em.z}) is not supported; expected 2-D")
        nx, ny, rx = int(em.x), int(em.y), int(rm.x)
        lim = enc.encodingLimits.kspace_encoding_step_1 if enc.encodingLimits is not None else None
        ky_shift = ny // 2 - int(lim.center) if lim is not None and lim.center is not None else 0

        c = contrast_from_header(header) if from_header else None
        c = c if c is not None else contrast
        if c is None:
            raise ValueError(
                f"{path}: no contrast in the MRD header (protocolName / sequenceParameters); pass contrast= one of "
                f"{', '.join(map(repr, CONTRASTS))}"
            )

        # acquisition headers in bulk (the 'head' member of the compound dataset only, no sample data)
        with h5py.File(path, "r") as h:
            heads = h[self._dataset]["data"].fields("head")[:]
        flags = heads["flags"].astype(np.uint64)
        idx = heads["idx"]
        keep = (flags & np.uint64(_SKIP_MASK)) == 0
        keep &= heads["encoding_space_ref"] == 0
        for counter in ("contrast", "phase", "repetition", "set"):
            if keep.any():
                keep &= idx[counter] == idx[counter][keep].min()
        if not keep.any():
            raise ValueError(f"{path}: no imaging acquisitions (all {n_acq} are noise/navigator/other data)")
        coils = np.unique(heads["active_channels"][keep])
        if coils.size != 1:
            raise ValueError(f"{path}: acquisitions have different numbers of active channels {coils.tolist()}")
        calib_only = ((flags & np.uint64(_bit(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION))) != 0) & (
            (flags & np.uint64(_bit(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING))) == 0
        )
        slice_of = idx["slice"]
        slices = tuple(int(s) for s in np.unique(slice_of[keep]))
        acquisitions, calibration = [], []
        for s in slices:
            sel = keep & (slice_of == s)
            order = np.concatenate([np.flatnonzero(sel & ~calib_only), np.flatnonzero(sel & calib_only)])
            acquisitions.append(order.astype(np.int64))
            calibration.append(calib_only[order])
        return _MRDFile(
            path=path,
            site=site,
            subject=path.stem,
            contrast=c,
            num_coils=int(coils[0]),
            geometry=_Geometry(nx=nx, ny=ny, rx=rx, ky_shift=ky_shift),
            slices=slices,
            acquisitions=tuple(acquisitions),
            calibration=tuple(calibration),
        )

    # --- reading -------------------------------------------------------------------------------
    def _read_kspace(self, f: _MRDFile, s: int) -> np.ndarray:
        g = f.geometry
        k = np.zeros((f.num_coils, g.ny, g.nx), dtype=np.complex128)
        count = np.zeros(g.ny, dtype=np.int64)
        from_imaging = np.zeros(g.ny, dtype=bool)
        ds = ismrmrd.Dataset(str(f.path), self._dataset, create_if_needed=False, mode="r")
        try:
            for a, calib in zip(f.acquisitions[s], f.calibration[s]):
                acq = ds.read_acquisition(int(a))
                ky = int(acq.idx.kspace_encode_step_1) + g.ky_shift
                if not 0 <= ky < g.ny:
                    raise ValueError(
                        f"{f.path}: acquisition {a} has kspace_encode_step_1 outside the encoded matrix ({g.ny} lines)"
                    )
                if calib and from_imaging[ky]:
                    continue  # calibration duplicate of an imaging line
                data = np.asarray(acq.data)
                pre, post = int(acq.discard_pre), int(acq.discard_post)
                data = data[:, pre : data.shape[1] - post]
                if acq.is_flag_set(ismrmrd.ACQ_IS_REVERSE):
                    data = data[:, ::-1]
                n = data.shape[1]
                off = 0 if n == g.nx else g.nx // 2 - (int(acq.center_sample) - pre)
                if off < 0 or off + n > g.nx:
                    raise ValueError(
                        f"{f.path}: acquisition {a} with {n} samples does not fit the encoded readout ({g.nx})"
                    )
                k[:, ky, off : off + n] += data
                count[ky] += 1
                from_imaging[ky] |= not calib
        finally:
            ds.close()
        hit = count > 0
        k[:, hit, :] /= count[hit][None, :, None]
        if self._crop_readout and g.nx == 2 * g.rx:
            x = np.fft.fftshift(np.fft.ifft(np.fft.ifftshift(k, axes=-1), axis=-1, norm="ortho"), axes=-1)
            start = (g.nx - g.rx) // 2
            x = x[..., start : start + g.rx]
            k = np.fft.fftshift(np.fft.fft(np.fft.ifftshift(x, axes=-1), axis=-1, norm="ortho"), axes=-1)
            # lines never acquired are exactly zero before and after: keep them so
            k[:, ~hit, :] = 0
        return k.astype(np.complex64)

    # --- SliceSource (the rest from IndexedFileSource) -------------------------------------------
    def image(self, site: str, index: int, contrast: str) -> np.ndarray:
        """RSS of ``ifft2c`` of the assembled k-space (zero-filled where lines are missing): float32 [ky, kx]."""
        return super().image(site, index, contrast)

    def kspace(self, site: str, index: int, contrast: str, num_coils: int = 8) -> KSpaceSlice:
        """The acquired k-space (``num_coils`` ignored; unsampled lines zero), target = RSS of its ``ifft2c``."""
        return super().kspace(site, index, contrast, num_coils)

    def sampled_lines(self, site: str, index: int) -> np.ndarray:
        """bool [ky]: phase-encoding lines present in the file for slice ``index`` (before any cropping)."""
        f, s = self._entry(site, index)
        with h5py.File(f.path, "r") as h:
            heads = h[self._dataset]["data"].fields("head")[:]
        lines = heads["idx"]["kspace_encode_step_1"][f.acquisitions[s]].astype(np.int64) + f.geometry.ky_shift
        out = np.zeros(f.geometry.ny, dtype=bool)
        out[lines[(lines >= 0) & (lines < f.geometry.ny)]] = True
        return out
