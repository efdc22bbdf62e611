"""RTSTRUCT writing: round trips through medkern's reader on the IBSI patients and on synthetic
masks (holes, islands in holes, single and diagonal voxels, border regions, oblique grids), checked
independently with pydicom (points on the referenced slice planes) and scikit-image's
point-in-polygon test, the dicom3tools validator where installed, and every error path."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pydicom
import pytest

import medkern as mk
from medkern.io.rtstruct_write import MAX_ROIS, boundary_loops

from _helpers import dicom_test_file, random_direction, write_dicom_volume

IBSI = [f"STS_00{p}/{m}" for p in (1, 2, 3, 4) for m in ("CT", "PET", "MR_T1")]
# The IBSI headers carry Study IDs longer than SH allows; pydicom warns when it copies them.
SH_LENGTH = "ignore:The value length .* exceeds the maximum length of 16 allowed for VR SH"
IDENTITY = {"PatientName": "Doe^Jane", "PatientID": "MK-RT-1", "PatientBirthDate": "19600101", "PatientSex": "F",
            "StudyDate": "20240101", "StudyTime": "120000", "StudyID": "42", "AccessionNumber": "A1",
            "ReferringPhysicianName": "", "PositionReferenceIndicator": ""}


def dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


@pytest.mark.filterwarnings(SH_LENGTH)
@pytest.mark.parametrize("case", IBSI)
def test_ibsi_gtv_round_trip(shared_data, tmp_path, case):
    patient, modality = case.split("/")
    base = shared_data / "ibsi" / "ibsi_validation" / "dicom" / patient / modality
    (series,) = mk.list_dicom_series(base / "image")
    (name, gtv), = mk.read_rtstruct(base / "mask" / "RS.dcm", series).items()
    out = mk.write_rtstruct({name: gtv}, series, tmp_path / "rs.dcm", roi_types="GTV")
    again = mk.read_rtstruct(out, base / "image")[name]
    # Measured: Dice 1.0 on all 12 masks (the pixel-edge polygons give every voxel back).
    assert dice(again.array, gtv.array) >= 0.99
    np.testing.assert_array_equal(again.array, gtv.array)
    ds = pydicom.dcmread(out)
    source = pydicom.dcmread(series.files[0], stop_before_pixels=True)
    assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.PatientID == source.PatientID
    assert ds.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert ds.RTROIObservationsSequence[0].RTROIInterpretedType == "GTV"


def ct_series(directory, shape=(5, 22, 26), rng=None, **kw):
    """A CT series on an oblique grid (rotation only, so the reader's grid is the written one)."""
    rng = rng or np.random.default_rng(3)
    direction = random_direction(rng, flip=False)
    write_dicom_volume(directory, np.zeros(shape, np.int16), (2.5, 0.8, 0.7), (12.0, -30.0, 7.5), direction,
                               extra=dict(IDENTITY), **kw)
    (series,) = mk.list_dicom_series(directory)
    return series, mk.read(directory)


def synthetic_labels(shape) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    # 1: an annulus with an island in its hole (outer loop, hole, island) on slice 1, a disc on 2.
    jj, ii = np.mgrid[0:shape[1], 0:shape[2]]
    r = np.hypot(jj - 10.3, ii - 12.6)
    lab[1][(r < 9) & (r >= 5)] = 1
    lab[1][r < 2.2] = 1
    lab[2][r < 4] = 1
    # 2: single voxels, two of them touching diagonally (one 8-connected region), one alone.
    lab[3, 2, 3] = lab[3, 3, 4] = lab[3, 8, 15] = 2
    # 3: regions touching the grid border and its corners.
    lab[0, 0, :] = 3
    lab[0, :, -1] = 3
    lab[4, -3:, :4] = 3
    # 4: a checkerboard patch (every voxel a saddle) with a hole in a ring of diagonal voxels.
    lab[4, 4:10, 10:16] = np.indices((6, 6)).sum(axis=0) % 2 * 4
    # 5: a region touching label 1 (labels share edges, not voxels).
    lab[2][(r >= 4) & (r < 5)] = 5
    return lab


def test_synthetic_round_trip_is_exact(tmp_path):
    series, img = ct_series(tmp_path / "ct")
    lab = synthetic_labels(img.shape)
    names = {1: "ring", 2: "dots", 3: "border", 4: "checker", 5: "shell"}
    out = mk.write_rtstruct(img.with_array(lab), series, tmp_path / "rs.dcm", names=names,
                            colors={1: (10, 20, 30)}, roi_types={1: "GTV", 3: "EXTERNAL"},
                            generation_algorithm="AUTOMATIC")
    masks = mk.read_rtstruct(out, series)
    assert list(masks) == list(names.values())
    for value, name in names.items():
        np.testing.assert_array_equal(masks[name].array, lab == value, err_msg=name)
    ds = pydicom.dcmread(out)
    assert [int(r.ROINumber) for r in ds.StructureSetROISequence] == [1, 2, 3, 4, 5]
    assert list(ds.ROIContourSequence[0].ROIDisplayColor) == [10, 20, 30]
    assert [o.RTROIInterpretedType for o in ds.RTROIObservationsSequence] == ["GTV", "", "EXTERNAL", "", ""]
    assert ds.StructureSetROISequence[0].ROIGenerationAlgorithm == "AUTOMATIC"
    # Contours per slice: ring slice 1 = outer + hole + island, disc slice 2 = 1.
    ring = ds.ROIContourSequence[0].ContourSequence
    assert len(ring) == 4
    dots = ds.ROIContourSequence[1].ContourSequence
    assert len(dots) == 2  # the two diagonal voxels are one region


def plane_of(path):
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    row, col = np.asarray(ds.ImageOrientationPatient[:3], float), np.asarray(ds.ImageOrientationPatient[3:], float)
    return (ds.SOPInstanceUID, ds.SOPClassUID, np.asarray(ds.ImagePositionPatient, float), row, col,
            np.asarray(ds.PixelSpacing, float))


def test_contours_on_referenced_planes_and_filled_independently(tmp_path):
    """pydicom only: each contour lies in the plane of the image it references (< 1e-3 mm), the
    even-odd fill of its points at the pixel centres (scikit-image) gives the mask, and the
    polygons' areas add up to the voxel count (the exact pixel-edge polygon)."""
    from skimage.measure import points_in_poly

    series, img = ct_series(tmp_path / "ct")
    lab = synthetic_labels(img.shape)
    out = mk.write_rtstruct(img.with_array(lab), list(series.files), tmp_path / "rs.dcm")
    planes = {p[0]: p for p in map(plane_of, series.files)}
    ds = pydicom.dcmread(out)
    assert ds.SOPClassUID == pydicom.uid.RTStructureSetStorage and ds.Modality == "RTSTRUCT"
    assert ds.Manufacturer == "medkern" and ds.ApprovalStatus == "UNAPPROVED"
    source = pydicom.dcmread(series.files[0], stop_before_pixels=True)
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID and ds.SOPInstanceUID != source.SOPInstanceUID
    for key in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "StudyID", "AccessionNumber"):
        assert ds[key].value == source[key].value, key
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == source.FrameOfReferenceUID
    study = frame.RTReferencedStudySequence[0]
    assert study.ReferencedSOPInstanceUID == source.StudyInstanceUID
    referenced = study.RTReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == source.SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in referenced.ContourImageSequence} == set(planes)
    nj, ni = img.shape[1:]
    jj, ii = np.mgrid[0:nj, 0:ni]
    centres = np.stack([ii.ravel(), jj.ravel()], axis=1).astype(float)
    for roi, value in zip(ds.ROIContourSequence, (1, 2, 3, 4, 5)):
        filled = {uid: np.zeros((nj, ni), bool) for uid in planes}
        area = dict.fromkeys(planes, 0.0)
        for c in roi.ContourSequence:
            assert c.ContourGeometricType == "CLOSED_PLANAR"
            pts = np.asarray(c.ContourData, float).reshape(-1, 3)
            assert len(pts) == c.NumberOfContourPoints >= 4
            (image,) = c.ContourImageSequence
            uid, sop_class, position, row, col, spacing = planes[image.ReferencedSOPInstanceUID]
            assert image.ReferencedSOPClassUID == sop_class
            normal = np.cross(row, col)
            assert np.abs((pts - position) @ normal).max() < 1e-3
            # Pixel coordinates in the referenced image (column along row, row along column).
            x, y = (pts - position) @ row / spacing[1], (pts - position) @ col / spacing[0]
            filled[uid] ^= points_in_poly(centres, np.stack([x, y], axis=1)).reshape(nj, ni)
            area[uid] += 0.5 * np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)
        # Slice k of the grid is the k-th image along the slice normal.
        order = sorted(planes, key=lambda u: planes[u][2] @ np.cross(planes[u][3], planes[u][4]))
        expect = lab == value
        for k, uid in enumerate(order):
            np.testing.assert_array_equal(filled[uid], expect[k], err_msg=f"label {value} slice {k}")
            # Saddle corners are cut by 0.05 voxel: 0.00125 pixel of area each.
            assert abs(abs(area[uid]) - expect[k].sum()) <= 0.1, (value, k)


def test_boundary_loops_random_masks(rng):
    """Even-odd fill of the traced loops at the voxel centres (scikit-image) is the mask, and the
    signed areas (outer loops one way, holes the other) add up to the voxel count."""
    from skimage.measure import points_in_poly

    for _ in range(25):
        mask = rng.random((3, 13, 17)) < rng.uniform(0.1, 0.9)
        points, start, slice_of = boundary_loops(mask)
        jj, ii = np.mgrid[0:13, 0:17]
        centres = np.stack([jj.ravel(), ii.ravel()], axis=1).astype(float)
        filled = np.zeros(mask.shape, bool)
        signed = np.zeros(3)
        for m, k in enumerate(slice_of):
            loop = points[start[m]:start[m + 1]]
            assert len(np.unique(loop, axis=0)) == len(loop)  # no corner visited twice
            filled[k] ^= points_in_poly(centres, loop).reshape(13, 17)
            j, i = loop[:, 0], loop[:, 1]
            signed[k] += 0.5 * np.sum(i * np.roll(j, -1) - np.roll(i, -1) * j)
        np.testing.assert_array_equal(filled, mask)
        np.testing.assert_allclose(np.abs(signed), mask.sum(axis=(1, 2)), atol=0.0025 * mask.size)
    assert boundary_loops(np.zeros((2, 3, 3), bool))[2].size == 0


def test_reference_forms_dict_of_overlapping_masks_and_empty_roi(tmp_path):
    series, img = ct_series(tmp_path / "ct", shape=(3, 12, 14))
    a = np.zeros(img.shape, bool)
    a[1, 2:9, 3:10] = True
    b = np.zeros(img.shape, bool)
    b[1, 5:11, 6:13] = True  # overlaps a: structures may overlap in a structure set
    masks = {"CTV": img.with_array(a), "PTV": img.with_array(b.astype(np.uint8)),
             "nothing": img.with_array(np.zeros(img.shape, bool))}
    with pytest.warns(UserWarning, match="ROI 'nothing' has no voxels: it is written without contours"):
        out = mk.write_rtstruct(masks, tmp_path / "ct", tmp_path / "rs.dcm")
    with pytest.warns(mk.errors.RTStructWarning, match="ROI 'nothing' gives an empty mask: it has no contours"):
        back = mk.read_rtstruct(out, series)
    np.testing.assert_array_equal(back["CTV"].array, a)
    np.testing.assert_array_equal(back["PTV"].array, b)
    assert back["nothing"].array.sum() == 0
    ds = pydicom.dcmread(out)
    assert "ContourSequence" not in ds.ROIContourSequence[2]
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["CTV", "PTV", "nothing"]
    # A label value named but absent is an empty ROI too.
    lab = img.with_array(a.astype(np.uint8))
    with pytest.warns(UserWarning, match="ROI 'absent' has no voxels"):
        out = mk.write_rtstruct(lab, series, tmp_path / "rs2.dcm", names={1: "present", 7: "absent"})
    assert [int(r.ROINumber) for r in pydicom.dcmread(out).StructureSetROISequence] == [1, 7]
    with pytest.warns(mk.errors.RTStructWarning, match="ROI 'absent' gives an empty mask"):
        assert mk.read_rtstruct(out, list(series.files))["present"].array.sum() == a.sum()


def test_dciodvfy_accepts_the_structure_set(tmp_path):
    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy is None:
        pytest.skip("dciodvfy (dicom3tools) not installed")
    series, img = ct_series(tmp_path / "ct")
    out = mk.write_rtstruct(img.with_array(synthetic_labels(img.shape)), series, tmp_path / "rs.dcm",
                            roi_types="ORGAN")
    result = subprocess.run([dciodvfy, str(out)], capture_output=True, text=True, timeout=60)
    report = result.stdout + result.stderr
    assert "RTStructureSet" in report
    # Measured: no errors and no warnings.
    assert not [line for line in report.splitlines() if line.startswith(("Error", "Warning"))], report


def test_atomic_write_and_errors(tmp_path):
    series, img = ct_series(tmp_path / "ct", shape=(3, 10, 12))
    lab = np.zeros(img.shape, np.uint8)
    lab[1, 2:5, 2:6] = 1
    target = tmp_path / "rs.dcm"
    target.write_bytes(b"previous")

    def write(labels, reference=series, **kw):
        return mk.write_rtstruct(labels, reference, target, **kw)

    moved = mk.Image(lab, spacing=img.spacing, origin=img.origin + 0.5, direction=img.direction)
    with pytest.raises(ValueError, match=r"do not lie on the grid of the reference series .*: origin .* vs"):
        write(moved)
    finer = mk.Image(lab, spacing=(2.5, 0.4, 0.7), origin=img.origin, direction=img.direction)
    with pytest.raises(ValueError, match=r"spacing \(2\.5, 0\.4, 0\.7\) vs \(2\.5, 0\.8, 0\.7\)"):
        write(finer)
    with pytest.raises(ValueError, match=r"shape \(3, 10, 11\) vs \(3, 10, 12\)"):
        write(img.with_array(lab)[:, :, :11])
    assert target.read_bytes() == b"previous" and sorted(p.name for p in tmp_path.iterdir()) == ["ct", "rs.dcm"]
    with pytest.raises(TypeError, match="not an Image: each contour references the SOP instance"):
        write(img.with_array(lab), reference=img)
    with pytest.raises(TypeError, match="labels must be a scalar integer label image, got dtype float32"):
        write(img.with_array(lab.astype(np.float32)))
    with pytest.raises(ValueError, match="labels holds negative values"):
        write(img.with_array(-lab.astype(np.int16)))
    with pytest.raises(ValueError, match="labels has no non-zero voxel and names asks for no ROI"):
        write(img.with_array(np.zeros_like(lab)))
    many = mk.Image(np.arange(1, MAX_ROIS + 6, dtype=np.int32).reshape(1, 5, -1))  # checked before the grid
    with pytest.raises(ValueError, match=f"{MAX_ROIS + 5} distinct non-zero values, more than the {MAX_ROIS}"):
        write(many)
    with pytest.raises(ValueError, match=r"labels\['m'\] holds values \[0, 2\]: a mask is boolean"):
        write({"m": img.with_array(lab * 2)})
    with pytest.raises(ValueError, match="names is only for a label image"):
        write({"m": img.with_array(lab)}, names={1: "x"})
    with pytest.raises(ValueError, match="labels is an empty dict"):
        write({})
    with pytest.raises(ValueError, match=r"ROI names \['same'\] are used more than once"):
        write(img.with_array(lab + (lab > 0) * np.uint8(np.arange(12) % 2)[None, None]), names={1: "same", 2: "same"})
    with pytest.raises(ValueError, match=r"the colour of ROI 1 must be 3 integers 0\.\.255"):
        write(img.with_array(lab), colors={1: (300, 0, 0)})
    with pytest.raises(ValueError, match=r"colors has 2 entries for 1 ROIs"):
        write(img.with_array(lab), colors=[(1, 2, 3), (4, 5, 6)])
    with pytest.raises(ValueError, match=r"roi_types names label values \[9\] that are not ROIs"):
        write(img.with_array(lab), roi_types={9: "GTV"})
    with pytest.raises(ValueError, match="generation_algorithm must be AUTOMATIC, SEMIAUTOMATIC or MANUAL"):
        write(img.with_array(lab), generation_algorithm="GUESSED")
    with pytest.raises(ValueError, match=r"label is not a valid DICOM StructureSetLabel \(SH\)"):
        write(img.with_array(lab), label="x" * 17)
    with pytest.raises(ValueError, match="the masks of labels lie on different grids"):
        write({"a": img.with_array(lab), "b": moved})
    with pytest.raises(TypeError, match=r"labels keys must be ROI names \(str\)"):
        write({1: img.with_array(lab)})
    with pytest.raises(TypeError, match="labels must be an integer label Image or a dict"):
        write(lab)
    assert target.read_bytes() == b"previous"
    write(img.with_array(lab))  # a successful write replaces the file
    assert mk.read_rtstruct(target, series)["Label 1"].array.sum() == 12


def test_irregular_or_unreferenceable_series_raise(tmp_path):
    series, img = ct_series(tmp_path / "ct", shape=(4, 8, 8))
    lab = img.with_array(np.ones(img.shape, np.uint8))
    # A missing slice: the reader's recovered grid has an interpolated slice no image stands for.
    files = sorted(series.files, key=lambda p: float(plane_of(p)[2] @ np.cross(plane_of(p)[3], plane_of(p)[4])))
    gap = tmp_path / "gap"
    gap.mkdir()
    for p in files[:1] + files[2:]:
        shutil.copy(p, gap / p.name)
    (irregular,) = mk.list_dicom_series(gap)
    grid = mk.Image(np.ones(irregular.shape, np.uint8), spacing=irregular.spacing, origin=irregular.origin,
                    direction=irregular.direction)
    with pytest.raises(mk.DicomError, match="is irregular .*missing slice.*a contour must lie on one of its"):
        mk.write_rtstruct(grid, irregular, tmp_path / "rs.dcm")
    # No frame of reference.
    bare = tmp_path / "bare"
    bare.mkdir()
    for p in series.files:
        ds = pydicom.dcmread(p)
        del ds.FrameOfReferenceUID
        ds.save_as(bare / p.name)
    with pytest.raises(mk.DicomError, match="has no FrameOfReferenceUID"):
        mk.write_rtstruct(lab, bare, tmp_path / "rs.dcm")
    with pytest.raises(ValueError, match="labels must be 3D"):
        mk.write_rtstruct(mk.Image(np.ones((8, 8), np.uint8)), series, tmp_path / "rs.dcm")
    assert not (tmp_path / "rs.dcm").exists()


def test_enhanced_multiframe_reference_names_frames(tmp_path):
    """An enhanced CT (one file, one frame per slice): each contour references its frame, whose
    plane (Per-frame Functional Groups) holds its points."""
    source = dicom_test_file("eCT_Supplemental.dcm")
    shutil.copy(source, tmp_path / "ect.dcm")
    (series,) = mk.list_dicom_series(tmp_path)
    img = series.read()
    lab = np.zeros(img.shape, np.uint8)
    lab[0, 100:200, 100:300] = 1
    lab[1, 250:260, 40:45] = 1
    out = mk.write_rtstruct(img.with_array(lab), series, tmp_path / "rs.dcm")
    np.testing.assert_array_equal(mk.read_rtstruct(out, series)["Label 1"].array, lab)
    ect = pydicom.dcmread(source, stop_before_pixels=True)
    shared = ect.SharedFunctionalGroupsSequence[0]
    iop = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    contours = pydicom.dcmread(out).ROIContourSequence[0].ContourSequence
    assert len(contours) == 2
    frames = set()
    for c in contours:
        (image,) = c.ContourImageSequence
        assert image.ReferencedSOPInstanceUID == ect.SOPInstanceUID
        frame = int(image.ReferencedFrameNumber)
        frames.add(frame)
        plane = ect.PerFrameFunctionalGroupsSequence[frame - 1].PlanePositionSequence[0]
        pts = np.asarray(c.ContourData, float).reshape(-1, 3)
        assert np.abs((pts - np.asarray(plane.ImagePositionPatient, float)) @ normal).max() < 1e-3
    assert frames == {1, 2}
