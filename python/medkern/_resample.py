"""Resampling: change of spacing, resampling onto a reference grid, and transform warps.

Sampling conventions (every backend, every entry point):

* A continuous index ``c`` (array-axis order, voxel centres at integers) is inside the image when
  ``-0.5 <= c < n - 0.5`` on every axis, i.e. within the voxels' physical extent (ITK's
  ``IsInsideBuffer``). Points outside get ``fill``.
* ``"nearest"`` rounds half up (``floor(c + 0.5)``, as ITK and scipy).
* ``"linear"`` is (bi/tri)linear; over the outer half voxel the edge value is extended (ITK's
  ``LinearInterpolateImageFunction``, scipy ``mode="nearest"``).
* ``"cubic"`` is the interpolating cubic B-spline: exact prefilter with mirror boundaries, then
  cubic B-spline evaluation with mirrored coefficients (scipy ``order=3, mode="mirror"``, ITK
  ``BSplineInterpolateImageFunction``). It can overshoot near edges like every cubic spline.
* ``"label"`` is for segmentations: each output voxel takes the label with the largest summed
  linear weight over its 2**ndim neighbours (ties go to the nearest voxel's label), so thin
  structures survive better than with nearest neighbour and every output value is an input label.

Non-finite values: NaN and +-inf voxels propagate through "linear" and "cubic" as in
scipy.ndimage (to every output voxel whose taps reach them; "cubic" spreads them along whole
lines through the prefilter) and are copied by "nearest"; "label" takes integer images only. A
displacement field with NaN or +-inf samples those points as outside (``fill``). A grid map that
overflows float64 raises ValueError.

Output dtype: ``"nearest"`` and ``"label"`` keep the input dtype (``"label"`` needs integers or
bool); ``"linear"`` and ``"cubic"`` give float64 for float64 input and float32 otherwise. Integer
input is read as is (no float64 copy of the volume).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from medkern._dispatch import is_cupy_array
from medkern._docstrings import fill_doc
from medkern._sampling import (
    _CODE,
    INTERPOLATIONS,
    _as3d,
    _bits_view,
    _check_array,
    _check_fill,
    _check_interpolation,
    _fill_arg,
    _out_dtype,
    coefficients_kernel,
    gather_kernel,
    map_coordinates,
    separable_kernel,
    warp_kernel,
)
from medkern._transforms import Affine, Composite, DisplacementField, Transform
from medkern._typing import ImageLike
from medkern._util import as_image, unwrap
from medkern.image import Image

__all__ = ["resample", "resample_to", "warp", "map_coordinates", "INTERPOLATIONS"]

# Gaussian anti-aliasing kernel radius in sigmas (scipy.ndimage.gaussian_filter's default).
_TRUNCATE = 4.0


# ---------------------------------------------------------------------- tap tables
def _mirror(i: np.ndarray, n: int) -> np.ndarray:
    """scipy 'mirror' extension (d c b | a b c d | c b a), any number of reflections."""
    if n == 1:
        return np.zeros_like(i)
    period = 2 * (n - 1)
    i = np.abs(i) % period
    return np.where(i < n, i, period - i)


def _gaussian_taps(sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Offsets and weights of scipy.ndimage.gaussian_filter1d (radius int(4 sigma + 0.5))."""
    radius = int(_TRUNCATE * sigma + 0.5)
    s = np.arange(-radius, radius + 1)
    g = np.exp(-0.5 * (s / sigma) ** 2)
    return s, g / g.sum()


def _axis_taps(n_in: int, n_out: int, scale: float, offset: float, interpolation: str,
               sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tap table of one axis for the output->input map ``c = scale * o + offset``.

    Returns (idx (n_out, T) int64, weights (n_out, T) float64, valid (n_out,) uint8). Boundary
    handling is resolved into the indices; an anti-aliasing Gaussian of ``sigma`` input voxels
    (mirror boundary, as scipy.ndimage.gaussian_filter) is composed into the taps, which is exact
    because both the Gaussian and the B-spline prefilter are convolutions of the mirror-extended
    signal and commute.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        c = scale * np.arange(n_out, dtype=np.float64) + offset
    valid = (c >= -0.5) & (c < n_in - 0.5)
    # Points outside (including +-inf and NaN from an overflowing map) get fill: their taps are
    # zeroed below, and their position is set to 0 first so the conversion to int is defined.
    c = np.where(valid, c, 0.0)
    f = np.floor(c)
    t = c - f
    f = f.astype(np.int64)
    if interpolation == "linear":
        idx = np.clip(np.stack([f, f + 1], axis=1), 0, n_in - 1)
        w = np.stack([1.0 - t, t], axis=1)
    else:  # cubic B-spline (Unser 1999), mirrored taps floor(c)-1 .. floor(c)+2
        idx = _mirror(f[:, None] + np.arange(-1, 3)[None, :], n_in)
        t2, t3, u = t * t, t * t * t, 1.0 - t
        w = np.stack([u * u * u / 6.0, (3 * t3 - 6 * t2 + 4) / 6.0,
                      (-3 * t3 + 3 * t2 + 3 * t + 1) / 6.0, t3 / 6.0], axis=1)
    if sigma > 0:
        # The anti-aliasing Gaussian spans 4 sigma input voxels each side; far beyond the axis it
        # only averages the whole axis, at a tap table that grows with sigma (GiB for absurd spacings).
        if int(_TRUNCATE * sigma + 0.5) > 16 * n_in + 64:
            raise ValueError(f"resample: the new spacing is {2 * sigma + 1:.3g} times the input spacing "
                             f"on an axis of {n_in} voxels, far beyond the image's extent; give a spacing "
                             "within the field of view or antialias=False")
        s, g = _gaussian_taps(sigma)
        idx = _mirror(idx[:, :, None] + s[None, None, :], n_in).reshape(n_out, -1)
        w = (w[:, :, None] * g[None, None, :]).reshape(n_out, -1)
    idx = np.where(valid[:, None], idx, 0)
    w = np.where(valid[:, None], w, 0.0)
    return np.ascontiguousarray(idx), np.ascontiguousarray(w), valid.astype(np.uint8)


def _nearest_index(n_in: int, n_out: int, scale: float, offset: float) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        c = scale * np.arange(n_out, dtype=np.float64) + offset
    valid = (c >= -0.5) & (c < n_in - 0.5)
    c = np.where(valid, c, 0.0)  # defined conversion to int for points outside (see _axis_taps)
    i = np.clip(np.floor(c + 0.5).astype(np.int64), 0, n_in - 1)
    return np.where(valid, i, -1)


def _axis_aligned(x3: Any, out_shape: Sequence[int], scale: Sequence[float], offset: Sequence[float],
                  interpolation: str, sigma: Sequence[float], fill: Any, backend: str) -> Any:
    """Resample a 3D array whose output->input index map is ``c_a = scale_a * o_a + offset_a``."""
    if interpolation == "nearest":
        idx = [_nearest_index(n, m, s, o) for n, m, s, o in zip(x3.shape, out_shape, scale, offset)]
        out = gather_kernel(_bits_view(x3), *idx, _fill_arg(fill, x3.dtype, "nearest"), backend=backend)
        return out.view(x3.dtype)
    if interpolation == "label":
        m = np.zeros((3, 4))
        m[[0, 1, 2], [0, 1, 2]] = scale
        m[:, 3] = offset
        return _warp_array(x3, out_shape, m, None, None, interpolation, fill, backend)
    taps, work = [], []
    for a, (n, m, s, o, sg) in enumerate(zip(x3.shape, out_shape, scale, offset, sigma)):
        identity = n == m and s == 1.0 and o == 0.0 and sg == 0.0
        if identity:
            taps.append((np.arange(n, dtype=np.int64)[:, None], np.ones((n, 1)), np.ones(n, np.uint8)))
        else:
            taps.append(_axis_taps(n, m, s, o, interpolation, sg))
            work.append(a)
    out_dtype = _out_dtype(x3.dtype, interpolation)
    if not work:
        return x3.astype(out_dtype, copy=True)
    # Shrinking axes first keeps the intermediate volumes small; ties run the contiguous axis first.
    order = sorted(work, key=lambda a: (out_shape[a] / x3.shape[a], -a))
    return separable_kernel(x3, taps, order, interpolation == "cubic", float(fill), backend=backend)


def _warp_array(x3: Any, out_shape: Sequence[int], matrix: np.ndarray, disp: Any, disp_matrix: Any,
                interpolation: str, fill: Any, backend: str) -> Any:
    """Per-voxel path: ``c = matrix @ (k, j, i, 1) + disp_matrix @ disp[k, j, i]``."""
    code = _CODE[interpolation]
    if interpolation in ("nearest", "label"):
        out = warp_kernel(_bits_view(x3), code, tuple(out_shape), matrix, disp, disp_matrix,
                          _fill_arg(fill, x3.dtype, interpolation), backend=backend)
        return out.view(x3.dtype)
    if interpolation == "cubic":
        x3 = coefficients_kernel(x3, backend=backend)
    return warp_kernel(x3, code, tuple(out_shape), matrix, disp, disp_matrix, float(fill), backend=backend)


# ---------------------------------------------------------------------- public API
# Output size resample() accepts (voxels over all axes): beyond it the spacing is a mistake.
MAX_OUTPUT_VOXELS = 2**33


@fill_doc
def resample(img: ImageLike, spacing: Sequence[float] | float, interpolation: str = "linear",
             antialias: bool = True, fill: float = 0.0, *, backend: str = "auto") -> ImageLike:
    """Resample to a new voxel spacing, keeping the physical field of view and its centre.

    The output has ``spacing`` exactly and ``round(n * old_spacing / spacing)`` voxels per axis
    (at least 1), centred on the input's field of view, so it covers the same extent edge to
    edge up to half an output voxel. When the extent is a whole number of output voxels this is
    exactly ``scipy.ndimage.zoom(x, n_out / n_in, grid_mode=True)``. Direction is kept; the
    origin moves to the centre of the new first voxel.

    Parameters
    ----------
    %(img)s
    %(spacing)s
        The new spacing; a bare array is taken to have unit spacing.
    %(interpolation)s
    antialias : bool, optional
        ``"linear"`` and ``"cubic"`` only: smooth each downsampled axis first with a Gaussian of
        ``sigma = (new_spacing / old_spacing - 1) / 2`` input voxels (scikit-image ``resize``
        convention), mirror boundary, truncated at 4 sigma. Default True.
    %(fill)s
        Only reached when an output voxel centre lies outside the input (never for this
        function, kept for symmetry with :func:`resample_to`).
    %(backend)s

    Returns
    -------
    Image or array
        The resampled image, in the input's form (Image or array) and on its device.

    Raises
    ------
    ValueError
        An unknown interpolation, a spacing that is not positive and finite, or an output of
        more than ``2**33`` voxels.
    TypeError
        A dtype the interpolation cannot take (``"label"`` needs integers or bool).

    See Also
    --------
    resample_to : Resample onto another image's grid.
    warp : Apply a spatial transform.

    Notes
    -----
    Sampling conventions (every backend, every entry point): a continuous index ``c`` is inside
    the image when ``-0.5 <= c < n - 0.5`` on every axis (ITK's ``IsInsideBuffer``).
    ``"nearest"`` rounds half up (``floor(c + 0.5)``, as ITK and scipy); ``"linear"`` extends the
    edge value over the outer half voxel (ITK's ``LinearInterpolateImageFunction``, scipy
    ``mode="nearest"``); ``"cubic"`` is the interpolating cubic B-spline with an exact mirror
    prefilter (scipy ``order=3, mode="mirror"``, ITK ``BSplineInterpolateImageFunction``) and can
    overshoot near edges; ``"label"`` ties go to the nearest voxel's label. NaN and +-inf voxels
    propagate through ``"linear"`` and ``"cubic"`` as in scipy.ndimage (``"cubic"`` spreads them
    along whole lines through the prefilter) and are copied by ``"nearest"``. Integer input is
    read as is (no float64 copy of the volume).

    Examples
    --------
    >>> img = mk.Image(np.arange(16, dtype=np.float32).reshape(4, 4))
    >>> half = mk.resample(img, 2.0, antialias=False)
    >>> half
    Image(shape=(2, 2), dtype=float32, spacing=(2, 2), origin=(0.5, 0.5), numpy)
    >>> half.array
    array([[ 2.5,  4.5],
           [10.5, 12.5]], dtype=float32)
    >>> labels = mk.Image(np.array([[0, 1], [2, 2]], np.uint8))
    >>> mk.resample(labels, 0.5, interpolation="label").array
    array([[0, 0, 1, 1],
           [0, 0, 1, 1],
           [2, 2, 2, 2],
           [2, 2, 2, 2]], dtype=uint8)
    """
    _check_interpolation(interpolation)
    x, image, _ = unwrap(img, dtypes=None)
    image = image if image is not None else as_image(x)
    x = _check_array(x, interpolation)
    backend = warp_kernel.resolve(x, backend)  # every resampling kernel has the same backends
    ndim = x.ndim
    new_spacing = _positive_per_axis(spacing, ndim, "spacing")
    if not isinstance(antialias, (bool, np.bool_)):
        raise TypeError(f"antialias must be True or False, got {antialias!r}")
    fill_value = _check_fill(fill) if interpolation in ("linear", "cubic") else fill
    old = np.asarray(image.spacing)
    n_in = np.asarray(x.shape)
    with np.errstate(over="ignore"):
        n_out_f = np.maximum(1, np.floor(n_in * old / np.asarray(new_spacing) + 0.5))
    if not np.prod(n_out_f) <= MAX_OUTPUT_VOXELS:
        raise ValueError(f"resample: spacing {new_spacing} would give {n_out_f.tolist()} voxels (at most "
                         f"{MAX_OUTPUT_VOXELS} in all); choose a coarser spacing")
    n_out = n_out_f.astype(int)
    scale = np.asarray(new_spacing) / old
    offset = (n_in - 1) / 2.0 - (n_out - 1) / 2.0 * scale
    smooth = antialias and interpolation in ("linear", "cubic")
    sigma = np.where(smooth & (scale > 1), np.maximum(0.0, (scale - 1) / 2), 0.0)
    pad = 3 - ndim
    out = _axis_aligned(_as3d(x), (1,) * pad + tuple(int(v) for v in n_out), (1.0,) * pad + tuple(scale),
                        (0.0,) * pad + tuple(offset), interpolation, (0.0,) * pad + tuple(sigma),
                        fill_value, backend)
    out = out.reshape(tuple(int(v) for v in n_out))
    if not isinstance(img, Image):
        return out
    origin = image.index_to_world(offset)
    return Image(out, spacing=new_spacing, origin=origin, direction=image.direction)


def _positive_per_axis(value: Any, ndim: int, name: str) -> tuple[float, ...]:
    try:
        vals = (float(value),) * ndim if np.isscalar(value) else tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number or {ndim} numbers (array-axis order), got {value!r}") from None
    if len(vals) != ndim:
        raise ValueError(f"{name} needs 1 or {ndim} values (array-axis order), got {len(vals)}")
    if not all(math.isfinite(v) and v > 0 for v in vals):
        raise ValueError(f"{name} must be finite and positive, got {vals}")
    return vals


def _split_transform(transform: Transform | None, ndim: int) -> tuple[np.ndarray, Transform | None]:
    """(outermost affine matrix, remaining non-affine part or None)."""
    if transform is None:
        return np.eye(ndim + 1), None
    if not isinstance(transform, Transform):
        raise TypeError(f"transform must be an mk.Affine, mk.DisplacementField or a composition of them, "
                        f"got {type(transform).__name__}")
    if transform.ndim != ndim:
        raise ValueError(f"transform is {transform.ndim}D but the image is {ndim}D")
    if isinstance(transform, Affine):
        return transform.matrix, None
    parts = list(transform.transforms) if isinstance(transform, Composite) else [transform]
    outer = np.eye(ndim + 1)
    while parts and isinstance(parts[0], Affine):
        outer = outer @ parts.pop(0).matrix
    if not parts:
        return outer, None
    return outer, parts[0] if len(parts) == 1 else Composite(parts)


def _displacement_on_grid(rest: Transform, reference: Image, on_gpu: bool) -> Any:
    """``rest(p) - p`` at every voxel centre of ``reference``, float32 ``shape + (ndim,)``, on the
    device of the image being warped."""
    if isinstance(rest, DisplacementField) and rest.field.same_geometry(reference, atol=1e-9):
        arr = rest.field.array
        if on_gpu:
            import cupy

            return cupy.ascontiguousarray(cupy.asarray(arr), dtype=cupy.float32)
        return np.ascontiguousarray(arr.get() if is_cupy_array(arr) else arr, dtype=np.float32)
    ndim = reference.ndim
    out = np.empty(reference.shape + (ndim,), dtype=np.float32)
    grid_rest = np.stack(np.meshgrid(*[np.arange(n) for n in reference.shape[1:]], indexing="ij"), -1)
    rest_idx = grid_rest.reshape(-1, ndim - 1).astype(np.float64)
    for k in range(reference.shape[0]):  # one slab at a time keeps the float64 points small
        idx = np.concatenate([np.full((rest_idx.shape[0], 1), float(k)), rest_idx], axis=1)
        pts = reference.index_to_world(idx)
        out[k] = (rest.apply(pts) - pts).reshape(reference.shape[1:] + (ndim,))
    if on_gpu:
        import cupy

        return cupy.asarray(out)
    return out


def _is_diagonal(lin: np.ndarray) -> bool:
    off = lin - np.diag(np.diag(lin))
    return bool(np.all(np.abs(off) <= 1e-12 * max(1.0, float(np.abs(lin).max()))))


@fill_doc
def resample_to(img: ImageLike, reference: Image, transform: Transform | None = None,
                interpolation: str = "linear", fill: float = 0.0, *, backend: str = "auto") -> ImageLike:
    """Resample an image onto the grid of a reference image (shape, spacing, origin, direction).

    Each output voxel centre ``p`` (LPS mm) samples ``img`` at ``transform.apply(p)``:
    transforms map output points to input points (ITK convention), so this is SimpleITK
    ``Resample(img, reference, transform, ...)``. Only the geometry of ``reference`` is used.
    When the combined map is axis-aligned (no rotation, shear or displacement field) the
    separable kernel runs; otherwise the per-voxel one. No anti-aliasing here (use
    :func:`resample` for downsampling by spacing).

    Parameters
    ----------
    %(img_geometry)s
    reference : Image
        Its grid is the output grid.
    transform : Affine, DisplacementField or composite, optional
        From reference points to ``img`` points; default the identity.
    %(interpolation)s
    %(fill)s
    %(backend)s

    Returns
    -------
    Image or array
        An Image with the reference geometry when ``img`` is an Image, a bare array otherwise.

    Raises
    ------
    TypeError
        ``reference`` is not an Image, or a dtype the interpolation cannot take.
    ValueError
        An unknown interpolation, ``reference`` and ``img`` of different dimension, or a map
        from the reference grid to ``img`` that is not finite in float64.

    See Also
    --------
    resample : Change the spacing, keeping the field of view.
    warp : The same, with the transform first and ``img``'s own grid by default.
    medkern.Image.same_geometry : Whether two images already share a grid.

    Examples
    --------
    >>> img = mk.Image(np.arange(16, dtype=np.float32).reshape(4, 4))
    >>> coarse = mk.Image(np.zeros((2, 2), np.float32), spacing=2.0, origin=(0.5, 0.5))
    >>> mk.resample_to(img, coarse).array
    array([[ 2.5,  4.5],
           [10.5, 12.5]], dtype=float32)
    """
    _check_interpolation(interpolation)
    if not isinstance(reference, Image):
        raise TypeError(f"reference must be an mk.Image (its geometry defines the output grid), "
                        f"got {type(reference).__name__}")
    x, image, _ = unwrap(img, dtypes=None)
    image = image if image is not None else as_image(x)
    x = _check_array(x, interpolation)
    backend = warp_kernel.resolve(x, backend)  # every resampling kernel has the same backends
    ndim = x.ndim
    if reference.ndim != ndim:
        raise ValueError(f"reference is {reference.ndim}D but img is {ndim}D; both must have the same ndim")
    if interpolation in ("linear", "cubic"):
        fill = _check_fill(fill)
    outer, rest = _split_transform(transform, ndim)
    # output index -> world -> (outer affine) -> input world -> input index
    with np.errstate(over="ignore", invalid="ignore"):
        full = np.linalg.inv(image.affine) @ outer @ reference.affine
    if not np.all(np.isfinite(full)):
        raise ValueError("resample_to: the map from the reference grid to img's voxel indices is not finite in "
                         "float64 (reference origin / spacing, img geometry or transform far too large)")
    out_shape = reference.shape
    pad = 3 - ndim
    x3 = _as3d(x)
    shape3 = (1,) * pad + tuple(out_shape)
    if rest is None and _is_diagonal(full[:ndim, :ndim]):
        scale = (1.0,) * pad + tuple(np.diag(full)[:ndim])
        offset = (0.0,) * pad + tuple(full[:ndim, ndim])
        out = _axis_aligned(x3, shape3, scale, offset, interpolation, (0.0,) * 3, fill, backend)
    else:
        m = np.zeros((3, 4))
        m[pad:, pad:3] = full[:ndim, :ndim]
        m[pad:, 3] = full[:ndim, ndim]
        disp = disp_matrix = None
        if rest is not None:
            disp = _displacement_on_grid(rest, reference, is_cupy_array(x)).reshape(shape3 + (ndim,))
            disp_matrix = np.zeros((3, ndim))
            disp_matrix[pad:] = (np.linalg.inv(image.affine)[:ndim, :ndim] @ outer[:ndim, :ndim])
        out = _warp_array(x3, shape3, m, disp, disp_matrix, interpolation, fill, backend)
    out = out.reshape(out_shape)
    if not isinstance(img, Image):
        return out
    return reference.with_array(out, vector=False)


@fill_doc
def warp(img: ImageLike, transform: Transform, reference: Image | None = None, interpolation: str = "linear",
         fill: float = 0.0, *, backend: str = "auto") -> ImageLike:
    """Apply a spatial transform to an image: ``resample_to(img, reference or img, transform)``.

    ``transform`` maps points of the output grid to points of ``img`` (ITK convention), so
    ``mk.warp(moving, result.transform, reference=fixed)`` aligns a registered moving image onto
    the fixed one. Composite transforms apply right to left: ``warp(x, a @ b)`` samples ``x`` at
    ``a.apply(b.apply(p))``.

    Parameters
    ----------
    %(img_geometry)s
    transform : Affine, DisplacementField or composite
        From output points to ``img`` points.
    reference : Image, optional
        The output grid; default ``img``'s own grid.
    %(interpolation)s
    %(fill)s
    %(backend)s

    Returns
    -------
    Image or array
        The warped image on the output grid, in the input's form.

    Raises
    ------
    TypeError
        ``transform`` is not a medkern transform.

    See Also
    --------
    resample_to : The same with the grid first.
    register : Find the transform that aligns two images.

    Examples
    --------
    >>> img = mk.Image(np.arange(16, dtype=np.float32).reshape(4, 4))
    >>> shift = mk.Affine.from_parts(np.eye(2), translation=(1.0, 0.0))   # sample 1 mm along +x
    >>> mk.warp(img, shift).array
    array([[ 1.,  2.,  3.,  0.],
           [ 5.,  6.,  7.,  0.],
           [ 9., 10., 11.,  0.],
           [13., 14., 15.,  0.]], dtype=float32)
    """
    if transform is None or not isinstance(transform, Transform):
        raise TypeError(f"transform must be an mk.Affine, mk.DisplacementField or a composition of them, "
                        f"got {type(transform).__name__}")
    if reference is None:
        reference = img if isinstance(img, Image) else as_image(img)
    return resample_to(img, reference, transform, interpolation, fill, backend=backend)
