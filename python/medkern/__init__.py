"""medkern: fast, physically correct medical-imaging kernels.

Conventions (see the README): numpy axis order ``[k, j, i]``, LPS world millimetres,
``world = origin + direction @ diag(spacing) @ index``, per-axis parameters in array-axis order.
"""

from __future__ import annotations

from medkern._dispatch import backends, get_num_threads, set_num_threads
from medkern.errors import DicomError, MedkernError, ModelError
from medkern import models
from medkern.image import Image
from medkern.inference import Model, Prediction, sliding_window, validate_metadata, write_model_metadata
from medkern.intensity import normalize, window
from medkern.io import read, write
from medkern.resample import resample, resample_to, warp
from medkern.transforms import Affine, DisplacementField

__version__ = "0.1.0"

__all__ = [
    "Affine",
    "DisplacementField",
    "DicomError",
    "Image",
    "MedkernError",
    "Model",
    "ModelError",
    "Prediction",
    "backends",
    "get_num_threads",
    "models",
    "normalize",
    "read",
    "resample",
    "resample_to",
    "set_num_threads",
    "sliding_window",
    "validate_metadata",
    "warp",
    "window",
    "write",
    "write_model_metadata",
]
