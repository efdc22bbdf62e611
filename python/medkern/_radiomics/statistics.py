"""Intensity-based statistical features (IBSI §3.3), on the ROI intensity mask voxels."""

from __future__ import annotations

import numpy as np

TITLE = "Intensity-based statistical features"
FEATURES = (
    ("Mean intensity", "Q4LE", "mean"), ("Intensity variance", "ECT3", "variance"),
    ("Intensity skewness", "KE2A", "skewness"), ("(Excess) intensity kurtosis", "IPH6", "kurtosis"),
    ("Median intensity", "Y12H", "median"), ("Minimum intensity", "1GSF", "minimum"),
    ("10th intensity percentile", "QG58", "p10"), ("90th intensity percentile", "8DWT", "p90"),
    ("Maximum intensity", "84IY", "maximum"), ("Intensity interquartile range", "SALO", "iqr"),
    ("Intensity range", "2OJQ", "range"),
    ("Intensity-based mean absolute deviation", "4FUA", "mad"),
    ("Intensity-based robust mean absolute deviation", "1128", "rmad"),
    ("Intensity-based median absolute deviation", "N72L", "medad"),
    ("Intensity-based coefficient of variation", "7TET", "cov"),
    ("Intensity-based quartile coefficient of dispersion", "9S40", "qcod"),
    ("Intensity-based energy", "N8CA", "energy"), ("Root mean square intensity", "5ZWQ", "rms"),
)


def moments_and_quantiles(x: np.ndarray) -> dict[str, float]:
    """The statistics shared with the intensity histogram family (IBSI §3.3 and §3.4)."""
    x = np.asarray(x, np.float64)
    mean = x.mean()
    dev = x - mean
    m2 = np.mean(dev ** 2)
    p10, p25, median, p75, p90 = np.percentile(x, [10, 25, 50, 75, 90])
    robust = x[(x >= p10) & (x <= p90)]
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "mean": mean, "variance": m2,
            "skewness": np.mean(dev ** 3) / m2 ** 1.5 if m2 > 0 else 0.0,
            "kurtosis": np.mean(dev ** 4) / m2 ** 2 - 3.0 if m2 > 0 else 0.0,
            "median": median, "minimum": x.min(), "p10": p10, "p90": p90, "maximum": x.max(),
            "iqr": p75 - p25, "range": x.max() - x.min(), "mad": np.mean(np.abs(dev)),
            "rmad": np.mean(np.abs(robust - robust.mean())),
            "medad": np.mean(np.abs(x - median)),
            "cov": np.sqrt(m2) / mean, "qcod": (p75 - p25) / (p75 + p25),
        }


def compute(roi, settings) -> dict[str, float]:
    x = roi.values
    generic = moments_and_quantiles(x)
    generic["energy"] = float(np.sum(x * x))
    generic["rms"] = float(np.sqrt(np.mean(x * x)))
    return {name: float(generic[key]) for name, _, key in FEATURES}
