"""Intensity histogram features (IBSI §3.4), on the discretised ROI intensities."""

from __future__ import annotations

import numpy as np

from medkern._radiomics.statistics import moments_and_quantiles

TITLE = "Intensity histogram features"
FEATURES = (
    ("Mean discretised intensity", "X6K6", "mean"),
    ("Discretised intensity variance", "CH89", "variance"),
    ("Discretised intensity skewness", "88K1", "skewness"),
    ("(Excess) discretised intensity kurtosis", "C3I7", "kurtosis"),
    ("Median discretised intensity", "WIFQ", "median"),
    ("Minimum discretised intensity", "1PR8", "minimum"),
    ("10th discretised intensity percentile", "GPMT", "p10"),
    ("90th discretised intensity percentile", "OZ0C", "p90"),
    ("Maximum discretised intensity", "3NCY", "maximum"),
    ("Intensity histogram mode", "AMMC", "mode"),
    ("Discretised intensity interquartile range", "WR0O", "iqr"),
    ("Discretised intensity range", "5Z3W", "range"),
    ("Intensity histogram mean absolute deviation", "D2ZX", "mad"),
    ("Intensity histogram robust mean absolute deviation", "WRZB", "rmad"),
    ("Intensity histogram median absolute deviation", "4RNL", "medad"),
    ("Intensity histogram coefficient of variation", "CWYJ", "cov"),
    ("Intensity histogram quartile coefficient of dispersion", "SLWD", "qcod"),
    ("Discretised intensity entropy", "TLU2", "entropy"),
    ("Discretised intensity uniformity", "BJ5W", "uniformity"),
    ("Maximum histogram gradient", "12CE", "max_gradient"),
    ("Maximum histogram gradient intensity", "8E6O", "max_gradient_level"),
    ("Minimum histogram gradient", "VQB3", "min_gradient"),
    ("Minimum histogram gradient intensity", "RHQZ", "min_gradient_level"),
)


def compute(roi, settings) -> dict[str, float]:
    x = roi.discretised
    generic = moments_and_quantiles(x)
    counts = np.bincount(x, minlength=roi.n_levels + 1)[1:].astype(np.float64)
    levels = np.arange(1, roi.n_levels + 1)
    p = counts / counts.sum()
    modes = levels[counts == counts.max()]
    # Several modes: IBSI §3.4.10 takes the one closest to the mean.
    generic["mode"] = modes[np.argmin(np.abs(modes - generic["mean"]))]
    nz = p[p > 0]
    generic["entropy"] = -np.sum(nz * np.log2(nz))
    generic["uniformity"] = np.sum(p * p)
    # Histogram gradient (IBSI §3.4.20): central differences, one-sided at the first/last bin.
    grad = np.gradient(counts) if len(counts) > 1 else np.zeros(1)
    generic["max_gradient"] = grad.max()
    generic["max_gradient_level"] = levels[np.argmax(grad)]
    generic["min_gradient"] = grad.min()
    generic["min_gradient_level"] = levels[np.argmin(grad)]
    return {name: float(generic[key]) for name, _, key in FEATURES}
