"""Contrast enhancement: histogram equalisation, CLAHE and N4 bias-field correction.

- :func:`equalize_hist` is scikit-image's ``exposure.equalize_hist`` (same bins, same
  interpolation of the cumulative histogram), optionally restricted to a mask.
- :func:`clahe` is scikit-image's ``exposure.equalize_adapthist`` in 2D and 3D
  (``method="skimage"``), or OpenCV's ``createCLAHE(...).apply`` for uint8/uint16 images
  (``method="opencv"``); both reproduce their reference bit for bit on the same input.
- :func:`n4_bias_correction` is N4 (Tustison et al., IEEE TMI 2010) as in ITK's
  ``N4BiasFieldCorrectionImageFilter``, fitted on a subsampled grid.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

import numpy as np

from medkern._dispatch import Kernel
from medkern._docstrings import fill_doc
from medkern._progress import Progress
from medkern._typing import ImageLike, ProgressArg
from medkern._util import check_mask, check_range, check_stats, unwrap
from medkern.image import Image

__all__ = ["equalize_hist", "clahe", "n4_bias_correction"]

# Integer images get one histogram bin per grey value (as scikit-image); beyond this many values
# the table would not fit comfortably in memory.
MAX_INTEGER_BINS = 2**24
# CLAHE: more bins than 14-bit levels buys nothing; the region maps (regions x bins doubles) are
# kept below 2 GiB.
MAX_CLAHE_BINS = 2**16
MAX_CLAHE_TABLE = 2**28
# N4 bounds: counts beyond these buy nothing and only cost time or memory.
MAX_N4_ITERATIONS = 10_000
MAX_N4_BINS = 2**16
MAX_N4_LATTICE = 2**24
# Rough N4 costs (ns, 2-core CPU) that size the progress spans: one voxel of the shrunk grid per
# fitting iteration, one voxel of the full grid for the field evaluation; and the iterations a
# level is expected to run (most converge well before the cap).
_N4_FIT_NS, _N4_APPLY_NS, _N4_EXPECTED_ITERATIONS = 30.0, 5.0, 15


_CUPY = "medkern._cupy.contrast:"
_NUMBA = "medkern._numba.contrast:"
value_range = Kernel("value_range", cpp="value_range", numba="medkern._numba.intensity:moments",
                     cuda="medkern._cupy.intensity:moments", cupy="medkern._cupy.intensity:moments")
histogram_edges = Kernel("histogram_edges", cpp="histogram_edges", numba=_NUMBA + "histogram_edges")
interp_map = Kernel("interp_map", cpp="interp_map", numba=_NUMBA + "interp_map")
clahe_skimage = Kernel("clahe", cpp="clahe_skimage", numba=_NUMBA + "clahe_skimage",
                       cuda=_CUPY + "clahe_skimage_cuda", cupy=_CUPY + "clahe_skimage")
clahe_opencv = Kernel("clahe(method='opencv')", cpp="clahe_opencv", numba=_NUMBA + "clahe_opencv")
n4_shrink = Kernel("n4_bias_correction", cpp="n4_shrink")
n4_fit = Kernel("n4_bias_correction", cpp="n4_fit")
n4_apply = Kernel("n4_bias_correction", cpp="n4_apply")


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _per_axis_int(value: Any, ndim: int, name: str) -> tuple[int, ...]:
    if isinstance(value, numbers.Number):
        values = (value,) * ndim
    else:
        values = tuple(value)
        if len(values) != ndim:
            raise ValueError(f"{name} needs 1 or {ndim} values (array-axis order), got {len(values)}")
    return tuple(_positive_int(v, name) for v in values)


def _extremes(x: Any, mask: Any, backend: str, name: str) -> tuple[float, float]:
    """(min, max) over the mask; refuses empty images, NaN, +-inf, ranges that overflow and empty
    masks."""
    if x.size == 0:
        raise ValueError(f"{name}: the image is empty (zero voxels)")
    st = value_range(x, mask, backend=backend)
    check_stats(st, x, name, mask=mask, hint="replace them first (e.g. np.nan_to_num)")
    if st["count"] == 0:
        raise ValueError(f"{name}: mask selects no voxel")
    lo, hi = float(st["min"]), float(st["max"])
    check_range(lo, hi, name, dtype=x.dtype)
    return lo, hi


@fill_doc
def equalize_hist(img: Image | np.ndarray, nbins: int = 256, mask: Image | np.ndarray | None = None, *,
                  backend: str = "auto") -> Image | np.ndarray:
    """Global histogram equalisation: map each voxel through the cumulative histogram.

    The definition of scikit-image's ``exposure.equalize_hist``: float images get ``nbins``
    equal-width bins over their [min, max] (``numpy.histogram``); integer images get one bin per
    grey value between min and max and ``nbins`` is ignored, exactly as scikit-image does. The
    cumulative histogram, normalised to end at 1, is interpolated linearly between bin centres
    (``numpy.interp``).

    Parameters
    ----------
    %(img)s
    nbins : int, optional
        Histogram bins for float images; default 256.
    %(mask)s
        The histogram is taken over the masked voxels only and the mapping is applied to every
        voxel: outside the mask -inf gives the first value, +inf 1, NaN stays NaN.
    %(backend)s

    Returns
    -------
    Image or array
        float32 in (0, 1], in the input's form.

    Raises
    ------
    ValueError
        Non-finite voxels (NaN, +-inf) among the histogram's voxels (the mask, or the whole
        image), with their count; a float range whose width overflows float64.

    See Also
    --------
    clahe : Adaptive, contrast-limited equalisation.
    normalize : Linear intensity normalisation.

    Examples
    --------
    >>> ramp = np.arange(16, dtype=np.uint8).reshape(4, 4)
    >>> mk.equalize_hist(ramp)
    array([[0.0625, 0.125 , 0.1875, 0.25  ],
           [0.3125, 0.375 , 0.4375, 0.5   ],
           [0.5625, 0.625 , 0.6875, 0.75  ],
           [0.8125, 0.875 , 0.9375, 1.    ]], dtype=float32)
    """
    x, _, rewrap = unwrap(img)
    nbins = _positive_int(nbins, "nbins")
    if nbins > MAX_INTEGER_BINS:
        raise ValueError(f"equalize_hist: nbins must be <= {MAX_INTEGER_BINS}, got {nbins}")
    m = check_mask(mask, x.shape)
    lo, hi = _extremes(x, m, backend, "equalize_hist")
    if x.dtype.kind in "iu":
        n_values = int(hi) - int(lo) + 1
        if n_values > MAX_INTEGER_BINS:
            raise ValueError(
                f"equalize_hist: the integer image spans {n_values} grey values (one bin each, as "
                f"scikit-image); convert it to float32 to bin it into nbins bins instead")
        edges = np.arange(n_values + 1, dtype=np.float64) + (int(lo) - 0.5)
        centers = np.arange(int(lo), int(hi) + 1, dtype=np.float64)
        cdf_dtype = np.float64
    else:
        first, last = x.dtype.type(lo), x.dtype.type(hi)
        if first == last:  # numpy.histogram widens an empty range by half a unit each side
            first, last = first - x.dtype.type(0.5), last + x.dtype.type(0.5)
        bin_edges = np.linspace(first, last, nbins + 1, endpoint=True, dtype=x.dtype)
        edges = bin_edges.astype(np.float64)
        centers = ((bin_edges[:-1] + bin_edges[1:]) / x.dtype.type(2.0)).astype(np.float64)
        cdf_dtype = x.dtype
    counts = histogram_edges(x, m, edges, backend=backend)
    cdf = np.cumsum(counts)
    cdf = (cdf / float(cdf[-1])).astype(cdf_dtype).astype(np.float64)
    return rewrap(interp_map(x, centers, cdf, backend=backend))


@fill_doc
def clahe(img: ImageLike, clip_limit: float | None = None, kernel_size: int | Sequence[int] | None = None,
          nbins: int = 256, *,
          method: str = "skimage", tile_grid: Sequence[int] | None = None,
          backend: str = "auto") -> ImageLike:
    """Contrast-limited adaptive histogram equalisation (Zuiderveld 1994), 2D and 3D.

    ``method="skimage"`` (default) is scikit-image's ``exposure.equalize_adapthist``: the image
    is rescaled from its [min, max] to 14 bits as scikit-image does (float images within [0, 1]
    first quantised to 16 bits exactly like ``img_as_uint``). Where scikit-image differs from a
    plain min-max rescale (it clips negative signed integers to 0 and rejects floats outside
    [-1, 1]) medkern rescales the image's own range instead, so CT in HU keeps its negative
    values. The output is float32 in [0, 1], equal to scikit-image's result (its float64 output
    rounded). ``method="opencv"`` is OpenCV's ``cv2.createCLAHE(clipLimit,
    tileGridSize).apply`` for uint8 and uint16 images (3D: each slice along axis 0 on its own);
    the output has the input's dtype and equals OpenCV's output.

    Parameters
    ----------
    %(img)s
    clip_limit : float, optional
        ``"skimage"``: normalised clip limit in [0, 1] (default 0.01); the histogram of each
        region is clipped at ``max(1, int(clip_limit * region voxels))`` and the excess spread
        over the bins; 0 means no clipping (plain AHE). ``"opencv"``: OpenCV's clip limit
        (default 40.0; 0 means no clipping).
    kernel_size : int or sequence of int, optional
        ``"skimage"``: contextual-region shape in voxels (one value or one per axis, array
        order); default 1/8 of each axis (at least 1).
    nbins : int, optional
        ``"skimage"``: histogram bins over the 14-bit grey range; default 256.
    method : {"skimage", "opencv"}, optional
        Whose definition to follow.
    tile_grid : sequence of int, optional
        ``"opencv"``: number of tiles (rows, columns) in array order, default (8, 8) (OpenCV's
        ``tileGridSize`` is (columns, rows)).
    %(backend)s

    Returns
    -------
    Image or array
        float32 in [0, 1] (``"skimage"``) or the input's dtype (``"opencv"``), in the input's
        form.

    Raises
    ------
    ValueError
        Non-finite voxels (NaN, +-inf), with their count; an intensity range whose width
        overflows float64; ``kernel_size`` beyond ``4 n + 16`` along an axis of n voxels; a
        ``tile_grid`` with more tiles than pixels; a negative clip limit; an unknown method, or
        parameters of the other method.

    See Also
    --------
    equalize_hist : Global equalisation.

    Examples
    --------
    >>> ramp = np.tile(np.arange(64, dtype=np.uint8), (64, 1))
    >>> eq = mk.clahe(ramp, clip_limit=0.01)
    >>> eq.dtype, float(eq.min()), float(eq.max())
    (dtype('float32'), 0.0, 1.0)
    >>> mk.clahe(ramp, method="opencv", clip_limit=2.0, tile_grid=(8, 8)).dtype
    dtype('uint8')
    """
    x, _, rewrap = unwrap(img)
    if method == "skimage":
        if tile_grid is not None:
            raise ValueError("tile_grid belongs to method='opencv'; with method='skimage' set "
                             "kernel_size (region shape in voxels) instead")
        return rewrap(_clahe_skimage(x, 0.01 if clip_limit is None else clip_limit, kernel_size,
                                     nbins, backend))
    if method == "opencv":
        if kernel_size is not None or nbins != 256:
            raise ValueError("kernel_size and nbins belong to method='skimage'; with "
                             "method='opencv' set tile_grid (tiles per axis) instead")
        return rewrap(_clahe_opencv(x, 40.0 if clip_limit is None else clip_limit,
                                    (8, 8) if tile_grid is None else tile_grid, backend))
    raise ValueError(f"clahe: method must be 'skimage' or 'opencv', got {method!r}")


def _clip_value(clip_limit: Any) -> float:
    if isinstance(clip_limit, bool) or not isinstance(clip_limit, numbers.Real) \
            or not np.isfinite(clip_limit) or clip_limit < 0:
        raise ValueError(f"clip_limit must be a finite number >= 0, got {clip_limit!r}")
    return float(clip_limit)


def _clahe_skimage(x, clip_limit, kernel_size, nbins, backend):
    if x.size == 0:
        raise ValueError("clahe: the image is empty (zero voxels)")
    clip_limit = _clip_value(clip_limit)
    nbins = _positive_int(nbins, "nbins")
    if nbins > MAX_CLAHE_BINS:
        raise ValueError(f"nbins must be <= {MAX_CLAHE_BINS} (CLAHE works on 14-bit grey levels), "
                         f"got {nbins}")
    if kernel_size is None:
        kernel = tuple(max(s // 8, 1) for s in x.shape)
    else:
        kernel = _per_axis_int(kernel_size, x.ndim, "kernel_size")
    for axis, (s, k) in enumerate(zip(x.shape, kernel)):
        if k > 4 * s + 16:
            # Regions far beyond the image only add reflected copies of it, at a cost that grows
            # with the region, not with the image.
            raise ValueError(f"kernel_size {kernel} exceeds 4 x the image extent {tuple(x.shape)} (+ 16) along "
                             f"axis {axis}; use a region no larger than the image")
    n_regions = math.prod(-(-s // k) for s, k in zip(x.shape, kernel))
    if n_regions * nbins > MAX_CLAHE_TABLE:
        raise ValueError(f"kernel_size {kernel} makes {n_regions} regions x {nbins} bins of maps "
                         f"({n_regions * nbins * 8 / 2**30:.1f} GiB); use larger regions or fewer bins")
    lo, hi = _extremes(x, None, backend, "clahe")
    region = math.prod(kernel)
    # scikit-image: int(np.clip(clip_limit * kernel_elements, 1, None)); 0 disables clipping.
    clim = max(int(clip_limit * region), 1) if clip_limit > 0 else region
    unit_float = x.dtype.kind == "f" and lo >= 0.0 and hi <= 1.0
    if x.ndim == 2:
        kernel = (1,) + kernel
    x3 = x.reshape((1,) * (3 - x.ndim) + x.shape)
    out = clahe_skimage(x3, kernel, lo, hi, unit_float, nbins, clim, backend=backend)
    return out.reshape(x.shape)


def _clahe_opencv(x, clip_limit, tile_grid, backend):
    if x.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"clahe(method='opencv') takes uint8 or uint16 images (as OpenCV), got "
                        f"{x.dtype}; use method='skimage' for other dtypes")
    clip_limit = _clip_value(clip_limit)
    tiles = _per_axis_int(tile_grid, 2, "tile_grid")
    if x.size == 0:
        raise ValueError("clahe: the image is empty (zero voxels)")
    if x.ndim not in (2, 3):
        raise ValueError(f"clahe(method='opencv') takes a 2D image or a 3D stack, got shape {x.shape}")
    if tiles[0] > x.shape[-2] or tiles[1] > x.shape[-1]:
        # OpenCV pads the image to a multiple of the grid: more tiles than pixels would make
        # the padded image (and the work) grow with the grid, not with the image.
        raise ValueError(f"tile_grid {tiles} has more tiles than pixels along an axis of the "
                         f"{x.shape[-2:]} slice; use at most one tile per pixel")
    x3 = x.reshape((1,) * (3 - x.ndim) + x.shape)
    return clahe_opencv(x3, tiles[0], tiles[1], clip_limit, backend=backend).reshape(x.shape)


def _axis_positions(size: int, factor: int) -> np.ndarray:
    """Normalised positions (0 at the first voxel, 1 at the last) of the voxels N4 samples along
    an axis: the centre voxel of each block of ``factor`` (n4_shrink in n4.hpp)."""
    if size == 1:
        return np.full(1, 0.5)
    start = np.arange(0, size, factor)
    centre = start + (np.minimum(factor, size - start) - 1) // 2
    return centre / (size - 1)


@fill_doc
def n4_bias_correction(img: Image | np.ndarray, mask: Image | np.ndarray | None = None, *,
                       shrink_factor: int | Sequence[int] = 4,
                       iterations: Sequence[int] = (50, 50, 50, 50),
                       control_points: int | Sequence[int] = 4,
                       convergence_threshold: float = 0.001, histogram_bins: int = 200,
                       fwhm: float = 0.15, wiener_noise: float = 0.01,
                       return_bias_field: bool = False, backend: str = "auto",
                       progress: ProgressArg = None
                       ) -> Image | np.ndarray | tuple[Image | np.ndarray, Image | np.ndarray]:
    """N4 bias-field correction (Tustison et al., IEEE TMI 29(6) 2010), 2D or 3D.

    The algorithm and defaults of ITK's ``N4BiasFieldCorrectionImageFilter``: the log bias field
    is a cubic B-spline with ``control_points`` per axis at the first fitting level; at each
    iteration the histogram of the log-corrected image (``histogram_bins`` bins) is sharpened by
    Wiener deconvolution (noise ``wiener_noise``) of a Gaussian of ``fwhm`` (log units) and the
    residual is fitted by B-spline approximation and added to the field, until the coefficient
    of variation of the field change is below ``convergence_threshold`` or
    ``iterations[level]`` iterations ran; each of the ``len(iterations)`` levels doubles the
    lattice resolution. The fit runs on the grid subsampled by ``shrink_factor`` (the centre
    voxel of each block), as SimpleITK users ``Shrink`` before N4, over the same physical domain
    as the full image; the field is then evaluated on the full grid. The fit is one compiled
    call, about a second at most at the default shrink factor.

    Parameters
    ----------
    %(img)s
    %(mask)s
        Only voxels inside it with positive intensity take part in the fit. Non-finite voxels
        outside the mask are divided by the field like every voxel (NaN and +-inf stay so).
    shrink_factor : int or sequence of int, optional
        Subsampling of the fitting grid, one value or one per axis (array order); default 4.
    iterations : sequence of int, optional
        Iterations per fitting level (at most 10000 each); default ``(50, 50, 50, 50)``.
    control_points : int or sequence of int, optional
        B-spline control points per axis at the first level; default 4.
    convergence_threshold : float, optional
        Stop a level when the coefficient of variation of the field change is below this.
    histogram_bins : int, optional
        Bins of the log-intensity histogram (at most 2**16); default 200.
    fwhm : float, optional
        FWHM of the Gaussian deconvolved from the histogram, in log units; default 0.15.
    wiener_noise : float, optional
        Wiener filter noise; default 0.01.
    return_bias_field : bool, optional
        Also return the multiplicative bias field.
    %(backend)s
    %(progress)s
        Called at the stages ``"shrink"``, ``"fit"`` and ``"apply"``.

    Returns
    -------
    corrected : Image or array
        ``img / bias``, float32, every voxel, in the input's form.
    bias : Image or array
        The multiplicative field (float32); only with ``return_bias_field=True``.

    Raises
    ------
    ValueError
        Non-finite voxels (NaN, +-inf) inside the mask, with their count; more than 10000
        iterations per level, more than 2**16 histogram bins or a final control-point lattice
        beyond 2**24 points (they buy nothing but time); an empty mask.
    medkern.Cancelled
        ``progress`` returned False.

    See Also
    --------
    normalize : Intensity normalisation, often applied after N4.

    Examples
    --------
    A T1-like image with a 2 % per voxel intensity ramp along x:

    >>> k, j, i = np.mgrid[:16, :32, :32]
    >>> t1 = mk.Image((100 * (1 + 0.02 * i)).astype(np.float32), spacing=2.0)
    >>> corrected, bias = mk.n4_bias_correction(t1, shrink_factor=2, iterations=(20, 20),
    ...                                         return_bias_field=True)
    >>> def cv(a):
    ...     return round(float(a.std() / a.mean()), 2)
    >>> cv(t1.array), cv(corrected.array)     # coefficient of variation before and after
    (0.14, 0.01)
    """
    x, _, rewrap = unwrap(img)
    m = check_mask(mask, x.shape)
    levels = tuple(int(_positive_int(n, "iterations")) for n in iterations)
    if not levels:
        raise ValueError("iterations needs one count per fitting level, got an empty sequence")
    factor = _per_axis_int(shrink_factor, x.ndim, "shrink_factor")
    cps = _per_axis_int(control_points, x.ndim, "control_points")
    if min(cps) < 4:
        raise ValueError(f"control_points must be >= 4 per axis (cubic B-spline), got {control_points}")
    histogram_bins = _positive_int(histogram_bins, "histogram_bins")
    if not 2 <= histogram_bins <= MAX_N4_BINS:
        raise ValueError(f"histogram_bins must be in [2, {MAX_N4_BINS}], got {histogram_bins}")
    if max(levels) > MAX_N4_ITERATIONS:
        raise ValueError(f"iterations must be <= {MAX_N4_ITERATIONS} per level, got {max(levels)}")
    final_lattice = math.prod((c - 3) * 2 ** (len(levels) - 1) + 3 for c in cps)
    if final_lattice > MAX_N4_LATTICE:
        raise ValueError(f"control_points {control_points} over {len(levels)} level(s) make a lattice of "
                         f"{final_lattice} control points at the last level (at most {MAX_N4_LATTICE}); "
                         "use fewer control points or fewer levels")
    if not (np.isfinite(fwhm) and fwhm > 0):
        raise ValueError(f"fwhm must be a finite number > 0 (log-intensity units), got {fwhm!r}")
    for name, value in (("wiener_noise", wiener_noise), ("convergence_threshold", convergence_threshold)):
        if not (np.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    lo, hi = _extremes(x, m, backend, "n4_bias_correction")
    if hi <= 0:
        raise ValueError("n4_bias_correction: no positive intensity inside the mask; N4 works on "
                         "log intensities and needs a positive image")
    pad = (1,) * (3 - x.ndim)
    x3 = x.reshape(pad + x.shape)
    m3 = None if m is None else m.reshape(x3.shape)
    factor3 = pad + factor
    n_small = math.prod(-(-n // f) for n, f in zip(x3.shape, factor3))
    with Progress(progress, "n4_bias_correction") as prog:
        shrink_span, fit_span, apply_span = prog.split(
            (0.0, _N4_FIT_NS * n_small * sum(min(n, _N4_EXPECTED_ITERATIONS) for n in levels),
             _N4_APPLY_NS * x3.size * (1 + return_bias_field)))
        shrink_span.update("shrink", 0.0)
        log_small, shrunk_mask = n4_shrink(x3, m3, factor3, backend=backend)
        if int(shrunk_mask.sum()) < 64:
            raise ValueError(f"n4_bias_correction: only {int(shrunk_mask.sum())} block(s) of the mask "
                             f"remain at shrink_factor={shrink_factor}; lower shrink_factor or widen "
                             "the mask")
        flat = tuple(s == 1 for s in x3.shape)
        cps3 = tuple(4 if f else c for f, c in zip(flat, pad + cps))
        u_small = [_axis_positions(s, f) for s, f in zip(x3.shape, factor3)]
        fit_span.update("fit", 0.0)
        fit = n4_fit(log_small, shrunk_mask, u_small, cps3, tuple(not f for f in flat), list(levels),
                     histogram_bins, float(fwhm), float(wiener_noise), float(convergence_threshold),
                     backend=backend)
        apply_span.update("apply", 0.0)
        u_full = [_axis_positions(s, 1) for s in x3.shape]
        corrected, bias = n4_apply(x3, fit["lattice"], u_full, return_bias_field, backend=backend)
        corrected = rewrap(corrected.reshape(x.shape))
        if return_bias_field:
            return corrected, rewrap(bias.reshape(x.shape))
        return corrected
