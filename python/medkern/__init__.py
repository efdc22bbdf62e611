"""medkern: fast, physically correct medical-imaging kernels.

Conventions (see the README): numpy axis order ``[k, j, i]``, LPS world millimetres,
``world = origin + direction @ diag(spacing) @ index``, per-axis parameters in array-axis order.
"""

from __future__ import annotations

from medkern._dispatch import backends, get_num_threads, set_num_threads
from medkern.errors import DicomError, MedkernError, ModelError
from medkern.filters import (
    anisotropic_diffusion,
    bilateral,
    gaussian,
    log_filter,
    mean_filter,
    median,
    unsharp_mask,
)
from medkern.image import Image
from medkern.intensity import normalize, window
from medkern.io import read, write

__version__ = "0.1.0"

__all__ = [
    "DicomError",
    "Image",
    "MedkernError",
    "ModelError",
    "anisotropic_diffusion",
    "backends",
    "bilateral",
    "gaussian",
    "get_num_threads",
    "log_filter",
    "mean_filter",
    "median",
    "normalize",
    "read",
    "set_num_threads",
    "unsharp_mask",
    "window",
    "write",
]
