"""Exceptions raised for bad files and cancelled operations. Bad arguments raise the builtin
ValueError / TypeError."""

from __future__ import annotations

__all__ = ["MedkernError", "DicomError", "ModelError", "Cancelled", "MedkernWarning", "RTStructWarning"]


class MedkernError(Exception):
    """Base class of medkern's own exceptions."""


class DicomError(MedkernError, ValueError):
    """A DICOM file or series cannot be read as asked; the message names the files involved."""


class DicomWarning(UserWarning):
    """Part of a DICOM folder could not be looked at (a sub-folder that cannot be listed); the
    scan goes on and lists the folder among its unreadable entries."""


class ModelError(MedkernError, ValueError):
    """An ONNX model file, its metadata or its inputs are unusable; the message says why."""


class Cancelled(MedkernError):
    """A long operation stopped because its ``progress`` callable returned False; the message
    names the operation and the stage it stopped in. Nothing the operation would have produced
    is left behind."""


class MedkernWarning(UserWarning):
    """Base class of medkern's warnings: a result was produced, but something in the input was
    skipped or is doubtful; the message says what."""


class RTStructWarning(MedkernWarning):
    """An RT Structure Set was read, but contours were skipped (points, open polylines, fewer than
    three points) or an ROI's mask is empty; the message names the file and the ROI."""
