"""NIfTI via nibabel. NIfTI stores RAS with axes (i, j, k); medkern is LPS with axes (k, j, i).

Geometry precision: NIfTI-1 stores the affine as float32, so an Image round-trips through a
NIfTI-1 file exactly to float32 precision (~1e-5 mm at 100 mm). ``write(..., nifti_version=2)``
stores float64 and round-trips bit for bit.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from medkern.image import Image
from medkern.io._atomic import atomic_path

__all__ = ["image_from_nibabel", "image_to_nibabel", "read_nifti", "write_nifti"]

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
# ITK/NIfTI intent for displacement/vector fields stored as (I, J, K, 1, C).
_INTENT_VECTOR = 1007


def _geometry_from_affine(affine_ras: np.ndarray, ndim: int):
    m = _RAS_TO_LPS @ np.asarray(affine_ras, dtype=np.float64)[:3, :3]
    t = _RAS_TO_LPS @ np.asarray(affine_ras, dtype=np.float64)[:3, 3]
    m = m[:ndim, :ndim][:, ::-1]  # nibabel columns are (i, j, k); ours are (k, j, i)
    spacing = np.linalg.norm(m, axis=0)
    if np.any(spacing == 0):
        raise ValueError("NIfTI affine has a zero-length axis; the file's geometry is invalid")
    return tuple(spacing), t[:ndim], m / spacing


def image_from_nibabel(nifti: Any, volume: int | None = None) -> Image:
    """Image from a nibabel spatial image (3D, 2D, a 4D series with ``volume=t``, or a vector field)."""
    proxy = nifti.dataobj
    slope = getattr(proxy, "slope", 1.0)
    inter = getattr(proxy, "inter", 0.0)
    scaled = not (slope in (None, 1.0) or np.isnan(slope)) or not (inter in (None, 0.0) or np.isnan(inter))
    data = np.asanyarray(proxy) if not scaled else np.asanyarray(proxy, dtype=np.float32)
    vector = False
    header = nifti.header
    intent = int(header.get("intent_code", 0)) if hasattr(header, "get") else 0
    if data.ndim == 5 and data.shape[3] == 1:
        data = data[:, :, :, 0, :]
        vector = True
    elif data.ndim == 4 and intent == _INTENT_VECTOR:
        vector = True
    elif data.ndim == 4:
        if volume is None:
            if data.shape[3] == 1:
                data = data[..., 0]
            else:
                raise ValueError(f"NIfTI has {data.shape[3]} volumes (4D); pass volume=t to pick one")
        else:
            if not 0 <= volume < data.shape[3]:
                raise ValueError(f"volume={volume} is out of range for {data.shape[3]} volumes")
            data = data[..., volume]
    elif data.ndim not in (2, 3):
        raise ValueError(f"unsupported NIfTI data shape {data.shape}")
    spatial = data.ndim - (1 if vector else 0)
    # (i, j, k[, c]) -> (k, j, i[, c]); copy so the array is C-contiguous for the kernels.
    axes = tuple(range(spatial))[::-1] + ((spatial,) if vector else ())
    array = np.ascontiguousarray(np.transpose(data, axes))
    spacing, origin, direction = _geometry_from_affine(nifti.affine, spatial)
    return Image(array, spacing=spacing, origin=origin, direction=direction, vector=vector)


def _affine_ras(img: Image) -> np.ndarray:
    n = img.ndim
    m = np.eye(3)
    t = np.zeros(3)
    m[:n, :n] = (img.direction * np.asarray(img.spacing)[None, :])[:, ::-1]
    t[:n] = img.origin
    a = np.eye(4)
    a[:3, :3] = _RAS_TO_LPS @ m
    a[:3, 3] = _RAS_TO_LPS @ t
    return a


def image_to_nibabel(img: Image, nifti_version: int = 1):
    import nibabel as nib

    array = np.asarray(img)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    spatial = img.ndim
    axes = tuple(range(spatial))[::-1] + ((spatial,) if img.is_vector else ())
    data = np.transpose(array, axes)
    if img.is_vector:
        data = data.reshape(data.shape[:spatial] + (1,) * (3 - spatial) + (1, data.shape[-1]))
    cls = {1: nib.Nifti1Image, 2: nib.Nifti2Image}.get(nifti_version)
    if cls is None:
        raise ValueError(f"nifti_version must be 1 or 2, got {nifti_version}")
    affine = _affine_ras(img)
    out = cls(data, affine)
    out.set_sform(affine, code=1)
    out.set_qform(affine, code=1)
    if img.is_vector:
        out.header.set_intent(_INTENT_VECTOR)
    out.header.set_xyzt_units("mm", "sec")
    return out


def read_nifti(path: str | os.PathLike, volume: int | None = None) -> Image:
    import nibabel as nib

    try:
        nifti = nib.load(os.fspath(path))
        return image_from_nibabel(nifti, volume=volume)
    except (nib.filebasedimages.ImageFileError, EOFError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ValueError(f"{path}: not a readable NIfTI file ({exc})") from exc


def write_nifti(img: Image, path: str | os.PathLike, nifti_version: int = 1) -> None:
    import nibabel as nib

    nifti = image_to_nibabel(img, nifti_version=nifti_version)
    with atomic_path(path) as tmp:
        nib.save(nifti, os.fspath(tmp))
