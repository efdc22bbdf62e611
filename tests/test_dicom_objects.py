"""DICOM SEG and SR (TID 1500) outputs: written by medkern, read back by highdicom.

Truth: the label map that was written (masks must come back voxel for voxel), the source series'
own UIDs, and the measurement values passed in (SR numeric values are DS strings of at most 16
characters, so values are compared to 1e-9 relative).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import medkern as mk
from medkern.analysis.dicom_objects import write_measurement_report, write_segmentation
from medkern.io.dicom_write import write_dicom_series

from _helpers import dicom_test_file, part10_dataset

hd = pytest.importorskip("highdicom")
pydicom = pytest.importorskip("pydicom")
from pydicom.sr.codedict import codes  # noqa: E402

ALGORITHM = {"algorithm_name": "medkern brain-lesion", "algorithm_version": "1.2"}
LESIONS = [
    {"id": 1, "volume_mm3": 123.25, "max_diameter_mm": 7.5, "axial_diameter_mm": 6.25, "location": "Frontal_Sup_L"},
    {"id": 2, "volume_mm3": 40.0, "max_diameter_mm": 5.125, "axial_diameter_mm": 4.0, "location": None},
    {"id": 4, "volume_mm3": 9.75, "max_diameter_mm": 3.0, "axial_diameter_mm": None, "location": "Cerebellum_6_R"},
]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """An oblique MR series written by medkern, its reading, and labels 1, 2 and 4 on its grid."""
    rng = np.random.default_rng(3)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    directory = tmp_path_factory.mktemp("study") / "mr"
    img = mk.Image(rng.integers(0, 900, size=(7, 12, 10)).astype(np.int16), spacing=(2.5, 0.9, 0.8),
                   origin=(-30.0, 12.0, 55.0), direction=q * np.sign(np.diag(r)))
    write_dicom_series(img, directory, patient={"PatientName": "Doe^Jane", "PatientID": "P-17"})
    series = mk.list_dicom_series(directory)[0]
    image = series.read()
    labels = np.zeros(image.shape, np.uint8)
    labels[1:3, 2:6, 3:6] = 1
    labels[4, 8:11, 1:4] = 2
    labels[5:7, 5:7, 7:9] = 4
    return series, image.with_array(labels)


@pytest.fixture(scope="module")
def written(study, tmp_path_factory):
    series, labels = study
    out = tmp_path_factory.mktemp("outputs")
    seg_path = write_segmentation(labels, series.files, out / "seg.dcm", segments={1: "Lesion 1 (largest)"},
                                  **ALGORITHM)
    sr_path = write_measurement_report(seg_path, series.files, LESIONS, out / "sr.dcm", **ALGORITHM)
    return seg_path, sr_path


def masks_by_slice(seg, series) -> np.ndarray:
    """The SEG's masks in the source series' slice order: (slices, rows, columns, segments)."""
    uids = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in series.files]
    return seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, assert_missing_frames_are_empty=True)


# ---------------------------------------------------------------------------------- SEG
def test_segmentation_masks_equal_the_labels(study, written):
    series, labels = study
    seg = hd.seg.segread(written[0])
    assert seg.number_of_segments == 3 and seg.segmentation_type.value == "BINARY"
    masks = masks_by_slice(seg, series)
    for number, value in enumerate((1, 2, 4), start=1):
        np.testing.assert_array_equal(masks[..., number - 1], (np.asarray(labels.array) == value).astype(masks.dtype))
    corner = labels.world_to_index(seg.get_volume(combine_segments=True).affine[:3, 3])
    np.testing.assert_allclose(corner, np.round(corner), atol=1e-4)  # its planes lie on the label grid


def test_segment_descriptions_and_codes(written):
    seg = hd.seg.segread(written[0])
    expected = {1: ("Lesion 1 (largest)", "label 1"), 2: ("Lesion 2", "label 2"), 3: ("Lesion 4", "label 4")}
    for number, (label, tracking) in expected.items():
        segment = seg.get_segment_description(number)
        assert (segment.segment_label, segment.tracking_id) == (label, tracking)
        assert segment.segmented_property_category == codes.SCT.MorphologicallyAbnormalStructure
        assert segment.segmented_property_type == codes.SCT.Neoplasm
        assert segment.algorithm_type.value == "AUTOMATIC"
        algorithm = segment.algorithm_identification[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == (ALGORITHM["algorithm_name"], "1.2")
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == codes.cid7162.ArtificialIntelligence.value
    assert len({seg.get_segment_description(n).tracking_uid for n in expected}) == 3


def test_segmentation_references_the_source_series(study, written):
    series, _ = study
    seg = pydicom.dcmread(written[0])
    source = pydicom.dcmread(series.files[0], stop_before_pixels=True)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid
    for key in ("StudyInstanceUID", "FrameOfReferenceUID", "PatientID", "PatientName"):
        assert seg.get(key) == source.get(key), key
    assert seg.SeriesInstanceUID != series.series_uid and seg.ContentQualification == "RESEARCH"
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced <= {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in series.files}


# The IBSI CT files carry a 17-character StudyID (SH allows 16), which the SEG copies as it is,
# and a one-part (anonymised) patient name, which highdicom warns about, with the name redacted.
@pytest.mark.filterwarnings("ignore:The value length .* exceeds the maximum length of 16 allowed for VR SH")
@pytest.mark.filterwarnings("ignore:The string \"<identifying value>\" is unlikely to represent")
def test_real_ct_tumour_contour(shared_data, tmp_path):
    directory = shared_data / "ibsi" / "ibsi_validation" / "dicom" / "STS_001" / "CT"
    series = mk.list_dicom_series(directory / "image")[0]
    masks = mk.read_rtstruct(directory / "mask" / "RS.dcm", series)
    gtv = next(m for name, m in masks.items() if name.startswith("GTV"))
    path = write_segmentation(gtv, series.files, tmp_path / "seg.dcm", segments={1: "GTV_Mass"}, **ALGORITHM)
    seg = hd.seg.segread(path)
    np.testing.assert_array_equal(masks_by_slice(seg, series)[..., 0], np.asarray(gtv.array))
    assert seg.StudyInstanceUID == series.study_uid


def test_pydicom_ct_slice_and_report(tmp_path):
    source = dicom_test_file("CT_small.dcm")
    image = mk.read(source)
    labels = np.zeros(image.shape, np.uint8)
    labels[0, 30:50, 40:61] = 1
    seg_path = write_segmentation(image.with_array(labels), [source], tmp_path / "seg.dcm", **ALGORITHM)
    seg = hd.seg.segread(seg_path)
    np.testing.assert_array_equal(seg.get_pixels_by_source_instance(
        [pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID])[..., 0], labels)
    sr_path = write_measurement_report(seg_path, [source], [{"id": 1, "volume_mm3": 86.1, "max_diameter_mm": 14.2,
                                                             "axial_diameter_mm": 14.2, "location": None}],
                                       tmp_path / "sr.dcm", **ALGORITHM)
    report = hd.sr.srread(sr_path).content
    procedure = hd.sr.utils.find_content_items(report[0], name=codes.DCM.ProcedureReported)[0]
    assert procedure.ConceptCodeSequence[0].CodeValue == codes.cid100.CTUnspecifiedBodyRegion.value
    # A SEG with one segment keeps its segment number in the shared functional group.
    reference = report.get_volumetric_roi_measurement_groups()[0].referenced_segment
    assert [i.referenced_sop_instance_uid for i in reference.source_images_for_segmentation] == [
        pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID]


def test_two_dimensional_image(tmp_path):
    """An image without plane geometry (a secondary capture): one frame, pixel for pixel."""
    from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

    ds = part10_dataset(SecondaryCaptureImageStorage, "OT")
    ds.update({"PatientName": "Roe^Ann", "PatientID": "P2", "StudyInstanceUID": generate_uid(),
               "SeriesInstanceUID": generate_uid(), "Rows": 8, "Columns": 9, "SamplesPerPixel": 1,
               "PhotometricInterpretation": "MONOCHROME2", "BitsAllocated": 16, "BitsStored": 16, "HighBit": 15,
               "PixelRepresentation": 0, "PixelData": np.zeros((8, 9), np.uint16).tobytes()})
    ds.save_as(tmp_path / "sc.dcm", enforce_file_format=True)
    image = mk.read(tmp_path / "sc.dcm")
    assert image.ndim == 2
    labels = np.zeros(image.shape, np.uint8)
    labels[2:4, 3:6] = 5
    seg = hd.seg.segread(write_segmentation(image.with_array(labels), [tmp_path / "sc.dcm"], tmp_path / "seg.dcm",
                                            **ALGORITHM))
    assert seg.get_segment_description(1).tracking_id == "label 5"
    np.testing.assert_array_equal(seg.get_pixels_by_source_instance([ds.SOPInstanceUID])[0, ..., 0], labels == 5)


# ---------------------------------------------------------------------------------- SR
def groups_by_tracking(sr_path: Path) -> dict:
    sr = hd.sr.srread(sr_path)
    return {g.tracking_identifier: g for g in sr.content.get_volumetric_roi_measurement_groups()}


def test_measurement_report_values_units_and_segments(study, written):
    series, labels = study
    slice_uids = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in series.files]
    seg_path, sr_path = written
    seg = hd.seg.segread(seg_path)
    groups = groups_by_tracking(sr_path)
    assert sorted(groups) == ["label 1", "label 2", "label 4"]
    names = {"volume_mm3": (codes.SCT.Volume, codes.UCUM.CubicMillimeter),
             "max_diameter_mm": (codes.IBSI.Maximum3DDiameterOfAMesh, codes.UCUM.Millimeter),
             "axial_diameter_mm": (codes.SCT.LongAxis, codes.UCUM.Millimeter)}
    for number, lesion in enumerate(LESIONS, start=1):
        group = groups[f"label {lesion['id']}"]
        segment = seg.get_segment_description(number)
        assert group.tracking_uid == segment.tracking_uid
        reference = group.referenced_segment
        assert reference.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert reference.referenced_segment_numbers == [number]
        # The segment's source images: the slices it has voxels in.
        slices = np.flatnonzero((np.asarray(labels.array) == lesion["id"]).any(axis=(1, 2)))
        assert {i.referenced_sop_instance_uid for i in reference.source_images_for_segmentation} == {
            slice_uids[k] for k in slices}
        measured = {(m.name.value, m.name.scheme_designator): m for m in group.get_measurements()}
        for key, (name, unit) in names.items():
            item = measured.get((name.value, name.scheme_designator))
            if lesion[key] is None:
                assert item is None, key  # not measured: left out, not invented
                continue
            assert item.value == pytest.approx(lesion[key], rel=1e-9)
            assert (item.unit.value, item.unit.scheme_designator) == (unit.value, "UCUM")
        volume = measured[(codes.SCT.Volume.value, "SCT")]
        assert volume.method == codes.DCM.SumOfSegmentedVoxelMethodForVolume
        assert group.finding_type == codes.SCT.Neoplasm
        sites = hd.sr.utils.find_content_items(group[0], name=codes.SCT.FindingSite,
                                               value_type=hd.sr.ValueTypeValues.TEXT)
        assert [s.TextValue for s in sites] == ([lesion["location"]] if lesion["location"] else [])


def test_measurement_report_document(study, written):
    series, _ = study
    seg_path, sr_path = written
    sr = pydicom.dcmread(sr_path)
    seg = pydicom.dcmread(seg_path, stop_before_pixels=True)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.ConceptNameCodeSequence[0].CodeValue == codes.cid7021.ImagingMeasurementReport.value
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == ("COMPLETE", "UNVERIFIED", "PRELIMINARY")
    assert (sr.StudyInstanceUID, sr.PatientID) == (series.study_uid, "P-17")
    evidence = {i.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence
                for r in s.ReferencedSeriesSequence for i in r.ReferencedSOPSequence}
    assert seg.SOPInstanceUID in evidence
    assert {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in series.files} <= evidence
    report = hd.sr.srread(sr_path).content
    procedures = hd.sr.utils.find_content_items(report[0], name=codes.DCM.ProcedureReported)
    assert procedures[0].ConceptCodeSequence[0].CodeValue == codes.cid100.MRIUnspecifiedBodyRegion.value


# ---------------------------------------------------------------------------------- bad input
def test_segmentation_bad_inputs(study, tmp_path):
    series, labels = study
    out = tmp_path / "seg.dcm"
    shifted = mk.Image(labels.array, spacing=labels.spacing, origin=labels.origin + 1.0, direction=labels.direction)
    (tmp_path / "broken.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00" * 10)
    cases = [
        (ValueError, r"labels do not lie on the source series' grid: labels have shape .*; the series .* has shape",
         dict(labels=shifted)),
        (ValueError, "labels do not lie on the source series' grid", dict(labels=labels[:, 1:, :])),
        (ValueError, "no non-zero voxel: a DICOM SEG needs at least one segment",
         dict(labels=labels.with_array(np.zeros(labels.shape, np.uint8)))),
        (TypeError, "integer label image", dict(labels=labels.astype(np.float32))),
        (ValueError, "negative values", dict(labels=labels.with_array(-np.asarray(labels.array, np.int16)))),
        (TypeError, "labels must be a medkern.Image", dict(labels=np.asarray(labels.array))),
        (ValueError, r"segments describes label values \[3\]", dict(segments={3: "absent"})),
        (TypeError, "segments must be a dict", dict(segments=["Lesion"])),
        (ValueError, r"segments\[1\] is not a valid DICOM SegmentLabel", dict(segments={1: "x" * 65})),
        (TypeError, "algorithm_name must be a non-empty str", dict(algorithm_name="")),
        (mk.DicomError, "broken.dcm: unreadable DICOM file", dict(source_files=[tmp_path / "broken.dcm"])),
        (FileNotFoundError, "no such file", dict(source_files=[tmp_path / "missing.dcm"])),
        (TypeError, "source_files must be a sequence", dict(source_files=str(series.files[0]))),
        (ValueError, "source_files is empty", dict(source_files=[])),
    ]
    for error, message, kwargs in cases:
        call = {"labels": labels, "source_files": series.files, **ALGORITHM, **kwargs}
        with pytest.raises(error, match=message):
            write_segmentation(call.pop("labels"), call.pop("source_files"), out, **call)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["broken.dcm"]


def test_segmentation_of_files_from_two_series(study, tmp_path):
    series, labels = study
    other = write_dicom_series(mk.Image(np.zeros((2, 3, 3), np.int16)), tmp_path / "other")
    with pytest.raises(ValueError, match="source_files hold 2 image series"):
        write_segmentation(labels, [*series.files, *other], tmp_path / "seg.dcm", **ALGORITHM)
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(mk.DicomError, match="notes.txt: not a DICOM image"):
        write_segmentation(labels, [*series.files, tmp_path / "notes.txt"], tmp_path / "seg.dcm", **ALGORITHM)


def test_report_bad_inputs(study, written, tmp_path):
    series, _ = study
    seg_path, _ = written
    out = tmp_path / "sr.dcm"
    other = write_dicom_series(mk.Image(np.zeros((2, 3, 3), np.int16)), tmp_path / "other")
    other_seg = write_segmentation(mk.Image(np.ones((2, 3, 3), np.uint8)), other, tmp_path / "other-seg.dcm",
                                   **ALGORITHM)
    cases = [
        (ValueError, "lesions is empty", dict(lesions=[])),
        (TypeError, "lesions must be a list", dict(lesions="lesion")),
        (ValueError, r"lesion ids \[3\] have no segment", dict(lesions=[dict(LESIONS[0], id=3)])),
        (ValueError, r"lesions repeat ids \[1\]", dict(lesions=[LESIONS[0], LESIONS[0]])),
        (ValueError, r"missing keys \['volume_mm3'\]", dict(lesions=[{"id": 1, "max_diameter_mm": 1.0,
                                                                       "axial_diameter_mm": 1.0}])),
        (ValueError, r"unknown keys \['diameter'\]", dict(lesions=[dict(LESIONS[0], diameter=3.0)])),
        (ValueError, r"\['volume_mm3'\] must be a finite number >= 0",
         dict(lesions=[dict(LESIONS[0], volume_mm3=-1.0)])),
        (ValueError, r"\['max_diameter_mm'\] must be a finite number",
         dict(lesions=[dict(LESIONS[0], max_diameter_mm=np.nan)])),
        (ValueError, r"\['id'\] must be a positive int", dict(lesions=[dict(LESIONS[0], id=True)])),
        (TypeError, r"\['location'\] must be a str or None", dict(lesions=[dict(LESIONS[0], location=7)])),
        (ValueError, "title must be a Measurement Report Document Title of DICOM CID 7021", dict(title="My report")),
        (mk.DicomError, "not a readable DICOM SEG", dict(segmentation_path=series.files[0])),
        (FileNotFoundError, "no such file", dict(segmentation_path=tmp_path / "missing.dcm")),
        (ValueError, "segments series .*, not the series", dict(segmentation_path=other_seg)),
        (TypeError, "algorithm_version must be a non-empty str", dict(algorithm_version=None)),
    ]
    for error, message, kwargs in cases:
        call = {"segmentation_path": seg_path, "source_files": series.files, "lesions": LESIONS, **ALGORITHM, **kwargs}
        with pytest.raises(error, match=message):
            write_measurement_report(call.pop("segmentation_path"), call.pop("source_files"), call.pop("lesions"),
                                     out, **call)
    assert not out.exists()


def test_titles_from_cid_7021(study, written, tmp_path):
    series, _ = study
    path = write_measurement_report(written[0], series.files, LESIONS[:1], tmp_path / "sr.dcm",
                                    title="oncology measurement report", **ALGORITHM)
    sr = pydicom.dcmread(path)
    assert sr.ConceptNameCodeSequence[0].CodeValue == codes.cid7021.OncologyMeasurementReport.value
    assert len(groups_by_tracking(path)) == 1


def test_failed_write_leaves_no_file(study, tmp_path, monkeypatch):
    series, labels = study

    def failing(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(hd.seg.Segmentation, "save_as", failing)
    with pytest.raises(OSError, match="disk full"):
        write_segmentation(labels, series.files, tmp_path / "seg.dcm", **ALGORITHM)
    assert list(tmp_path.iterdir()) == []
