"""The clinic's copy of an analysis: lesion labels as a DICOM SEG, measurements as a DICOM SR.

Both are made with highdicom and reference the source series (study, series, instances and
frame of reference), so PACS viewers (OHIF and others) show them over the images they came from.

Codes, and why these
--------------------
* Segmented property category SCT 49755003 "Morphologically Abnormal Structure" (DICOM PS3.16
  CID 7150 Segmentation Property Categories) and type SCT 108369006 "Neoplasm" (CID 7151
  Segmentation Property Types). medkern's models segment tumours (brain metastases, soft-tissue
  sarcoma), and the segmented property names what the segment is meant to contain; SCT 4147007
  "Mass" (also CID 7151) only describes a space-occupying appearance. The same pair is the SR
  measurement group's finding category and finding type (TID 1411), so SEG and SR agree.
* Algorithm family DCM 123110 "Artificial Intelligence" (CID 7162 Segmentation Algorithm
  Families): the segments come from a trained model; the segment algorithm type is AUTOMATIC
  (PS3.3 C.8.20.2).
* Measurements (TID 1419 ROI Measurements, units UCUM):
  volume SCT 118565006 "Volume" in mm3 (CID 7472 Volume Measurements), method DCM 126030 "Sum of
  segmented voxel method for volume" (CID 7474): medkern's volume is voxel count x voxel volume;
  maximum 3D diameter IBSI L0JK "Maximum 3D Diameter of a Mesh" in mm (CID 7470 Linear
  Measurements; IBSI reference manual, Zwanenburg et al. 2020, section 3.1.11): medkern measures
  it between vertices of the marching-cubes surface, as the IBSI defines it;
  axial diameter SCT 103339001 "Long axis" in mm (CID 7470): the longest diameter within one
  acquisition plane, RECIST 1.1 (Eisenhauer et al., "New response evaluation criteria in solid
  tumours: revised RECIST guideline (version 1.1)", Eur. J. Cancer 45 (2009) 228, section
  3.1.1: the longest diameter in the plane of measurement).
* A lesion's location is free text (an atlas region name, not a coded anatomic concept), so it
  is a TEXT qualitative evaluation named SCT 363698007 "Finding Site" (the measurement group
  templates TID 1501 / 1411 allow TEXT qualitative evaluations) rather than a coded finding
  site, which would need a code medkern does not have.
* Procedure reported (CID 100): "CT/MRI/PET unspecified body region" by the source modality,
  else "Imaging procedure"; document title from CID 7021 Measurement Report Document Titles.

Segments and lesions
--------------------
Segment numbers follow the label values in increasing order (1..N; the label value itself when
the labels are 1..N). Each segment's TrackingID is ``"label <value>"`` with a new TrackingUID,
and the SR's measurement group for lesion ``id`` carries the same identifier and UID and
references that segment, which is how the SR finds its segments again.

Both objects are marked RESEARCH (Content Qualification): decision support, not a device. The
SR is COMPLETE, PRELIMINARY and UNVERIFIED: no clinician has signed it.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from medkern.errors import DicomError
from medkern.image import Image

__all__ = ["write_segmentation", "write_measurement_report", "LESION_KEYS"]

LESION_KEYS = ("id", "volume_mm3", "max_diameter_mm", "axial_diameter_mm", "location")
_MEASUREMENT_KEYS = ("volume_mm3", "max_diameter_mm", "axial_diameter_mm")
_TRACKING = "label {}"
_TRACKING_PATTERN = re.compile(r"^label (\d+)$")
# Patient and study attributes of type 2 (PS3.3 C.7.1.1, C.7.2.1) that derived objects copy.
_TYPE2_IDENTITY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                   "ReferringPhysicianName", "StudyID", "AccessionNumber")
_SEG_SERIES_NUMBER = 1000  # derived objects sort after the acquired series in viewers
_SR_SERIES_NUMBER = 1001


def _codes() -> dict[str, Any]:
    from pydicom.sr.codedict import codes

    return {
        "category": codes.SCT.MorphologicallyAbnormalStructure,
        "type": codes.SCT.Neoplasm,
        "family": codes.cid7162.ArtificialIntelligence,
        "volume": codes.SCT.Volume,
        "volume_method": codes.DCM.SumOfSegmentedVoxelMethodForVolume,
        "max_diameter": codes.IBSI.Maximum3DDiameterOfAMesh,
        "axial_diameter": codes.SCT.LongAxis,
        "mm3": codes.UCUM.CubicMillimeter,
        "mm": codes.UCUM.Millimeter,
        "finding_site": codes.SCT.FindingSite,
        "device": codes.cid270.Device,
    }


def _procedure(modality: str) -> Any:
    from pydicom.sr.codedict import codes

    by_modality = {"CT": codes.cid100.CTUnspecifiedBodyRegion, "MR": codes.cid100.MRIUnspecifiedBodyRegion,
                   "PT": codes.cid100.PETUnspecifiedBodyRegion}
    return by_modality.get(modality, codes.cid100.ImagingProcedure)


def _text(keyword: str, value: Any, argument: str) -> str:
    from medkern.io.dicom_write import dicom_text

    if not isinstance(value, str) or not value.strip():
        raise TypeError(f"{argument} must be a non-empty str, got {value!r}")
    return dicom_text(keyword, value, argument)


def _equipment() -> dict[str, Any]:
    from medkern._version import __version__

    # Software has no serial number (a type 1 attribute of the Enhanced General Equipment module):
    # the version names the build that made the object.
    return {"manufacturer": "medkern", "manufacturer_model_name": "medkern", "software_versions": __version__,
            "device_serial_number": __version__, "content_qualification": "RESEARCH"}


# ---------------------------------------------------------------------------------- sources
def _source_series(source_files: Any) -> tuple[Any, list[Any]]:
    """The one image series ``source_files`` make up (geometry as mk.read gives it), and the
    files' headers in the series' slice order."""
    from medkern.io.dicom._header import _read_header
    from medkern.io.dicom._records import _Unreadable
    from medkern.io.dicom._scanning import _Scan
    from medkern.io.dicom._series import _group
    from medkern.io.dicom_write import source_header

    if isinstance(source_files, (str, bytes, os.PathLike)) or not isinstance(source_files, Sequence):
        raise TypeError("source_files must be a sequence of DICOM file paths (e.g. DicomSeries.files), "
                        f"got {type(source_files).__name__}")
    if not source_files:
        raise ValueError("source_files is empty; pass the files of the series the labels were made on")
    frames = []
    for item in source_files:
        p = Path(item)
        if not p.is_file():
            raise FileNotFoundError(f"source file {p}: no such file")
        try:
            header = _read_header(p)
        except _Unreadable as exc:
            raise DicomError(f"source file {p}: unreadable DICOM file ({exc})") from exc
        if header is None:
            raise DicomError(f"source file {p}: not a DICOM image (not DICOM, or no pixel data)")
        frames.extend(header[1])
    series = _group(_Scan(frames=frames))
    if len(series) > 1:
        raise ValueError(f"source_files hold {len(series)} image series (" + ", ".join(s.key for s in series)
                         + "); pass the files of one")
    headers = [source_header(p) for p in series[0].files]
    for header in headers:
        for key in _TYPE2_IDENTITY:
            if key not in header:
                setattr(header, key, "")  # unknown (type 2); highdicom copies these and needs them present
    return series[0], headers


def _labels_array(labels: Any) -> np.ndarray:
    if not isinstance(labels, Image):
        raise TypeError(f"labels must be a medkern.Image, got {type(labels).__name__}")
    array = np.asarray(labels)
    if labels.is_vector or array.dtype.kind not in "biu":
        kind = "a vector image of " if labels.is_vector else ""
        raise TypeError(f"labels must be a scalar integer label image, got {kind}dtype {array.dtype}; "
                        "convert with labels.astype(np.uint16)")
    if array.dtype.kind == "i" and array.size and array.min() < 0:
        raise ValueError("labels holds negative values; label values are 0 (background) and positive integers")
    return array.astype(np.uint8) if array.dtype == bool else array


# ---------------------------------------------------------------------------------- SEG
def write_segmentation(labels: Image, source_files: Sequence[os.PathLike], path: str | os.PathLike, *,
                       segments: dict[int, str] | None = None, algorithm_name: str, algorithm_version: str,
                       series_description: str = "medkern segmentation") -> Path:
    """Write ``labels`` as a BINARY DICOM SEG of the series made of ``source_files``; returns ``path``.

    One segment per non-zero label value, numbered 1..N in increasing label order; its label is
    ``segments[value]`` (default ``"Lesion <value>"``). ``labels`` must lie on the grid that
    ``mk.read`` gives for the source series (shape, spacing, origin, direction within 1e-4),
    else ValueError naming both grids. A label map without any non-zero voxel raises ValueError:
    a SEG needs at least one segment. Unreadable source files raise medkern.DicomError. Codes
    and tracking identifiers: see the module docstring. Written atomically.

    Each SEG frame names the source image it lies on (highdicom matches planes by position, in
    any file or frame order). Labels on a recovered grid (``allow_irregular=True``: interpolated
    slices) are written with their own plane positions and reference the series as a whole.
    """
    import highdicom as hd
    from pydicom.uid import generate_uid

    from medkern.io._atomic import atomic_path
    from medkern.io.dicom_write import (
        GRID_TOLERANCE_MM,
        describe_grid,
        identifying_values,
        identity_redacted,
        series_grid,
    )

    array = _labels_array(labels)
    values = [int(v) for v in np.unique(array) if v != 0]
    if not values:
        raise ValueError("labels has no non-zero voxel: a DICOM SEG needs at least one segment, so there "
                         "is nothing to write (report that no lesion was found instead)")
    descriptions = _segment_descriptions(values, segments, algorithm_name, algorithm_version)
    description = _text("SeriesDescription", series_description, "series_description")
    numbers = np.zeros(max(values) + 1, dtype=np.uint8 if len(values) < 256 else np.uint16)
    numbers[values] = np.arange(1, len(values) + 1)
    segment_map = numbers[array]
    with identity_redacted() as secrets:
        series, headers = _source_series(source_files)
        secrets.extend(identifying_values(headers[0]))
        grid = series_grid(series)
        if not grid.same_geometry(labels, atol=GRID_TOLERANCE_MM):
            raise ValueError(f"labels do not lie on the source series' grid: labels have {describe_grid(labels)}; "
                             f"the series {series.key} has {describe_grid(grid)}. Resample them onto it with "
                             "mk.resample_to(labels, reference, interpolation='label')")
        if labels.ndim == 3:
            # A Volume carries the grid: highdicom matches each plane to its source frame by position,
            # whatever order the source files or frames are in.
            pixels = hd.Volume(segment_map, labels.affine, coordinate_system="PATIENT",
                               frame_of_reference_uid=headers[0].get("FrameOfReferenceUID"))
        else:
            pixels = segment_map  # a 2D image: its one source image, pixel for pixel
        seg = hd.seg.Segmentation(
            source_images=headers, pixel_array=pixels, segmentation_type="BINARY",
            segment_descriptions=descriptions, series_instance_uid=generate_uid(),
            series_number=_SEG_SERIES_NUMBER, sop_instance_uid=generate_uid(), instance_number=1,
            series_description=description, **_equipment())
        target = Path(path)
        with atomic_path(target) as tmp:
            seg.save_as(tmp, enforce_file_format=True)
    return target


def _segment_descriptions(values: list[int], segments: Any, algorithm_name: Any, algorithm_version: Any) -> list[Any]:
    import highdicom as hd
    from pydicom.uid import generate_uid

    if segments is None:
        segments = {}
    if not isinstance(segments, Mapping):
        raise TypeError(f"segments must be a dict mapping label value -> description, got {type(segments).__name__}")
    absent = sorted(k for k in segments if k not in values)
    if absent:
        raise ValueError(f"segments describes label values {absent} that labels does not hold (it holds {values})")
    c = _codes()
    algorithm = hd.AlgorithmIdentificationSequence(
        name=_text("AlgorithmName", algorithm_name, "algorithm_name"), family=c["family"],
        version=_text("AlgorithmVersion", algorithm_version, "algorithm_version"))
    return [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=_text("SegmentLabel", segments.get(value, f"Lesion {value}"), f"segments[{value}]"),
            segmented_property_category=c["category"], segmented_property_type=c["type"],
            algorithm_type="AUTOMATIC", algorithm_identification=algorithm,
            tracking_uid=generate_uid(), tracking_id=_TRACKING.format(value))
        for number, value in enumerate(values, start=1)
    ]


# ---------------------------------------------------------------------------------- SR
def _lesion(item: Any, position: int) -> dict[str, Any]:
    where = f"lesions[{position}]"
    if not isinstance(item, Mapping):
        raise TypeError(f"{where} must be a dict with keys {', '.join(LESION_KEYS)}, got {type(item).__name__}")
    unknown = sorted(str(k) for k in item if k not in LESION_KEYS)
    missing = [k for k in ("id",) + _MEASUREMENT_KEYS if k not in item]
    if unknown or missing:
        raise ValueError(f"{where}: " + "; ".join(
            ([f"unknown keys {unknown}"] if unknown else []) + ([f"missing keys {missing}"] if missing else []))
            + f" (keys: {', '.join(LESION_KEYS)}; a measurement that was not made is None)")
    lesion_id = item["id"]
    if not isinstance(lesion_id, (int, np.integer)) or isinstance(lesion_id, bool) or lesion_id < 1:
        raise ValueError(f"{where}['id'] must be a positive int (the label value of its segment), got {lesion_id!r}")
    out: dict[str, Any] = {"id": int(lesion_id)}
    for key in _MEASUREMENT_KEYS:
        value = item[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float, np.number))
                                  or not math.isfinite(value) or value < 0):
            raise ValueError(f"{where}[{key!r}] must be a finite number >= 0 or None (not measured), got {value!r}")
        out[key] = None if value is None else float(value)
    location = item.get("location")
    if location is not None and not isinstance(location, str):
        raise TypeError(f"{where}['location'] must be a str or None, got {type(location).__name__}")
    out["location"] = location.strip() if location and location.strip() else None
    return out


def _title(title: Any) -> Any:
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    if isinstance(title, Code):
        return title
    choices = {getattr(codes.cid7021, name).meaning.lower(): getattr(codes.cid7021, name)
               for name in codes.cid7021.dir()}
    if isinstance(title, str) and title.strip().lower() in choices:
        return choices[title.strip().lower()]
    raise ValueError(f"title must be a Measurement Report Document Title of DICOM CID 7021 (one of: "
                     f"{', '.join(sorted(c.meaning for c in choices.values()))}) or a pydicom Code, got {title!r}")


def _read_segmentation(segmentation_path: Any) -> Any:
    import highdicom as hd

    p = Path(segmentation_path)
    if not p.is_file():
        raise FileNotFoundError(f"segmentation_path {p}: no such file")
    try:
        return hd.seg.segread(p)
    except Exception as exc:  # pydicom and highdicom raise many types for files that are not a SEG
        raise DicomError(f"segmentation_path {p}: not a readable DICOM SEG ({type(exc).__name__}: {exc})") from exc


def _referenced_segment(seg: Any, number: int) -> Any:
    """The segment with the source images (and frames) its SEG frames were derived from.

    highdicom's ReferencedSegment.from_segmentation reads the segment number of each frame from
    the per-frame functional groups only; a SEG whose frames all show one segment keeps it in the
    shared group instead, so the frames are gathered here.
    """
    import highdicom as hd
    from pydicom.multival import MultiValue

    shared = seg.SharedFunctionalGroupsSequence[0]
    sources: dict[str, tuple[str, list[int]]] = {}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        identification = frame.get("SegmentIdentificationSequence") or shared.SegmentIdentificationSequence
        if identification[0].ReferencedSegmentNumber != number:
            continue
        for derivation in frame.get("DerivationImageSequence", []):
            for image in derivation.SourceImageSequence:
                entry = sources.setdefault(image.ReferencedSOPInstanceUID, (image.ReferencedSOPClassUID, []))
                frames = image.get("ReferencedFrameNumber")  # one IS, or a MultiValue of them
                if frames is not None:
                    entry[1].extend(int(f) for f in (frames if isinstance(frames, MultiValue) else [frames]))
    if not sources:
        series_uid = seg.ReferencedSeriesSequence[0].SeriesInstanceUID
        return hd.sr.ReferencedSegment(seg.SOPClassUID, seg.SOPInstanceUID, number,
                                       source_series=hd.sr.SourceSeriesForSegmentation(series_uid))
    return hd.sr.ReferencedSegment(seg.SOPClassUID, seg.SOPInstanceUID, number, source_images=[
        hd.sr.SourceImageForSegmentation(sop_class, uid, sorted(set(frames)) or None)
        for uid, (sop_class, frames) in sources.items()])


def _measurement_group(lesion: dict[str, Any], seg: Any, segment: Any, algorithm: Any) -> Any:
    import highdicom as hd

    c = _codes()
    measurements = []
    for key, name, unit, method in (("volume_mm3", "volume", "mm3", c["volume_method"]),
                                    ("max_diameter_mm", "max_diameter", "mm", None),
                                    ("axial_diameter_mm", "axial_diameter", "mm", None)):
        if lesion[key] is not None:
            measurements.append(hd.sr.Measurement(name=c[name], value=lesion[key], unit=c[unit], method=method))
    group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=segment.tracking_uid, identifier=segment.tracking_id),
        referenced_segment=_referenced_segment(seg, segment.segment_number),
        finding_type=c["type"], finding_category=c["category"], algorithm_id=algorithm,
        measurements=measurements)
    if lesion["location"] is not None:
        group[0].ContentSequence.append(hd.sr.TextContentItem(
            name=c["finding_site"], value=lesion["location"], relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    return group


def write_measurement_report(segmentation_path: str | os.PathLike, source_files: Sequence[os.PathLike],
                             lesions: list[dict], path: str | os.PathLike, *, algorithm_name: str,
                             algorithm_version: str, title: str = "Imaging Measurement Report") -> Path:
    """Write a DICOM Comprehensive 3D SR measurement report (TID 1500) for ``lesions``; returns ``path``.

    ``segmentation_path`` is the SEG that :func:`write_segmentation` wrote for the series of
    ``source_files``. Each lesion ``{"id", "volume_mm3", "max_diameter_mm", "axial_diameter_mm",
    "location"}`` becomes one Volumetric ROI measurement group (TID 1411) that references the
    segment of label ``id``, with volume (mm3), maximum 3D diameter and axial (RECIST) diameter
    (mm); a measurement given as None was not made and is left out; ``location`` (free text or
    None) becomes a TEXT finding-site evaluation. ``title`` names an entry of CID 7021. No
    lesions raises ValueError (report that nothing was found instead). Codes: see the module
    docstring. Written atomically.
    """
    import highdicom as hd
    from pydicom.uid import generate_uid

    from medkern.io._atomic import atomic_path
    from medkern.io.dicom_write import identifying_values, identity_redacted

    if not isinstance(lesions, Sequence) or isinstance(lesions, (str, bytes)):
        raise TypeError(f"lesions must be a list of dicts, got {type(lesions).__name__}")
    if not lesions:
        raise ValueError("lesions is empty: a measurement report needs at least one lesion (report that no "
                         "lesion was found instead)")
    checked = [_lesion(item, n) for n, item in enumerate(lesions)]
    ids = [les["id"] for les in checked]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise ValueError(f"lesions repeat ids {repeated}; each lesion is one segment")
    name = _text("AlgorithmName", algorithm_name, "algorithm_name")
    version = _text("AlgorithmVersion", algorithm_version, "algorithm_version")
    title_code = _title(title)
    with identity_redacted() as secrets:
        series, headers = _source_series(source_files)
        secrets.extend(identifying_values(headers[0]))
        seg = _read_segmentation(segmentation_path)
        referenced = {item.SeriesInstanceUID for item in seg.get("ReferencedSeriesSequence", [])}
        if series.series_uid not in referenced:
            raise ValueError(f"segmentation_path {segmentation_path} segments series {sorted(referenced)}, not the "
                             f"series {series.series_uid} of source_files")
        by_label = {}
        for number in seg.segment_numbers:
            segment = seg.get_segment_description(number)
            match = _TRACKING_PATTERN.match(segment.tracking_id or "")
            if match:
                by_label[int(match.group(1))] = segment
        unknown = [i for i in ids if i not in by_label]
        if unknown:
            raise ValueError(f"lesion ids {unknown} have no segment in {segmentation_path} (it has segments for "
                             f"label values {sorted(by_label)}); ids are the label values write_segmentation wrote")

        c = _codes()
        algorithm = hd.sr.AlgorithmIdentification(name=name, version=version)
        observer = hd.sr.ObserverContext(
            observer_type=c["device"],
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                # The same algorithm and version is the same device in every report.
                uid=generate_uid(entropy_srcs=["medkern", name, version]), name=name, manufacturer_name="medkern"))
        report = hd.sr.MeasurementReport(
            observation_context=hd.sr.ObservationContext(observer_device_context=observer),
            procedure_reported=_procedure(series.modality),
            imaging_measurements=[_measurement_group(les, seg, by_label[les["id"]], algorithm) for les in checked],
            title=title_code)
        sr = hd.sr.Comprehensive3DSR(
            evidence=[*headers, seg], content=report[0], series_instance_uid=generate_uid(),
            series_number=_SR_SERIES_NUMBER, sop_instance_uid=generate_uid(), instance_number=1,
            is_complete=True, is_final=False, is_verified=False, series_description=title_code.meaning,
            **_equipment())
        target = Path(path)
        with atomic_path(target) as tmp:
            sr.save_as(tmp, enforce_file_format=True)
    return target
