"""RTSTRUCT rasterisation: the IBSI masks (published NIfTI conversions of the same contours), the
even-odd rule against scikit-image's point-in-polygon test, geometry on oblique grids, errors."""

from __future__ import annotations

import numpy as np
import pytest

import medkern as mk
from medkern.io import rtstruct

from _helpers import write_dicom_volume, write_rtstruct

IBSI = [f"STS_00{p}/{m}" for p in (1, 2, 3, 4) for m in ("CT", "PET", "MR_T1")]


@pytest.mark.parametrize("case", IBSI)
def test_ibsi_rtstruct_equals_ibsi_mask(shared_data, case):
    patient, modality = case.split("/")
    base = shared_data / "ibsi" / "ibsi_validation"
    (series,) = mk.list_dicom_series(base / "dicom" / patient / modality / "image")
    masks = mk.read_rtstruct(base / "dicom" / patient / modality / "mask" / "RS.dcm", series)
    (name, mask), = masks.items()
    assert name == f"GTV_Mass_{modality}"
    ref = mk.read(base / "nifti" / patient / f"{modality}_mask.nii.gz")
    assert mask.same_geometry(ref, atol=1e-4) and mask.dtype == np.uint8
    # Exact: Dice 1 (every voxel agrees).
    np.testing.assert_array_equal(mask.array, ref.array > 0)


def test_ibsi_ct_phantom_rtstruct_equals_mask(shared_data):
    base = shared_data / "ibsi" / "ibsi_1_ct_radiomics_phantom"
    masks = mk.read_rtstruct(base / "dicom" / "mask" / "DCM_RS_00060.dcm", base / "dicom" / "image")
    ref = mk.read(base / "nifti" / "mask" / "mask.nii.gz")
    np.testing.assert_array_equal(masks["GTV-1"].array, ref.array > 0)


def random_polygon(rng, centre, radius, n) -> np.ndarray:
    """A star-shaped (possibly concave) polygon with vertices off the voxel lattice."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    r = radius * rng.uniform(0.4, 1.0, n)
    return np.stack([centre[0] + r * np.cos(angles), centre[1] + r * np.sin(angles)], axis=1)


@pytest.mark.parametrize("threads", [1, 3])
def test_fill_polygons_matches_point_in_polygon(rng, cpu_backend, threads):
    from skimage.measure import points_in_poly

    nk, nj, ni = 3, 41, 37
    polygons, slices = [], []
    for k in range(nk):
        for _ in range(3):  # overlapping polygons on one slice: the even-odd rule XORs them
            polygons.append(random_polygon(rng, rng.uniform(5, 32, 2), rng.uniform(4, 15), int(rng.integers(3, 25))))
            slices.append(k)
    start = np.concatenate([[0], np.cumsum([len(p) for p in polygons])]).astype(np.int64)
    old = mk.get_num_threads()
    mk.set_num_threads(threads)
    try:
        mask = rtstruct.fill_polygons(np.concatenate(polygons), start, np.asarray(slices, np.int64), (nk, nj, ni),
                                      backend=cpu_backend)
    finally:
        mk.set_num_threads(old)
    jj, ii = np.mgrid[0:nj, 0:ni]
    centres = np.stack([ii.ravel(), jj.ravel()], axis=1).astype(np.float64)
    expect = np.zeros((nk, nj, ni), dtype=bool)
    for poly, k in zip(polygons, slices):
        expect[k] ^= points_in_poly(centres, poly).reshape(nj, ni)
    np.testing.assert_array_equal(mask, expect)


def square(x0, x1, y0, y1, z):
    return np.array([(x0, y0, z), (x1, y0, z), (x1, y1, z), (x0, y1, z)], dtype=np.float64)


def test_nested_contours_cut_holes_and_half_slice_tolerance(tmp_path, rng):
    array = np.zeros((4, 12, 12), np.int16)
    spacing = (2.0, 1.0, 1.0)
    write_dicom_volume(tmp_path / "ct", array, spacing, (0, 0, 0), np.eye(3)[:, ::-1], frame_uid="1.2.3")
    rois = {
        "ring": [square(1.5, 9.5, 1.5, 9.5, 2.0), square(3.5, 6.5, 3.5, 6.5, 2.0)],
        "off_plane": [square(0.5, 2.5, 0.5, 2.5, 4.9)],  # 0.45 slice from slice 2: still slice 2
    }
    rs = write_rtstruct(tmp_path / "rs.dcm", rois, "1.2.3")
    masks = mk.read_rtstruct(rs, tmp_path / "ct")
    expect = np.zeros((4, 12, 12), np.uint8)
    expect[1, 2:10, 2:10] = 1
    expect[1, 4:7, 4:7] = 0
    np.testing.assert_array_equal(masks["ring"].array, expect)
    off = np.zeros_like(expect)
    off[2, 1:3, 1:3] = 1
    np.testing.assert_array_equal(masks["off_plane"].array, off)
    assert list(mk.read_rtstruct(rs, tmp_path / "ct", rois=["ring"])) == ["ring"]


def test_oblique_reference_grid(tmp_path, rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    direction = q * np.sign(np.diag(r))[None, :]
    spacing, origin = (2.5, 0.8, 0.6), np.array([10.0, -40.0, 25.0])
    img = mk.Image(np.zeros((5, 20, 24), np.int16), spacing=spacing, origin=origin, direction=direction)
    # A triangle on slice 3 given in voxel indices, mapped to LPS.
    tri = np.array([(3, 2.3, 1.7), (3, 17.6, 5.2), (3, 9.1, 21.4)])
    rs = write_rtstruct(tmp_path / "rs.dcm", {"tri": [img.index_to_world(tri)]}, "1.2.3")
    mask = mk.read_rtstruct(rs, img)["tri"]
    from skimage.measure import points_in_poly

    jj, ii = np.mgrid[0:20, 0:24]
    inside = points_in_poly(np.stack([ii.ravel(), jj.ravel()], 1).astype(float), tri[:, :0:-1]).reshape(20, 24)
    np.testing.assert_array_equal(mask.array[3], inside)
    assert mask.array.sum() == inside.sum() > 0 and mask.same_geometry(img)


def test_rtstruct_errors(tmp_path):
    array = np.zeros((3, 8, 8), np.int16)
    write_dicom_volume(tmp_path / "ct", array, (2.0, 1.0, 1.0), (0, 0, 0), np.eye(3)[:, ::-1],
                               frame_uid="1.2.3")
    ct = tmp_path / "ct"
    img = mk.read(ct)

    def rs(name, rois, frame="1.2.3"):
        return write_rtstruct(tmp_path / f"{name}.dcm", rois, frame)

    with pytest.raises(mk.DicomError, match="ROI 'a' is defined in frame of reference 9.9.*cannot be placed"):
        mk.read_rtstruct(rs("for", {"a": [square(1, 3, 1, 3, 0)]}, frame="9.9"), ct)
    with pytest.raises(mk.DicomError, match=r"ROI 'b' contour 1 \(z = 10\.00 mm\) lies on slice index 5, outside"):
        mk.read_rtstruct(rs("off", {"b": [square(1, 3, 1, 3, 10.0)]}), img)
    with pytest.raises(mk.DicomError, match=r"ROI 'c' contour 1 .* beyond the reference grid of 8 x 8"):
        mk.read_rtstruct(rs("wide", {"c": [square(1, 30, 1, 3, 2.0)]}), img)
    tilted = np.array([(1, 1, 0.0), (5, 1, 0.0), (5, 5, 3.0)])
    with pytest.raises(mk.DicomError, match=r"ROI 'd' contour 1 .* crosses slices 0\.00\.\.1\.50.*not in one of"):
        mk.read_rtstruct(rs("tilt", {"d": [tilted]}), img)
    good = rs("good", {"e": [square(1, 3, 1, 3, 2.0)]})
    with pytest.raises(ValueError, match=r"rois \['zz'\] are not in good.dcm; it has \['e'\]"):
        mk.read_rtstruct(good, img, rois=["zz"])
    with pytest.raises(ValueError, match="reference must be a 3D scalar image, got a 2D"):
        mk.read_rtstruct(good, mk.Image(np.zeros((8, 8))))
    with pytest.raises(TypeError, match="reference must be an Image, a DicomSeries or a DICOM series directory"):
        mk.read_rtstruct(good, np.zeros((3, 8, 8)))
    with pytest.raises(ValueError, match="is not a directory"):
        mk.read_rtstruct(good, good)
    with pytest.raises(FileNotFoundError, match="no such file"):
        mk.read_rtstruct(tmp_path / "absent.dcm", img)
    with pytest.raises(mk.DicomError, match=r"not an RT Structure Set \(Modality 'CT'\)"):
        mk.read_rtstruct(next(ct.iterdir()), img)
    (tmp_path / "text.dcm").write_text("not DICOM")
    with pytest.raises(mk.DicomError, match="not a readable DICOM file"):
        mk.read_rtstruct(tmp_path / "text.dcm", img)
    # An ROI without contours gives an empty mask, and says so.
    dup = write_rtstruct(tmp_path / "dup.dcm", {"x": [square(1, 3, 1, 3, 2.0)], "y": []}, "1.2.3")
    with pytest.warns(mk.errors.RTStructWarning, match="dup.dcm: ROI 'y' gives an empty mask: it has no contours"):
        masks = mk.read_rtstruct(dup, img)
    assert masks["y"].array.sum() == 0 and masks["x"].array.sum() == 4


def test_contour_data_that_is_not_numbers(tmp_path):
    img = mk.Image(np.zeros((3, 8, 8), np.int16))
    rs = write_rtstruct(tmp_path / "rs.dcm", {"a": [square(1, 3, 1, 3, 1.0)]}, "1.2.3")
    rs.write_bytes(rs.read_bytes().replace(b"3.000000", b"3.0x0000"))
    with pytest.raises(mk.DicomError,
                       match=r"rs.dcm: ROI .a. contour 1: ContourData holds a value that is not a number"):
        mk.read_rtstruct(rs, img)
