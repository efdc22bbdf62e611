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
from medkern._docstrings import fill_doc
from medkern._intensity import moments
from medkern._typing import PerAxis
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


@fill_doc
def label(mask: Image | np.ndarray, connectivity: int | None = None, *,
          backend: str = "auto") -> tuple[Image | np.ndarray, int]:
    """Label connected components: ``(labels, n)`` with labels ``1..n`` and 0 for background.

    A bool mask is labelled like ``scipy.ndimage.label`` with the matching structure; an integer
    image labels each value's components separately (voxels connect only to neighbours with the
    same value, like ``cc3d.connected_components``), so a 0/1 integer mask gives the same result
    as a bool one. Components are numbered in scan (C) order of their first voxel, exactly as
    scipy numbers them.

    Parameters
    ----------
    mask : Image or array_like
        A 2D or 3D bool or integer image (0 is background).
    connectivity : int, optional
        6, 18 or 26 in 3D; 4 or 8 in 2D; default (None) the full neighbourhood (26 / 8).
    %(backend)s

    Returns
    -------
    labels : Image or array
        int32 labels, in the input's form.
    n : int
        The number of components.

    Raises
    ------
    TypeError
        Float input (threshold first, e.g. ``mask > 0.5``).
    ValueError
        A connectivity that does not fit the dimension.

    See Also
    --------
    largest_component, remove_small_components
    regions : Measure each labelled region.

    Examples
    --------
    >>> m = np.array([[1, 1, 0, 0],
    ...               [0, 0, 1, 0],
    ...               [0, 0, 0, 0],
    ...               [1, 0, 1, 1]], bool)
    >>> labels, n = mk.label(m)             # 8-connected: the diagonal pair is one component
    >>> labels, n
    (array([[1, 1, 0, 0],
           [0, 0, 1, 0],
           [0, 0, 0, 0],
           [2, 0, 3, 3]], dtype=int32), 3)
    >>> mk.label(m, connectivity=4)[1]
    4
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
@fill_doc
def distance_transform(mask: Image | np.ndarray, spacing: PerAxis | None = None, *, squared: bool = False,
                       backend: str = "auto") -> Image | np.ndarray:
    """Compute the exact Euclidean distance (mm) from every nonzero voxel to the nearest zero voxel.

    Zero voxels get 0. Equals ``scipy.ndimage.distance_transform_edt(mask, sampling=spacing)``
    (float32 here, relative difference below 1e-6). Where the image holds no zero voxel at all
    the distance is undefined and ``inf`` is returned (scipy returns distances to a point outside
    the image there).

    Parameters
    ----------
    %(binary_mask)s
    spacing : float or sequence of float, optional
        Voxel size in mm (array-axis order); default the Image's spacing, 1 mm for a bare array.
    squared : bool, optional
        Return squared distances (mm²) and skip the square root.
    %(backend)s

    Returns
    -------
    Image or array
        float32 distances, in the input's form.

    Raises
    ------
    ValueError
        A spacing that is not positive and finite, or non-finite mask values.

    See Also
    --------
    binary_erode : Erosion by a ball, through the same transform for large radii.

    Examples
    --------
    >>> square = np.zeros((7, 7), bool)
    >>> square[1:6, 1:6] = True
    >>> mk.distance_transform(square, squared=True)
    array([[0., 0., 0., 0., 0., 0., 0.],
           [0., 1., 1., 1., 1., 1., 0.],
           [0., 1., 4., 4., 4., 1., 0.],
           [0., 1., 4., 9., 4., 1., 0.],
           [0., 1., 4., 4., 4., 1., 0.],
           [0., 1., 1., 1., 1., 1., 0.],
           [0., 0., 0., 0., 0., 0., 0.]], dtype=float32)
    >>> float(mk.distance_transform(mk.Image(square, spacing=(2.0, 1.0))).array.max())
    3.0
    """
    x, image = _split(mask, "mask")
    sp = _spacing(image, spacing, x.ndim)
    return _rewrap(_distance(_binary(x), sp, False, False, bool(squared), backend=backend), image)


@fill_doc
def binary_dilate(mask: Image | np.ndarray, radius_mm: float, *, backend: str = "auto") -> Image | np.ndarray:
    """Dilate a mask by a ball of ``radius_mm`` in physical units.

    A voxel is set when a mask voxel lies within ``radius_mm`` of it (centre to centre). Equals
    ``scipy.ndimage.binary_dilation`` with the structuring element ``medkern._segment.ball``.
    Small balls are applied directly (decomposed into line segments), large ones through the
    distance transform (same result).

    Parameters
    ----------
    %(binary_mask)s
    radius_mm : float
        Ball radius in mm, centre to centre, >= 0 (capped at the image diagonal: same result).
    %(backend)s

    Returns
    -------
    Image or array
        bool, in the input's form.

    Raises
    ------
    TypeError
        ``radius_mm`` is not a number.
    ValueError
        ``radius_mm`` is negative or not finite.

    See Also
    --------
    binary_erode, binary_open, binary_close

    Examples
    --------
    >>> dot = np.zeros((5, 5), bool)
    >>> dot[2, 2] = True
    >>> mk.binary_dilate(dot, 1.0).astype(int)
    array([[0, 0, 0, 0, 0],
           [0, 0, 1, 0, 0],
           [0, 1, 1, 1, 0],
           [0, 0, 1, 0, 0],
           [0, 0, 0, 0, 0]])
    >>> mk.binary_dilate(mk.Image(dot, spacing=(2.0, 1.0)), 1.0).array.astype(int)   # rows 2 mm apart
    array([[0, 0, 0, 0, 0],
           [0, 0, 0, 0, 0],
           [0, 1, 1, 1, 0],
           [0, 0, 0, 0, 0],
           [0, 0, 0, 0, 0]])
    """
    return _ball_op(mask, radius_mm, False, backend)


@fill_doc
def binary_erode(mask: Image | np.ndarray, radius_mm: float, *, backend: str = "auto") -> Image | np.ndarray:
    """Erode a mask by a ball of ``radius_mm`` in physical units.

    A voxel stays when every voxel within ``radius_mm`` is in the mask, the outside of the image
    counting as background (scipy's ``border_value=0``). Equals ``scipy.ndimage.binary_erosion``
    with the same ball as :func:`binary_dilate`.

    Parameters
    ----------
    %(binary_mask)s
    radius_mm : float
        Ball radius in mm, centre to centre, >= 0 (capped at the image diagonal: same result).
    %(backend)s

    Returns
    -------
    Image or array
        bool, in the input's form.

    Raises
    ------
    TypeError
        ``radius_mm`` is not a number.
    ValueError
        ``radius_mm`` is negative or not finite.

    See Also
    --------
    binary_dilate, binary_open, binary_close

    Examples
    --------
    >>> square = np.zeros((7, 7), bool)
    >>> square[1:6, 1:6] = True
    >>> mk.binary_erode(square, 1.0).astype(int)
    array([[0, 0, 0, 0, 0, 0, 0],
           [0, 0, 0, 0, 0, 0, 0],
           [0, 0, 1, 1, 1, 0, 0],
           [0, 0, 1, 1, 1, 0, 0],
           [0, 0, 1, 1, 1, 0, 0],
           [0, 0, 0, 0, 0, 0, 0],
           [0, 0, 0, 0, 0, 0, 0]])
    """
    return _ball_op(mask, radius_mm, True, backend)


@fill_doc
def binary_open(mask: Image | np.ndarray, radius_mm: float, *, backend: str = "auto") -> Image | np.ndarray:
    """Open a mask: erosion then dilation by the ball of ``radius_mm``.

    ``scipy.ndimage.binary_opening`` with that ball. Removes structures thinner than the ball.

    Parameters
    ----------
    %(binary_mask)s
    radius_mm : float
        Ball radius in mm, centre to centre, >= 0 (capped at the image diagonal: same result).
    %(backend)s

    Returns
    -------
    Image or array
        bool, in the input's form.

    Raises
    ------
    TypeError
        ``radius_mm`` is not a number.
    ValueError
        ``radius_mm`` is negative or not finite.

    See Also
    --------
    binary_close, binary_erode, binary_dilate

    Examples
    --------
    >>> square = np.zeros((7, 7), bool)
    >>> square[1:6, 1:6] = True
    >>> square[0, 0] = True                  # a speck outside the square
    >>> opened = mk.binary_open(square, 1.0)
    >>> bool(opened[0, 0]), int(opened.sum())   # the speck and the square's corners go
    (False, 21)
    """
    x, image = _split(mask, "mask")
    r, sp = _radius(radius_mm), _spacing(image, None, x.ndim)
    eroded = _ball_array(_binary(x), r, sp, True, backend)
    return _rewrap(_ball_array(eroded.view(np.uint8), r, sp, False, backend), image)


@fill_doc
def binary_close(mask: Image | np.ndarray, radius_mm: float, *, backend: str = "auto") -> Image | np.ndarray:
    """Close a mask: dilation then erosion by the ball of ``radius_mm``.

    ``scipy.ndimage.binary_closing`` with that ball, including its border behaviour: the erosion
    treats the outside as background, so a mask touching the image edge can lose voxels there.

    Parameters
    ----------
    %(binary_mask)s
    radius_mm : float
        Ball radius in mm, centre to centre, >= 0 (capped at the image diagonal: same result).
    %(backend)s

    Returns
    -------
    Image or array
        bool, in the input's form.

    Raises
    ------
    TypeError
        ``radius_mm`` is not a number.
    ValueError
        ``radius_mm`` is negative or not finite.

    See Also
    --------
    binary_open, fill_holes

    Examples
    --------
    >>> square = np.zeros((7, 7), bool)
    >>> square[1:6, 1:6] = True
    >>> square[3, 1:4] = False               # a notch one voxel wide
    >>> mk.binary_close(square, 1.0).astype(int)[3]   # closed, except where it meets the edge
    array([0, 0, 1, 1, 1, 1, 0])
    """
    x, image = _split(mask, "mask")
    r, sp = _radius(radius_mm), _spacing(image, None, x.ndim)
    dilated = _ball_array(_binary(x), r, sp, False, backend)
    return _rewrap(_ball_array(dilated.view(np.uint8), r, sp, True, backend), image)


@fill_doc
def fill_holes(mask: Image | np.ndarray, *, backend: str = "auto") -> Image | np.ndarray:
    """Fill the holes of a mask: background regions that do not reach the image border.

    Background regions are face-connected (6 in 3D, 4 in 2D). Equals
    ``scipy.ndimage.binary_fill_holes``.

    Parameters
    ----------
    %(binary_mask)s
    %(backend)s

    Returns
    -------
    Image or array
        bool, in the input's form.

    See Also
    --------
    binary_close : Closes gaps narrower than a ball.

    Examples
    --------
    >>> ring = np.zeros((5, 5), bool)
    >>> ring[1:4, 1:4] = True
    >>> ring[2, 2] = False
    >>> mk.fill_holes(ring).astype(int)
    array([[0, 0, 0, 0, 0],
           [0, 1, 1, 1, 0],
           [0, 1, 1, 1, 0],
           [0, 1, 1, 1, 0],
           [0, 0, 0, 0, 0]])
    """
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


@fill_doc
def largest_component(mask: Image | np.ndarray, connectivity: int | None = None, *,
                      backend: str = "auto") -> Image | np.ndarray:
    """Keep the largest connected component of a mask (ties: the first in scan order).

    An empty mask gives an empty mask.

    Parameters
    ----------
    %(binary_mask)s
    connectivity : int, optional
        6, 18 or 26 in 3D; 4 or 8 in 2D; default (None) the full neighbourhood (26 / 8).
    %(backend)s

    Returns
    -------
    Image or array
        bool, in the input's form.

    See Also
    --------
    label, remove_small_components

    Examples
    --------
    >>> m = np.array([[1, 1, 0, 0],
    ...               [0, 0, 1, 0],
    ...               [0, 0, 0, 0],
    ...               [1, 0, 1, 1]], bool)
    >>> mk.largest_component(m).astype(int)
    array([[1, 1, 0, 0],
           [0, 0, 1, 0],
           [0, 0, 0, 0],
           [0, 0, 0, 0]])
    """
    x, image = _split(mask, "mask")
    labels, sizes = _component_sizes(x, connectivity, backend)
    if len(sizes) == 1:
        return _rewrap(np.zeros(x.shape, bool), image)
    return _rewrap(labels == 1 + int(np.argmax(sizes[1:])), image)


@fill_doc
def remove_small_components(mask: Image | np.ndarray, min_volume_mm3: float, connectivity: int | None = None, *,
                            backend: str = "auto") -> Image | np.ndarray:
    """Keep the components of a mask whose volume is at least ``min_volume_mm3``.

    The volume is the voxel count times the voxel volume from the Image's spacing (area in mm²
    for 2D).

    Parameters
    ----------
    %(binary_mask)s
    min_volume_mm3 : float
        The smallest volume kept (mm³, mm² in 2D), finite and >= 0.
    connectivity : int, optional
        6, 18 or 26 in 3D; 4 or 8 in 2D; default (None) the full neighbourhood (26 / 8).
    %(backend)s

    Returns
    -------
    Image or array
        bool, in the input's form.

    Raises
    ------
    ValueError
        ``min_volume_mm3`` is negative or not finite.

    See Also
    --------
    largest_component, label

    Examples
    --------
    >>> m = np.array([[1, 1, 0, 0],
    ...               [0, 0, 1, 0],
    ...               [0, 0, 0, 0],
    ...               [1, 0, 1, 1]], bool)
    >>> mk.remove_small_components(mk.Image(m, spacing=(1.0, 0.5)), min_volume_mm3=1.0).array.astype(int)
    array([[1, 1, 0, 0],
           [0, 0, 1, 0],
           [0, 0, 0, 0],
           [0, 0, 1, 1]])
    """
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


@fill_doc
def threshold_otsu(img: Image | np.ndarray, mask: Image | np.ndarray | None = None, nbins: int = 256, *,
                   backend: str = "auto") -> float:
    """Compute Otsu's threshold (Otsu 1979): the histogram split maximising between-class variance.

    Voxels ``> threshold`` are the bright class. Same histogram as
    ``skimage.filters.threshold_otsu``: integer images get one bin per integer value between
    their min and max (``nbins`` is ignored, as in scikit-image) unless that exceeds 2**20 bins,
    float images ``nbins`` equal bins over [min, max] with numpy's edge rule. The threshold is a
    bin centre; a constant image returns its value.

    Parameters
    ----------
    img : Image or array_like
        A 2D or 3D numeric image.
    %(mask)s
    nbins : int, optional
        Histogram bins for float images, 2 to 2**24; default 256.
    %(backend)s

    Returns
    -------
    float
        The threshold.

    Raises
    ------
    TypeError
        A bool or non-numeric image.
    ValueError
        Non-finite voxels (NaN, +-inf) inside the mask, with their count; a range whose width
        overflows float64; ``nbins`` below 2 or above 2**24; no voxel to threshold.

    See Also
    --------
    label : Label the thresholded mask.

    Examples
    --------
    >>> img = np.array([[10, 12, 11, 200, 210, 205]], np.uint8)
    >>> t = mk.threshold_otsu(img)
    >>> t, (img > t).astype(int)
    (12.0, array([[0, 0, 0, 1, 1, 1]]))
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
