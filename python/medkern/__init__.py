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
from medkern.resample import resample, resample_to, warp
from medkern.transforms import Affine, DisplacementField
from medkern.registration import RegistrationResult, register

__version__ = "0.1.0"

__all__ = [
    "Affine",
    "DisplacementField",
    "DicomError",
    "Image",
    "MedkernError",
    "ModelError",
    "backends",
    "get_num_threads",
    "normalize",
    "read",
    "resample",
    "resample_to",
    "register",
    "RegistrationResult",
    "set_num_threads",
    "warp",
    "window",
    "write",
]
