"""Exceptions raised for bad files and cancelled operations. Bad arguments raise the builtin
ValueError / TypeError."""

from __future__ import annotations

__all__ = ["MedkernError", "DicomError", "ModelError", "Cancelled", "MedkernWarning", "RTStructWarning"]


class MedkernError(Exception):
    """Base class of medkern's own exceptions.

    Bad arguments raise the builtin ``ValueError`` or ``TypeError`` instead; the message names
    the argument and the fix.

    See Also
    --------
    DicomError, ModelError, Cancelled

    Examples
    --------
    >>> issubclass(mk.DicomError, mk.MedkernError), issubclass(mk.Cancelled, mk.MedkernError)
    (True, True)
    """


class DicomError(MedkernError, ValueError):
    """A DICOM file or series cannot be read as asked; the message names the files involved.

    It is also a ``ValueError``, so code that catches bad input generally catches it too.

    See Also
    --------
    medkern.read_dicom_series, medkern.read_dicom_file, medkern.read_rtstruct

    Examples
    --------
    >>> with open("bad.dcm", "wb") as f:
    ...     _ = f.write(bytes(128) + b"DICM")    # a preamble and nothing after it
    >>> try:
    ...     mk.read("bad.dcm")
    ... except mk.DicomError as exc:
    ...     print(exc)
    bad.dcm: unreadable DICOM file (...)
    """


class DicomWarning(UserWarning):
    """Part of a DICOM folder could not be looked at (a sub-folder that cannot be listed); the
    scan goes on and lists the folder among its unreadable entries."""


class ModelError(MedkernError, ValueError):
    """An ONNX model file, its metadata or its inputs are unusable; the message says why.

    It is also a ``ValueError``.

    See Also
    --------
    medkern.Model, medkern.validate_metadata

    Examples
    --------
    >>> try:
    ...     mk.Model(b"not an ONNX model")
    ... except mk.ModelError as exc:
    ...     print(exc)
    model bytes is not a readable ONNX model (not ONNX, truncated or corrupted): ...
    """


class Cancelled(MedkernError):
    """A long operation stopped because its ``progress`` callable returned False.

    The message names the operation and the stage it stopped in. Nothing the operation would
    have produced is left behind.

    See Also
    --------
    medkern.register, medkern.n4_bias_correction, medkern.analyze

    Examples
    --------
    >>> img = mk.Image(np.ones((8, 8, 8), np.float32))
    >>> try:
    ...     mk.n4_bias_correction(img, progress=lambda stage, fraction: False)
    ... except mk.Cancelled as exc:
    ...     print(exc)
    n4_bias_correction cancelled by its progress callable during stage 'shrink' (0 % done)
    """


class MedkernWarning(UserWarning):
    """Base class of medkern's warnings: a result was produced, but something in the input was
    skipped or is doubtful; the message says what."""


class RTStructWarning(MedkernWarning):
    """An RT Structure Set was read, but contours were skipped (points, open polylines, fewer than
    three points) or an ROI's mask is empty; the message names the file and the ROI."""
