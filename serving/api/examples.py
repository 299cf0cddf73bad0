"""Small example files for the curl examples and the tests, made from the embedded phantom (no patient data).

``mri-api examples --out examples/`` (or ``python -m serving.api examples``) writes:

=======================  ==================================================================================
``kspace.npy``           complex64 [2, 8, 128, 128], T2w, 4x equispaced undersampled (mask inferred)
``kspace.npz``           the same with ``mask`` float32 [128, 128] and ``maps`` complex64 [8, 128, 128]
``mask.npy``             the mask alone (for ``curl -F mask=@mask.npy``)
``kspace_fastmri.h5``    fastMRI layout (``/kspace`` [2, 8, 128, 128], ``/mask`` over kx, ``acquisition=AXT2``)
``kspace_mrd.h5``        ISMRMRD/MRD raw data (only the sampled lines are stored)
``kspace_dicom.zip``     DICOM Raw Data Storage instances with the k-space private block (serving.dicom)
``t1w_series.zip``       T1w MR Image Storage series, 4 slices 128x128 (placeholder patient "Phantom^Example")
``t1w.nii.gz``           the same T1w volume as NIfTI
``kspace_job.npy``       complex64 [24, 8, 128, 128] for the job-mode example
=======================  ==================================================================================

The mask is the one the shipped ``recon_unrolled`` was trained with (equispaced, 4x, centre fraction 0.125).
"""

from __future__ import annotations

import gzip
import io
import zipfile
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pydicom

from mrcore.data.phantom import PhantomConfig, PhantomSource
from mrcore.data.readers.mrd import write_mrd
from mrcore.masks import make_mask
from serving.api.dicom_adapter import new_mr_series
from serving.api.geometry import affine_from_geometry
from serving.dicom import SeriesGeometry, encode_kspace

__all__ = ["write_examples"]

PATIENT_NAME = "Phantom^Example"
PATIENT_ID = "PHANTOM-0001"


def _zip(datasets, path: Path, prefix: str) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for i, ds in enumerate(datasets):
            buf = io.BytesIO()
            pydicom.dcmwrite(buf, ds, enforce_file_format=True)
            z.writestr(f"{prefix}{i + 1:04d}.dcm", buf.getvalue())


def write_examples(out: Path, *, cache_dir: Path | None = Path(".cache/mrdata"), seed: int = 0,
                   job_slices: int = 24) -> dict[str, Path]:
    """Write the example files into ``out``; returns ``{name: path}``. Deterministic for a seed."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n_job = max(job_slices, 6)
    src = PhantomSource(PhantomConfig(seed=seed, sites=("hospital-a",), subjects_per_site=1,
                                      slices_per_subject=n_job, matrix=(128, 128), cache_dir=cache_dir))
    site = src.sites[0]
    mid = n_job // 2
    recon_idx = [mid - 1, mid]
    samples = [src.kspace(site, i, "T2w", num_coils=8) for i in recon_idx]
    kspace = np.stack([s.kspace for s in samples]).astype(np.complex64)
    mask = make_mask("equispaced", (128, 128), 4.0, 0.125, seed=0)
    under = (kspace * mask).astype(np.complex64)
    paths: dict[str, Path] = {}

    def put(name: str) -> Path:
        paths[name] = out / name
        return paths[name]

    np.save(put("kspace.npy"), under)
    arrays = {"kspace": under, "mask": mask}
    if samples[0].maps is not None:
        arrays["maps"] = samples[0].maps.astype(np.complex64)
    np.savez(put("kspace.npz"), **arrays)
    np.save(put("mask.npy"), mask)

    col_mask = make_mask("equispaced", (128, 128), 4.0, 0.125, seed=0, axis=-1)
    with h5py.File(put("kspace_fastmri.h5"), "w") as f:
        f.create_dataset("kspace", data=(kspace * col_mask).astype(np.complex64))
        f.create_dataset("mask", data=col_mask[0].astype(np.float32))
        f.attrs["acquisition"] = "AXT2"
    write_mrd(put("kspace_mrd.h5"), under, protocol_name="T2w axial phantom", sampled=mask[:, 0] > 0,
              fov_mm=(240.0, 240.0, 5.0), overwrite=True)
    raw = encode_kspace(under, mask, per_slice=True, contrast="T2w", patient_id=PATIENT_ID, patient_name=PATIENT_NAME,
                        series_description="T2w axial phantom k-space")
    _zip(raw, put("kspace_dicom.zip"), "RAW")

    t1_idx = list(range(mid - 2, mid + 2))
    t1 = np.stack([src.image(site, i, "T1w") for i in t1_idx]).astype(np.float32)
    geometry = SeriesGeometry.axial(len(t1_idx), t1.shape[1:], pixel_spacing=(240 / 128, 240 / 128), slice_thickness=5.0)
    series = new_mr_series(t1, geometry, model_name="phantom (mri-service)", model_version="1",
                           series_description="T1w axial phantom", original=True, patient_name=PATIENT_NAME,
                           patient_id=PATIENT_ID, series_number=3, study_description="phantom example",
                           extra={"RepetitionTime": "500", "EchoTime": "12", "ScanningSequence": "SE",
                                  "ProtocolName": "T1w axial"})
    _zip(series, put("t1w_series.zip"), "IM")
    affine = affine_from_geometry(geometry)
    img = nib.Nifti1Image(np.ascontiguousarray(t1.transpose(2, 1, 0)), affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    put("t1w.nii.gz").write_bytes(gzip.compress(img.to_bytes(), compresslevel=6))

    job = np.stack([src.kspace(site, i, "T2w", num_coils=8).kspace for i in range(n_job)])
    np.save(put("kspace_job.npy"), (job[:job_slices] * mask).astype(np.complex64))
    return paths
