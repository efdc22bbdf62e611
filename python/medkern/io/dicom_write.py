"""Writing an Image as a DICOM series: one single-frame MR, CT or Secondary Capture file per slice.

Geometry (PS3.3 C.7.6.2, Image Plane module)
--------------------------------------------
Array axes ``[k, j, i]`` = (slice, row, column). Every slice ``k`` gets

* ImageOrientationPatient = ``direction[:, 2]`` (the row cosine: along increasing column index
  i) followed by ``direction[:, 1]`` (the column cosine: along increasing row index j);
* ImagePositionPatient = the world position of voxel ``(k, 0, 0)``;
* PixelSpacing = ``[spacing[1], spacing[2]]`` (row to row, then column to column);
* SliceThickness = SpacingBetweenSlices = ``spacing[0]`` (the slices are contiguous).

DICOM readers stack slices along the normal ``row_cosine x column_cosine``. A volume whose slice
axis points the other way (a left-handed direction) is written as it is, the positions record
that, and readers give it back with axis 0 reversed: the same voxels at the same world points.
Directions whose columns are not orthonormal have no DICOM form and raise ValueError.

Values (PS3.3 C.11.1, Modality LUT)
-----------------------------------
Pixels are stored in 16 bits and ``value = RescaleSlope * stored + RescaleIntercept``:

* integer values (any integer dtype, bool, or floats that all hold integers) that fit int16 or
  uint16 are stored exactly with slope 1 and intercept 0, signed unless they only fit uint16;
  CT values in -1024..3071 HU are stored as 12-bit unsigned with intercept -1024, as scanners do;
* other values get ``intercept <= min`` and ``slope >= (max - intercept) / 65535`` (both written
  exactly as their DS strings) and are rounded to the nearest stored level, so each decoded value
  is within ``slope / 2`` of the original (up to float64 rounding; readers that return float32
  round once more). NaN and infinity raise ValueError.

Window centre and width span the 0.5th to 99.5th percentile of the values (LINEAR; LINEAR_EXACT
when that span is below 1, which LINEAR does not allow, PS3.3 C.11.2.1.2).

Identity
--------
Without ``source`` a new study is made: new Study, Series, SOP Instance and Frame of Reference
UIDs (``study`` may supply the study's), and ``patient`` supplies the patient module; without it
the name and ID are placeholders marked as such (PatientIdentityRemoved YES, a comment saying
none was supplied) and birth date, sex and age stay empty: unknown, never guessed.
With ``source`` the series joins the source's study: its patient and study modules and Frame of
Reference are copied, the source instances are listed in ReferencedSeriesSequence, and each slice
names its source image in SourceImageSequence where one exists (a source series on the same grid:
the slice at the same position; a single source file: that file).
ImageType is always DERIVED\\SECONDARY: medkern computes images, it does not acquire them.

The series is written into a temporary folder beside ``directory`` and renamed into place, so a
failure leaves nothing behind and a reader never sees half a series.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import shutil
import tempfile
import uuid
import warnings
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import numpy as np

from medkern.errors import DicomError
from medkern.image import Image
from medkern.io.dicom import DicomSeries

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["write_dicom_series", "PATIENT_KEYS", "STUDY_KEYS"]

PATIENT_KEYS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge")
STUDY_KEYS = ("StudyInstanceUID", "FrameOfReferenceUID", "StudyDate", "StudyTime", "StudyID",
              "AccessionNumber", "StudyDescription", "ReferringPhysicianName")
# What identifies a patient: kept out of every message medkern emits.
IDENTIFYING_KEYS = ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "IssuerOfPatientID")
# Copied from a source image: the patient (C.7.1.1), general study (C.7.2.1) and frame of
# reference (C.7.4.1) modules as far as a derived series of the same study shares them.
_SOURCE_KEYS = PATIENT_KEYS + STUDY_KEYS + ("IssuerOfPatientID", "PatientIdentityRemoved",
                                            "DeidentificationMethod", "PositionReferenceIndicator")
_MR_ACQUISITION_KEYS = ("ScanningSequence", "SequenceVariant", "ScanOptions", "MRAcquisitionType")

_SOP_CLASSES = {"MR": "1.2.840.10008.5.1.4.1.1.4", "CT": "1.2.840.10008.5.1.4.1.1.2",
                "OT": "1.2.840.10008.5.1.4.1.1.7"}
_LEVELS = 65535  # the largest 16-bit unsigned stored value
_CT_AIR_INTERCEPT = -1024  # with 12 bits stored: -1024..3071 HU, the range CT scanners store
# Affines read from float32 files (NIfTI) are orthonormal to about 1e-7; beyond this the grid is
# sheared or scaled and no ImageOrientationPatient describes it.
_ORTHONORMAL_TOLERANCE = 1e-5
# Two grids are the same when origin, spacing and direction cosines agree this closely: DS strings
# keep at least 10 significant digits, so a grid read back from DICOM agrees far better.
GRID_TOLERANCE_MM = 1e-4
_DS_DIGITS = 10  # significant digits of a directed-rounded DS: at most 16 characters


# ---------------------------------------------------------------------------------- values
def _ds(value: float) -> str:
    """The shortest DS string (at most 16 characters) that reads back closest to ``value``."""
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(value) + 0.0)


def _ds_directed(value: Decimal, rounding: str) -> str:
    """A DS string for ``value`` rounded down (ROUND_FLOOR) or up (ROUND_CEILING), so that what a
    reader parses never lies on the wrong side of ``value``."""
    plain = _ds(float(value))
    if (Decimal(plain) <= value) if rounding == ROUND_FLOOR else (Decimal(plain) >= value):
        return plain
    for digits in range(_DS_DIGITS, 0, -1):
        quantum = Decimal(1).scaleb(value.adjusted() - digits + 1)
        text = f"{value.quantize(quantum, rounding=rounding):.{digits - 1}e}"
        if len(text) <= 16:
            return text
    raise ValueError(f"{value} has no DS form")  # an exponent beyond +-999: not a float64


@dataclass(frozen=True)
class _Encoding:
    """How modality values become 16-bit stored values (PS3.3 C.7.6.3, C.11.1)."""

    slope: str
    intercept: str
    signed: bool
    bits_stored: int
    exact: bool  # integers stored as they are: no rounding

    def attributes(self) -> dict[str, Any]:
        return {"BitsAllocated": 16, "BitsStored": self.bits_stored, "HighBit": self.bits_stored - 1,
                "PixelRepresentation": int(self.signed), "RescaleSlope": self.slope,
                "RescaleIntercept": self.intercept}

    def stored(self, values: np.ndarray) -> np.ndarray:
        if self.exact:
            shifted = values.astype(np.int32) - int(self.intercept)
            return shifted.astype(np.int16 if self.signed else np.uint16)
        levels = np.rint((values.astype(np.float64) - float(self.intercept)) / float(self.slope))
        return np.clip(levels, 0, _LEVELS).astype(np.uint16)


def _encoding(array: np.ndarray, modality: str) -> _Encoding:
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ValueError("img holds NaN or infinite values, which DICOM pixel data cannot store; "
                         "replace them first (e.g. np.nan_to_num)")
    lo, hi = array.min().item(), array.max().item()
    integral = array.dtype.kind in "iu" or bool(np.array_equal(array, np.rint(array)))
    if integral:
        lo, hi = int(lo), int(hi)
        if modality == "CT" and lo >= _CT_AIR_INTERCEPT and hi <= _CT_AIR_INTERCEPT + 4095:
            return _Encoding("1", str(_CT_AIR_INTERCEPT), False, 12, True)
        if -(1 << 15) <= lo and hi < (1 << 15):
            return _Encoding("1", "0", array.dtype.kind != "u", 16, True)
        if lo >= 0 and hi <= _LEVELS:
            return _Encoding("1", "0", False, 16, True)
    low = Decimal(lo)
    intercept = _ds_directed(low, ROUND_FLOOR)
    span = Decimal(hi) - Decimal(intercept)
    slope = _ds_directed(span / _LEVELS, ROUND_CEILING) if span > 0 else "1"
    return _Encoding(slope, intercept, False, 16, False)


def _window(array: np.ndarray) -> dict[str, Any]:
    """Window centre/width over the 0.5..99.5 percentile range of the modality values."""
    lo, hi = (float(v) for v in np.percentile(array, [0.5, 99.5]))
    width = hi - lo
    if width >= 1:
        return {"WindowCenter": _ds((lo + hi) / 2), "WindowWidth": _ds(width)}
    if width > 0:
        return {"WindowCenter": _ds((lo + hi) / 2), "WindowWidth": _ds(width), "VOILUTFunction": "LINEAR_EXACT"}
    return {"WindowCenter": _ds(lo), "WindowWidth": "1"}  # a constant image


# ---------------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class _Planes:
    orientation: list[str]  # ImageOrientationPatient
    positions: list[list[str]]  # ImagePositionPatient per slice
    locations: list[str]  # SliceLocation per slice: the position along the normal
    pixel_spacing: list[str]
    slice_spacing: str | None


def _planes(img: Image) -> _Planes:
    d = img.direction
    if not np.allclose(d.T @ d, np.eye(img.ndim), rtol=0, atol=_ORTHONORMAL_TOLERANCE):
        raise ValueError("img.direction is not orthonormal (its columns are not perpendicular unit "
                         "vectors), so no DICOM ImageOrientationPatient describes the grid; resample the "
                         "image onto an orthonormal grid first (mk.resample_to)")
    if img.ndim == 2:
        # A single plane in z = 0: axis 0 is j (rows), axis 1 is i (columns).
        row = np.array([d[0, 1], d[1, 1], 0.0])
        col = np.array([d[0, 0], d[1, 0], 0.0])
        origins = [np.array([img.origin[0], img.origin[1], 0.0])]
        slice_spacing = None
    else:
        row, col = d[:, 2], d[:, 1]
        step = d[:, 0] * img.spacing[0]
        origins = [img.origin + k * step for k in range(img.shape[0])]
        slice_spacing = _ds(img.spacing[0])
    normal = np.cross(row, col)
    return _Planes(
        orientation=[_ds(v) for v in np.concatenate([row, col])],
        positions=[[_ds(v) for v in p] for p in origins],
        locations=[_ds(p @ normal) for p in origins],
        pixel_spacing=[_ds(img.spacing[-2]), _ds(img.spacing[-1])],
        slice_spacing=slice_spacing,
    )


# ---------------------------------------------------------------------------------- identity
def dicom_text(keyword: str, value: Any, argument: str, identifying: bool = False) -> str:
    """``value`` as valid DICOM text for attribute ``keyword`` (dates as YYYYMMDD), else ValueError
    naming ``argument`` and the format; identifying values never appear in the message. None is
    the empty value (type 2 attributes: unknown)."""
    from pydicom import config
    from pydicom.datadict import dictionary_VR
    from pydicom.valuerep import validate_value

    if value is None:
        text = ""
    elif isinstance(value, datetime.date):
        text = value.strftime("%Y%m%d")
    elif isinstance(value, datetime.time):
        text = value.strftime("%H%M%S")
    else:
        text = str(value)
    vr = dictionary_VR(keyword)
    try:
        validate_value(vr, text, config.RAISE)
        if keyword == "PatientSex" and text not in ("M", "F", "O", ""):
            raise ValueError("PatientSex is M, F, O or empty")
    except ValueError as exc:
        shown = "the value is not shown because it identifies the patient" if identifying else str(exc)
        raise ValueError(f"{argument} is not a valid DICOM {keyword} ({vr}) value ({shown}); see "
                         f"PS3.5 table 6.2-1 for the {vr} format") from None
    return text


def _checked(values: Any, allowed: tuple[str, ...], argument: str, identifying: bool) -> dict[str, str]:
    """DICOM-valid text per keyword of a ``patient`` / ``study`` dict."""
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise TypeError(f"{argument} must be a dict of DICOM keywords ({', '.join(allowed)}), "
                        f"got {type(values).__name__}")
    unknown = sorted(str(k) for k in values if k not in allowed)
    if unknown:
        raise ValueError(f"{argument} has unknown keys {unknown}; allowed: {', '.join(allowed)}")
    return {key: dicom_text(key, value, f"{argument}[{key!r}]", identifying) for key, value in values.items()}


def series_grid(series: Any) -> Image:
    """The grid a DicomSeries reads onto, as an Image that holds no voxels (for comparisons)."""
    return Image(np.broadcast_to(np.uint8(0), series.shape), spacing=series.spacing, origin=series.origin,
                 direction=series.direction)


def describe_grid(img: Image) -> str:
    return (f"shape {img.shape}, spacing {tuple(round(s, 4) for s in img.spacing)}, origin "
            f"{tuple(round(float(o), 4) for o in img.origin)}, direction {np.round(img.direction, 4).tolist()}")


@dataclass
class _Source:
    """What a derived series takes from its source: identity, references, the grid per slice."""

    attributes: dict[str, Any]  # patient, study and frame of reference modules
    mr_acquisition: dict[str, Any]
    series_uid: str
    instances: list[tuple[str, str]]  # (SOP class, SOP instance) of every source file
    per_slice: list[tuple[str, str, int | None]] | None = field(default=None)  # + frame number


class _HeldRecords(logging.Filter):
    """Keeps the log records of pydicom and highdicom back until identity_redacted ends."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False


@contextlib.contextmanager
def identity_redacted() -> Iterator[list[str]]:
    """Warnings and pydicom / highdicom log records raised inside come out when it ends, with the
    identifying values put in the yielded list replaced: both libraries quote the values they
    warn about (a malformed birth date, a one-part name), and an identity must not reach logs."""
    secrets: list[str] = []
    held = _HeldRecords()
    # Filters act on the logger a record is made on, not on its parents: every library logger.
    names = [n for n in list(logging.Logger.manager.loggerDict) if n.split(".")[0] in ("pydicom", "highdicom")]
    loggers = [logging.getLogger(n) for n in {"pydicom", "highdicom", *names}]
    caught: list[warnings.WarningMessage] = []
    for logger in loggers:
        logger.addFilter(held)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield secrets
    finally:
        for logger in loggers:
            logger.removeFilter(held)

        def redact(text: str) -> str:
            for secret in secrets:
                if secret.strip():
                    text = text.replace(secret, "<identifying value>")
            return text

        for record in held.records:
            record.msg, record.args = redact(record.getMessage()), None
            logging.getLogger(record.name).handle(record)
        for w in caught:
            warnings.warn_explicit(redact(str(w.message)), w.category, w.filename, w.lineno)


def identifying_values(attributes: Any) -> list[str]:
    """The identifying values of a dataset or attribute dict, as text (for identity_redacted)."""
    return [str(attributes.get(key, "")) for key in IDENTIFYING_KEYS]


def source_header(path: Path) -> Any:
    import pydicom

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # pydicom raises many types for files that are not DICOM
        raise DicomError(f"source {path}: not a readable DICOM file ({type(exc).__name__})") from exc


def _present(ds: Any, keys: tuple[str, ...]) -> dict[str, Any]:
    """The attributes of ``ds`` that have a value; person names as text, so that they are
    re-encoded in this series' character set rather than carried in the source's bytes."""
    from pydicom.valuerep import PersonName

    out = {}
    for key in keys:
        value = ds.get(key)
        if value not in (None, ""):
            out[key] = str(value) if isinstance(value, PersonName) else value
    return out


def _source_from_datasets(headers: list[Any]) -> _Source:
    first = headers[0]
    missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
               if not first.get(k)]
    if missing:
        raise DicomError(f"source has no {', '.join(missing)}: it cannot be referenced")
    mr = _present(first, _MR_ACQUISITION_KEYS) if first.get("Modality") == "MR" else {}
    return _Source(_present(first, _SOURCE_KEYS), mr, str(first.SeriesInstanceUID),
                   [(str(h.SOPClassUID), str(h.SOPInstanceUID)) for h in headers])


def _identity(patient: Any, study: Any, src: _Source | None, now: datetime.datetime) -> dict[str, Any]:
    """Patient, study and frame of reference attributes (type 2 ones empty when unknown)."""
    from pydicom.uid import generate_uid

    out: dict[str, Any] = {key: "" for key in PATIENT_KEYS + STUDY_KEYS + ("PositionReferenceIndicator",)}
    out.update(StudyInstanceUID=generate_uid(), FrameOfReferenceUID=generate_uid())
    if src is not None:
        out.update(src.attributes)
        return out
    if study is None:
        out.update(StudyDate=now.strftime("%Y%m%d"), StudyTime=now.strftime("%H%M%S"))
    out.update(_checked(study, STUDY_KEYS, "study", identifying=False))
    if patient is None:
        out.update(PatientName="ANONYMOUS^PLACEHOLDER", PatientID=f"ANON-{uuid.uuid4().hex[:16].upper()}",
                   PatientIdentityRemoved="YES",
                   PatientComments="placeholder identity: no patient data was supplied to medkern")
    out.update(_checked(patient, PATIENT_KEYS, "patient", identifying=True))
    return out


def _source(source: Any, img: Image) -> _Source:
    from pydicom.dataset import Dataset

    from medkern.io.dicom import DicomSeries, list_dicom_series

    if isinstance(source, Dataset):
        found = _source_from_datasets([source])
    elif isinstance(source, (str, os.PathLike)) and Path(source).is_file():
        found = _source_from_datasets([source_header(Path(source))])
    elif isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        series = list_dicom_series(source)
        if len(series) != 1:
            raise ValueError(f"source folder {source} holds {len(series)} image series; pass the one "
                             "to derive from (a DicomSeries from mk.list_dicom_series)")
        return _source(series[0], img)
    elif isinstance(source, (str, os.PathLike)):
        raise FileNotFoundError(f"source {source}: no such file or folder")
    elif isinstance(source, DicomSeries):
        headers = {p: source_header(p) for p in source.files}
        found = _source_from_datasets(list(headers.values()))
        layout = source._layout
        same_grid = (layout.interpolation is None and layout.shifts is None
                     and series_grid(source).same_geometry(img, atol=GRID_TOLERANCE_MM))
        if same_grid:
            found.per_slice = [(str(headers[fr.file.path].SOPClassUID), str(headers[fr.file.path].SOPInstanceUID),
                                fr.index + 1 if fr.file.n_frames > 1 else None) for fr in layout.frames]
        return found
    else:
        raise TypeError("source must be a DicomSeries, a DICOM file or folder path, or a pydicom Dataset, "
                        f"got {type(source).__name__}")
    # A single source image: every slice derives from it.
    found.per_slice = [found.instances[0] + (None,)] * (img.shape[0] if img.ndim == 3 else 1)
    return found


def _references(src: _Source) -> Any:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    series = Dataset()
    series.SeriesInstanceUID = src.series_uid
    series.ReferencedInstanceSequence = Sequence()
    for sop_class, sop_instance in dict.fromkeys(src.instances):
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        series.ReferencedInstanceSequence.append(item)
    return Sequence([series])


def _source_image(sop_class: str, sop_instance: str, frame: int | None) -> Any:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    if frame is not None:
        item.ReferencedFrameNumber = frame
    return Sequence([item])


# ---------------------------------------------------------------------------------- output
@contextlib.contextmanager
def _atomic_directory(target: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it becomes ``target`` (replacing an
    empty one, or with ``overwrite`` a full one); on failure it is removed and ``target`` kept."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        if target.exists() and any(target.iterdir()):
            old = target.parent / f".{target.name}.{uuid.uuid4().hex}.old"
            os.rename(target, old)
            try:
                os.rename(tmp, target)
            except BaseException:
                os.rename(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                target.rmdir()
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_target(directory: Any, overwrite: bool) -> Path:
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"directory must be a path, got {type(directory).__name__}")
    target = Path(directory)
    if not target.parent.is_dir():
        raise FileNotFoundError(f"the parent folder {target.parent} of directory {target} does not exist")
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"directory {target} exists and is a file; pass a folder path")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise FileExistsError(f"directory {target} is not empty; pass overwrite=True to replace it "
                              "and everything in it")
    return target


def _series_attributes(modality: str, description: str, series_number: int, patient: Any, study: Any,
                       src: _Source | None) -> dict[str, Any]:
    """The attributes every file of the series shares, apart from grid and pixel encoding."""
    from pydicom.uid import generate_uid

    from medkern._version import __version__

    now = datetime.datetime.now()
    shared: dict[str, Any] = {
        "SpecificCharacterSet": "ISO_IR 192",  # UTF-8: names in any script
        "ImageType": ["DERIVED", "SECONDARY"],
        "SOPClassUID": _SOP_CLASSES[modality],
        **_identity(patient, study, src, now),
        "SeriesDate": now.strftime("%Y%m%d"), "SeriesTime": now.strftime("%H%M%S"),
        "ContentDate": now.strftime("%Y%m%d"), "ContentTime": now.strftime("%H%M%S"),
        "Modality": modality, "Manufacturer": "medkern", "SoftwareVersions": __version__,
        "SeriesDescription": description, "SeriesNumber": series_number, "SeriesInstanceUID": generate_uid(),
        "SamplesPerPixel": 1, "PhotometricInterpretation": "MONOCHROME2",
    }
    if modality == "MR":
        # Type 1 MR Image attributes (PS3.3 C.8.3.1): RM = research mode, the defined term for an
        # image no scanner sequence produced; a source MR's own values replace them.
        shared.update(ScanningSequence="RM", SequenceVariant="NONE", ScanOptions="", MRAcquisitionType="",
                      RepetitionTime="", EchoTime="", EchoTrainLength="")
        if src is not None:
            shared.update(src.mr_acquisition)
    elif modality == "CT":
        shared.update(RescaleType="HU", KVP="", AcquisitionNumber="")
    else:
        shared.update(ConversionType="WSD")  # SC Equipment (C.8.6.1): made on a workstation
    if src is not None:
        shared["ReferencedSeriesSequence"] = _references(src)
    return shared


def write_dicom_series(img: Image, directory: str | os.PathLike, *, modality: str = "MR",
                       series_description: str = "medkern derived series", patient: dict | None = None,
                       study: dict | None = None,
                       source: DicomSeries | str | os.PathLike[str] | Dataset | None = None, series_number: int = 1,
                       overwrite: bool = False) -> list[Path]:
    """Write an Image as a DICOM series, one single-frame file per slice (array axis 0).

    A 2D image is one file. Geometry (PS3.3 C.7.6.2): every slice ``k`` gets
    ImageOrientationPatient = ``direction[:, 2]`` (row cosine, along i) then ``direction[:, 1]``
    (column cosine, along j), ImagePositionPatient = the world position of voxel ``(k, 0, 0)``,
    PixelSpacing = ``[spacing[1], spacing[2]]`` and SliceThickness = SpacingBetweenSlices =
    ``spacing[0]``. A left-handed volume is written as it is and reads back with axis 0
    reversed: the same voxels at the same world points.

    Values (PS3.3 C.11.1) are stored in 16 bits: integer values that fit int16 or uint16 exactly
    (slope 1, intercept 0; CT in -1024..3071 HU as 12-bit unsigned with intercept -1024, as
    scanners do); other values with a slope and intercept that bound the quantisation error by
    ``RescaleSlope / 2``. Window centre and width span the 0.5th to 99.5th percentile.

    Identity: without ``source`` a new study is made (new UIDs; ``study`` may supply them), and
    without ``patient`` the name and ID are placeholders marked as such (PatientIdentityRemoved
    YES) while birth date, sex and age stay empty: unknown, never guessed. With ``source`` the
    series joins the source's study: patient and study modules and Frame of Reference are copied,
    the source instances are referenced, and each slice names its source image where one
    exists. ImageType is always DERIVED\\SECONDARY.

    Parameters
    ----------
    img : Image
        A 2D or 3D scalar image (bool is stored as 0/1).
    directory : str or os.PathLike
        The folder to create. The series is written into a temporary folder beside it and
        renamed into place, so a failure leaves nothing behind and a reader never sees half a
        series.
    modality : {"MR", "CT", "OT"}, optional
        MR Image Storage (default), CT Image Storage or Secondary Capture.
    series_description : str, optional
        SeriesDescription.
    patient : dict, optional
        PatientName, PatientID, PatientBirthDate, PatientSex, PatientAge (DICOM value formats,
        dates as YYYYMMDD or ``datetime.date``).
    study : dict, optional
        StudyInstanceUID, FrameOfReferenceUID, StudyDate, StudyTime, StudyID, AccessionNumber,
        StudyDescription, ReferringPhysicianName.
    source : DicomSeries, str, os.PathLike or pydicom.Dataset, optional
        A DICOM series, file or folder whose study the new series joins (a derived series);
        excludes ``patient`` and ``study``.
    series_number : int, optional
        SeriesNumber, non-negative; default 1.
    overwrite : bool, optional
        Replace ``directory`` and everything in it. Without it ``directory`` must not exist or
        be empty.

    Returns
    -------
    list of pathlib.Path
        The files written, in slice order.

    Raises
    ------
    TypeError
        ``img`` is not an Image.
    ValueError
        A vector or empty image, an unknown modality, a bad series number, ``source`` together
        with ``patient``/``study``, an invalid DICOM value, a non-empty ``directory`` without
        ``overwrite``, NaN or infinite values, or a direction whose columns are not orthonormal.
    medkern.DicomError
        ``source`` cannot be read.

    See Also
    --------
    medkern.read_dicom_series : Read a series back.
    medkern.write_rtstruct : Write contours that reference a series.

    Examples
    --------
    >>> ct = mk.Image(np.full((3, 4, 4), 40, np.int16), spacing=(2.0, 0.8, 0.8),
    ...               origin=(-100, -120, 50))
    >>> files = mk.write_dicom_series(ct, "ct", modality="CT",
    ...                               patient={"PatientName": "Phantom^One", "PatientID": "P001"})
    >>> [f.name for f in files]
    ['CT0001.dcm', 'CT0002.dcm', 'CT0003.dcm']
    >>> back = mk.read("ct")
    >>> back.same_geometry(ct), bool((back.array == ct.array).all())
    (True, True)
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    if not isinstance(img, Image):
        raise TypeError(f"img must be a medkern.Image, got {type(img).__name__}")
    if img.is_vector:
        raise ValueError("img is a vector image; DICOM MR/CT/SC slices hold one value per pixel: "
                         "write each component as its own series")
    if img.size == 0:
        raise ValueError(f"img has no voxels (shape {img.shape}); a DICOM image needs at least one pixel")
    if modality not in _SOP_CLASSES:
        raise ValueError(f"modality must be one of {', '.join(_SOP_CLASSES)}, got {modality!r}")
    if not isinstance(series_number, (int, np.integer)) or isinstance(series_number, bool) or series_number < 0:
        raise ValueError(f"series_number must be a non-negative int, got {series_number!r}")
    description = dicom_text("SeriesDescription", series_description, "series_description")
    if source is not None and (patient is not None or study is not None):
        raise ValueError("pass either source (the series joins the source's patient and study) or "
                         "patient/study (a new study), not both")
    target = _check_target(directory, overwrite)
    planes = _planes(img)
    array = np.asarray(img)
    array = array.view(np.uint8) if array.dtype == np.bool_ else array  # masks store as 0 / 1
    volume = array if img.ndim == 3 else array[None]
    encoding = _encoding(volume, modality)
    with identity_redacted() as secrets:
        src = _source(source, img) if source is not None else None
        shared = _series_attributes(modality, description, int(series_number), patient, study, src)
        shared.update(ImageOrientationPatient=planes.orientation, PixelSpacing=planes.pixel_spacing,
                      Rows=volume.shape[1], Columns=volume.shape[2], **encoding.attributes(), **_window(volume))
        if planes.slice_spacing is not None:
            shared.update(SliceThickness=planes.slice_spacing, SpacingBetweenSlices=planes.slice_spacing)
        secrets.extend(identifying_values(shared))
        names = [f"{modality}{k + 1:0{max(4, len(str(len(volume))))}d}.dcm" for k in range(len(volume))]
        with _atomic_directory(target, overwrite) as tmp:
            for k, name in enumerate(names):
                ds = Dataset()
                for keyword, value in shared.items():
                    setattr(ds, keyword, value)
                ds.SOPInstanceUID = generate_uid()
                ds.InstanceNumber = k + 1
                ds.ImagePositionPatient = planes.positions[k]
                ds.SliceLocation = planes.locations[k]
                if src is not None and src.per_slice is not None:
                    ds.SourceImageSequence = _source_image(*src.per_slice[k])
                stored = encoding.stored(volume[k])
                ds.PixelData = stored.astype(stored.dtype.newbyteorder("<"), copy=False).tobytes()
                ds.file_meta = FileMetaDataset()
                ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
                pydicom.dcmwrite(tmp / name, ds, enforce_file_format=True)
    return [target / name for name in names]
