"""Grey level distance zone matrix features (IBSI §3.9, Thibault et al. 2014).

A zone's distance is the smallest city-block distance of its voxels to the border of the ROI
morphological mask (1 on the border; 4-connected in-plane for 2D/2.5D, 6-connected in 3D), as
IBSI §3.9 defines it: the morphological mask keeps holes opened by re-segmentation from counting
as borders.
"""

from __future__ import annotations

from medkern._radiomics._matrix import zone_features

TITLE = "Grey level distance zone based features"
FEATURES = (
    ("Small distance emphasis", "0GBI", "small"), ("Large distance emphasis", "MB4I", "large"),
    ("Low grey level zone emphasis", "S1RA", "low_grey"),
    ("High grey level zone emphasis", "K26C", "high_grey"),
    ("Small distance low grey level emphasis", "RUVG", "small_low"),
    ("Small distance high grey level emphasis", "DKNJ", "small_high"),
    ("Large distance low grey level emphasis", "A7WM", "large_low"),
    ("Large distance high grey level emphasis", "KLTH", "large_high"),
    ("Grey level non-uniformity", "VFT7", "glnu"),
    ("Normalised grey level non-uniformity", "7HP3", "glnu_norm"),
    ("Zone distance non-uniformity", "V294", "jnu"),
    ("Normalised zone distance non-uniformity", "IATH", "jnu_norm"),
    ("Zone percentage", "VIWW", "percentage"), ("Grey level variance", "QK93", "grey_variance"),
    ("Zone distance variance", "7WT1", "j_variance"), ("Zone distance entropy", "GBDU", "entropy"),
)


def compute(roi, dims, settings) -> dict[str, dict[str, float]]:
    return zone_features(roi, dims, settings, FEATURES, use_distance=True)
