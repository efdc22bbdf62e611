"""Features shared by the matrices that tabulate grey level against a count (IBSI §3.7-3.9, 3.11).

The run length (GLRLM), size zone (GLSZM), distance zone (GLDZM) and dependence (NGLDM) matrices
all count occurrences m_ij of grey level i with some integer j (run length, zone size, zone
distance, dependence count). Their features are the same sums over m_ij with different names, so
they are computed once here, on sparse entries ``(matrix, i, j, count)``: zone sizes can reach the
ROI volume, which would make a dense matrix mostly zeros.
"""

from __future__ import annotations

import numpy as np

__all__ = ["count_matrix_features", "dense_to_entries", "aggregate"]

# Generic feature keys in IBSI order; each family maps them to its own names.
GENERIC = ("small", "large", "low_grey", "high_grey", "small_low", "small_high", "large_low",
           "large_high", "glnu", "glnu_norm", "jnu", "jnu_norm", "percentage", "grey_variance",
           "j_variance", "entropy", "energy")


def dense_to_entries(m: np.ndarray):
    """Sparse entries of a stack of dense matrices ``m[k, i - 1, j - 1]``."""
    k, i, j = np.nonzero(m)
    return k, i + 1, j + 1, m[k, i, j]


def count_matrix_features(n_matrices: int, k: np.ndarray, i: np.ndarray, j: np.ndarray,
                          c: np.ndarray, n_voxels: np.ndarray, unique: bool = False
                          ) -> dict[str, np.ndarray]:
    """The generic features of each matrix k (one value per matrix; meaningless where empty).

    ``unique`` says the cells (k, i, j) are already distinct (entries of dense matrices);
    otherwise repeated cells, e.g. one entry per zone, are summed first so that probabilities
    are per matrix cell.
    """
    k = np.asarray(k, np.int64)
    i = np.asarray(i, np.int64)
    j = np.asarray(j, np.int64)
    c = np.asarray(c, np.float64)
    n_i, n_j = int(i.max(initial=0)) + 1, int(j.max(initial=0)) + 1
    if not unique:
        cells, inverse = np.unique((k * n_i + i) * n_j + j, return_inverse=True)
        c = np.bincount(inverse, weights=c, minlength=len(cells))
        k, i, j = cells // (n_i * n_j), (cells // n_j) % n_i, cells % n_j
    i = i.astype(np.float64)
    j = j.astype(np.float64)

    def total(w):
        return np.bincount(k, weights=w, minlength=n_matrices)

    def non_uniformity(axis_key):
        # Marginal sum per (matrix, i) or (matrix, j), squared, summed per matrix.
        keys, inverse = np.unique(axis_key, return_inverse=True)
        marginal = np.bincount(inverse, weights=c, minlength=len(keys))
        return total_by(keys, marginal * marginal)

    def total_by(keys, w):
        return np.bincount(keys // (n_i * n_j), weights=w, minlength=n_matrices)

    with np.errstate(divide="ignore", invalid="ignore"):
        ns = total(c)
        i2, j2 = i * i, j * j
        out = {
            "small": total(c / j2) / ns,
            "large": total(c * j2) / ns,
            "low_grey": total(c / i2) / ns,
            "high_grey": total(c * i2) / ns,
            "small_low": total(c / (i2 * j2)) / ns,
            "small_high": total(c * i2 / j2) / ns,
            "large_low": total(c * j2 / i2) / ns,
            "large_high": total(c * i2 * j2) / ns,
        }
        glnu = non_uniformity(k * (n_i * n_j) + i.astype(np.int64))
        jnu = non_uniformity(k * (n_i * n_j) + j.astype(np.int64))
        out["glnu"], out["glnu_norm"] = glnu / ns, glnu / (ns * ns)
        out["jnu"], out["jnu_norm"] = jnu / ns, jnu / (ns * ns)
        out["percentage"] = ns / np.asarray(n_voxels, np.float64)
        p = c / ns[k]
        mu_i = total(i * p)
        mu_j = total(j * p)
        out["grey_variance"] = total((i - mu_i[k]) ** 2 * p)
        out["j_variance"] = total((j - mu_j[k]) ** 2 * p)
        out["entropy"] = -total(p * np.log2(p))
        out["energy"] = total(p * p)
    return out


def aggregate(per_matrix: dict[str, np.ndarray], valid: np.ndarray) -> dict[str, float]:
    """IBSI averaging: the mean over the non-empty matrices (slices or directions)."""
    if not valid.any():
        return {name: float("nan") for name in per_matrix}
    return {name: float(np.mean(v[valid])) for name, v in per_matrix.items()}


def named(generic: dict[str, np.ndarray], features: tuple[tuple[str, str, str], ...]
          ) -> dict[str, np.ndarray]:
    """Rename generic features to a family's IBSI names; ``features`` rows are (name, code, key)."""
    return {name: generic[key] for name, _, key in features}


def zone_features(roi, dims, settings, features, use_distance: bool) -> dict[str, dict[str, float]]:
    """GLSZM (zone size) or GLDZM (zone distance) features for the approaches in ``dims``.

    2D: one matrix per slice, features averaged over slices; 2.5D: the slice matrices merged;
    3D: zones connected across slices (IBSI §3.8, Fig. 3.12).
    """
    from medkern.radiomics import _kernels

    out = {}
    for by_slice, names in ((True, ("2D", "2.5D")), (False, ("3D",))):
        wanted = [d for d in names if d in dims]
        if not wanted:
            continue
        morph = roi.morph_mask if use_distance else None
        group, level, size, distance = _kernels.zones(roi.levels, roi.n_levels, by_slice, morph,
                                                      backend=settings.backend)
        j = distance if use_distance else size
        ones = np.ones(len(level))
        if "2D" in wanted:
            n = roi.levels.shape[0]
            feats = count_matrix_features(n, group, level, j, ones, roi.voxels_per_slice)
            out["2D"] = aggregate(named(feats, features), np.bincount(group, minlength=n) > 0)
        merged = count_matrix_features(1, np.zeros(len(level), np.int64), level, j, ones,
                                       np.array([roi.n_voxels]))
        out["2.5D" if by_slice else "3D"] = aggregate(named(merged, features), np.array([len(level) > 0]))
        if by_slice and "2.5D" not in wanted:
            del out["2.5D"]
    return out
