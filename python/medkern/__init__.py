"""medkern: fast, physically correct medical-imaging kernels.

Conventions (see the README): numpy axis order ``[k, j, i]``, LPS world millimetres,
``world = origin + direction @ diag(spacing) @ index``, per-axis parameters in array-axis order.
"""

from __future__ import annotations

from medkern._dispatch import backends, get_num_threads, set_num_threads
from medkern.errors import DicomError, MedkernError, ModelError
from medkern.image import Image
from medkern.intensity import normalize, window
from medkern.io import read, write
from medkern.measure import Region, regions
from medkern.segment import (
    binary_close,
    binary_dilate,
    binary_erode,
    binary_open,
    distance_transform,
    fill_holes,
    label,
    largest_component,
    remove_small_components,
    threshold_otsu,
)

__version__ = "0.1.0"

__all__ = [
    "DicomError",
    "binary_close",
    "binary_dilate",
    "binary_erode",
    "binary_open",
    "distance_transform",
    "fill_holes",
    "Image",
    "MedkernError",
    "ModelError",
    "Region",
    "backends",
    "get_num_threads",
    "label",
    "largest_component",
    "remove_small_components",
    "threshold_otsu",
    "normalize",
    "read",
    "regions",
    "set_num_threads",
    "window",
    "write",
]
