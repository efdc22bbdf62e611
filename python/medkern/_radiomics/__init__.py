"""IBSI 1 radiomics features (Zwanenburg et al., Radiology 295 (2020) 328; IBSI reference manual,
arXiv:1612.07003).

``mk.radiomics(img, mask, ...)`` processes the ROI as IBSI chapter 2 describes (optional rounding,
re-segmentation by range and outliers, discretisation by fixed bin number or fixed bin size) and
returns a :class:`RadiomicsResult` keyed by family and IBSI feature name, with IBSI codes.
The texture matrices are built in C++ (``medkern._core``), the features from them in numpy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

import numpy as np

from medkern._dispatch import is_cupy_array
from medkern._docstrings import fill_doc
from medkern._progress import Progress
from medkern._radiomics import (
    glcm,
    gldzm,
    glrlm,
    glszm,
    histogram,
    ivh,
    local_intensity,
    morphology,
    ngldm,
    ngtdm,
    statistics,
)
from medkern._radiomics._interpolate import interpolate
from medkern._radiomics._preprocess import Settings, prepare
from medkern._typing import ProgressArg
from medkern._util import as_image, check_finite, check_same_geometry
from medkern.image import Image

__all__ = ["radiomics", "RadiomicsResult", "Feature", "FAMILIES", "TEXTURE_DIMS"]

# Family id -> module; in IBSI chapter 3 order.
_MODULES = {
    "morphology": morphology, "local_intensity": local_intensity, "statistics": statistics, "histogram": histogram,
    "ivh": ivh, "glcm": glcm, "glrlm": glrlm, "glszm": glszm, "gldzm": gldzm, "ngtdm": ngtdm,
    "ngldm": ngldm,
}
FAMILIES = tuple(_MODULES)
_TEXTURE = ("glcm", "glrlm", "glszm", "gldzm", "ngtdm", "ngldm")
_DISCRETISED = ("histogram",) + _TEXTURE
_ALIASES = {"firstorder": "statistics", "shape": "morphology"}
# IBSI spatial approaches: 2D (per slice), 2.5D (slices merged), 3D (volumetric).
TEXTURE_DIMS = ("2D", "2.5D", "3D")
# Rough cost of each family per ROI voxel (ns, 2-core CPU, 3D texture; the per-slice approaches
# cost about 3x more again), of preparing the ROI per ROI voxel and of resampling per image voxel:
# the widths of the progress spans.
_FAMILY_NS = {"morphology": 3000.0, "local_intensity": 450.0, "statistics": 150.0, "histogram": 140.0,
              "ivh": 10.0, "glcm": 90.0, "glrlm": 90.0, "glszm": 75.0, "gldzm": 10.0, "ngtdm": 35.0,
              "ngldm": 40.0}
_SLICE_FACTOR, _PREPARE_NS, _RESAMPLE_NS = 3.0, 80.0, 50.0


class Feature(NamedTuple):
    family: str        # medkern family id, e.g. "glcm"
    name: str          # IBSI feature name, e.g. "Joint maximum"
    code: str          # IBSI identifier, e.g. "GYBY"
    aggregation: str | None  # IBSI aggregation method, e.g. "3D, merged"; None outside texture
    value: float


class RadiomicsResult(Mapping):
    """Feature values keyed ``"family/Name"`` or, for texture, ``"family/Name [aggregation]"``.

    ``result.features`` lists :class:`Feature` records (family, IBSI name, IBSI code, aggregation,
    value) in IBSI order; ``result.code(key)`` gives one code; ``result.by_code(code)`` the values
    of a code per aggregation method.
    """

    def __init__(self, features: list[Feature]):
        self.features = features
        self._by_key = {self.key(f): f for f in features}

    @staticmethod
    def key(f: Feature) -> str:
        base = f"{f.family}/{f.name}"
        return base if f.aggregation is None else f"{base} [{f.aggregation}]"

    def __getitem__(self, key: str) -> float:
        return self._by_key[key].value

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_key)

    def __len__(self) -> int:
        return len(self._by_key)

    def code(self, key: str) -> str:
        """Return the IBSI identifier of a feature key, e.g. ``"Q4LE"`` for the mean intensity."""
        return self._by_key[key].code

    def by_code(self, code: str) -> dict[str | None, float]:
        """Return the values of one IBSI feature code, keyed by aggregation method (None outside texture)."""
        return {f.aggregation: f.value for f in self.features if f.code == code}

    def __repr__(self) -> str:
        return f"RadiomicsResult({len(self)} features)"


def _positive(value, name, integer=False):
    if value is None:
        return None
    if integer:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
        return int(value)
    value = float(value)
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be positive and finite, got {value!r}")
    return value


def _new_spacing(value, ndim: int) -> np.ndarray:
    """Per-axis new spacing, NaN where the axis keeps its spacing."""
    vals = [value] * ndim if np.isscalar(value) else list(value)
    if len(vals) != ndim:
        raise ValueError(f"resample_spacing needs 1 or {ndim} values (array-axis order), got {len(vals)}")
    out = np.array([np.nan if v is None else float(v) for v in vals])
    if not np.all(np.isnan(out) | (np.isfinite(out) & (out > 0))):
        raise ValueError(f"resample_spacing must be positive and finite (or None to keep an axis), got {value!r}")
    return out


def _families(features: Iterable[str] | str) -> list[str]:
    if isinstance(features, str):
        features = (features,)
    out = []
    for f in features:
        f = _ALIASES.get(f, f)
        if f not in _MODULES:
            raise ValueError(f"features: unknown family {f!r}; choose from {FAMILIES}")
        if f not in out:
            out.append(f)
    return [f for f in FAMILIES if f in out]


def _roi_inputs(img: Any, mask: Any) -> tuple[Image, np.ndarray, np.ndarray]:
    """The image, its values as float64 and the ROI as booleans, every argument checked."""
    for name, x in (("img", img), ("mask", mask)):
        if is_cupy_array(x.array if isinstance(x, Image) else x):
            raise TypeError(f"{name} is a CuPy array; radiomics runs on the CPU: pass {name}.get()")
    image = as_image(img, "img")
    array = np.asarray(image.array)
    m = np.asarray(mask.array if isinstance(mask, Image) else mask)
    if m.shape != array.shape:
        raise ValueError(f"mask has shape {m.shape}, img has shape {array.shape}; they must match")
    if m.dtype != np.bool_ and m.dtype.kind not in "iuf":
        raise TypeError(f"mask must be boolean or numeric, got dtype {m.dtype}")
    if array.dtype.kind not in "iuf" and array.dtype != np.bool_:
        raise TypeError(f"img must be numeric, got dtype {array.dtype}")
    if isinstance(mask, Image):
        # The ROI is defined voxel by voxel: an Image mask must sit on the image's grid.
        check_same_geometry(image, mask, "radiomics")
    # A NaN mask voxel is neither in nor out of the ROI.
    check_finite(m, "radiomics", "mask", hint="a mask must be 0 (outside) or non-zero (inside) everywhere")
    morph = m != 0
    if not morph.any():
        raise ValueError("mask selects no voxel; radiomics needs a non-empty ROI")
    values = np.asarray(array, np.float64)
    check_finite(values, "radiomics", "img", mask=morph,
                 hint="replace them or exclude them from mask")
    return image, values, morph


def _resampling(resample_spacing: Any, ndim: int, interpolation: str, mask_interpolation: str,
                partial_volume: float) -> tuple[np.ndarray, float]:
    """The checked resampling settings: the new spacing (NaN: axis kept) and the partial volume."""
    new_spacing = _new_spacing(resample_spacing, ndim)
    if interpolation not in ("nearest", "linear", "cubic"):
        raise ValueError(f"interpolation must be 'nearest', 'linear' or 'cubic', got {interpolation!r}")
    if mask_interpolation not in ("nearest", "linear"):
        raise ValueError(f"mask_interpolation must be 'nearest' or 'linear', got {mask_interpolation!r}")
    partial_volume = float(partial_volume)
    if not 0.0 < partial_volume <= 1.0:
        raise ValueError(f"partial_volume must lie in (0, 1], got {partial_volume}")
    return new_spacing, partial_volume


@fill_doc
def radiomics(
    img: Image | np.ndarray,
    mask: Image | np.ndarray,
    features: Iterable[str] | str = FAMILIES,
    *,
    bin_width: float | None = None,
    bin_count: int | None = None,
    bin_lower_bound: float | None = None,
    resegment_range: tuple[float, float] | None = None,
    outlier_sigma: float | None = None,
    round_intensities: bool = False,
    resample_spacing: float | Sequence[float | None] | None = None,
    interpolation: str = "linear",
    mask_interpolation: str = "linear",
    partial_volume: float = 0.5,
    texture_dims: Iterable[str] | str = ("3D",),
    ivh_bin_width: float | None = None,
    ivh_bin_count: int | None = None,
    glcm_distance: int = 1,
    ngtdm_distance: int = 1,
    ngldm_distance: int = 1,
    ngldm_alpha: int = 0,
    backend: str = "auto",
    progress: ProgressArg = None,
) -> RadiomicsResult:
    """Compute IBSI 1 radiomics features of a region of an image.

    The pipeline is IBSI's: optional resampling of image and mask (§2.4), re-segmentation of the
    intensity mask by range and outliers (§2.5), discretisation (§2.7), then the feature
    families. Every IBSI 1 reference value is checked (:doc:`../radiomics_compliance`).

    Parameters
    ----------
    img : Image or array_like
        2D or 3D numpy image. Spacing comes from an Image (1 mm for a bare array). Slices for
        the 2D/2.5D texture approaches are planes of array axis 0. NaN or +-inf inside the mask
        raise ValueError (outside it they are ignored).
    mask : Image or array_like
        The region (non-zero voxels), same shape. An Image must have the image's geometry
        (spacing, origin, direction). NaN or +-inf anywhere raise ValueError.
    features : str or iterable of str, optional
        Families to compute, from ``FAMILIES``: "morphology", "local_intensity", "statistics",
        "histogram", "ivh", "glcm", "glrlm", "glszm", "gldzm", "ngtdm", "ngldm" (default all).
    bin_width : float, optional
        Fixed bin size discretisation (IBSI §2.7) for histogram and texture families; bins start
        at ``bin_lower_bound``, else at ``resegment_range[0]``, else at the ROI minimum.
    bin_count : int, optional
        Fixed bin number discretisation instead (exactly one of the two is needed when a
        discretised family is asked for).
    bin_lower_bound : float, optional
        The lower edge of the first bin for ``bin_width``.
    resegment_range : tuple of float, optional
        ``(low, high)`` intensity range kept in the ROI intensity mask (IBSI §2.5); -inf/inf for
        an open side. The morphological mask stays ``mask``.
    outlier_sigma : float, optional
        Drop voxels beyond mean ± outlier_sigma·std of the ROI (after the range), e.g. 3.
    round_intensities : bool, optional
        Round intensities to the nearest integer (after any interpolation), as IBSI asks for CT
        in HU.
    resample_spacing : float or sequence of float, optional
        New voxel spacing in mm (array-axis order; a scalar for all axes; None for an axis keeps
        it, e.g. ``(None, 2, 2)`` for IBSI's in-plane 2D interpolation). The new grid is IBSI's
        (§2.4): grid centres aligned, ``ceil(n * spacing / new_spacing)`` voxels,
        nearest-boundary extrapolation.
    interpolation : {"linear", "cubic", "nearest"}, optional
        Image interpolation for resampling: IBSI trilinear, cubic B-spline (IBSI tricubic
        spline) or nearest.
    mask_interpolation : {"linear", "nearest"}, optional
        ``"linear"`` interpolates the mask as 0/1 intensities.
    partial_volume : float, optional
        Interpolated mask values >= this stay in the ROI (IBSI default 0.5).
    texture_dims : str or iterable of str, optional
        Any of "2D", "2.5D", "3D". GLCM and GLRLM give two aggregation methods each:
        "2D, averaged" / "2D, slice-merged", "2.5D, direction-merged" / "2.5D, merged",
        "3D, averaged" / "3D, merged"; GLSZM, GLDZM, NGTDM and NGLDM give "2D", "2.5D", "3D".
    ivh_bin_width : float, optional
        Discretisation for the intensity-volume histogram. Without it or ``ivh_bin_count``,
        integer intensities are used as they are (steps of 1) and other intensities are put in
        1000 bins (IBSI §3.5).
    ivh_bin_count : int, optional
        The number of intensity-volume histogram bins instead.
    glcm_distance : int, optional
        Chebyshev distance delta of the GLCM (IBSI default 1).
    ngtdm_distance : int, optional
        Chebyshev distance delta of the NGTDM (IBSI default 1).
    ngldm_distance : int, optional
        Chebyshev distance delta of the NGLDM (IBSI default 1).
    ngldm_alpha : int, optional
        NGLDM coarseness (IBSI default 0).
    backend : {"auto", "cpp", "numba"}, optional
        For the texture-matrix and local-intensity kernels (the mesh, diameter and hull kernels
        of the morphology family are C++ only). Radiomics runs on the CPU: cupy input is a
        TypeError.
    %(progress)s
        Called with stage ``"prepare"`` (resampling, re-segmentation, discretisation) and then
        with each family's id before it is computed, the families weighted by their cost.

    Returns
    -------
    RadiomicsResult
        A mapping ``"family/IBSI name"`` (texture: ``"family/IBSI name [aggregation]"``) ->
        value; ``result.code(key)`` gives a feature's IBSI code, ``result.by_code(code)`` its
        values per aggregation method, ``result.features`` the records in IBSI order. A feature
        the ROI leaves undefined (e.g. the correlation of a uniform ROI, the enclosing ellipsoid
        of a flat one) is NaN.

    Raises
    ------
    ValueError
        Non-finite values (with their count), a mask whose geometry differs from the image's,
        unknown families, neither or both of ``bin_width`` and ``bin_count`` for a discretised
        family, or a discretisation into more than 2**14 grey levels.
    TypeError
        CuPy input.
    medkern.Cancelled
        ``progress`` returned False.

    See Also
    --------
    regions : Size, shape and intensity of every labelled region.

    Examples
    --------
    >>> k, j, i = np.mgrid[:12, :12, :12]
    >>> roi = (k - 6) ** 2 + (j - 6) ** 2 + (i - 6) ** 2 <= 16
    >>> ct = mk.Image(np.where(roi, 40 + 10 * ((i + j) % 3), -100).astype(np.int16), spacing=2.0)
    >>> f = mk.radiomics(ct, roi, features=["morphology", "statistics", "glcm"], bin_width=5)
    >>> round(f["statistics/Mean intensity"], 2), f.code("statistics/Mean intensity")
    (50.27, 'Q4LE')
    >>> round(f["glcm/Joint entropy [3D, merged]"], 3)
    3.166
    >>> sorted(f.by_code("TU9B"))       # joint entropy, per aggregation method
    ['3D, averaged', '3D, merged']
    """
    image, values, morph = _roi_inputs(img, mask)
    families = _families(features)
    prog = Progress(progress, "radiomics")
    dims = (texture_dims,) if isinstance(texture_dims, str) else tuple(texture_dims)
    for d in dims:
        if d not in TEXTURE_DIMS:
            raise ValueError(f"texture_dims: unknown approach {d!r}; choose from {TEXTURE_DIMS}")
    bin_width = _positive(bin_width, "bin_width")
    bin_count = _positive(bin_count, "bin_count", integer=True)
    needs_levels = any(f in _DISCRETISED for f in families)
    if needs_levels and (bin_width is None) == (bin_count is None):
        raise ValueError("give exactly one of bin_width (fixed bin size) or bin_count (fixed bin "
                         f"number) to discretise the intensities for {', '.join(families)}")
    if resegment_range is not None:
        lo, hi = (float(v) for v in resegment_range)
        if np.isnan(lo) or np.isnan(hi) or lo > hi:
            raise ValueError(f"resegment_range must be (low, high) with low <= high, got {resegment_range}")
        resegment_range = (lo, hi)
    settings = Settings(
        bin_width=bin_width, bin_count=bin_count,
        bin_lower_bound=None if bin_lower_bound is None else float(bin_lower_bound),
        resegment_range=resegment_range,
        outlier_sigma=_positive(outlier_sigma, "outlier_sigma"),
        ivh_bin_width=_positive(ivh_bin_width, "ivh_bin_width"),
        ivh_bin_count=_positive(ivh_bin_count, "ivh_bin_count", integer=True),
        glcm_distance=_positive(glcm_distance, "glcm_distance", integer=True),
        ngtdm_distance=_positive(ngtdm_distance, "ngtdm_distance", integer=True),
        ngldm_distance=_positive(ngldm_distance, "ngldm_distance", integer=True),
        ngldm_alpha=int(ngldm_alpha), backend=backend,
    )
    if settings.ngldm_alpha < 0:
        raise ValueError(f"ngldm_alpha must be >= 0, got {ngldm_alpha!r}")
    spacing = tuple(image.spacing)
    if resample_spacing is not None:
        new_spacing, partial_volume = _resampling(resample_spacing, values.ndim, interpolation,
                                                  mask_interpolation, partial_volume)
    n_roi = float(np.count_nonzero(morph))
    slices = _SLICE_FACTOR if any(d != "3D" for d in dims) else 0.0
    costs = [_PREPARE_NS * n_roi + (0.0 if resample_spacing is None else _RESAMPLE_NS * values.size)]
    costs += [_FAMILY_NS[f] * n_roi * (1.0 + (slices if f in _TEXTURE else 0.0)) for f in families]
    with prog:
        spans = prog.split(costs)
        spans[0].update("prepare", 0.0)
        if resample_spacing is not None:
            values, morph = interpolate(image.with_array(values), morph, new_spacing, interpolation,
                                        mask_interpolation, partial_volume, backend)
            spacing = tuple(float(v) for v in np.where(np.isnan(new_spacing), spacing, new_spacing))
            if not morph.any():
                raise ValueError("mask: no voxel is left after interpolation; use a finer "
                                 "resample_spacing or a lower partial_volume")
        if values.ndim == 2:
            values, morph, spacing = values[None], morph[None], (1.0,) + spacing
        if round_intensities:
            values = np.round(values)
        roi = prepare(values, morph, spacing, settings, needs_levels)

        out: list[Feature] = []
        for fam, span in zip(families, spans[1:]):
            span.update(fam, 0.0)
            module = _MODULES[fam]
            codes = {row[0]: row[1] for row in module.FEATURES}
            if fam in _TEXTURE:
                for aggregation, values_ in module.compute(roi, dims, settings).items():
                    out.extend(Feature(fam, name, codes[name], aggregation, v) for name, v in values_.items())
            else:
                out.extend(Feature(fam, name, codes[name], None, v)
                           for name, v in module.compute(roi, settings).items())
        return RadiomicsResult([f._replace(value=float(f.value) if np.isfinite(f.value) else float("nan"))
                                for f in out])
