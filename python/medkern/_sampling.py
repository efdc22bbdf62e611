"""Sampling of 2D/3D arrays at continuous indices: the resampling family's kernels, the checks of
their arguments, and :func:`map_coordinates`, the low-level sampler built on them.

The sampling conventions (inside test, rounding, boundary extension, non-finite values, output
dtypes) are those listed in :mod:`medkern._resample`. This module needs no transform, so
:mod:`medkern._transforms` samples displacement fields with it and :mod:`medkern._resample`
builds on both.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from medkern._dispatch import Kernel, is_cupy_array
from medkern._docstrings import fill_doc
from medkern._typing import Array, ImageLike
from medkern._util import KERNEL_DTYPES
from medkern.image import Image

__all__ = ["map_coordinates", "INTERPOLATIONS"]

INTERPOLATIONS = ("nearest", "linear", "cubic", "label")
_CODE = {name: i for i, name in enumerate(INTERPOLATIONS)}  # the kernels' Interpolation enum

_NUMBA = "medkern._numba.resample:"
_CUPY = "medkern._cupy.resample:"
separable_kernel = Kernel("resample_separable", cpp="resample_separable", numba=_NUMBA + "resample_separable",
                          cuda=_CUPY + "resample_separable_cuda", cupy=_CUPY + "resample_separable")
gather_kernel = Kernel("gather_nearest", cpp="gather_nearest", numba=_NUMBA + "gather_nearest",
                       cuda=_CUPY + "gather_nearest_cuda", cupy=_CUPY + "gather_nearest")
warp_kernel = Kernel("warp", cpp="warp", numba=_NUMBA + "warp",
                     cuda=_CUPY + "warp_cuda", cupy=_CUPY + "warp")
points_kernel = Kernel("map_coordinates", cpp="map_coordinates", numba=_NUMBA + "map_coordinates",
                       cuda=_CUPY + "map_coordinates_cuda", cupy=_CUPY + "map_coordinates")
coefficients_kernel = Kernel("bspline_coefficients", cpp="bspline_coefficients",
                             numba=_NUMBA + "bspline_coefficients",
                             cuda=_CUPY + "bspline_coefficients_cuda", cupy=_CUPY + "bspline_coefficients")


# ---------------------------------------------------------------------- argument handling
def _check_interpolation(interpolation: str) -> int:
    if interpolation not in _CODE:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    return _CODE[interpolation]


def _check_array(x: Any, interpolation: str, name: str = "img") -> Any:
    """The array the kernels take for this interpolation (raises for unusable dtypes)."""
    if 0 in x.shape:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    if x.dtype.kind not in "biuf" or x.dtype.itemsize > 8:
        raise TypeError(f"{name} has dtype {x.dtype}; resampling takes bool, integer or float images")
    if interpolation == "label":
        if x.dtype != np.bool_ and x.dtype.kind not in "iu":
            raise TypeError(f"interpolation='label' needs an integer or bool label image, {name} has dtype "
                            f"{x.dtype}; use 'linear' or 'cubic' for intensities")
    elif interpolation != "nearest" and x.dtype.name not in KERNEL_DTYPES:
        if x.dtype == np.bool_ or x.dtype.kind in "iu" and x.dtype.itemsize <= 2:
            x = x.astype(np.int16 if x.dtype.kind == "i" else np.uint16)
        else:
            raise TypeError(f"{name} has dtype {x.dtype}; {interpolation} interpolation takes "
                            f"{', '.join(KERNEL_DTYPES)}")
    return x


def _out_dtype(dtype: np.dtype, interpolation: str) -> np.dtype:
    if interpolation in ("nearest", "label"):
        return np.dtype(dtype)
    return np.dtype(np.float64 if dtype == np.float64 else np.float32)


def _check_fill(fill: Any) -> float:
    if isinstance(fill, (str, bytes)) or not np.isscalar(fill) and np.ndim(fill) != 0:
        raise TypeError(f"fill must be a number, got {fill!r}")
    try:
        return float(fill)
    except (TypeError, ValueError):
        raise TypeError(f"fill must be a number, got {fill!r}") from None


def _fill_arg(fill: Any, dtype: np.dtype, interpolation: str) -> float | int:
    """``fill`` as the kernels take it: a float, or the element's bit pattern for copied dtypes."""
    value = _check_fill(fill)
    out = _out_dtype(dtype, interpolation)
    if interpolation not in ("nearest", "label"):
        return value
    if out.kind in "iub":
        if not math.isfinite(value) or value != int(value):
            raise ValueError(f"fill={fill!r} is not an integer, but the {interpolation} output keeps "
                             f"the integer dtype {out}")
        info = np.iinfo(out) if out.kind != "b" else None
        if info is not None and not info.min <= value <= info.max:
            raise ValueError(f"fill={fill!r} does not fit the output dtype {out} [{info.min}, {info.max}]")
        if out.kind == "b" and value not in (0, 1):
            raise ValueError(f"fill={fill!r} must be 0 or 1 for a bool image")
    bits = np.array(value).astype(out).reshape(1)
    return int(bits.view(f"u{out.itemsize}")[0])


def _as3d(x: Any) -> Any:
    return x.reshape((1,) + tuple(x.shape)) if x.ndim == 2 else x


def _bits_view(x: Any) -> Any:
    """Contiguous view of the elements as unsigned integers of the same size."""
    xp = np
    if is_cupy_array(x):
        import cupy as xp  # noqa: F811
    x = xp.ascontiguousarray(x)
    return x.view(f"u{x.dtype.itemsize}")


@fill_doc
def map_coordinates(array: ImageLike, coordinates: Array | ArrayLike, interpolation: str = "linear",
                    fill: float = 0.0, *, backend: str = "auto") -> Array:
    """Sample a 2D/3D array at continuous indices: the low-level sampler the other functions use.

    This is ``scipy.ndimage.map_coordinates(array, coordinates, order=1, mode="nearest")`` inside
    the image for ``"linear"``, and ``order=3, mode="mirror"`` for ``"cubic"``; points outside
    ``[-0.5, n - 0.5)`` on any axis get ``fill``. Boundary rules and output dtypes are those of
    :func:`resample`.

    Parameters
    ----------
    array : Image or array_like
        A 2D or 3D numpy or cupy array (an Image's array is used; its geometry is not).
    coordinates : array_like
        Shape ``(ndim, ...)`` (scipy.ndimage.map_coordinates layout), each row an array-axis
        index with voxel centres at integers.
    %(interpolation)s
    %(fill)s
    %(backend)s

    Returns
    -------
    numpy.ndarray or cupy.ndarray
        The samples, shape ``coordinates.shape[1:]``, on the input's device.

    Raises
    ------
    ValueError
        An unknown interpolation, an array that is not 2D or 3D, or coordinates of the wrong
        shape.
    TypeError
        A dtype the interpolation cannot take.

    See Also
    --------
    resample_to : Sample onto a whole grid in world coordinates.

    Examples
    --------
    >>> a = np.arange(16, dtype=np.float32).reshape(4, 4)
    >>> mk.map_coordinates(a, [[0.5, 1.5, 3.0], [0.0, 2.0, 9.0]])   # row 0: j, row 1: i; the last point is outside
    array([2., 8., 0.], dtype=float32)
    """
    code = _check_interpolation(interpolation)
    x = array.array if isinstance(array, Image) else array
    x = x if is_cupy_array(x) else np.asarray(x)
    if x.ndim not in (2, 3):
        raise ValueError(f"array must be 2D or 3D, got shape {tuple(x.shape)}")
    x = _check_array(x, interpolation, "array")
    xp = np
    if is_cupy_array(x):
        import cupy as xp  # noqa: F811
    coords = xp.asarray(coordinates, dtype=xp.float64)
    if coords.ndim < 1 or coords.shape[0] != x.ndim:
        raise ValueError(f"coordinates must have shape ({x.ndim}, ...) for a {x.ndim}D array, "
                         f"got {tuple(coords.shape)}")
    shape = tuple(coords.shape[1:])
    flat = xp.ascontiguousarray(coords.reshape(x.ndim, -1))
    x3 = _as3d(x)
    if interpolation in ("nearest", "label"):
        out = points_kernel(_bits_view(x3), code, flat, _fill_arg(fill, x.dtype, interpolation),
                            backend=backend).view(x.dtype)
    else:
        if interpolation == "cubic":
            x3 = coefficients_kernel(x3, backend=backend)
        out = points_kernel(x3, code, flat, float(fill), backend=backend)
    return out.reshape(shape)
