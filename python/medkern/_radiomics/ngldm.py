"""Neighbouring grey level dependence matrix features (IBSI §3.11, Sun and Wee 1983)."""

from __future__ import annotations

import numpy as np

from medkern._radiomics import _kernels
from medkern._radiomics._matrix import approaches, dense_features

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


def compute(roi, dims, settings) -> dict[str, dict[str, float]]:
    out = {}
    for by_slice, wanted in approaches(dims):
        m = _kernels.ngldm(roi.levels, roi.n_levels, by_slice, settings.ngldm_distance,
                           settings.ngldm_alpha, backend=settings.backend)
        if "2D" in wanted:
            out["2D"] = dense_features(m, roi.voxels_per_slice, FEATURES)
        merged = dense_features(m.sum(axis=0, keepdims=True), np.array([roi.n_voxels]), FEATURES)
        for d in wanted:
            if d != "2D":
                out[d] = merged
    return out
