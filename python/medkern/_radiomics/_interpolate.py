"""Image and mask interpolation to a new voxel spacing on the IBSI grid (IBSI §2.4).

IBSI aligns the centres of the original and the interpolation grid and sizes the new grid by
rounding the fractional number of voxels up (``ceil(n * spacing / new_spacing)``), so the new
grid covers at least the original extent; intensities beyond the original grid take the nearest
boundary value. Only the part of the new grid around the ROI is computed (the features never
look further than the 1 cm³ local-intensity sphere), sampled by ``mk.resample_to``.
"""

from __future__ import annotations

import math
from typing import cast

import numpy as np

from medkern._radiomics.local_intensity import PEAK_RADIUS_MM
from medkern.image import Image

# Input voxels kept beyond what the samples need: the cubic B-spline prefilter of the cropped
# block differs from the full image's by 0.268^k at k voxels from the crop edge (pole of the
# cubic B-spline), below 1e-7 relative for k = 12.
_SPLINE_MARGIN = 12


def ibsi_grid(shape, spacing, new_spacing) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(new shape, input index of new voxel 0, input index step per new voxel), per axis."""
    n = np.asarray(shape, np.float64)
    s = np.asarray(spacing, np.float64)
    s_new = np.asarray(new_spacing, np.float64)
    # Rounding before the ceiling keeps an exact fit (e.g. 60 x 3 mm -> 90 x 2 mm) exact.
    n_new = np.maximum(1, np.ceil(np.round(n * s / s_new, 6))).astype(int)
    step = s_new / s
    start = (n - 1) / 2.0 - (n_new - 1) / 2.0 * step
    return n_new, start, step


def interpolate(image: Image, mask: np.ndarray, new_spacing, interpolation: str,
                mask_interpolation: str, partial_volume: float, backend: str
                ) -> tuple[np.ndarray, np.ndarray]:
    """The image (float64) and ROI mask (bool) on the part of the IBSI grid around the ROI."""
    from medkern._resample import MAX_OUTPUT_VOXELS, resample_to

    spacing = np.asarray(image.spacing, np.float64)
    new_spacing = np.where(np.isnan(new_spacing), spacing, new_spacing)
    n_new, start, step = ibsi_grid(image.shape, spacing, new_spacing)
    idx = np.argwhere(mask)
    margin_mm = PEAK_RADIUS_MM + 2.0 * new_spacing.max()
    lo_in = idx.min(axis=0) - margin_mm / spacing
    hi_in = idx.max(axis=0) + margin_mm / spacing
    o_lo = np.clip(np.floor((lo_in - start) / step), 0, n_new - 1).astype(int)
    o_hi = np.clip(np.ceil((hi_in - start) / step), 0, n_new - 1).astype(int)
    out_shape = tuple(int(v) for v in o_hi - o_lo + 1)
    if math.prod(out_shape) > MAX_OUTPUT_VOXELS:
        raise ValueError(f"resample_spacing {tuple(float(v) for v in new_spacing)} mm puts the ROI on a "
                         f"{' x '.join(map(str, out_shape))} grid ({math.prod(out_shape):.3g} voxels, more than "
                         f"{MAX_OUTPUT_VOXELS:.3g}); give a spacing closer to the image's "
                         f"{tuple(float(v) for v in spacing)} mm")
    # Input block the samples need, plus the spline margin, then edge-padded so samples past the
    # original grid take the boundary value.
    first = start + o_lo * step
    last = start + o_hi * step
    pad = 2 + _SPLINE_MARGIN
    c_lo = np.maximum(np.floor(first).astype(int) - pad, 0)
    c_hi = np.minimum(np.ceil(last).astype(int) + pad, np.asarray(image.shape) - 1)
    block = tuple(slice(a, b + 1) for a, b in zip(c_lo, c_hi))
    # Each edge-padded side of the block is a side of the original image.
    pad_width = [(pad if a == 0 else 0, pad if b == n - 1 else 0)
                 for a, b, n in zip(c_lo, c_hi, image.shape)]
    block_origin = c_lo - np.array([p[0] for p in pad_width])
    array = np.pad(np.asarray(image.array[block], np.float64), pad_width, mode="edge")
    m = np.pad(np.asarray(mask[block], np.float64), pad_width, mode="edge")
    src = Image(array, spacing=tuple(spacing), origin=image.index_to_world(block_origin),
                direction=image.direction)
    reference = Image(np.zeros(out_shape, np.uint8), spacing=tuple(new_spacing),
                      origin=image.index_to_world(first), direction=image.direction)
    out = cast(Image, resample_to(src, reference, interpolation=interpolation, backend=backend)).array
    out_mask = cast(Image, resample_to(src.with_array(m), reference, interpolation=mask_interpolation,
                                       backend=backend)).array
    # IBSI §5 warns that rounding turns an exact 0.5 into 0.4999... and drops the voxel: compare
    # with a margin far above double rounding and far below any real partial-volume difference.
    return np.asarray(out, np.float64), np.asarray(out_mask) >= partial_volume - 1e-9
