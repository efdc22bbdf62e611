"""Hostile input to the file readers and writers: corrupt RT Structure Sets, NIfTI files whose
headers lie, interrupted atomic writes, malformed transform files, and the command line. Each case
either gives exactly the right result or a clear exception naming the file and the field; nothing
crashes, hangs or allocates what the file merely claims."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

import medkern as mk
from medkern.errors import RTStructWarning


def run_isolated(code: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (a crash or hang there cannot take the test run down)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout)


# ------------------------------------------------------------------ RTSTRUCT
def square(x0, x1, y0, y1, z):
    return np.array([(x0, y0, z), (x1, y0, z), (x1, y1, z), (x0, y1, z)], dtype=np.float64)


@pytest.fixture
def grid():
    return mk.Image(np.zeros((3, 8, 8), np.int16), spacing=(2.0, 1.0, 1.0))


def hostile_rtstruct(helpers, path: Path, edit, rois=None) -> Path:
    """An RTSTRUCT of two good ROIs ('a' and 'b' on slice 1), then ``edit(ds)`` applied to it."""
    import pydicom

    rois = rois or {"a": [square(1, 3, 1, 3, 2.0)], "b": [square(4, 6, 4, 6, 2.0)]}
    helpers.write_rtstruct(path, rois, "1.2.3")
    ds = pydicom.dcmread(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's own validation of the hostile values
        edit(ds)
        ds.save_as(path)
    return path


def test_rtstruct_shared_roi_number(helpers, tmp_path, grid):
    def edit(ds):
        ds.StructureSetROISequence[1].ROINumber = 1

    rs = hostile_rtstruct(helpers, tmp_path / "dupnum.dcm", edit)
    with pytest.raises(mk.DicomError, match=r"dupnum.dcm: ROIs 'a' and 'b' share ROINumber 1"):
        mk.read_rtstruct(rs, grid)


@pytest.mark.parametrize("value", [None, "x1"])
def test_rtstruct_roi_number_absent_or_not_integer(helpers, tmp_path, grid, value):
    def edit(ds):
        if value is None:
            del ds.StructureSetROISequence[0].ROINumber
        else:
            from pydicom.dataelem import RawDataElement

            item = ds.StructureSetROISequence[0]
            item[0x30060022] = RawDataElement(0x30060022, "IS", 2, b"x1", 0, False, True)

    rs = hostile_rtstruct(helpers, tmp_path / "num.dcm", edit)
    with pytest.raises(mk.DicomError, match=r"num.dcm: StructureSetROISequence item 1 \('a'\) ROINumber is"):
        mk.read_rtstruct(rs, grid)


def test_rtstruct_contour_data_not_triples(helpers, tmp_path, grid):
    def edit(ds):
        c = ds.ROIContourSequence[1].ContourSequence[0]
        c.ContourData = list(c.ContourData)[:-1]
        del c.NumberOfContourPoints

    rs = hostile_rtstruct(helpers, tmp_path / "trip.dcm", edit)
    with pytest.raises(mk.DicomError, match=r"trip.dcm: ROI 'b' contour 1: ContourData holds 11 values, not a "
                                            "multiple of 3"):
        mk.read_rtstruct(rs, grid)


def test_rtstruct_number_of_points_mismatch(helpers, tmp_path, grid):
    def edit(ds):
        ds.ROIContourSequence[0].ContourSequence[0].NumberOfContourPoints = 7

    rs = hostile_rtstruct(helpers, tmp_path / "npts.dcm", edit)
    with pytest.raises(mk.DicomError, match=r"npts.dcm: ROI 'a' contour 1: NumberOfContourPoints is '7' but "
                                            "ContourData holds 4 points"):
        mk.read_rtstruct(rs, grid)


def test_rtstruct_contours_of_no_roi(helpers, tmp_path, grid):
    def edit(ds):
        ds.ROIContourSequence[1].ReferencedROINumber = 9

    rs = hostile_rtstruct(helpers, tmp_path / "orphan.dcm", edit)
    with pytest.raises(mk.DicomError, match=r"orphan.dcm: ROIContourSequence item 2 holds the contours of ROI "
                                            r"number 9, which the StructureSetROISequence does not define"):
        mk.read_rtstruct(rs, grid)


def test_rtstruct_referenced_roi_number_absent(helpers, tmp_path, grid):
    def edit(ds):
        del ds.ROIContourSequence[0].ReferencedROINumber

    rs = hostile_rtstruct(helpers, tmp_path / "noref.dcm", edit)
    with pytest.raises(mk.DicomError, match=r"noref.dcm: ROIContourSequence item 1 ReferencedROINumber is absent"):
        mk.read_rtstruct(rs, grid)


def test_rtstruct_two_contour_sets_for_one_roi(helpers, tmp_path, grid):
    def edit(ds):
        ds.ROIContourSequence[1].ReferencedROINumber = 1

    rs = hostile_rtstruct(helpers, tmp_path / "twice.dcm", edit)
    with pytest.raises(mk.DicomError, match=r"twice.dcm: ROIContourSequence item 2: ROI 'a' \(ROI number 1\) has a "
                                            "second set of contours"):
        mk.read_rtstruct(rs, grid)


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_rtstruct_non_finite_points(helpers, tmp_path, grid, bad):
    def edit(ds):
        c = ds.ROIContourSequence[0].ContourSequence[0]
        values = [str(v) for v in c.ContourData]
        values[4] = bad
        c[0x30060050].value = "\\".join(values)

    rs = hostile_rtstruct(helpers, tmp_path / "nan.dcm", edit)
    with pytest.raises(mk.DicomError, match=r"nan.dcm: ROI 'a' contour 1: ContourData holds 1 non-finite value"):
        mk.read_rtstruct(rs, grid)


def set_points(ds, roi: int, points) -> None:
    """Replace the first contour of ROI ``roi`` (0-based) by ``points``, as raw DS text."""
    c = ds.ROIContourSequence[roi].ContourSequence[0]
    c[0x30060050].value = "\\".join(repr(float(v)) for v in np.ravel(points))
    c.NumberOfContourPoints = len(points)


@pytest.mark.parametrize("far", [1e9, 1e300])
def test_rtstruct_contour_far_outside_allocates_nothing(helpers, tmp_path, grid, far):
    rs = hostile_rtstruct(helpers, tmp_path / "far.dcm", lambda ds: set_points(ds, 0, square(1, far, 1, far, 2.0)))
    with pytest.raises(mk.DicomError, match=r"far.dcm: ROI 'a' contour 1 .*(beyond the reference grid|far from)"):
        mk.read_rtstruct(rs, grid)
    # Far away in z too (the raster is the reference grid: nothing scales with the coordinates).
    rs = hostile_rtstruct(helpers, tmp_path / "farz.dcm", lambda ds: set_points(ds, 0, square(1, 3, 1, 3, far)))
    with pytest.raises(mk.DicomError, match=r"farz.dcm: ROI 'a' contour 1 .*(outside the reference grid|far from)"):
        mk.read_rtstruct(rs, grid)


def test_rtstruct_empty_contour_sequence_warns(helpers, tmp_path, grid):
    def edit(ds):
        del ds.ROIContourSequence[1].ContourSequence

    rs = hostile_rtstruct(helpers, tmp_path / "empty.dcm", edit)
    with pytest.warns(RTStructWarning, match=r"empty.dcm: ROI 'b' gives an empty mask: it has no contours"):
        masks = mk.read_rtstruct(rs, grid)
    assert masks["b"].array.sum() == 0 and masks["a"].array.sum() == 4


def test_rtstruct_roi_without_contour_item_warns(helpers, tmp_path, grid):
    def edit(ds):
        del ds.ROIContourSequence[1]

    rs = hostile_rtstruct(helpers, tmp_path / "missing.dcm", edit)
    with pytest.warns(RTStructWarning, match=r"missing.dcm: ROI 'b' gives an empty mask: it has no contours"):
        masks = mk.read_rtstruct(rs, grid)
    assert masks["b"].array.sum() == 0


def test_rtstruct_point_and_open_contours_skipped_with_warning(helpers, tmp_path, grid):
    def edit(ds):
        ds.ROIContourSequence[1].ContourSequence[0].ContourGeometricType = "POINT"
        ds.ROIContourSequence[0].ContourSequence[1].ContourGeometricType = "OPEN_PLANAR"

    rois = {"a": [square(1, 3, 1, 3, 2.0), square(4, 6, 4, 6, 2.0)], "b": [square(4, 6, 4, 6, 2.0)]}
    rs = hostile_rtstruct(helpers, tmp_path / "types.dcm", edit, rois=rois)
    with pytest.warns(RTStructWarning) as record:
        masks = mk.read_rtstruct(rs, grid)
    messages = [str(w.message) for w in record]
    assert "types.dcm: ROI 'a': skipped 1 OPEN_PLANAR contours (not areas)" in messages
    assert ("types.dcm: ROI 'b' gives an empty mask: of its 1 contour(s) none is an area (1 POINT contours "
            "(not areas) skipped)") in messages
    assert masks["a"].array.sum() == 4 and masks["b"].array.sum() == 0


def test_rtstruct_unknown_geometric_type(helpers, tmp_path, grid):
    def edit(ds):
        ds.ROIContourSequence[0].ContourSequence[0].ContourGeometricType = "SPLINE"

    rs = hostile_rtstruct(helpers, tmp_path / "spline.dcm", edit)
    with pytest.raises(mk.DicomError, match=r"spline.dcm: ROI 'a' contour 1: ContourGeometricType 'SPLINE' is not"):
        mk.read_rtstruct(rs, grid)


def test_rtstruct_degenerate_contour_warns(helpers, tmp_path, grid):
    rs = hostile_rtstruct(helpers, tmp_path / "two.dcm", lambda ds: None,
                          rois={"a": [square(1, 3, 1, 3, 2.0), square(1, 3, 1, 3, 2.0)[:2]]})
    with pytest.warns(RTStructWarning, match=r"two.dcm: ROI 'a': skipped 1 closed contours with fewer than 3"):
        masks = mk.read_rtstruct(rs, grid)
    assert masks["a"].array.sum() == 4


def test_rtstruct_valid_file_unchanged_and_silent(helpers, tmp_path, grid):
    rs = hostile_rtstruct(helpers, tmp_path / "ok.dcm", lambda ds: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        masks = mk.read_rtstruct(rs, grid)
    expect = np.zeros(grid.shape, np.uint8)
    expect[1, 1:3, 1:3] = 1
    np.testing.assert_array_equal(masks["a"].array, expect)


def test_fill_polygons_kernel_rejects_non_finite_and_huge_vertices():
    # The C++ kernel is public (medkern.io.rtstruct.fill_polygons): vertices it cannot place
    # must be refused, not cast to out-of-range indices. Run isolated: a bad cast writes wild.
    done = run_isolated("""
        import numpy as np
        from medkern.io.rtstruct import fill_polygons
        for bad in (np.nan, np.inf, 1e300):
            xy = np.array([[1.0, 1.0], [bad, 1.0], [3.0, 3.0]])
            try:
                fill_polygons(xy, np.array([0, 3]), np.array([0]), (1, 5, 5), backend="cpp")
            except ValueError as exc:
                assert "xy" in str(exc), exc
            else:
                raise SystemExit(f"accepted {bad}")
        print("ok")
    """)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr
