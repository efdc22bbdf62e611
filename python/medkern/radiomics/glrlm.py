"""Grey level run length matrix features (IBSI §3.7, Galloway 1975)."""

from __future__ import annotations

import numpy as np

from medkern.radiomics import _kernels
from medkern.radiomics._matrix import aggregate, count_matrix_features, dense_to_entries, named

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


def _stacked(runs: np.ndarray, n_voxels: np.ndarray) -> dict[str, float]:
    """Features of matrices ``runs[k, i - 1, r - 1]`` averaged over the non-empty ones.

    ``n_voxels[k]`` is the number of ROI voxels the matrix k was counted over (summed over the
    merged directions, IBSI §3.7 run percentage).
    """
    runs = runs.reshape((-1,) + runs.shape[-2:])
    k, i, j, c = dense_to_entries(runs)
    feats = count_matrix_features(runs.shape[0], k, i, j, c, np.reshape(n_voxels, -1), unique=True)
    return aggregate(named(feats, FEATURES), runs.sum(axis=(1, 2)) > 0)


def compute(roi, dims, settings) -> dict[str, dict[str, float]]:
    out = {}
    for by_slice, names in ((True, ("2D", "2.5D")), (False, ("3D",))):
        wanted = [d for d in names if d in dims]
        if not wanted:
            continue
        m = _kernels.glrlm(roi.levels, roi.n_levels, by_slice, backend=settings.backend)
        n_dirs = m.shape[1]
        nv = roi.voxels_per_slice if by_slice else np.array([roi.n_voxels])
        if "2D" in wanted:
            out["2D, averaged"] = _stacked(m, np.repeat(nv, n_dirs))
            out["2D, slice-merged"] = _stacked(m.sum(axis=1), nv * n_dirs)
        if "2.5D" in wanted:
            out["2.5D, direction-merged"] = _stacked(m.sum(axis=0), np.full(n_dirs, nv.sum()))
            out["2.5D, merged"] = _stacked(m.sum(axis=(0, 1)), nv.sum() * n_dirs)
        if "3D" in wanted:
            out["3D, averaged"] = _stacked(m[0], np.full(n_dirs, nv.sum()))
            out["3D, merged"] = _stacked(m.sum(axis=(0, 1)), nv.sum() * n_dirs)
    return out
