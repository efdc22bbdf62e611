"""Local intensity features (IBSI §3.2): mean intensity in a 1 cm³ sphere around a voxel."""

from __future__ import annotations

import numpy as np

from medkern._radiomics import _kernels

TITLE = "Local intensity features"
FEATURES = (("Local intensity peak", "VJGA"), ("Global intensity peak", "0F91"))

# Radius (mm) of a sphere of 1 cm³ (IBSI §3.2).
PEAK_RADIUS_MM = 10.0 * (3.0 / (4.0 * np.pi)) ** (1.0 / 3.0)


def sphere_offsets(spacing) -> np.ndarray:
    """Index offsets of the voxels whose centres lie within PEAK_RADIUS_MM of the origin."""
    spacing = np.asarray(spacing, np.float64)
    half = np.floor(PEAK_RADIUS_MM / spacing).astype(int)
    grids = np.meshgrid(*[np.arange(-h, h + 1) for h in half], indexing="ij")
    offsets = np.stack([g.ravel() for g in grids], axis=1)
    inside = ((offsets * spacing) ** 2).sum(axis=1) <= PEAK_RADIUS_MM ** 2
    return offsets[inside]


def compute(roi, settings) -> dict[str, float]:
    centres = np.flatnonzero(roi.peak_mask)
    values = roi.peak_image.ravel()[centres]
    means = _kernels.offset_means(roi.peak_image, centres, sphere_offsets(roi.spacing),
                                  backend=settings.backend)
    # Local peak: around the voxels of maximal intensity (the highest of their means when tied).
    local = means[values == values.max()].max()
    return {"Local intensity peak": float(local), "Global intensity peak": float(means.max())}
