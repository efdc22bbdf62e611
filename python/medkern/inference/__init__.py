"""Inference on ONNX Runtime: models with medkern metadata, and MONAI-exact sliding windows."""

from __future__ import annotations

from medkern.inference.metadata import SCHEMA_VERSION, validate_metadata, write_model_metadata
from medkern.inference.model import Model, Prediction, TensorInfo, reorient
from medkern.inference.quantize import quantize
from medkern.inference.sliding import sliding_window

__all__ = ["Model", "Prediction", "SCHEMA_VERSION", "TensorInfo", "quantize", "reorient", "sliding_window",
           "validate_metadata", "write_model_metadata"]
