"""Answers in the client's format: ``.npy``, NIfTI, PNG preview, DICOM series (zip or multipart/related).

The format comes from the ``format`` query parameter, else the ``Accept`` header:

==================  =============================================  ===================================
format              Accept                                         body
==================  =============================================  ===================================
``npy``             ``application/x-npy``, ``application/octet-stream``  float32 ``[slices, rows, cols]``
``nifti``           ``application/x-nifti``, ``application/nifti``  NIfTI-1 ``.nii``, float32, ``data[c, r, s]``
``png``             ``image/png``                                  8-bit grey montage of the slices (or ``slice=``)
``dicom``           ``application/zip``, ``application/dicom+zip``  zip of MR Image Storage instances
``dicom-multipart`` ``multipart/related``, ``application/dicom``    ``multipart/related; type="application/dicom"``
==================  =============================================  ===================================
"""

from __future__ import annotations

import io
import math
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset

from mrcore.durable import write_durable
from serving.api.dicom_adapter import new_mr_series
from serving.api.errors import ApiError
from serving.api.geometry import affine_from_geometry, geometry_from_affine
from serving.dicom import SeriesGeometry, build_derived_series
from serving.dicom.quality import annotate_quality
from serving.quality import FALLBACK_METHOD, QualitySettings, SliceQuality
from serving.synthesis_check import annotate_warnings

if TYPE_CHECKING:
    from mrcore.synthesis_input import InputCheck

__all__ = ["OUTPUT_FORMATS", "OutputMeta", "Rendered", "negotiate", "render"]

OUTPUT_FORMATS = ("npy", "nifti", "png", "dicom", "dicom-multipart")
MEDIA_TYPES = {"npy": "application/x-npy", "nifti": "application/x-nifti", "png": "image/png",
               "dicom": "application/zip", "dicom-multipart": 'multipart/related; type="application/dicom"'}
FILENAMES = {"npy": "result.npy", "nifti": "result.nii", "png": "preview.png", "dicom": "series.zip",
             "dicom-multipart": "series.multipart"}
_ACCEPT = {"application/x-npy": "npy", "application/npy": "npy", "application/octet-stream": "npy",
           "application/x-nifti": "nifti", "application/nifti": "nifti", "image/png": "png", "image/*": "png",
           "application/zip": "dicom", "application/dicom+zip": "dicom", "multipart/related": "dicom-multipart",
           "application/dicom": "dicom-multipart"}
_EXPECTED = ("format=npy|nifti|png|dicom|dicom-multipart, or Accept: application/x-npy, application/x-nifti, "
             "image/png, application/zip, multipart/related; type=\"application/dicom\"")


def negotiate(fmt: str | None, accept: str | None, default: str) -> str:
    """The answer's format: ``fmt`` (query) wins, then the best ``Accept`` entry, else ``default``; 406 when
    ``Accept`` names only types the API cannot produce."""
    if fmt:
        return fmt
    if not accept or not accept.strip():
        return default
    entries = []
    for i, item in enumerate(accept.split(",")):
        parts = [p.strip() for p in item.split(";")]
        media = parts[0].lower()
        q = 1.0
        for p in parts[1:]:
            if p.lower().startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        if media and q > 0:
            entries.append((-q, i, media))
    for _, _, media in sorted(entries):
        if media in ("*/*", "*", "application/*"):
            return default
        if media in _ACCEPT:
            return _ACCEPT[media]
    raise ApiError(406, "none of the Accept header's media types can be produced", field="Accept",
                   expected=_EXPECTED, got=accept[:120], code="not_acceptable")


@dataclass
class OutputMeta:
    """What the formats need besides the volume."""

    task: str                              # "reconstruction" or "synthesis"
    model: str
    version: str
    description: str
    contrast: str | None = None            # contrast of the output images
    geometry: SeriesGeometry | None = None
    sources: list[Dataset] | None = None   # source datasets (derived series references them)
    frames: list[int] | None = None
    nifti: nib.Nifti1Image | nib.Nifti2Image | None = None  # source NIfTI image (affine/header kept)
    headers: dict = field(default_factory=dict)
    quality: list[SliceQuality] | None = None          # the reconstruction self-check per slice
    quality_settings: QualitySettings | None = None
    synthesis_check: InputCheck | None = None            # the synthesis input check (its warnings)


@dataclass
class Rendered:
    media_type: str
    filename: str
    body: bytes
    headers: dict = field(default_factory=dict)
    quality: list[dict] | None = None   # the self-check per slice (public JSON form), for the job resource
    warnings: list[dict] | None = None  # the synthesis input check's warnings (public JSON form), for the job


def render(fmt: str, volume: np.ndarray, meta: OutputMeta, *, slice_index: int | None = None) -> Rendered:
    """Format float32 ``volume`` [slices, rows, cols] as ``fmt``."""
    if slice_index is not None and fmt != "png":
        raise ApiError(422, "'slice' applies to format=png only", field="slice", expected="format=png",
                       code="invalid_parameter")
    if fmt == "npy":
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(volume, dtype=np.float32), allow_pickle=False)
        body = buf.getvalue()
        media = MEDIA_TYPES[fmt]
    elif fmt == "nifti":
        body, media = _nifti(volume, meta), MEDIA_TYPES[fmt]
    elif fmt == "png":
        body, media = _png(volume, slice_index), MEDIA_TYPES[fmt]
    elif fmt in ("dicom", "dicom-multipart"):
        datasets = _dicom_series(volume, meta)
        files = [_dcm_bytes(ds) for ds in datasets]
        if fmt == "dicom":
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
                for i, data in enumerate(files):
                    z.writestr(f"IM{i + 1:04d}.dcm", data)
            body, media = buf.getvalue(), MEDIA_TYPES[fmt]
        else:
            boundary = uuid.uuid4().hex
            chunks = []
            for data in files:
                chunks.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n"
                              f"Content-Length: {len(data)}\r\n\r\n".encode())
                chunks.append(data)
                chunks.append(b"\r\n")
            chunks.append(f"--{boundary}--\r\n".encode())
            body = b"".join(chunks)
            media = f'multipart/related; type="application/dicom"; boundary={boundary}'
        meta.headers["X-Series-Instance-UID"] = str(datasets[0].SeriesInstanceUID)
    else:  # pragma: no cover - the routes validate the format
        raise ApiError(422, f"unknown format {fmt!r}", field="format", expected=_EXPECTED)
    headers = {"X-Model": meta.model, "X-Model-Version": str(meta.version), "X-Slices": str(volume.shape[0]),
               **meta.headers}
    quality = [q.public() for q in meta.quality] if meta.quality is not None else None
    warnings = [w.public() for w in meta.synthesis_check.warnings] if meta.synthesis_check is not None else None
    return Rendered(media, FILENAMES[fmt], body, headers, quality, warnings)


def write_result(rendered: Rendered, path: Path, mode: int | None = None) -> None:
    """A job's answer, written crash-safely (the job store survives restarts) with ``mode`` (e.g. 0o600)."""
    write_durable(path, rendered.body, mode=mode)


# --------------------------------------------------------------------------------------------------
def _geometry(volume: np.ndarray, meta: OutputMeta):
    if meta.geometry is not None:
        return meta.geometry
    if meta.nifti is not None:
        try:
            return geometry_from_affine(meta.nifti.affine, volume.shape[0])
        except ValueError:
            pass
    s, rows, cols = volume.shape
    return SeriesGeometry.axial(s, (rows, cols), pixel_spacing=(240.0 / rows, 240.0 / cols), slice_thickness=5.0)


def _nifti(volume: np.ndarray, meta: OutputMeta) -> bytes:
    data = np.ascontiguousarray(volume.transpose(2, 1, 0), dtype=np.float32)
    if meta.nifti is not None:
        header = meta.nifti.header.copy()
        header.set_data_dtype(np.float32)
        img = type(meta.nifti)(data, meta.nifti.affine, header)
        img.header.set_slope_inter(1.0, 0.0)
    else:
        affine = affine_from_geometry(_geometry(volume, meta))
        img = nib.Nifti1Image(data, affine)
        img.header.set_xyzt_units("mm")
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
    img.header["descrip"] = f"{meta.model} v{meta.version}".encode()[:79]
    return img.to_bytes()


def _png(volume: np.ndarray, slice_index: int | None) -> bytes:
    s, rows, cols = volume.shape
    if slice_index is not None:
        if not 0 <= slice_index < s:
            raise ApiError(422, f"slice {slice_index} does not exist ({s} slices)", field="slice",
                           expected=f"0 <= slice < {s}", got=str(slice_index), code="invalid_parameter")
        tiles, ncol = volume[slice_index:slice_index + 1], 1
    else:
        tiles, ncol = volume, int(math.ceil(math.sqrt(s)))
    nrow = int(math.ceil(tiles.shape[0] / ncol))
    hi = float(np.percentile(tiles, 99.5)) if tiles.size else 1.0
    lo = float(min(0.0, tiles.min()))
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    canvas = np.zeros((nrow * rows, ncol * cols), np.uint8)
    for i, img in enumerate(tiles):
        r, c = divmod(i, ncol)
        canvas[r * rows:(r + 1) * rows, c * cols:(c + 1) * cols] = np.clip((img - lo) * scale, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(canvas, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _dicom_series(volume: np.ndarray, meta: OutputMeta):
    datasets = _dicom_datasets(volume, meta)
    if meta.quality is not None and meta.quality_settings is not None:
        annotate_quality(datasets, meta.quality, meta.quality_settings, FALLBACK_METHOD)
    if meta.synthesis_check is not None:
        annotate_warnings(datasets, meta.synthesis_check)
    return datasets


def _dicom_datasets(volume: np.ndarray, meta: OutputMeta):
    if meta.sources:
        return build_derived_series(meta.sources, volume, model_name=meta.model, model_version=meta.version,
                                    series_description=meta.description, geometry=meta.geometry,
                                    source_frames=meta.frames, same_contrast=meta.task == "reconstruction",
                                    series_number_offset=1000 if meta.task == "reconstruction" else 2000)
    return new_mr_series(volume, _geometry(volume, meta), model_name=meta.model, model_version=meta.version,
                         series_description=meta.description, original=meta.task == "reconstruction")


def _dcm_bytes(ds) -> bytes:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()
