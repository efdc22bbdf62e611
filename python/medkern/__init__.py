"""medkern: fast, physically correct medical-imaging kernels.

Conventions (see the README): numpy axis order ``[k, j, i]``, LPS world millimetres,
``world = origin + direction @ diag(spacing) @ index``, per-axis parameters in array-axis order.
"""

from __future__ import annotations

from medkern import models
from medkern._contrast import clahe, equalize_hist, n4_bias_correction
from medkern._dispatch import backends, get_num_threads, set_num_threads
from medkern._filters import (
    anisotropic_diffusion,
    bilateral,
    gaussian,
    log_filter,
    mean_filter,
    median,
    unsharp_mask,
)
from medkern._intensity import normalize, window
from medkern._measure import Region, regions
from medkern._pet import suv
from medkern._radiomics import radiomics
from medkern._registration import RegistrationResult, register
from medkern._resample import map_coordinates, resample, resample_to, warp
from medkern._segment import (
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
from medkern._transforms import Affine, DisplacementField
from medkern._version import __version__ as __version__
from medkern.analysis import Report, analyze
from medkern.errors import Cancelled, DicomError, MedkernError, ModelError
from medkern.image import Image
from medkern.inference import Model, Prediction, sliding_window, validate_metadata, write_model_metadata
from medkern.io import read, write, write_dicom_series
from medkern.io.dicom import DicomSeries, list_dicom_series, read_dicom_file, read_dicom_series
from medkern.io.rtstruct import read_rtstruct
from medkern.io.rtstruct_write import write_rtstruct


def __getattr__(name: str):
    # mk.batch imports Dask: loaded on first use, so that `import medkern` stays light
    if name == "batch":
        import importlib

        return importlib.import_module("medkern.batch")
    raise AttributeError(f"module 'medkern' has no attribute {name!r}")

__all__ = [
    "Affine",
    "analyze",
    "anisotropic_diffusion",
    "backends",
    "batch",
    "bilateral",
    "binary_close",
    "binary_dilate",
    "binary_erode",
    "binary_open",
    "Cancelled",
    "clahe",
    "DicomError",
    "DicomSeries",
    "DisplacementField",
    "distance_transform",
    "equalize_hist",
    "fill_holes",
    "gaussian",
    "get_num_threads",
    "Image",
    "label",
    "largest_component",
    "list_dicom_series",
    "log_filter",
    "map_coordinates",
    "mean_filter",
    "median",
    "MedkernError",
    "Model",
    "ModelError",
    "models",
    "n4_bias_correction",
    "normalize",
    "Prediction",
    "radiomics",
    "read",
    "read_dicom_file",
    "read_dicom_series",
    "read_rtstruct",
    "Region",
    "regions",
    "Report",
    "register",
    "RegistrationResult",
    "remove_small_components",
    "resample",
    "resample_to",
    "set_num_threads",
    "sliding_window",
    "suv",
    "threshold_otsu",
    "unsharp_mask",
    "validate_metadata",
    "warp",
    "window",
    "write",
    "write_dicom_series",
    "write_model_metadata",
    "write_rtstruct",
]
