"""Argument handling shared by every public kernel wrapper."""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from medkern._dispatch import array_module, is_cupy_array
from medkern.image import Image

__all__ = ["unwrap", "as_image", "check_mask", "per_axis", "KERNEL_DTYPES", "check_finite", "check_stats",
           "check_range", "check_same_geometry", "check_nonempty"]

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


# One policy for non-finite voxels across the package: a kernel whose result would be undefined
# (statistics, histograms, rank filters, registration, radiomics) rejects NaN and +-inf alike, with
# the count of each; linear filters and interpolation propagate them as scipy.ndimage does, and
# say so in their docstrings.
def _nonfinite_message(fn: str, name: str, n_nan: int, n_inf: int, where: str, hint: str) -> str:
    return (f"{fn}: {name} has {n_nan + n_inf} non-finite voxel(s){where} ({n_nan} NaN, {n_inf} +-inf); "
            f"{hint}")


def _count_nonfinite(values: Any) -> tuple[int, int]:
    xp = array_module(values)
    n_nan = int(xp.count_nonzero(xp.isnan(values)))
    n_inf = int(xp.count_nonzero(xp.isinf(values)))
    return n_nan, n_inf


def check_finite(x: Any, fn: str, name: str = "img", mask: Any = None,
                 hint: str = "replace them first (e.g. np.nan_to_num)") -> None:
    """Raise ValueError naming ``fn``, ``name`` and the count when a float array (restricted to
    ``mask != 0`` when given) holds NaN or +-inf. Integer arrays pass without a look."""
    if x.dtype.kind != "f" or x.size == 0:
        return
    values = x if mask is None else x[mask != 0]
    if values.size == 0:
        return
    # min and max propagate NaN and reach +-inf, so a finite pair proves every value finite
    # without a temporary of the image's size.
    if math.isfinite(float(values.min())) and math.isfinite(float(values.max())):
        return
    n_nan, n_inf = _count_nonfinite(values)
    raise ValueError(_nonfinite_message(fn, name, n_nan, n_inf, "" if mask is None else " inside the mask", hint))


def check_stats(st: dict, x: Any, fn: str, name: str = "img", mask: Any = None,
                hint: str = "replace them or exclude them with mask") -> None:
    """check_finite from the result of a moments / value_range kernel (NaN counted, NaN skipped
    in min / max): only when it shows a NaN or an infinite extreme is the image looked at again."""
    if not st["nan_count"] and (st["count"] == 0 or (math.isfinite(float(st["min"]))
                                                    and math.isfinite(float(st["max"])))):
        return
    check_finite(x, fn, name, mask, hint)
    raise ValueError(_nonfinite_message(fn, name, int(st["nan_count"]), 0, "", hint))  # pragma: no cover


def check_range(lo: float, hi: float, fn: str, name: str = "img", dtype: Any = np.float64) -> None:
    """Refuse finite extremes too far apart for histograms in ``dtype`` (the image's float type,
    float64 for integers): bin edges take max - min in that type and the per-class sums add up to
    2**32 voxels times a value, so both must stay below its largest value over 2**32."""
    kind = np.dtype(dtype)
    limit = float(np.finfo(kind if kind.kind == "f" else np.float64).max) / 2.0**32
    width = float(hi) - float(lo)
    if not (math.isfinite(width) and width <= limit and max(abs(float(lo)), abs(float(hi))) <= limit):
        raise ValueError(f"{fn}: the intensity range of {name}, [{lo:g}, {hi:g}], is too wide for "
                         f"{kind.name if kind.kind == 'f' else 'float64'} histograms (max - min or the sums over "
                         f"the voxels would overflow beyond {limit:.3g}); rescale the image first")


def check_same_geometry(a: Image, b: Image, fn: str, name_a: str = "img", name_b: str = "mask") -> None:
    """Voxel-by-voxel operations on two Images need one grid: spacing, origin and direction equal
    (to 1e-6 relative), else ValueError naming the field that differs."""
    for field, u, v in (("spacing", a.spacing, b.spacing), ("origin", a.origin, b.origin),
                        ("direction", a.direction, b.direction)):
        u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
        scale = max(1.0, float(np.abs(u).max(initial=0.0)))
        if u.shape != v.shape or not np.allclose(u, v, rtol=0.0, atol=1e-6 * scale):
            raise ValueError(f"{fn}: {name_b} geometry differs from {name_a} geometry: {field} {v.tolist()} vs "
                             f"{u.tolist()}; resample {name_b} onto the {name_a} grid first (mk.resample_to)")


def check_nonempty(x: Any, fn: str, name: str = "img") -> None:
    if x.size == 0:
        raise ValueError(f"{fn}: {name} is empty (shape {tuple(x.shape)}, zero voxels)")
