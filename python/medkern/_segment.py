"""Segmentation: Otsu threshold, connected components, Euclidean distance transform, binary
morphology with physical ball radii, hole filling and component filtering.

Masks are any nonzero voxel; mask outputs are ``bool`` arrays (an Image in, an Image out with
the same geometry). Per-axis quantities are in array-axis order and physical units (mm) come
from the Image's spacing (1 mm per voxel for a bare array).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from medkern._contrast import histogram_edges
from medkern._dispatch import Kernel, is_cupy_array
from medkern._intensity import moments
from medkern._util import check_finite, check_range, check_stats
from medkern.image import Image

__all__ = [
    "binary_close",
    "binary_dilate",
    "binary_erode",
    "binary_open",
    "distance_transform",
    "fill_holes",
    "label",
    "largest_component",
    "remove_small_components",
    "threshold_otsu",
]

# A voxel whose centre lies on the ball's sphere (to 1 ppm) belongs to the ball: the squared
# distances of the distance-transform path are float32, so an exact tie must not hinge on rounding.
_BALL_TOLERANCE = 1e-6
# Balls whose line-segment decomposition needs up to this many passes over the volume (rows plus
# the row shifts of the distinct half-widths) are applied directly; larger ones go through the
# distance transform, whose cost does not grow with the radius (about as much as this many).
_DIRECT_MAX_PASSES = 80


_label = Kernel("label", cpp="label", numba="medkern._numba.segment:label")
_distance = Kernel("distance_transform", cpp="distance_transform",
                   numba="medkern._numba.segment:distance_transform")
_morphology = Kernel("binary_morphology", cpp="binary_morphology",
                     numba="medkern._numba.segment:binary_morphology")


def _split(img: Any, name: str) -> tuple[np.ndarray, Image | None]:
    """The numpy array of an Image or array (2D or 3D) and the Image (or None)."""
    if isinstance(img, Image):
        if img.is_vector:
            raise ValueError(f"{name} is a vector image; this operation takes scalar images")
        array, image = img.array, img
    else:
        array, image = img, None
    if is_cupy_array(array):
        raise TypeError(f"{name} is a CuPy array; segmentation runs on the CPU: pass {name}.get()")
    array = np.asarray(array)
    if array.ndim not in (2, 3):
        raise ValueError(f"{name} must be a 2D or 3D image, got an array of shape {array.shape}")
    return array, image


def _rewrap(out: np.ndarray, image: Image | None) -> Any:
    return image.with_array(out) if image is not None else out


def _connectivity(connectivity: Any, ndim: int) -> int:
    """The 3D neighbourhood (6, 18, 26) the kernels use for a 2D (4, 8) or 3D connectivity."""
    if connectivity is None:
        return 26
    allowed = (4, 8) if ndim == 2 else (6, 18, 26)
    if isinstance(connectivity, bool) or connectivity not in allowed:
        raise ValueError(f"connectivity for a {ndim}D image must be one of {allowed}, got {connectivity!r}")
    return {4: 6, 8: 26}.get(int(connectivity), int(connectivity))


def _label_input(mask: np.ndarray) -> np.ndarray:
    if mask.dtype == np.bool_:
        return mask.view(np.uint8)
    if mask.dtype.kind not in "iu":
        raise TypeError(f"mask has dtype {mask.dtype}; label takes a bool or integer array "
                        "(threshold a probability map first, e.g. mask > 0.5)")
    return mask


def label(mask: Any, connectivity: int | None = None, *, backend: str = "auto") -> tuple[Any, int]:
    """Connected components: ``(labels, n)`` with int32 labels ``1..n`` and 0 for background.

    ``connectivity``: 6, 18 or 26 in 3D; 4 or 8 in 2D; default (None) the full neighbourhood
    (26 / 8). A bool mask is labelled like ``scipy.ndimage.label`` with the matching structure;
    an integer image labels each value's components separately (voxels connect only to
    neighbours with the same value, like ``cc3d.connected_components``), so a 0/1 integer mask
    gives the same result as a bool one. Components are numbered in scan (C) order of their
    first voxel, exactly as scipy numbers them. Float input raises TypeError (threshold first).
    """
    x, image = _split(mask, "mask")
    conn = _connectivity(connectivity, x.ndim)
    labels, n = _label(_label_input(x), conn, backend=backend)
    return _rewrap(labels, image), int(n)


# ------------------------------------------------------------------------------------ helpers
def _spacing(image: Image | None, spacing: Any, ndim: int) -> tuple[float, ...]:
    """Explicit ``spacing`` (array-axis order), else the Image's, else 1 mm."""
    if spacing is None:
        return tuple(image.spacing) if image is not None else (1.0,) * ndim
    values = (float(spacing),) * ndim if np.isscalar(spacing) else tuple(float(v) for v in spacing)
    if len(values) != ndim or not all(np.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"spacing must be {ndim} positive finite values (array-axis order), got {spacing!r}")
    return values


def _binary(x: np.ndarray) -> np.ndarray:
    """``x != 0`` as a contiguous uint8 array (bool input is viewed, not copied)."""
    if x.dtype == np.bool_:
        return np.ascontiguousarray(x).view(np.uint8)
    if x.dtype.kind not in "iuf":
        raise TypeError(f"mask must be boolean or numeric, got dtype {x.dtype}")
    check_finite(x, "mask", "mask", hint="a mask must be 0 or nonzero everywhere")
    return np.ascontiguousarray(x != 0).view(np.uint8)


def _radius(radius_mm: Any) -> float:
    if isinstance(radius_mm, bool) or not np.isscalar(radius_mm):
        raise TypeError(f"radius_mm must be a number (mm), got {radius_mm!r}")
    r = float(radius_mm)
    if not (np.isfinite(r) and r >= 0):
        raise ValueError(f"radius_mm must be finite and >= 0, got {radius_mm!r}")
    return r


def ball_offsets(radius_mm: float, spacing: tuple[float, ...]) -> np.ndarray:
    """Offsets ``(n, ndim)`` (array-axis order, voxels) of the ball of ``radius_mm`` on a grid of
    ``spacing``: every offset d with ``sum((d * spacing)**2) <= radius_mm**2`` (1 ppm tolerance).
    ``np.zeros(shape, bool)`` set at these offsets around the centre is the structuring element
    that makes ``scipy.ndimage.binary_dilation`` equal :func:`binary_dilate`."""
    r2 = radius_mm * radius_mm * (1 + _BALL_TOLERANCE)
    half = [int(np.floor(np.sqrt(r2) / s)) for s in spacing]
    grids = np.meshgrid(*[np.arange(-h, h + 1) for h in half], indexing="ij")
    offsets = np.stack([g.ravel() for g in grids], axis=1)
    inside = ((offsets * np.asarray(spacing)) ** 2).sum(axis=1) <= r2
    return offsets[inside].astype(np.int32)


def ball(radius_mm: float, spacing: tuple[float, ...]) -> np.ndarray:
    """The ball of :func:`ball_offsets` as a bool structuring element (odd shape, centred): the
    ``structure`` for which ``scipy.ndimage.binary_dilation`` equals :func:`binary_dilate`."""
    offsets = ball_offsets(_radius(radius_mm), tuple(float(s) for s in spacing))
    half = np.abs(offsets).max(axis=0)
    element = np.zeros(tuple(2 * half + 1), bool)
    element[tuple((offsets + half).T)] = True
    return element


def _ball_op(mask: Any, radius_mm: Any, erode: bool, backend: str) -> Any:
    x, image = _split(mask, "mask")
    r = _radius(radius_mm)
    spacing = _spacing(image, None, x.ndim)
    out = _ball_array(_binary(x), r, spacing, erode, backend)
    return _rewrap(out, image)


def _ball_array(m: np.ndarray, r: float, spacing: tuple[float, ...], erode: bool, backend: str) -> np.ndarray:
    """Dilation (or erosion) of the uint8 mask ``m`` by the ball of radius ``r`` mm, as bool.

    ``r`` is capped at the image's diagonal (shape x spacing): a larger ball already reaches
    every voxel and, for erosion, the outside from every voxel, so the result is the same while
    the element stays bounded by the image."""
    r = min(r, math.hypot(*(n * s for n, s in zip(m.shape, spacing))))
    offsets = ball_offsets(r, spacing)
    if m.ndim == 2:
        offsets = np.concatenate([np.zeros((len(offsets), 1), np.int32), offsets], axis=1)
    # The ball's rows along i: (dk, dj, w) with offsets di in [-w, w] (a ball is convex).
    rows, index = np.unique(offsets[:, :2], axis=0, return_inverse=True)
    half_width = np.zeros(len(rows), np.int32)
    np.maximum.at(half_width, index.ravel(), offsets[:, 2])
    if len(rows) + int(np.unique(half_width).sum()) <= _DIRECT_MAX_PASSES:
        rows = np.ascontiguousarray(np.column_stack([rows, half_width]), dtype=np.int32)
        return _morphology(m, rows, erode, backend=backend).view(np.bool_)
    r2 = np.float32(r * r * (1 + _BALL_TOLERANCE))
    if erode:
        # A voxel survives when no background voxel, nor the outside of the grid, is in reach.
        return _distance(m, spacing, False, True, True, backend=backend) > r2
    return _distance(m, spacing, True, False, True, backend=backend) <= r2


# ---------------------------------------------------------------------------------- functions
def distance_transform(mask: Any, spacing: Any = None, *, squared: bool = False,
                       backend: str = "auto") -> Any:
    """Exact Euclidean distance (mm) from every nonzero voxel to the nearest zero voxel; zero
    voxels get 0. Equals ``scipy.ndimage.distance_transform_edt(mask, sampling=spacing)``
    (float32 here, relative difference below 1e-6).

    ``spacing`` (array-axis order) defaults to the Image's spacing, 1 mm for a bare array.
    ``squared=True`` returns squared distances (mm²) and skips the square root. Where the image
    holds no zero voxel at all the distance is undefined and ``inf`` is returned (scipy returns
    distances to a point outside the image there). Output float32, geometry kept.
    """
    x, image = _split(mask, "mask")
    sp = _spacing(image, spacing, x.ndim)
    return _rewrap(_distance(_binary(x), sp, False, False, bool(squared), backend=backend), image)


def binary_dilate(mask: Any, radius_mm: float, *, backend: str = "auto") -> Any:
    """Dilation of ``mask != 0`` by a ball of ``radius_mm`` in physical units (the Image's spacing,
    1 mm per voxel for a bare array): a voxel is set when a mask voxel lies within ``radius_mm``
    of it (centre to centre). Equals ``scipy.ndimage.binary_dilation`` with the structuring
    element of :func:`medkern._segment.ball`. Small balls are applied directly (decomposed into
    line segments), large ones through the distance transform (same result). A radius beyond
    the image diagonal is capped to it (same result). Returns bool.
    """
    return _ball_op(mask, radius_mm, False, backend)


def binary_erode(mask: Any, radius_mm: float, *, backend: str = "auto") -> Any:
    """Erosion of ``mask != 0`` by a ball of ``radius_mm``: a voxel stays when every voxel within
    ``radius_mm`` is in the mask, the outside of the image counting as background (scipy's
    ``border_value=0``). Equals ``scipy.ndimage.binary_erosion`` with the same ball. Returns bool.
    """
    return _ball_op(mask, radius_mm, True, backend)


def binary_open(mask: Any, radius_mm: float, *, backend: str = "auto") -> Any:
    """Opening: erosion then dilation by the ball of ``radius_mm`` (``scipy.ndimage.binary_opening``
    with that ball). Removes structures thinner than the ball. Returns bool."""
    x, image = _split(mask, "mask")
    r, sp = _radius(radius_mm), _spacing(image, None, x.ndim)
    eroded = _ball_array(_binary(x), r, sp, True, backend)
    return _rewrap(_ball_array(eroded.view(np.uint8), r, sp, False, backend), image)


def binary_close(mask: Any, radius_mm: float, *, backend: str = "auto") -> Any:
    """Closing: dilation then erosion by the ball of ``radius_mm`` (``scipy.ndimage.binary_closing``
    with that ball, including its border behaviour: the erosion treats the outside as
    background, so a mask touching the image edge can lose voxels there). Returns bool."""
    x, image = _split(mask, "mask")
    r, sp = _radius(radius_mm), _spacing(image, None, x.ndim)
    dilated = _ball_array(_binary(x), r, sp, False, backend)
    return _rewrap(_ball_array(dilated.view(np.uint8), r, sp, True, backend), image)


def fill_holes(mask: Any, *, backend: str = "auto") -> Any:
    """Fill the holes of ``mask != 0``: background regions (face-connected: 6 in 3D, 4 in 2D) that
    do not reach the image border. Equals ``scipy.ndimage.binary_fill_holes``. Returns bool."""
    x, image = _split(mask, "mask")
    m = _binary(x)
    background, _ = _label(1 - m, 6, backend=backend)
    border = np.zeros(int(background.max()) + 1, bool)
    for axis in range(background.ndim):
        for end in (0, -1):
            border[np.take(background, end, axis=axis)] = True
    border[0] = True
    return _rewrap(m.view(np.bool_) | ~border[background], image)


def _component_sizes(x: np.ndarray, connectivity: Any, backend: str) -> tuple[np.ndarray, np.ndarray]:
    labels, n = _label(_binary(x), _connectivity(connectivity, x.ndim), backend=backend)
    return labels, np.bincount(labels.ravel(), minlength=n + 1)


def largest_component(mask: Any, connectivity: int | None = None, *, backend: str = "auto") -> Any:
    """The largest connected component of ``mask != 0`` (ties: the first in scan order), as bool.
    ``connectivity`` as in :func:`label` (default 26 / 8). An empty mask gives an empty mask."""
    x, image = _split(mask, "mask")
    labels, sizes = _component_sizes(x, connectivity, backend)
    if len(sizes) == 1:
        return _rewrap(np.zeros(x.shape, bool), image)
    return _rewrap(labels == 1 + int(np.argmax(sizes[1:])), image)


def remove_small_components(mask: Any, min_volume_mm3: float, connectivity: int | None = None, *,
                            backend: str = "auto") -> Any:
    """Keep the components of ``mask != 0`` whose volume (voxel count x voxel volume from the
    Image's spacing; area in mm² for 2D) is at least ``min_volume_mm3``. Returns bool."""
    x, image = _split(mask, "mask")
    if isinstance(min_volume_mm3, bool) or not np.isscalar(min_volume_mm3) or not (
            np.isfinite(float(min_volume_mm3)) and float(min_volume_mm3) >= 0):
        raise ValueError(f"min_volume_mm3 must be a finite number >= 0, got {min_volume_mm3!r}")
    voxel = float(np.prod(_spacing(image, None, x.ndim)))
    labels, sizes = _component_sizes(x, connectivity, backend)
    keep = sizes * voxel >= float(min_volume_mm3)
    keep[0] = False
    return _rewrap(keep[labels], image)


MAX_OTSU_BINS = 2**24


def threshold_otsu(img: Any, mask: Any = None, nbins: int = 256, *, backend: str = "auto") -> float:
    """Otsu's threshold (Otsu 1979): the histogram split maximising the between-class variance,
    over the voxels inside ``mask`` (all when None). Voxels ``> threshold`` are the bright class.

    Same histogram as ``skimage.filters.threshold_otsu``: integer images get one bin per integer
    value between their min and max (``nbins`` is ignored, as in scikit-image) unless that
    exceeds 2**20 bins, float images ``nbins`` equal bins over [min, max] with numpy's edge rule.
    The threshold is a bin centre; a constant image returns its value. Non-finite voxels (NaN,
    +-inf) inside the mask raise ValueError with their count, as does a range whose width overflows
    float64; ``nbins`` above 2**24 raises ValueError.
    """
    x, _ = _split(img, "img")
    if x.dtype == np.bool_ or x.dtype.kind not in "iuf":
        raise TypeError(f"img has dtype {x.dtype}; threshold_otsu takes a numeric image")
    if isinstance(nbins, bool) or not isinstance(nbins, (int, np.integer)) or nbins < 2:
        raise ValueError(f"nbins must be an integer >= 2, got {nbins!r}")
    integer = x.dtype.kind in "iu"
    if x.dtype.name not in ("uint8", "int16", "uint16", "int32", "float32", "float64"):
        # int8 widens exactly; 32/64-bit integers beyond int32 are counted as float64 values.
        x = x.astype(np.int16 if x.dtype.name == "int8" else np.float64)
    m = None
    if mask is not None:
        m = _binary(_split(mask, "mask")[0])
        if m.shape != x.shape:
            raise ValueError(f"mask has shape {m.shape}, img has shape {x.shape}")
    if nbins > MAX_OTSU_BINS:
        raise ValueError(f"nbins must be <= {MAX_OTSU_BINS}, got {nbins}")
    st = moments(x, m, backend=backend)
    check_stats(st, x, "threshold_otsu", mask=m)
    if st["count"] == 0:
        raise ValueError("threshold_otsu: no voxel to threshold (the image or the mask is empty)")
    lo, hi = st["min"], st["max"]
    if lo == hi:
        return float(lo)
    check_range(lo, hi, "threshold_otsu", dtype=x.dtype)
    if integer and hi - lo < 2**20:
        centres = np.arange(int(lo), int(hi) + 1, dtype=np.float64)
        edges = np.append(centres - 0.5, float(hi) + 0.5)
    else:
        # numpy.histogram's edges for range=(min, max) in the image's float type, as scikit-image.
        dtype = x.dtype if x.dtype.kind == "f" else np.dtype(np.float64)
        edges = np.linspace(dtype.type(lo), dtype.type(hi), nbins + 1, dtype=dtype)
        centres = (edges[:-1] + edges[1:]) / 2
    counts = histogram_edges(x, m, np.asarray(edges, np.float64), backend=backend)
    # Between-class variance for every split after bin b (Otsu 1979, eq. 18).
    w1 = np.cumsum(counts)
    w2 = np.cumsum(counts[::-1])[::-1]
    mean1 = np.cumsum(counts * centres) / w1
    mean2 = (np.cumsum((counts * centres)[::-1]) / w2[::-1])[::-1]
    variance = w1[:-1] * w2[1:] * (mean1[:-1] - mean2[1:]) ** 2
    return float(centres[int(np.argmax(variance))])
