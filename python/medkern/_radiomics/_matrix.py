"""Features shared by the matrices that tabulate grey level against a count (IBSI §3.7-3.9, 3.11).

The run length (GLRLM), size zone (GLSZM), distance zone (GLDZM) and dependence (NGLDM) matrices
all count occurrences m_ij of grey level i with some integer j (run length, zone size, zone
distance, dependence count). Their features are the same sums over m_ij with different names, so
they are computed once here, on sparse entries ``(matrix, i, j, count)``: zone sizes can reach the
ROI volume, which would make a dense matrix mostly zeros.
"""

from __future__ import annotations

import numpy as np

__all__ = ["count_matrix_features", "dense_to_entries", "aggregate", "named", "dense_features",
           "zone_features", "approaches", "directional_aggregations"]

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


def approaches(dims):
    """(by_slice, wanted) pairs: one slice-wise kernel call serves the 2D and 2.5D approaches,
    one volumetric call the 3D approach (IBSI §3.6.2)."""
    for by_slice, names in ((True, ("2D", "2.5D")), (False, ("3D",))):
        wanted = [d for d in names if d in dims]
        if wanted:
            yield by_slice, wanted


def directional_aggregations(m: np.ndarray, voxels: np.ndarray, wanted, features) -> dict:
    """The IBSI aggregation methods (§3.6.2) of per-(group, direction) matrices ``m[g, d, ...]``
    (GLCM, GLRLM): groups are slices for 2D/2.5D, the volume for 3D; ``voxels[g]`` counts the
    group's ROI voxels. ``features(stack, n_voxels)`` averages over a stack of matrices."""
    n_dirs, total = m.shape[1], voxels.sum()
    merged = m.sum(axis=(0, 1))[None]
    out = {}
    if "2D" in wanted:
        out["2D, averaged"] = features(m, np.repeat(voxels, n_dirs))
        out["2D, slice-merged"] = features(m.sum(axis=1), voxels * n_dirs)
    if "2.5D" in wanted:
        out["2.5D, direction-merged"] = features(m.sum(axis=0), np.full(n_dirs, total))
        out["2.5D, merged"] = features(merged, np.array([total * n_dirs]))
    if "3D" in wanted:
        out["3D, averaged"] = features(m[0], np.full(n_dirs, total))
        out["3D, merged"] = features(merged, np.array([total * n_dirs]))
    return out


def dense_features(m: np.ndarray, n_voxels, features) -> dict[str, float]:
    """Features of dense matrices ``m[k, i - 1, j - 1]`` averaged over the non-empty ones.

    ``n_voxels[k]`` is the number of ROI voxels matrix k was counted over (summed over merged
    directions, for the run percentage of IBSI §3.7).
    """
    m = m.reshape((-1,) + m.shape[-2:])
    k, i, j, c = dense_to_entries(m)
    feats = count_matrix_features(m.shape[0], k, i, j, c, np.reshape(n_voxels, -1), unique=True)
    return aggregate(named(feats, features), m.sum(axis=(1, 2)) > 0)


def zone_features(roi, dims, settings, features, use_distance: bool) -> dict[str, dict[str, float]]:
    """GLSZM (zone size) or GLDZM (zone distance) features for the approaches in ``dims``.

    2D: one matrix per slice, features averaged over slices; 2.5D: the slice matrices merged;
    3D: zones connected across slices (IBSI §3.8, Fig. 3.12).
    """
    out = {}
    for by_slice, wanted in approaches(dims):
        group, level, size, distance = roi.zones(by_slice, settings.backend)
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
