"""Hostile input to the file readers and writers: corrupt RT Structure Sets, NIfTI files whose
headers lie, interrupted atomic writes, malformed transform files, and the command line. Each case
either gives exactly the right result or a clear exception naming the file and the field; nothing
crashes, hangs or allocates what the file merely claims."""

from __future__ import annotations

import gzip
import os
import stat
import struct
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import medkern as mk
from medkern.errors import MedkernWarning, RTStructWarning

from _helpers import write_rtstruct


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


def hostile_rtstruct(path: Path, edit, rois=None) -> Path:
    """An RTSTRUCT of two good ROIs ('a' and 'b' on slice 1), then ``edit(ds)`` applied to it."""
    import pydicom

    rois = rois or {"a": [square(1, 3, 1, 3, 2.0)], "b": [square(4, 6, 4, 6, 2.0)]}
    write_rtstruct(path, rois, "1.2.3")
    ds = pydicom.dcmread(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's own validation of the hostile values
        edit(ds)
        ds.save_as(path)
    return path


def test_rtstruct_shared_roi_number(tmp_path, grid):
    def edit(ds):
        ds.StructureSetROISequence[1].ROINumber = 1

    rs = hostile_rtstruct(tmp_path / "dupnum.dcm", edit)
    with pytest.raises(mk.DicomError, match=r"dupnum.dcm: ROIs 'a' and 'b' share ROINumber 1"):
        mk.read_rtstruct(rs, grid)


@pytest.mark.parametrize("value", [None, "x1"])
def test_rtstruct_roi_number_absent_or_not_integer(tmp_path, grid, value):
    def edit(ds):
        if value is None:
            del ds.StructureSetROISequence[0].ROINumber
        else:
            from pydicom.dataelem import RawDataElement

            item = ds.StructureSetROISequence[0]
            item[0x30060022] = RawDataElement(0x30060022, "IS", 2, b"x1", 0, False, True)

    rs = hostile_rtstruct(tmp_path / "num.dcm", edit)
    with pytest.raises(mk.DicomError, match=r"num.dcm: StructureSetROISequence item 1 \('a'\) ROINumber is"):
        mk.read_rtstruct(rs, grid)


def test_rtstruct_contour_data_not_triples(tmp_path, grid):
    def edit(ds):
        c = ds.ROIContourSequence[1].ContourSequence[0]
        c.ContourData = list(c.ContourData)[:-1]
        del c.NumberOfContourPoints

    rs = hostile_rtstruct(tmp_path / "trip.dcm", edit)
    with pytest.raises(mk.DicomError, match=r"trip.dcm: ROI 'b' contour 1: ContourData holds 11 values, not a "
                                            "multiple of 3"):
        mk.read_rtstruct(rs, grid)


def test_rtstruct_number_of_points_mismatch(tmp_path, grid):
    def edit(ds):
        ds.ROIContourSequence[0].ContourSequence[0].NumberOfContourPoints = 7

    rs = hostile_rtstruct(tmp_path / "npts.dcm", edit)
    with pytest.raises(mk.DicomError, match=r"npts.dcm: ROI 'a' contour 1: NumberOfContourPoints is '7' but "
                                            "ContourData holds 4 points"):
        mk.read_rtstruct(rs, grid)


def test_rtstruct_contours_of_no_roi(tmp_path, grid):
    def edit(ds):
        ds.ROIContourSequence[1].ReferencedROINumber = 9

    rs = hostile_rtstruct(tmp_path / "orphan.dcm", edit)
    with pytest.raises(mk.DicomError, match=r"orphan.dcm: ROIContourSequence item 2 holds the contours of ROI "
                                            r"number 9, which the StructureSetROISequence does not define"):
        mk.read_rtstruct(rs, grid)


def test_rtstruct_referenced_roi_number_absent(tmp_path, grid):
    def edit(ds):
        del ds.ROIContourSequence[0].ReferencedROINumber

    rs = hostile_rtstruct(tmp_path / "noref.dcm", edit)
    with pytest.raises(mk.DicomError, match=r"noref.dcm: ROIContourSequence item 1 ReferencedROINumber is absent"):
        mk.read_rtstruct(rs, grid)


def test_rtstruct_two_contour_sets_for_one_roi(tmp_path, grid):
    def edit(ds):
        ds.ROIContourSequence[1].ReferencedROINumber = 1

    rs = hostile_rtstruct(tmp_path / "twice.dcm", edit)
    with pytest.raises(mk.DicomError, match=r"twice.dcm: ROIContourSequence item 2: ROI 'a' \(ROI number 1\) has a "
                                            "second set of contours"):
        mk.read_rtstruct(rs, grid)


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_rtstruct_non_finite_points(tmp_path, grid, bad):
    def edit(ds):
        c = ds.ROIContourSequence[0].ContourSequence[0]
        values = [str(v) for v in c.ContourData]
        values[4] = bad
        c[0x30060050].value = "\\".join(values)

    rs = hostile_rtstruct(tmp_path / "nan.dcm", edit)
    with pytest.raises(mk.DicomError, match=r"nan.dcm: ROI 'a' contour 1: ContourData holds 1 non-finite value"):
        mk.read_rtstruct(rs, grid)


def set_points(ds, roi: int, points) -> None:
    """Replace the first contour of ROI ``roi`` (0-based) by ``points``, as raw DS text."""
    c = ds.ROIContourSequence[roi].ContourSequence[0]
    c[0x30060050].value = "\\".join(repr(float(v)) for v in np.ravel(points))
    c.NumberOfContourPoints = len(points)


@pytest.mark.parametrize("far", [1e9, 1e300])
def test_rtstruct_contour_far_outside_allocates_nothing(tmp_path, grid, far):
    rs = hostile_rtstruct(tmp_path / "far.dcm", lambda ds: set_points(ds, 0, square(1, far, 1, far, 2.0)))
    with pytest.raises(mk.DicomError, match=r"far.dcm: ROI 'a' contour 1 .*(beyond the reference grid|far from)"):
        mk.read_rtstruct(rs, grid)
    # Far away in z too (the raster is the reference grid: nothing scales with the coordinates).
    rs = hostile_rtstruct(tmp_path / "farz.dcm", lambda ds: set_points(ds, 0, square(1, 3, 1, 3, far)))
    with pytest.raises(mk.DicomError, match=r"farz.dcm: ROI 'a' contour 1 .*(outside the reference grid|far from)"):
        mk.read_rtstruct(rs, grid)


def test_rtstruct_empty_contour_sequence_warns(tmp_path, grid):
    def edit(ds):
        del ds.ROIContourSequence[1].ContourSequence

    rs = hostile_rtstruct(tmp_path / "empty.dcm", edit)
    with pytest.warns(RTStructWarning, match=r"empty.dcm: ROI 'b' gives an empty mask: it has no contours"):
        masks = mk.read_rtstruct(rs, grid)
    assert masks["b"].array.sum() == 0 and masks["a"].array.sum() == 4


def test_rtstruct_roi_without_contour_item_warns(tmp_path, grid):
    def edit(ds):
        del ds.ROIContourSequence[1]

    rs = hostile_rtstruct(tmp_path / "missing.dcm", edit)
    with pytest.warns(RTStructWarning, match=r"missing.dcm: ROI 'b' gives an empty mask: it has no contours"):
        masks = mk.read_rtstruct(rs, grid)
    assert masks["b"].array.sum() == 0


def test_rtstruct_point_and_open_contours_skipped_with_warning(tmp_path, grid):
    def edit(ds):
        ds.ROIContourSequence[1].ContourSequence[0].ContourGeometricType = "POINT"
        ds.ROIContourSequence[0].ContourSequence[1].ContourGeometricType = "OPEN_PLANAR"

    rois = {"a": [square(1, 3, 1, 3, 2.0), square(4, 6, 4, 6, 2.0)], "b": [square(4, 6, 4, 6, 2.0)]}
    rs = hostile_rtstruct(tmp_path / "types.dcm", edit, rois=rois)
    with pytest.warns(RTStructWarning) as record:
        masks = mk.read_rtstruct(rs, grid)
    messages = [str(w.message) for w in record]
    assert "types.dcm: ROI 'a': skipped 1 OPEN_PLANAR contours (not areas)" in messages
    assert ("types.dcm: ROI 'b' gives an empty mask: of its 1 contour(s) none is an area (1 POINT contours "
            "(not areas) skipped)") in messages
    assert masks["a"].array.sum() == 4 and masks["b"].array.sum() == 0


def test_rtstruct_unknown_geometric_type(tmp_path, grid):
    def edit(ds):
        ds.ROIContourSequence[0].ContourSequence[0].ContourGeometricType = "SPLINE"

    rs = hostile_rtstruct(tmp_path / "spline.dcm", edit)
    with pytest.raises(mk.DicomError, match=r"spline.dcm: ROI 'a' contour 1: ContourGeometricType 'SPLINE' is not"):
        mk.read_rtstruct(rs, grid)


def test_rtstruct_degenerate_contour_warns(tmp_path, grid):
    rs = hostile_rtstruct(tmp_path / "two.dcm", lambda ds: None,
                          rois={"a": [square(1, 3, 1, 3, 2.0), square(1, 3, 1, 3, 2.0)[:2]]})
    with pytest.warns(RTStructWarning, match=r"two.dcm: ROI 'a': skipped 1 closed contours with fewer than 3"):
        masks = mk.read_rtstruct(rs, grid)
    assert masks["a"].array.sum() == 4


def test_rtstruct_valid_file_unchanged_and_silent(tmp_path, grid):
    rs = hostile_rtstruct(tmp_path / "ok.dcm", lambda ds: None)
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
        from medkern import _core
        from medkern.io.rtstruct import fill_polygons
        for bad in (np.nan, np.inf, 1e300):
            xy = np.array([[1.0, 1.0], [bad, 1.0], [3.0, 3.0]])
            for call in (lambda: fill_polygons(xy, np.array([0, 3]), np.array([0]), (1, 5, 5), backend="cpp"),
                         lambda: fill_polygons(xy, np.array([0, 3]), np.array([0]), (1, 5, 5), backend="numba"),
                         lambda: _core.fill_polygons(xy, np.array([0, 3]), np.array([0]), 1, 5, 5, 1)):
                try:
                    call()
                except ValueError as exc:
                    assert "xy" in str(exc), exc
                else:
                    raise SystemExit(f"accepted {bad}")
        try:
            fill_polygons(np.zeros((3, 2)), np.array([0, 9]), np.array([0]), (1, 5, 5), backend="numba")
        except ValueError as exc:
            assert "start" in str(exc), exc
        else:
            raise SystemExit("accepted offsets past the end of xy")
        print("ok")
    """)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr


# ------------------------------------------------------------------ atomic writes
@pytest.fixture
def small():
    return mk.Image(np.arange(24, dtype=np.float32).reshape(2, 3, 4), spacing=(2.0, 1.5, 0.5))


def test_written_files_honour_the_umask(tmp_path, small):
    old = os.umask(0o022)
    try:
        mk.write(small, tmp_path / "a.nii.gz")
        mk.Affine.identity().write(tmp_path / "t.tfm")
        os.umask(0o027)
        mk.write(small, tmp_path / "b.nii")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.nii.gz").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "t.tfm").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "b.nii").st_mode) == 0o640
    # Rewriting keeps the permissions the file has, as an ordinary open() would.
    os.chmod(tmp_path / "b.nii", 0o604)
    mk.write(small, tmp_path / "b.nii")
    assert stat.S_IMODE(os.stat(tmp_path / "b.nii").st_mode) == 0o604


def test_killed_writer_leftover_is_cleaned_by_next_write(tmp_path, small):
    target = tmp_path / "out.nii.gz"
    done = run_isolated(f"""
        import os, signal
        import numpy as np
        import nibabel as nib
        from medkern.io._atomic import atomic_path
        with atomic_path({str(target)!r}) as tmp:
            nib.save(nib.Nifti1Image(np.ones((64, 64, 64), np.float32), np.eye(4)), str(tmp))
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert done.returncode == -9
    (leftover,) = [p for p in tmp_path.iterdir()]
    assert leftover.name.startswith(".out.nii.gz.") and leftover.name.endswith(".tmp.nii.gz")
    assert leftover.stat().st_size > 1000
    mk.write(small, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz"]


def test_stale_cleanup_touches_only_dead_writers_of_our_naming(tmp_path, small):
    from medkern.io import _atomic

    target = tmp_path / "x.nii"
    host = _atomic._host()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    files = {
        f".x.nii.{host}-{os.getpid()}.abcdefgh.tmp.nii": True,     # a live writer: kept
        f".x.nii.{host}-{dead}.abcdefgh.tmp.nii": False,           # its writer is dead: removed
        f".x.nii.otherhost-{dead}.abcdefgh.tmp.nii": True,         # another host, fresh: kept
        f".x.nii.otherhost-{dead}.old45678.tmp.nii": False,        # another host, old: removed
        ".x.nii.abcd1234.tmp.nii": True,                           # older naming, fresh: kept
        ".x.nii.old_1234.tmp.nii": False,                          # older naming, old: removed
        f".x.nii.{host}-{dead}.abcdefgh.tmp.nii.gz": True,         # another suffix: not ours
        f".x.nii.{host}-{dead}.abcdefg.tmp.nii": True,             # not our pattern
        f"x.nii.{host}-{dead}.abcdefgh.tmp.nii": True,             # not hidden: not ours
        f".y.nii.{host}-{dead}.abcdefgh.tmp.nii": True,            # another target
        "notes.txt": True,
    }
    old = time.time() - _atomic.STALE_AFTER_S - 60
    for name in files:
        (tmp_path / name).write_bytes(b"x")
        if "old" in name:
            os.utime(tmp_path / name, (old, old))
    os.mkdir(tmp_path / f".x.nii.{host}-{dead}.zzzzzzzz.tmp.nii")  # a folder: never removed
    mk.write(small, target)
    left = {p.name for p in tmp_path.iterdir()}
    for name, kept in files.items():
        assert (name in left) == kept, name
    assert f".x.nii.{host}-{dead}.zzzzzzzz.tmp.nii" in left and "x.nii" in left


# ------------------------------------------------------------------ NIfTI writing
@pytest.mark.parametrize("version", [1, 2])
def test_write_refuses_geometry_that_cannot_be_read_back(tmp_path, version):
    img = mk.Image(np.zeros((2, 2, 2), np.float32), spacing=(1e300, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"write: the image geometry is not finite.*spacing \(1e\+300"):
        mk.write(img, tmp_path / "g.nii", nifti_version=version)
    assert list(tmp_path.iterdir()) == []
    if version == 1:  # finite in float64 but not in NIfTI-1's float32 fields; NIfTI-2 holds it
        img = mk.Image(np.zeros((2, 2, 2), np.float32), origin=(1e39, 0, 0))
        with pytest.raises(ValueError, match="not finite in float32.*use nifti_version=2"):
            mk.write(img, tmp_path / "g.nii", nifti_version=1)
        mk.write(img, tmp_path / "g2.nii", nifti_version=2)
        assert mk.read(tmp_path / "g2.nii").origin[0] == 1e39


def test_write_non_finite_geometry_of_a_tampered_image(tmp_path, small):
    # Image validates its geometry; one changed behind its back must still not reach a file.
    small._spacing = (float("nan"), 1.5, 0.5)
    with pytest.raises(ValueError, match=r"not finite.*spacing \(nan"):
        mk.write(small, tmp_path / "n.nii")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("dtype,narrow", [(np.int64, np.int32), (np.uint64, np.uint32)])
def test_write_64bit_integers(tmp_path, dtype, narrow):
    info = np.iinfo(narrow)
    values = np.array([info.min, 0, 7, info.max] * 2, dtype=dtype).reshape(2, 2, 2)
    mk.write(mk.Image(values), tmp_path / "i.nii.gz")
    back = mk.read(tmp_path / "i.nii.gz")
    assert back.dtype == narrow
    np.testing.assert_array_equal(back.array, values)
    wide = values.copy()
    wide[0, 0, 0] = int(info.max) + 1
    with pytest.raises(ValueError, match=rf"image is {np.dtype(dtype).name} with values .* outside "
                                         rf"{np.dtype(narrow).name}'s range.*astype\(np.float64\)"):
        mk.write(mk.Image(wide), tmp_path / "w.nii.gz")
    assert not (tmp_path / "w.nii.gz").exists()


# ------------------------------------------------------------------ NIfTI reading
def nifti_bytes(img: mk.Image, gz: bool = False) -> bytes:
    from medkern.io.nifti import image_to_nibabel

    raw = image_to_nibabel(img).to_bytes()
    return gzip.compress(raw) if gz else raw


def with_dims(raw: bytes, dims) -> bytes:
    out = bytearray(raw)
    struct.pack_into("<8h", out, 40, len(dims), *dims, *([1] * (7 - len(dims))))
    return bytes(out)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_header_claiming_huge_sizes_is_refused_before_allocating(tmp_path, small, suffix):
    raw = with_dims(nifti_bytes(small), (30000, 30000, 30000))
    path = tmp_path / f"big{suffix}"
    path.write_bytes(gzip.compress(raw) if suffix == ".nii.gz" else raw)
    done = run_isolated(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # allocating the claim would fail
        import medkern as mk
        try:
            mk.read({str(path)!r})
        except ValueError as exc:
            print(exc)
    """)
    assert done.returncode == 0, done.stderr
    assert f"big{suffix}: the header describes (30000, 30000, 30000) voxels of float32" in done.stdout


def test_nifti_gz_claim_checked_against_the_stream(tmp_path, small):
    from medkern.io import nifti

    # 320 MiB claimed, every byte but the last MiB present (zeros deflate ~1000:1).
    dims = (1024, 1024, 80)
    raw = with_dims(nifti_bytes(small), dims)[:352] + bytes(1024 * 1024 * 80 * 4 - (1 << 20))
    path = tmp_path / "short.nii.gz"
    path.write_bytes(gzip.compress(raw, 1))
    assert 1024 * 1024 * 80 * 4 > nifti._STREAM_CHECK_BYTES
    with pytest.raises(ValueError, match=r"short.nii.gz: the header describes \(1024, 1024, 80\) voxels .* but the "
                                         r"gzip stream holds only"):
        mk.read(path)
    # More than deflate can expand the bytes present to.
    path.write_bytes(gzip.compress(with_dims(nifti_bytes(small), (4000, 4000, 40))))
    with pytest.raises(ValueError, match=r"more than \d+ bytes of gzip data can hold"):
        mk.read(path)


@pytest.mark.parametrize("case", ["truncated", "truncated_gz", "random", "random_gz", "empty", "zero_dim",
                                  "bad_datatype", "nan_affine", "bad_gzip_crc", "header_only", "vox_offset_nan",
                                  "vox_offset_negative", "vox_offset_low", "dim0_8", "dim0_0", "corrupt_deflate",
                                  "scl_inter_inf", "singular_srow", "volumes_4d", "nan_pixdim"])
def test_corrupt_nifti_names_the_file(tmp_path, small, case):
    raw = nifti_bytes(small)
    rng = np.random.default_rng(3)
    suffix = ".nii.gz" if case.endswith("_gz") or case in ("bad_gzip_crc", "corrupt_deflate") else ".nii"
    if case == "truncated":
        data = raw[:-10]
    elif case == "truncated_gz":
        data = gzip.compress(raw)[:-12]
    elif case == "random":
        data = rng.bytes(2000)
    elif case == "random_gz":
        data = gzip.compress(rng.bytes(2000))
    elif case == "empty":
        data = b""
    elif case == "zero_dim":
        data = with_dims(raw, (4, 0, 2))
    elif case == "bad_datatype":
        data = bytearray(raw)
        struct.pack_into("<h", data, 70, 9999)
        data = bytes(data)
    elif case == "nan_affine":
        data = bytearray(raw)
        struct.pack_into("<f", data, 280, float("nan"))  # srow_x[0]
        struct.pack_into("<h", data, 252, 0)  # qform_code 0: the sform is the geometry
        data = bytes(data)
    elif case == "bad_gzip_crc":
        data = bytearray(gzip.compress(raw))
        data[-8] ^= 0xFF
        data = bytes(data)
    elif case == "corrupt_deflate":
        data = bytearray(gzip.compress(raw))
        data[len(data) // 2: len(data) // 2 + 8] = b"\xff" * 8
        data = bytes(data)
    elif case == "header_only":
        data = raw[:352]
    else:
        data = bytearray(raw)
        field = {"vox_offset_nan": ("<f", 108, float("nan")), "vox_offset_negative": ("<f", 108, -352.0),
                 "vox_offset_low": ("<f", 108, 100.0), "dim0_8": ("<h", 40, 8), "dim0_0": ("<h", 40, 0),
                 "scl_inter_inf": ("<f", 116, float("-inf")), "nan_pixdim": ("<f", 80, float("nan"))}.get(case)
        if field is not None:
            struct.pack_into(field[0], data, field[1], field[2])
            if case == "scl_inter_inf":
                struct.pack_into("<f", data, 112, 2.0)
            if case == "nan_pixdim":  # no sform or qform: pixdim is the geometry
                struct.pack_into("<h", data, 252, 0)
                struct.pack_into("<h", data, 254, 0)
        elif case == "singular_srow":
            for n in range(12):
                struct.pack_into("<f", data, 280 + 4 * n, 0.0 if n % 4 != 3 else 1.0)
            struct.pack_into("<f", data, 280, 1.0)
            struct.pack_into("<f", data, 296, 1.0)  # srow_y = srow_x: two columns alike
            struct.pack_into("<f", data, 300, 0.0)
            struct.pack_into("<h", data, 252, 0)
        else:  # volumes_4d: a 4D file read without volume=
            import nibabel as nib

            data = bytearray(nib.Nifti1Image(np.zeros((4, 3, 2, 5), np.float32), np.eye(4)).to_bytes())
        data = bytes(data)
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nibabel's own remarks on the header
        with pytest.raises(ValueError, match=rf"bad{suffix.replace('.', '[.]')}: "):
            mk.read(path)


def test_valid_nifti_round_trip_unchanged(tmp_path, small):
    for suffix in (".nii", ".nii.gz"):
        mk.write(small, tmp_path / f"ok{suffix}")
        back = mk.read(tmp_path / f"ok{suffix}")
        np.testing.assert_array_equal(back.array, small.array)
        assert back.same_geometry(small, atol=1e-5)


# ------------------------------------------------------------------ transform files
def mat_v4(entries, endian="<") -> bytes:
    out = b""
    for name, values, mopt in entries:
        raw = name.encode() + b"\0"
        values = np.asarray(values)
        out += struct.pack(endian + "5i", mopt, values.size, 1, 0, len(raw)) + raw + values.tobytes()
    return out


AFFINE_PARAMS = np.array([1.0, 0, 0, 0, 1, 0, 0, 0, 1, 1.5, -2.0, 3.25])


def good_mat() -> bytes:
    return mat_v4([("AffineTransform_double_3_3", AFFINE_PARAMS.astype("<f8"), 0),
                   ("fixed", np.zeros(3, "<f8"), 0)])


def test_mat_v4_good_file_reads_exactly(tmp_path):
    p = tmp_path / "t.mat"
    p.write_bytes(good_mat())
    np.testing.assert_array_equal(mk.Affine.read(p).translation, [1.5, -2.0, 3.25])
    p.write_bytes(mat_v4([("AffineTransform_double_3_3", AFFINE_PARAMS.astype(">f8"), 1000),
                          ("fixed", np.zeros(3, ">f8"), 1000)], endian=">"))
    np.testing.assert_array_equal(mk.Affine.read(p).translation, [1.5, -2.0, 3.25])


def edit_header(data: bytes, offset: int, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into("<i", out, offset, value)
    return bytes(out)


@pytest.mark.parametrize("case, match", [
    ("negative_namelen", "name length -20 is invalid"),         # looped forever before
    ("huge_namelen", "name length 2147483647 is invalid"),
    ("negative_rows", "size -1 x 1 is not that of a transform"),  # read the whole rest before
    ("huge_rows", "size 2147483647 x 1 is not that of a transform"),
    ("zero_namelen", "name length 0 is invalid"),
    ("bad_type", "unsupported or corrupt type 7"),
    ("complex", "imaginary part 1"),
    ("truncated_values", "needs 96 bytes of values, the file has 40 left"),
    ("truncated_header", "stray bytes at the end"),
    ("duplicate", "variable 'fixed' appears twice"),
    ("nan", "'fixed' holds non-finite values"),
    ("no_params", r"expected one transform parameter vector and 'fixed', got \[\]"),
])
def test_mat_v4_malformed(tmp_path, case, match):
    data = good_mat()
    if case == "negative_namelen":
        data = edit_header(data, 16, -20)
    elif case == "huge_namelen":
        data = edit_header(data, 16, 2**31 - 1)
    elif case == "negative_rows":
        data = edit_header(data, 4, -1)
    elif case == "huge_rows":
        data = edit_header(data, 4, 2**31 - 1)
    elif case == "zero_namelen":
        data = edit_header(data, 16, 0)
    elif case == "bad_type":
        data = edit_header(data, 0, 7)
    elif case == "complex":
        data = edit_header(data, 12, 1)
    elif case == "truncated_values":
        data = data[:20 + 27 + 40]
    elif case == "truncated_header":
        data = data + b"\0" * 7
    elif case == "duplicate":
        data = data + mat_v4([("fixed", np.zeros(3, "<f8"), 0)])
    elif case == "nan":
        data = mat_v4([("AffineTransform_double_3_3", AFFINE_PARAMS.astype("<f8"), 0),
                       ("fixed", np.array([0, np.nan, 0], "<f8"), 0)])
    else:
        data = mat_v4([("fixed", np.zeros(3, "<f8"), 0)])
    p = tmp_path / "bad.mat"
    p.write_bytes(data)
    done = run_isolated(f"""
        import medkern as mk
        try:
            mk.Affine.read({str(p)!r})
        except ValueError as exc:
            print(exc)
    """, timeout=30)
    assert done.returncode == 0, done.stderr
    assert str(p) in done.stdout
    assert __import__("re").search(match, done.stdout), done.stdout


def test_mat_v5_read_and_malformed(tmp_path):
    sio = pytest.importorskip("scipy.io")
    for compress in (False, True):
        p = tmp_path / f"v5{int(compress)}.mat"
        sio.savemat(p, {"AffineTransform_double_3_3": AFFINE_PARAMS[:, None], "fixed": np.zeros((3, 1))},
                    do_compression=compress)
        np.testing.assert_array_equal(mk.Affine.read(p).translation, [1.5, -2.0, 3.25])
        data = p.read_bytes()
        for cut in (100, 140, len(data) - 5):
            q = tmp_path / "cut.mat"
            q.write_bytes(data[:cut])
            with pytest.raises(ValueError, match=r"cut\.mat: "):
                mk.Affine.read(q)
    # A compressed element that inflates without end (a deflate bomb) stops at the bound.
    import zlib

    bomb = zlib.compress(struct.pack("<II", 14, 1 << 30) + bytes(8 << 20), 9)
    data = b"MATLAB 5.0 MAT-file".ljust(124) + b"\x00\x01IM" + struct.pack("<II", 15, len(bomb)) + bomb
    q = tmp_path / "bomb.mat"
    q.write_bytes(data)
    with pytest.raises(ValueError, match=r"bomb\.mat: MATLAB v5 element 1: decompresses to more than"):
        mk.Affine.read(q)


ITK_TEXT = ("#Insight Transform File V1.0\n#Transform 0\nTransform: AffineTransform_double_3_3\n"
            "Parameters: 1 0 0 0 1 0 0 0 1 1.5 -2 3.25\nFixedParameters: 0 0 0\n")


@pytest.mark.parametrize("text, match", [
    (ITK_TEXT.replace("FixedParameters: 0 0 0\n", ""), r"ends inside transform 'AffineTransform_double_3_3' \(no "
                                                       "FixedParameters\\): truncated"),
    (ITK_TEXT + "#Transform 1\nTransform: TranslationTransform_double_3_3\n", "ends inside transform "
                                                                              "'TranslationTransform"),
    (ITK_TEXT + "#Transform 1\nTransform: TranslationTransform_double_3_3\nTransform: IdentityTransform_double_3_3\n",
     "line 8: transform 'TranslationTransform_double_3_3' has no Parameters"),
    (ITK_TEXT.replace("3.25", "3.2x5"), r"line 4: Parameters holds '3.2x5', not a number"),
    (ITK_TEXT.replace("3.25", "nan"), "line 4: Parameters holds non-finite values"),
    (ITK_TEXT.replace("FixedParameters: 0 0 0", "FixedParameters: 0 inf 0"), "line 5: FixedParameters holds non-"),
    (ITK_TEXT.replace("_3_3", "_999999999_999999999"), "only 2D and 3D transforms are read"),
    (ITK_TEXT.replace("Parameters: 1 0", "Parameters: 1 0 0"), "unsupported ITK transform"),
    ("#Insight Transform File V1.0\nParameters: 1 2 3\n", "line 2: Parameters before any 'Transform:' line"),
])
def test_itk_text_malformed(tmp_path, text, match):
    p = tmp_path / "bad.tfm"
    p.write_text(text)
    with pytest.raises(ValueError, match=r"bad\.tfm: .*" + match):
        mk.Affine.read(p)


def test_transform_file_too_large_is_not_read(tmp_path):
    p = tmp_path / "huge.txt"
    with open(p, "wb") as f:
        f.write(ITK_TEXT.encode())
        f.truncate(64 << 20)
    with pytest.raises(ValueError, match="huge.txt: 67108864 bytes is far more than"):
        mk.Affine.read(p)


# ------------------------------------------------------------------ command line
def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medkern.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def hostile_files(tmp_path: Path, small) -> dict[str, Path]:
    raw = nifti_bytes(small)
    files = {
        "truncated.nii": raw[:-10],
        "random.nii.gz": np.random.default_rng(1).bytes(3000),
        "huge.nii": with_dims(raw, (30000, 30000, 30000)),
        "empty.nii": b"",
        "text.dcm": b"not DICOM at all",
        "preamble.dcm": bytes(128) + b"DICM" + np.random.default_rng(2).bytes(500),
        "unknown.xyz": b"hello",
    }
    out = {}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        out[name] = tmp_path / name
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "junk.dcm").write_bytes(bytes(128) + b"DICM" + b"\x02\x00" * 300)
    out["dir"] = tmp_path / "dir"
    out["absent"] = tmp_path / "absent.nii"
    return out


def test_cli_info_and_convert_fail_in_one_line(tmp_path, small):
    for name, path in hostile_files(tmp_path, small).items():
        for args in (["info", str(path)], ["info", "--json", str(path)],
                     ["convert", str(path), str(tmp_path / "out.nii.gz")]):
            done = run_cli(*args)
            lines = done.stderr.strip().splitlines()
            if name == "dir" and args[0] == "info" and done.returncode == 0:
                continue  # a folder without readable series lists nothing: not a failure
            assert done.returncode == 1, (name, args, done.stderr)
            assert len(lines) == 1 and lines[0].startswith(f"medkern {args[0]}: error: "), (name, args, done.stderr)
            assert "Traceback" not in done.stderr
            assert not (tmp_path / "out.nii.gz").exists()


def test_cli_unexpected_exception_is_one_line(tmp_path, monkeypatch, capsys):
    from medkern import cli

    def boom(path, **kwargs):
        raise KeyError("spacing")

    monkeypatch.setattr(mk, "read", boom)
    assert cli.main(["info", str(tmp_path)]) in (0, 1)
    assert cli.main(["convert", str(tmp_path / "a.nii"), str(tmp_path / "b.nii")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "medkern convert: error: KeyError: 'spacing'"


def test_cli_analyze_bad_input_is_one_line(tmp_path, small):
    files = hostile_files(tmp_path, small)
    for name in ("truncated.nii", "random.nii.gz", "absent"):
        done = run_cli("analyze", str(files[name]), "--out", str(tmp_path / f"out-{name}"))
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1 and len(lines) == 1 and lines[0].startswith("medkern analyze: error: "), \
            (name, done.stderr)
        assert not (tmp_path / f"out-{name}").exists()


def test_read_refuses_fifos_instead_of_blocking(tmp_path):
    fifo = tmp_path / "pipe.nii"
    os.mkfifo(fifo)
    done = run_isolated(f"""
        import medkern as mk
        try:
            mk.read({str(fifo)!r})
        except ValueError as exc:
            print(exc)
    """, timeout=60)
    assert done.returncode == 0 and "pipe.nii: not a regular file or a directory" in done.stdout, done.stderr


def test_cli_info_keeps_nibabel_log_lines_off_stderr(tmp_path, small):
    data = bytearray(nifti_bytes(small))
    struct.pack_into("<f", data, 108, 100.0)  # vox_offset below the header: nibabel logs, then raises
    (tmp_path / "low.nii").write_bytes(bytes(data))
    done = run_cli("info", str(tmp_path / "low.nii"))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"medkern info: error: {tmp_path / 'low.nii'}: not a readable NIfTI file (HeaderDataError: vox offset 100 "
        "too low for single file nifti1)"]


def test_rtstruct_contour_without_type_is_read_as_closed_with_a_warning(tmp_path, grid):
    def edit(ds):
        del ds.ROIContourSequence[0].ContourSequence[0].ContourGeometricType

    rs = hostile_rtstruct(tmp_path / "notype.dcm", edit)
    with pytest.warns(RTStructWarning, match=r"notype.dcm: ROI 'a': 1 contours without ContourGeometricType \(read "
                                             r"as CLOSED_PLANAR\)"):
        masks = mk.read_rtstruct(rs, grid)
    assert masks["a"].array.sum() == 4


def test_rtstruct_truncated_anywhere_is_an_error_or_exact(tmp_path, grid):
    # pydicom keeps quietly what a truncated file holds; a structure set cut inside its contours
    # must not give emptier masks as if they were the ROIs.
    rs = hostile_rtstruct(tmp_path / "full.dcm", lambda ds: None)
    data = rs.read_bytes()
    expect = {name: mask.array for name, mask in mk.read_rtstruct(rs, grid).items()}
    cut_path = tmp_path / "cut.dcm"
    outcomes = set()
    for cut in range(132, len(data), 3):
        cut_path.write_bytes(data[:cut])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                masks = mk.read_rtstruct(cut_path, grid)
        except mk.DicomError as exc:
            assert "cut.dcm" in str(exc), exc
            outcomes.add("error")
            continue
        assert masks.keys() == expect.keys(), cut
        for name in expect:
            np.testing.assert_array_equal(masks[name].array, expect[name], err_msg=f"cut at {cut}")
        outcomes.add("exact")
    assert "error" in outcomes


def test_rtstruct_without_roi_contour_sequence(tmp_path, grid):
    def edit(ds):
        del ds.ROIContourSequence

    rs = hostile_rtstruct(tmp_path / "nocontours.dcm", edit)
    with pytest.raises(mk.DicomError, match=r"nocontours.dcm: 2 ROI\(s\) but no ROIContourSequence"):
        mk.read_rtstruct(rs, grid)


@pytest.mark.parametrize("slope, inter", [(3e38, 0.0), (1e37, 3.3e38)])
def test_nifti_scaling_that_overflows_is_an_error(tmp_path, slope, inter):
    import nibabel as nib

    nifti = nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4) + 5, np.eye(4))
    raw = bytearray(nifti.to_bytes())
    struct.pack_into("<ff", raw, 112, slope, inter)
    (tmp_path / "scl.nii").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"scl.nii: scl_slope .* turn 24 stored value\(s\) into infinity or NaN"):
        mk.read(tmp_path / "scl.nii")
    struct.pack_into("<ff", raw, 112, 0.5, -3.0)  # ordinary scaling: exact
    (tmp_path / "ok.nii").write_bytes(bytes(raw))
    np.testing.assert_array_equal(mk.read(tmp_path / "ok.nii").array,
                                  np.transpose(np.arange(24).reshape(2, 3, 4) + 5) * 0.5 - 3.0)


def test_itk_versor_longer_than_one_is_refused(tmp_path):
    p = tmp_path / "versor.tfm"
    p.write_text("#Insight Transform File V1.0\n#Transform 0\nTransform: VersorRigid3DTransform_double_3_3\n"
                 "Parameters: 0.9 0.9 0.9 1 2 3\nFixedParameters: 0 0 0\n")
    with pytest.raises(ValueError, match=r"versor.tfm: VersorRigid3DTransform_double_3_3: versor \[0.9, 0.9, 0.9\] "
                                         r"has norm 1.55885 > 1"):
        mk.Affine.read(p)


@pytest.mark.parametrize("name", ["unknown.nii", "unknown.nii.gz"])
def test_nifti_without_geometry_and_zero_pixdim_warns(tmp_path, name):
    import nibabel as nib

    img = nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), None)
    img.header.set_qform(None, code=0)
    img.header.set_sform(None, code=0)
    img.header["pixdim"][1:4] = 0
    nib.save(img, tmp_path / name)
    with pytest.warns(MedkernWarning, match=r"pixdim \[0.0, 0.0, 0.0\]: the voxel spacing is unknown"):
        assert mk.read(tmp_path / name).spacing == (1.0, 1.0, 1.0)
    img.header["pixdim"][1:4] = [2, 3, 4]   # pixdim alone, but given: no warning, its spacing
    nib.save(img, tmp_path / name)
    assert mk.read(tmp_path / name).spacing == (4.0, 3.0, 2.0)
