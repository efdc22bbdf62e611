"""IBSI image processing before feature computation (IBSI §2): re-segmentation, discretisation
and cropping to the ROI."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medkern._radiomics import _kernels
from medkern._radiomics.local_intensity import PEAK_RADIUS_MM


@dataclass
class Settings:
    bin_width: float | None = None
    bin_count: int | None = None
    bin_lower_bound: float | None = None
    resegment_range: tuple[float, float] | None = None
    outlier_sigma: float | None = None
    ivh_bin_width: float | None = None
    ivh_bin_count: int | None = None
    glcm_distance: int = 1
    ngtdm_distance: int = 1
    ngldm_distance: int = 1
    ngldm_alpha: int = 0
    backend: str = "auto"


@dataclass
class Roi:
    """The processed ROI: everything the feature families read."""

    spacing: tuple[float, float, float]
    values: np.ndarray          # intensities in the ROI intensity mask (float64)
    discretised: np.ndarray | None  # their grey levels 1..n_levels
    n_levels: int
    levels: np.ndarray | None   # int32 volume cropped to the ROI: 0 outside, grey level inside
    morph_mask: np.ndarray      # uint8 ROI morphological mask on the same crop
    intensity_mask: np.ndarray  # bool ROI intensity mask on the same crop
    image: np.ndarray           # float64 intensities on the same crop
    peak_image: np.ndarray      # intensities on a crop padded by the 1 cm³ sphere radius
    peak_mask: np.ndarray       # the intensity mask on that padded crop
    zone_cache: dict = field(default_factory=dict)  # GLSZM and GLDZM share one zone labelling

    def zones(self, by_slice: bool, backend: str):
        """(group, level, size, border distance) of every zone (IBSI §3.8-3.9), computed once."""
        if by_slice not in self.zone_cache:
            self.zone_cache[by_slice] = _kernels.zones(self.levels, self.n_levels, by_slice,
                                                       self.morph_mask, backend=backend)
        return self.zone_cache[by_slice]

    @property
    def n_voxels(self) -> int:
        return int(self.intensity_mask.sum())

    @property
    def voxels_per_slice(self) -> np.ndarray:
        return self.intensity_mask.reshape(self.intensity_mask.shape[0], -1).sum(axis=1)


def intensity_mask(image: np.ndarray, morph: np.ndarray, settings: Settings) -> np.ndarray:
    """Re-segmentation (IBSI §2.5): the range first, then outlier filtering (mean ± n sigma of the
    voxels the range kept)."""
    mask = morph.copy()
    if settings.resegment_range is not None:
        lo, hi = settings.resegment_range
        mask &= (image >= lo) & (image <= hi)
    if settings.outlier_sigma is not None:
        v = image[mask]
        if v.size:
            mu, sd = v.mean(), v.std()
            k = settings.outlier_sigma
            mask &= (image >= mu - k * sd) & (image <= mu + k * sd)
    return mask


# Grey levels after discretisation: texture matrices grow with their square (GLCM n x n per
# direction), so more levels than this only cost memory.
MAX_GREY_LEVELS = 2**14


def discretise(values: np.ndarray, settings: Settings) -> tuple[np.ndarray, int]:
    """Grey levels 1..n (IBSI §2.7). Fixed bin number: over the ROI range, the maximum in the last
    bin. Fixed bin size: from the lower bound (``bin_lower_bound``, else the re-segmentation range's
    lower bound, else the ROI minimum); n is the highest level present."""
    if settings.bin_count is not None:
        n = int(settings.bin_count)
        if n > MAX_GREY_LEVELS:
            raise ValueError(f"bin_count {n} exceeds {MAX_GREY_LEVELS} grey levels; the texture matrices "
                             "grow with its square")
        lo, hi = values.min(), values.max()
        if hi == lo:
            return np.ones(len(values), np.int64), n
        if not np.isfinite(float(hi) - float(lo)):
            raise ValueError(f"the ROI intensity range [{lo:g}, {hi:g}] is wider than float64 can represent "
                             "(max - min overflows); rescale the image first")
        d = np.floor(n * (values - lo) / (hi - lo)).astype(np.int64) + 1
        return np.minimum(d, n), n
    lo = settings.bin_lower_bound
    if lo is None and settings.resegment_range is not None and np.isfinite(settings.resegment_range[0]):
        lo = settings.resegment_range[0]
    if lo is None:
        lo = values.min()
    with np.errstate(over="ignore"):
        scaled = np.floor((values - lo) / settings.bin_width)
    # Checked in float before the conversion to integer levels (which would wrap silently).
    top = float(scaled.max()) + 1.0
    if not top <= MAX_GREY_LEVELS:
        raise ValueError(f"bin_width {settings.bin_width:g} from the lower bound {lo:g} makes {top:g} grey levels "
                         f"over the ROI (at most {MAX_GREY_LEVELS}); use a larger bin_width or a bin_lower_bound "
                         "closer to the ROI intensities")
    d = scaled.astype(np.int64) + 1
    # Intensities below an explicit lower bound share the first bin (as MIRP and IBSI do).
    d = np.maximum(d, 1)
    return d, int(d.max())


def _bbox(mask: np.ndarray, pad) -> tuple[slice, ...]:
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(axis=0) - pad, 0)
    hi = np.minimum(idx.max(axis=0) + 1 + pad, mask.shape)
    return tuple(slice(a, b) for a, b in zip(lo, hi))


def prepare(image: np.ndarray, morph: np.ndarray, spacing, settings: Settings,
            need_levels: bool) -> Roi:
    """Build the Roi from a 3D image and its morphological mask (after any resampling)."""
    int_mask = intensity_mask(image, morph, settings)
    if not int_mask.any():
        raise ValueError("mask: no voxel is left in the ROI intensity mask after re-segmentation; "
                         "check resegment_range / outlier_sigma against the image intensities")
    crop = _bbox(morph, 0)
    pad = np.ceil(PEAK_RADIUS_MM / np.asarray(spacing)).astype(int)
    peak_crop = _bbox(morph, pad)
    values = image[int_mask].astype(np.float64)
    img_c = image[crop].astype(np.float64)
    int_c = int_mask[crop]
    discretised, n_levels, levels = None, 0, None
    if need_levels:
        discretised, n_levels = discretise(values, settings)
        levels = np.zeros(img_c.shape, np.int32)
        # Boolean indexing of the crop visits the voxels in the same order as of the full grid.
        levels[int_c] = discretised
    return Roi(
        spacing=tuple(float(s) for s in spacing), values=values, discretised=discretised,
        n_levels=n_levels, levels=levels, morph_mask=morph[crop].astype(np.uint8),
        intensity_mask=int_c, image=img_c, peak_image=image[peak_crop].astype(np.float64),
        peak_mask=int_mask[peak_crop],
    )
