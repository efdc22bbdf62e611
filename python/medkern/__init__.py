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
from medkern.contrast import clahe, equalize_hist, n4_bias_correction
from medkern import models
from medkern.image import Image
from medkern.inference import Model, Prediction, sliding_window, validate_metadata, write_model_metadata
from medkern.intensity import normalize, window
from medkern.io import read, write
from medkern.radiomics import radiomics
from medkern.resample import resample, resample_to, warp
from medkern.resample import map_coordinates, resample, resample_to, warp
from medkern.transforms import Affine, DisplacementField
from medkern.io.dicom import DicomSeries, list_dicom_series, read_dicom_file, read_dicom_series
from medkern.io.rtstruct import read_rtstruct
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
from medkern.registration import RegistrationResult, register

__version__ = "0.1.0"

__all__ = [
    "Affine",
    "DisplacementField",
    "DicomError",
    "DicomSeries",
    "Image",
    "MedkernError",
    "Model",
    "ModelError",
    "anisotropic_diffusion",
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
    "Prediction",
    "backends",
    "bilateral",
    "gaussian",
    "get_num_threads",
    "list_dicom_series",
    "log_filter",
    "mean_filter",
    "median",
    "clahe",
    "equalize_hist",
    "get_num_threads",
    "n4_bias_correction",
    "map_coordinates",
    "models",
    "normalize",
    "radiomics",
    "read",
    "resample",
    "resample_to",
    "read_dicom_file",
    "read_dicom_series",
    "read_rtstruct",
    "label",
    "largest_component",
    "remove_small_components",
    "threshold_otsu",
    "normalize",
    "read",
    "regions",
    "register",
    "RegistrationResult",
    "set_num_threads",
    "sliding_window",
    "validate_metadata",
    "warp",
    "unsharp_mask",
    "window",
    "write",
    "write_model_metadata",
]
