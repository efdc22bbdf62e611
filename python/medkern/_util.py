"""Argument handling shared by every public kernel wrapper."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from medkern._dispatch import is_cupy_array
from medkern.image import Image

__all__ = ["unwrap", "as_image", "check_mask", "per_axis", "KERNEL_DTYPES"]

# dtypes the compiled kernels take without a conversion copy (bindings.hpp visit_dtype).
KERNEL_DTYPES = ("uint8", "int16", "uint16", "int32", "float32", "float64")


def unwrap(img: Any, name: str = "img", dtypes: Sequence[str] | None = KERNEL_DTYPES
           ) -> tuple[Any, Image | None, Callable[[Any], Any]]:
    """Split an Image or a bare array into (array, image or None, rewrap).

    ``rewrap(out_array)`` gives the result back in the caller's form: an Image with the input's
    geometry when an Image came in, the bare array otherwise.
    """
    if isinstance(img, Image):
        image, array = img, img.array
        if img.is_vector:
            raise ValueError(f"{name} is a vector image; this operation takes scalar images")
    else:
        image = None
        array = img if is_cupy_array(img) else np.asarray(img)
        if array.ndim not in (2, 3):
            raise ValueError(f"{name} must be a 2D or 3D image, got an array of shape {array.shape}")
    if dtypes is not None and array.dtype.name not in dtypes:
        if array.dtype == np.bool_ or array.dtype.kind in "iu" and array.dtype.itemsize <= 2:
            array = array.astype(np.int16 if array.dtype.kind == "i" else np.uint16)
        else:
            raise TypeError(f"{name} has dtype {array.dtype}; expected one of {', '.join(dtypes)}")

    def rewrap(out: Any) -> Any:
        return image.with_array(out) if image is not None else out

    return array, image, rewrap


def as_image(img: Any, name: str = "img") -> Image:
    """An Image as is, or a bare array wrapped with unit spacing at the origin."""
    if isinstance(img, Image):
        return img
    array = img if is_cupy_array(img) else np.asarray(img)
    if array.ndim not in (2, 3):
        raise ValueError(f"{name} must be a 2D or 3D image, got an array of shape {array.shape}")
    return Image(array)


def check_mask(mask: Any, shape: tuple[int, ...], name: str = "mask") -> Any:
    """A boolean-valued mask as uint8 with the image's shape (None passes through)."""
    if mask is None:
        return None
    if isinstance(mask, Image):
        mask = mask.array
    xp = np
    if is_cupy_array(mask):
        import cupy as xp  # noqa: F811
    else:
        mask = np.asarray(mask)
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(mask.shape)}, the image has shape {tuple(shape)}")
    if mask.dtype != np.bool_ and mask.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be boolean or numeric, got dtype {mask.dtype}")
    return xp.ascontiguousarray(mask != 0, dtype=xp.uint8)


def per_axis(value: Any, ndim: int, name: str) -> tuple[float, ...]:
    """A scalar or a per-axis sequence (array-axis order) as a tuple of ndim floats."""
    if np.isscalar(value):
        out = (float(value),) * ndim
    else:
        out = tuple(float(v) for v in value)
    if len(out) != ndim:
        raise ValueError(f"{name} needs 1 or {ndim} values (array-axis order), got {len(out)}")
    if not all(np.isfinite(v) for v in out):
        raise ValueError(f"{name} must be finite, got {out}")
    return out
