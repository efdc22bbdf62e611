"""Neighbourhood grey tone difference matrix features (IBSI §3.10, Amadasun and King 1989)."""

from __future__ import annotations

import numpy as np

from medkern._radiomics import _kernels
from medkern._radiomics._matrix import aggregate, approaches

TITLE = "Neighbourhood grey tone difference based features"
FEATURES = (("Coarseness", "QCDE"), ("Contrast", "65HE"), ("Busyness", "NQ30"),
            ("Complexity", "HDEZ"), ("Strength", "1X9X"))


def features(s: np.ndarray, n: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Features of stacked matrices: ``s[k, i - 1]`` grey tone differences, ``n[k, i - 1]`` counts."""
    n_levels = s.shape[1]
    n_vc = n.sum(axis=1)
    valid = n_vc > 0
    p = n / np.where(valid, n_vc, 1.0)[:, None]
    g = np.arange(1, n_levels + 1, dtype=np.float64)
    present = p > 0
    n_gp = present.sum(axis=1).astype(np.float64)
    pp = present[:, :, None] & present[:, None, :]
    d = g[:, None] - g[None, :]
    ps = p * s
    sum_ps = ps.sum(axis=1)
    sum_s = s.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        pi_pj = p[:, :, None] * p[:, None, :]
        contrast = ((pi_pj * d ** 2).sum(axis=(1, 2)) / (n_gp * (n_gp - 1.0))) * sum_s / n_vc
        ip = g * p
        busy_den = (np.abs(ip[:, :, None] - ip[:, None, :]) * pp).sum(axis=(1, 2))
        p_sum = p[:, :, None] + p[:, None, :]
        ratio = np.where(pp, (ps[:, :, None] + ps[:, None, :]) / np.where(pp, p_sum, 1.0), 0.0)
        out = {
            # IBSI §3.10: coarseness is capped at 1e6 for a uniform ROI, where the sum is 0.
            "Coarseness": np.where(sum_ps > 0, 1.0 / sum_ps, 1e6),
            "Contrast": np.where(n_gp > 1, contrast, 0.0),
            "Busyness": np.where(busy_den > 0, sum_ps / busy_den, 0.0),
            "Complexity": (np.abs(d) * ratio).sum(axis=(1, 2)) / n_vc,
            "Strength": np.where(sum_s > 0, (p_sum * d ** 2 * pp).sum(axis=(1, 2)) / sum_s, 0.0),
        }
    return out, valid


def compute(roi, dims, settings) -> dict[str, dict[str, float]]:
    out = {}
    for by_slice, wanted in approaches(dims):
        s, n = _kernels.ngtdm(roi.levels, roi.n_levels, by_slice, settings.ngtdm_distance,
                              backend=settings.backend)
        if "2D" in wanted:
            out["2D"] = aggregate(*features(s, n))
        merged = features(s.sum(axis=0, keepdims=True), n.sum(axis=0, keepdims=True))
        if "2.5D" in wanted:
            out["2.5D"] = aggregate(*merged)
        if "3D" in wanted:
            out["3D"] = aggregate(*merged)
    return out
