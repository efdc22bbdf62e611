"""Intensity-volume histogram features (IBSI §3.5, El Naqa et al. 2009)."""

from __future__ import annotations

import numpy as np

TITLE = "Intensity-volume histogram features"
FEATURES = (
    ("Volume at intensity fraction 10%", "NK6P"), ("Volume at intensity fraction 90%", "4279"),
    ("Intensity at volume fraction 10%", "PWN1"), ("Intensity at volume fraction 90%", "BOHI"),
    ("Volume fraction difference between intensity fractions 10% and 90%", "DDTU"),
    ("Intensity fraction difference between volume fractions 10% and 90%", "CNV2"),
)

# Bins used for intensities that are neither integer-valued nor given an IVH discretisation:
# IBSI §3.5 recommends a fine fixed bin number (1000) for arbitrary intensity units.
DEFAULT_CONTINUOUS_BINS = 1000


def histogram(values: np.ndarray, settings) -> tuple[np.ndarray, np.ndarray, float, float, float]:
    """Grey levels X_i (ascending, contiguous), voxels per level, the range of the intensity
    fraction, and the step to the next level above the last (IBSI §3.5: discrete calibrated,
    continuous calibrated (fixed bin size, bin centres) and arbitrary units (fixed bin number))."""
    x = np.asarray(values, np.float64)
    rng = settings.resegment_range
    bin_count = settings.ivh_bin_count
    if settings.ivh_bin_width is None and bin_count is None and not np.all(x == np.round(x)):
        bin_count = DEFAULT_CONTINUOUS_BINS
    if bin_count is not None:
        lo, hi = x.min(), x.max()
        idx = np.floor(bin_count * (x - lo) / (hi - lo)).astype(np.int64) + 1 if hi > lo else np.ones(len(x), np.int64)
        idx = np.clip(idx, 1, bin_count)
        levels = np.arange(1, bin_count + 1, dtype=np.float64)
        return levels, np.bincount(idx, minlength=bin_count + 1)[1:], 1.0, float(bin_count), 1.0
    if settings.ivh_bin_width is not None:
        w = settings.ivh_bin_width
        lo = rng[0] if rng is not None and np.isfinite(rng[0]) else x.min()
        hi = rng[1] if rng is not None and np.isfinite(rng[1]) else x.max()
        n_bins = int(np.floor((hi - lo) / w)) + 1
        idx = np.clip(np.floor((x - lo) / w).astype(np.int64) + 1, 1, n_bins)
        centres = lo + (np.arange(1, n_bins + 1) - 0.5) * w
        return centres, np.bincount(idx, minlength=n_bins + 1)[1:], centres[0], centres[-1], w
    lo = rng[0] if rng is not None and np.isfinite(rng[0]) else x.min()
    hi = rng[1] if rng is not None and np.isfinite(rng[1]) else x.max()
    lo, hi = np.ceil(lo), np.floor(hi)
    levels = np.arange(lo, hi + 1.0)
    counts = np.bincount((x - lo).astype(np.int64), minlength=len(levels))
    return levels, counts, lo, hi, 1.0


def compute(roi, settings) -> dict[str, float]:
    levels, counts, lo, hi, step = histogram(roi.values, settings)
    n = counts.sum()
    # nu_i: fraction of the volume with intensity >= X_i; gamma_i: intensity fraction of X_i.
    nu = 1.0 - np.concatenate([[0], np.cumsum(counts)[:-1]]) / n
    gamma = (levels - lo) / (hi - lo) if hi > lo else np.zeros(len(levels))

    def volume_at(fraction):
        sel = gamma >= fraction
        return float(nu[sel].max()) if sel.any() else 0.0

    def intensity_at(fraction):
        sel = nu <= fraction
        # No level leaves at most this fraction above it: the level above the last (IBSI §3.5).
        return float(levels[sel].min()) if sel.any() else float(levels[-1] + step)

    v10, v90 = volume_at(0.1), volume_at(0.9)
    i10, i90 = intensity_at(0.1), intensity_at(0.9)
    return dict(zip((name for name, _ in FEATURES), (v10, v90, i10, i90, v10 - v90, i10 - i90)))
