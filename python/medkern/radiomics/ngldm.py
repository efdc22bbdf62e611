"""Neighbouring grey level dependence matrix features (IBSI §3.11, Sun and Wee 1983)."""

from __future__ import annotations

import numpy as np

from medkern.radiomics import _kernels
from medkern.radiomics._matrix import aggregate, count_matrix_features, dense_to_entries, named

TITLE = "Neighbouring grey level dependence based features"
FEATURES = (
    ("Low dependence emphasis", "SODN", "small"), ("High dependence emphasis", "IMOQ", "large"),
    ("Low grey level count emphasis", "TL9H", "low_grey"),
    ("High grey level count emphasis", "OAE7", "high_grey"),
    ("Low dependence low grey level emphasis", "EQ3F", "small_low"),
    ("Low dependence high grey level emphasis", "JA6D", "small_high"),
    ("High dependence low grey level emphasis", "NBZI", "large_low"),
    ("High dependence high grey level emphasis", "9QMG", "large_high"),
    ("Grey level non-uniformity", "FP8K", "glnu"),
    ("Normalised grey level non-uniformity", "5SPA", "glnu_norm"),
    ("Dependence count non-uniformity", "Z87G", "jnu"),
    ("Normalised dependence count non-uniformity", "OKJI", "jnu_norm"),
    ("Dependence count percentage", "6XV8", "percentage"),
    ("Grey level variance", "1PFV", "grey_variance"),
    ("Dependence count variance", "DNX2", "j_variance"),
    ("Dependence count entropy", "FCBV", "entropy"), ("Dependence count energy", "CAS9", "energy"),
)


def _stacked(m: np.ndarray, n_voxels: np.ndarray) -> dict[str, float]:
    k, i, j, c = dense_to_entries(m)
    feats = count_matrix_features(m.shape[0], k, i, j, c, n_voxels, unique=True)
    return aggregate(named(feats, FEATURES), m.sum(axis=(1, 2)) > 0)


def compute(roi, dims, settings) -> dict[str, dict[str, float]]:
    out = {}
    for by_slice, names in ((True, ("2D", "2.5D")), (False, ("3D",))):
        wanted = [d for d in names if d in dims]
        if not wanted:
            continue
        m = _kernels.ngldm(roi.levels, roi.n_levels, by_slice, settings.ngldm_distance,
                           settings.ngldm_alpha, backend=settings.backend)
        if "2D" in wanted:
            out["2D"] = _stacked(m, roi.voxels_per_slice)
        merged = _stacked(m.sum(axis=0, keepdims=True), np.array([roi.n_voxels]))
        for d in wanted:
            if d != "2D":
                out[d] = merged
    return out
