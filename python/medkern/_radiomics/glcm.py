"""Grey level co-occurrence matrix features (IBSI §3.6, Haralick et al. 1973)."""

from __future__ import annotations

import numpy as np

from medkern._radiomics import _kernels
from medkern._radiomics._matrix import aggregate, approaches, directional_aggregations

TITLE = "Grey level co-occurrence based features"
FEATURES = (
    ("Joint maximum", "GYBY"), ("Joint average", "60VM"), ("Joint variance", "UR99"),
    ("Joint entropy", "TU9B"), ("Difference average", "TF7R"), ("Difference variance", "D3YU"),
    ("Difference entropy", "NTRS"), ("Sum average", "ZGXS"), ("Sum variance", "OEEB"),
    ("Sum entropy", "P6QZ"), ("Angular second moment", "8ZQL"), ("Contrast", "ACUI"),
    ("Dissimilarity", "8S9J"), ("Inverse difference", "IB1Z"),
    ("Normalised inverse difference", "NDRX"), ("Inverse difference moment", "WF0Z"),
    ("Normalised inverse difference moment", "1QCO"), ("Inverse variance", "E8JP"),
    ("Correlation", "NI2N"), ("Autocorrelation", "QWB0"), ("Cluster tendency", "DG8W"),
    ("Cluster shade", "7NFM"), ("Cluster prominence", "AE86"),
    ("Information correlation 1", "R8DG"), ("Information correlation 2", "JN9H"),
)


def _xlog2x(p):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, p * np.log2(np.where(p > 0, p, 1.0)), 0.0)


def features(counts: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Features of a stack of co-occurrence count matrices ``counts[k, i - 1, j - 1]``.

    Returns the per-matrix values and the mask of non-empty matrices. The sums are bincounts
    and einsums over the stack: these matrices are small, where a BLAS call costs more in thread
    start-up than in arithmetic.
    """
    n_levels = counts.shape[-1]
    total = counts.sum(axis=(1, 2))
    valid = total > 0
    p = counts / np.where(valid, total, 1.0)[:, None, None]
    flat = p.reshape(len(p), -1)
    g = np.arange(1, n_levels + 1, dtype=np.float64)
    i, j = np.meshgrid(g, g, indexing="ij")
    i, j = i.ravel(), j.ravel()
    diff, summ = np.abs(i - j), i + j
    # Diagonal and cross-diagonal probabilities p_{i-j}(k), p_{i+j}(k) (IBSI §3.6).
    k_diff = np.arange(n_levels, dtype=np.float64)
    k_sum = np.arange(2, 2 * n_levels + 1, dtype=np.float64)
    rows = np.repeat(np.arange(len(p)), n_levels * n_levels)
    p_diff = np.bincount(rows * n_levels + np.tile(diff.astype(np.int64), len(p)), weights=flat.ravel(),
                         minlength=len(p) * n_levels).reshape(len(p), n_levels)
    p_sum = np.bincount(rows * (2 * n_levels - 1) + np.tile(summ.astype(np.int64) - 2, len(p)),
                        weights=flat.ravel(), minlength=len(p) * (2 * n_levels - 1)
                        ).reshape(len(p), 2 * n_levels - 1)
    p_i = p.sum(axis=2)
    weights = np.stack([i, i * j, diff ** 2, diff, 1.0 / (1.0 + diff), 1.0 / (1.0 + diff / n_levels),
                        1.0 / (1.0 + diff ** 2), 1.0 / (1.0 + diff ** 2 / n_levels ** 2),
                        np.where(diff > 0, 1.0 / np.maximum(diff, 1.0) ** 2, 0.0)], axis=1)
    (mu, auto, contrast, dissimilarity, inv_diff, inv_diff_norm, inv_diff_mom, inv_diff_mom_norm,
     inv_var) = np.einsum("kc,cw->wk", flat, weights)
    mu_d = np.einsum("kd,d->k", p_diff, k_diff)
    mu_s = np.einsum("kd,d->k", p_sum, k_sum)
    var_i = ((g[None, :] - mu[:, None]) ** 2 * p_i).sum(axis=1)
    # Entropies over the non-zero cells only: per-slice matrices are mostly empty.
    k, cell = np.nonzero(flat)
    pk = flat[k, cell]
    log_pi = np.log2(np.where(p_i > 0, p_i, 1.0))
    hxy = -np.bincount(k, weights=pk * np.log2(pk), minlength=len(p))
    hx = -(p_i * log_pi).sum(axis=1)
    hxy1 = -np.bincount(k, weights=pk * (log_pi[k, cell // n_levels] + log_pi[k, cell % n_levels]),
                        minlength=len(p))
    # sum_ij p_i p_j log2(p_i p_j) = 2 sum_i p_i log2 p_i, as the marginal sums to 1.
    hxy2 = 2.0 * hx
    # Moments about the mean: expand (i + j - 2 mu)^n into raw moments of i + j (one product).
    s1, s2, s3, s4 = np.einsum("kc,cw->wk", flat, np.stack([summ, summ ** 2, summ ** 3, summ ** 4], axis=1))
    c = 2.0 * mu
    with np.errstate(divide="ignore", invalid="ignore"):
        out = {
            "Joint maximum": flat.max(axis=1),
            "Joint average": mu,
            "Joint variance": np.einsum("kc,c->k", flat, i * i) - mu * mu,
            "Joint entropy": hxy,
            "Difference average": mu_d,
            "Difference variance": np.einsum("kd,d->k", p_diff, k_diff ** 2) - mu_d ** 2,
            "Difference entropy": -_xlog2x(p_diff).sum(axis=1),
            "Sum average": mu_s,
            "Sum variance": np.einsum("kd,d->k", p_sum, k_sum ** 2) - mu_s ** 2,
            "Sum entropy": -_xlog2x(p_sum).sum(axis=1),
            "Angular second moment": (flat * flat).sum(axis=1),
            "Contrast": contrast,
            "Dissimilarity": dissimilarity,
            "Inverse difference": inv_diff,
            "Normalised inverse difference": inv_diff_norm,
            "Inverse difference moment": inv_diff_mom,
            "Normalised inverse difference moment": inv_diff_mom_norm,
            "Inverse variance": inv_var,
            # Symmetric matrices: the row and column marginals are equal (mu_i = mu_j).
            "Correlation": (auto - mu * mu) / var_i,
            "Autocorrelation": auto,
            "Cluster tendency": s2 - 2 * c * s1 + c * c,
            "Cluster shade": s3 - 3 * c * s2 + 3 * c * c * s1 - c ** 3,
            "Cluster prominence": s4 - 4 * c * s3 + 6 * c * c * s2 - 4 * c ** 3 * s1 + c ** 4,
            "Information correlation 1": (hxy - hxy1) / hx,
            "Information correlation 2": np.sqrt(np.maximum(0.0, 1.0 - np.exp(-2.0 * (hxy2 - hxy)))),
        }
    return out, valid


def _averaged(stack: np.ndarray, n_voxels: np.ndarray) -> dict[str, float]:
    feats, valid = features(stack.reshape((-1,) + stack.shape[-2:]))
    return aggregate(feats, valid)


def compute(roi, dims, settings) -> dict[str, dict[str, float]]:
    """Features per IBSI aggregation method for the spatial approaches in ``dims``."""
    out = {}
    for by_slice, wanted in approaches(dims):
        m = _kernels.glcm(roi.levels, roi.n_levels, by_slice, settings.glcm_distance,
                          backend=settings.backend)
        voxels = roi.voxels_per_slice if by_slice else np.array([roi.n_voxels])
        out.update(directional_aggregations(m, voxels, wanted, _averaged))
    return out
