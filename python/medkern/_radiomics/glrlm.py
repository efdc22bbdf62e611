"""Grey level run length matrix features (IBSI §3.7, Galloway 1975)."""

from __future__ import annotations

import numpy as np

from medkern._radiomics import _kernels
from medkern._radiomics._matrix import approaches, dense_features, directional_aggregations

TITLE = "Grey level run length based features"
FEATURES = (
    ("Short runs emphasis", "22OV", "small"), ("Long runs emphasis", "W4KF", "large"),
    ("Low grey level run emphasis", "V3SW", "low_grey"),
    ("High grey level run emphasis", "G3QZ", "high_grey"),
    ("Short run low grey level emphasis", "HTZT", "small_low"),
    ("Short run high grey level emphasis", "GD3A", "small_high"),
    ("Long run low grey level emphasis", "IVPO", "large_low"),
    ("Long run high grey level emphasis", "3KUM", "large_high"),
    ("Grey level non-uniformity", "R5YN", "glnu"),
    ("Normalised grey level non-uniformity", "OVBL", "glnu_norm"),
    ("Run length non-uniformity", "W92Y", "jnu"),
    ("Normalised run length non-uniformity", "IC23", "jnu_norm"),
    ("Run percentage", "9ZK5", "percentage"), ("Grey level variance", "8CE5", "grey_variance"),
    ("Run length variance", "SXLW", "j_variance"), ("Run entropy", "HJ9O", "entropy"),
)


def compute(roi, dims, settings) -> dict[str, dict[str, float]]:
    out = {}
    for by_slice, wanted in approaches(dims):
        m = _kernels.glrlm(roi.levels, roi.n_levels, by_slice, backend=settings.backend)
        voxels = roi.voxels_per_slice if by_slice else np.array([roi.n_voxels])
        out.update(directional_aggregations(
            m, voxels, wanted, lambda stack, n_voxels: dense_features(stack, n_voxels, FEATURES)))
    return out
