"""Point-wise intensity mappings: window/level and normalisation.

All of them are one linear map followed by an optional clamp (``affine_intensity``), run by the
C++ kernel on numpy input and by the CUDA kernel on CuPy input. Output is float32.
"""

from __future__ import annotations

import numpy as np

from medkern._dispatch import Kernel, array_module
from medkern._docstrings import fill_doc
from medkern._typing import ImageLike
from medkern._util import check_finite, check_mask, check_nonempty, check_range, check_stats, unwrap

__all__ = ["window", "normalize"]


affine_intensity = Kernel(
    "affine_intensity",
    cpp="affine_intensity",
    numba="medkern._numba.intensity:affine_intensity",
    cuda="medkern._cupy.intensity:affine_intensity_cuda",
    cupy="medkern._cupy.intensity:affine_intensity",
)
moments = Kernel(
    "moments",
    cpp="moments",
    numba="medkern._numba.intensity:moments",
    cuda="medkern._cupy.intensity:moments",
    cupy="medkern._cupy.intensity:moments",
)


@fill_doc
def window(img: ImageLike, center: float, width: float, output_range: tuple[float, float] = (0.0, 1.0),
           *, backend: str = "auto") -> ImageLike:
    """Window/level: map ``[center - width/2, center + width/2]`` linearly onto ``output_range``.

    Values below the window go to ``output_range[0]``, above it to ``output_range[1]`` (the
    SimpleITK ``IntensityWindowingImageFilter`` definition). NaN stays NaN; -inf and +inf go to
    the ends of ``output_range`` like any value outside the window.

    Parameters
    ----------
    %(img)s
    center : float
        The window centre (level), in image units (e.g. HU).
    width : float
        The window width, positive.
    output_range : tuple of float, optional
        The values the window's ends map to; default ``(0.0, 1.0)``.
    %(backend)s

    Returns
    -------
    Image or array
        float32, in the input's form.

    Raises
    ------
    ValueError
        A centre that is not finite, a width that is not positive and finite, or an
        ``output_range`` that is not two finite increasing values.

    See Also
    --------
    normalize : Normalisation from image statistics.

    Examples
    --------
    The soft-tissue CT window:

    >>> ct = mk.Image(np.array([[-1000, -160, 40, 240, 3000]], np.int16))
    >>> mk.window(ct, center=40, width=400).array
    array([[0. , 0. , 0.5, 1. , 1. ]], dtype=float32)
    """
    x, _, rewrap = unwrap(img)
    check_nonempty(x, "window")
    center, width = float(center), float(width)
    if not np.isfinite(center):
        raise ValueError(f"window center must be finite, got {center}")
    if not (np.isfinite(width) and width > 0):
        raise ValueError(f"window width must be positive and finite, got {width}")
    out_lo, out_hi = (float(v) for v in output_range)
    if not (np.isfinite(out_lo) and np.isfinite(out_hi) and out_lo < out_hi):
        raise ValueError(f"output_range must be two finite increasing values, got {output_range}")
    scale = (out_hi - out_lo) / width
    offset = out_lo - (center - width / 2.0) * scale
    if not (np.isfinite(scale) and np.isfinite(offset) and scale > 0):
        raise ValueError(f"window: center {center:g}, width {width:g} and output_range {output_range} give a map "
                         "that is not finite in float64 (width too small or too large for the range)")
    return rewrap(affine_intensity(x, scale, offset, out_lo, out_hi, backend=backend))


@fill_doc
def normalize(img: ImageLike, method: str = "zscore", mask: ImageLike | None = None, *,
              percentiles: tuple[float, float] = (0.5, 99.5), clip: bool = False,
              backend: str = "auto") -> ImageLike:
    """Normalise intensities with statistics taken inside a mask (all voxels when None).

    The map is applied to every voxel (outside the mask too, where NaN stays NaN and +-inf stay
    infinite).

    Parameters
    ----------
    %(img)s
    method : {"zscore", "minmax", "percentile"}, optional
        ``"zscore"`` (default): ``(x - mean) / std`` with the population std (ddof=0, as MONAI's
        ``NormalizeIntensity`` and nnU-Net); a constant image maps to 0. ``"minmax"``:
        ``(x - min) / (max - min)`` onto [0, 1]. ``"percentile"``: ``(x - p_lo) / (p_hi -
        p_lo)`` with numpy's linear percentiles.
    %(mask)s
    percentiles : tuple of float, optional
        ``"percentile"``: ``(p_lo, p_hi)`` in %; default ``(0.5, 99.5)``.
    clip : bool, optional
        ``"percentile"``: clamp the result to [0, 1].
    %(backend)s

    Returns
    -------
    Image or array
        float32, in the input's form.

    Raises
    ------
    ValueError
        Non-finite voxels (NaN, +-inf) inside the mask make the statistics undefined (the
        message gives their count), as do statistics that overflow float64; an unknown method;
        an empty mask.

    See Also
    --------
    window : A fixed intensity window.
    equalize_hist : Histogram equalisation.

    Examples
    --------
    >>> x = np.array([[1, 2, 3, 4]], np.float32)
    >>> mk.normalize(x, "zscore")
    array([[-1.3416, -0.4472,  0.4472,  1.3416]], dtype=float32)
    >>> mk.normalize(x, "zscore", mask=x > 1)     # statistics of 2, 3, 4; applied everywhere
    array([[-2.4495, -1.2247,  0.    ,  1.2247]], dtype=float32)
    >>> mk.normalize(x, "percentile", percentiles=(0, 50), clip=True)
    array([[0.    , 0.6667, 1.    , 1.    ]], dtype=float32)
    """
    x, _, rewrap = unwrap(img)
    m = check_mask(mask, x.shape)
    if x.size == 0:
        raise ValueError("normalize: the image is empty (zero voxels)")
    if method in ("zscore", "minmax"):
        st = moments(x, m, backend=backend)
        check_stats(st, x, "normalize", mask=m)
        if st["count"] == 0:
            raise ValueError("normalize: mask selects no voxel")
        if not (np.isfinite(st["sum_sq"]) and np.isfinite(float(st["max"]) - float(st["min"]))):
            raise ValueError("normalize: the image statistics overflow float64 (values too large); rescale "
                             "the image first")
        if method == "zscore":
            mean = st["sum"] / st["count"]
            var = max(st["sum_sq"] / st["count"] - mean * mean, 0.0)
            std = float(np.sqrt(var))
            scale = 1.0 / std if std > 0 else 0.0
            offset = -mean * scale
        else:
            lo_v, hi_v = st["min"], st["max"]
            scale = 1.0 / (hi_v - lo_v) if hi_v > lo_v else 0.0
            offset = -lo_v * scale
        return rewrap(affine_intensity(x, scale, offset, -np.inf, np.inf, backend=backend))
    if method == "percentile":
        p_lo, p_hi = (float(p) for p in percentiles)
        if not 0 <= p_lo < p_hi <= 100:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
        xp = array_module(x)
        values = x[m.astype(bool)] if m is not None else x.ravel()
        if values.size == 0:
            raise ValueError("normalize: mask selects no voxel")
        check_finite(values, "normalize", "img", hint="replace them or exclude them with mask")
        lo_v, hi_v = (float(v) for v in xp.percentile(values, [p_lo, p_hi]))
        check_range(lo_v, hi_v, "normalize")
        scale = 1.0 / (hi_v - lo_v) if hi_v > lo_v else 0.0
        offset = -lo_v * scale
        lo, hi = (0.0, 1.0) if clip else (-np.inf, np.inf)
        return rewrap(affine_intensity(x, scale, offset, lo, hi, backend=backend))
    raise ValueError(f"normalize: method must be 'zscore', 'minmax' or 'percentile', got {method!r}")
