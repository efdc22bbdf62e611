"""Grey level size zone matrix features (IBSI §3.8, Thibault et al. 2014)."""

from __future__ import annotations

from medkern._radiomics._matrix import zone_features

TITLE = "Grey level size zone based features"
FEATURES = (
    ("Small zone emphasis", "5QRC", "small"), ("Large zone emphasis", "48P8", "large"),
    ("Low grey level zone emphasis", "XMSY", "low_grey"),
    ("High grey level zone emphasis", "5GN9", "high_grey"),
    ("Small zone low grey level emphasis", "5RAI", "small_low"),
    ("Small zone high grey level emphasis", "HW1V", "small_high"),
    ("Large zone low grey level emphasis", "YH51", "large_low"),
    ("Large zone high grey level emphasis", "J17V", "large_high"),
    ("Grey level non-uniformity", "JNSA", "glnu"),
    ("Normalised grey level non-uniformity", "Y1RO", "glnu_norm"),
    ("Zone size non-uniformity", "4JP3", "jnu"),
    ("Normalised zone size non-uniformity", "VB3A", "jnu_norm"),
    ("Zone percentage", "P30P", "percentage"), ("Grey level variance", "BYLV", "grey_variance"),
    ("Zone size variance", "3NSA", "j_variance"), ("Zone size entropy", "GU8N", "entropy"),
)


def compute(roi, dims, settings) -> dict[str, dict[str, float]]:
    # A zone's second coordinate here is its size (voxel count).
    return zone_features(roi, dims, settings, FEATURES, use_distance=False)
