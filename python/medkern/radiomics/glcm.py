"""Grey level co-occurrence matrix features (IBSI §3.6, Haralick et al. 1973)."""

from __future__ import annotations

import numpy as np

from medkern.radiomics import _kernels
from medkern.radiomics._matrix import aggregate

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

    Returns the per-matrix values and the mask of non-empty matrices.
    """
    n_levels = counts.shape[-1]
    total = counts.sum(axis=(1, 2))
    valid = total > 0
    p = counts / np.where(valid, total, 1.0)[:, None, None]
    g = np.arange(1, n_levels + 1, dtype=np.float64)
    i, j = g[:, None], g[None, :]
    diff, summ = np.abs(i - j), i + j

    def s(w):
        return (p * w).sum(axis=(1, 2))

    # Diagonal and cross-diagonal probabilities p_{i-j}(k), p_{i+j}(k) (IBSI §3.6).
    k_diff = np.arange(n_levels, dtype=np.float64)
    k_sum = np.arange(2, 2 * n_levels + 1, dtype=np.float64)
    p_diff = np.stack([s(diff == k) for k in k_diff], axis=1)
    p_sum = np.stack([s(summ == k) for k in k_sum], axis=1)
    p_i = p.sum(axis=2)
    mu = s(i)
    mu_d = p_diff @ k_diff
    mu_s = p_sum @ k_sum
    var_i = ((g[None, :] - mu[:, None]) ** 2 * p_i).sum(axis=1)
    hxy = -_xlog2x(p).sum(axis=(1, 2))
    hx = -_xlog2x(p_i).sum(axis=1)
    pipj = p_i[:, :, None] * p_i[:, None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        log_pipj = np.where(pipj > 0, np.log2(np.where(pipj > 0, pipj, 1.0)), 0.0)
        hxy1 = -(p * log_pipj).sum(axis=(1, 2))
        hxy2 = -(pipj * log_pipj).sum(axis=(1, 2))
        inv_var_w = np.where(diff > 0, 1.0 / np.where(diff > 0, diff, 1.0) ** 2, 0.0)
        cluster = summ[None] - 2.0 * mu[:, None, None]
        out = {
            "Joint maximum": p.max(axis=(1, 2)),
            "Joint average": mu,
            "Joint variance": s((i - mu[:, None, None]) ** 2),
            "Joint entropy": hxy,
            "Difference average": mu_d,
            "Difference variance": ((k_diff[None] - mu_d[:, None]) ** 2 * p_diff).sum(axis=1),
            "Difference entropy": -_xlog2x(p_diff).sum(axis=1),
            "Sum average": mu_s,
            "Sum variance": ((k_sum[None] - mu_s[:, None]) ** 2 * p_sum).sum(axis=1),
            "Sum entropy": -_xlog2x(p_sum).sum(axis=1),
            "Angular second moment": (p * p).sum(axis=(1, 2)),
            "Contrast": s(diff ** 2),
            "Dissimilarity": s(diff),
            "Inverse difference": s(1.0 / (1.0 + diff)),
            "Normalised inverse difference": s(1.0 / (1.0 + diff / n_levels)),
            "Inverse difference moment": s(1.0 / (1.0 + diff ** 2)),
            "Normalised inverse difference moment": s(1.0 / (1.0 + diff ** 2 / n_levels ** 2)),
            "Inverse variance": s(inv_var_w),
            # Symmetric matrices: the row and column marginals are equal (mu_i = mu_j).
            "Correlation": (s(i * j) - mu * mu) / var_i,
            "Autocorrelation": s(i * j),
            "Cluster tendency": (p * cluster ** 2).sum(axis=(1, 2)),
            "Cluster shade": (p * cluster ** 3).sum(axis=(1, 2)),
            "Cluster prominence": (p * cluster ** 4).sum(axis=(1, 2)),
            "Information correlation 1": (hxy - hxy1) / hx,
            "Information correlation 2": np.sqrt(np.maximum(0.0, 1.0 - np.exp(-2.0 * (hxy2 - hxy)))),
        }
    return out, valid


def _stacked(counts):
    feats, valid = features(counts.reshape((-1,) + counts.shape[-2:]))
    return aggregate(feats, valid)


def compute(roi, dims, settings) -> dict[str, dict[str, float]]:
    """Features per IBSI aggregation method for the spatial approaches in ``dims``."""
    out = {}
    for by_slice, names in ((True, ("2D", "2.5D")), (False, ("3D",))):
        wanted = [d for d in names if d in dims]
        if not wanted:
            continue
        m = _kernels.glcm(roi.levels, roi.n_levels, by_slice, settings.glcm_distance,
                          backend=settings.backend)
        if "2D" in wanted:
            out["2D, averaged"] = _stacked(m)
            out["2D, slice-merged"] = _stacked(m.sum(axis=1))
        if "2.5D" in wanted:
            out["2.5D, direction-merged"] = _stacked(m.sum(axis=0))
            out["2.5D, merged"] = _stacked(m.sum(axis=(0, 1)))
        if "3D" in wanted:
            out["3D, averaged"] = _stacked(m[0])
            out["3D, merged"] = _stacked(m.sum(axis=(0, 1)))
    return out
