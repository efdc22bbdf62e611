"""Surface mesh (marching cubes) and region measurements against scikit-image and geometry."""

from __future__ import annotations

import json

import numpy as np
import pytest
from skimage.measure import marching_cubes, mesh_surface_area

import medkern as mk
from medkern import measure


def _ball(shape, radii_vox):
    grids = np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape], indexing="ij")
    return sum((g / r) ** 2 for g, r in zip(grids, radii_vox)) <= 1.0


def _skimage_area_volume(mask, spacing):
    verts, faces, _, _ = marching_cubes(np.pad(mask, 1).astype(np.float32), 0.5, spacing=spacing)
    tri = verts[faces].astype(np.float64)
    volume = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6
    return mesh_surface_area(verts, faces), abs(volume)


def _sts_masks(shared_data, n=3):
    import nibabel as nib

    for case in sorted((shared_data / "ibsi" / "ibsi_validation" / "nifti").glob("STS_0*"))[:n]:
        img = nib.load(case / "CT_mask.nii.gz")
        yield case.name, np.asarray(img.dataobj) > 0, tuple(float(z) for z in img.header.get_zooms())


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.5, 0.7, 0.9)])
@pytest.mark.parametrize("radii", [(6, 6, 6), (4, 7, 9.5)])
def test_mesh_area_volume_match_skimage_on_smooth_shapes(spacing, radii):
    mask = _ball((15, 19, 23), radii)
    area, volume = measure.mesh_area_volume(mask, spacing)
    ref_area, ref_volume = _skimage_area_volume(mask, spacing)
    # Same vertices and the same triangulation for every configuration without a chequered face:
    # equal up to summation order.
    assert area == pytest.approx(ref_area, rel=1e-6)
    assert volume == pytest.approx(ref_volume, rel=1e-6)


def test_mesh_matches_skimage_on_sts_tumours(shared_data):
    for name, mask, spacing in _sts_masks(shared_data):
        area, volume = measure.mesh_area_volume(mask, spacing)
        ref_area, ref_volume = _skimage_area_volume(mask, spacing)
        assert area == pytest.approx(ref_area, rel=1e-6), name
        assert volume == pytest.approx(ref_volume, rel=1e-6), name


def test_mesh_on_ibsi_digital_phantom_within_reference_tolerance(shared_data):
    import nibabel as nib

    root = shared_data / "ibsi"
    nii = nib.load(root / "ibsi_1_digital_phantom" / "nifti" / "mask" / "mask.nii.gz")
    mask = np.asarray(nii.dataobj) > 0
    area, volume = measure.mesh_area_volume(mask, tuple(float(z) for z in nii.header.get_zooms()))
    ref = {r["feature"]: r for r in json.loads((root / "ibsi_1_reference_values.json").read_text())
           if r["data"] == "dig. phantom"}
    for feature, value in (("Volume (mesh)", volume), ("Surface area (mesh)", area)):
        assert abs(value - ref[feature]["value"]) <= ref[feature]["tol"], feature


def test_welded_mesh_is_closed_outward_and_consistent(rng):
    mask = rng.random((14, 12, 16)) > 0.6
    spacing = (1.5, 0.8, 1.1)
    verts, faces = measure.surface_mesh(mask, spacing)
    # Closed 2-manifold bookkeeping: every undirected edge is used by exactly two triangles, once in
    # each direction (consistent winding).
    directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    assert len(np.unique(directed, axis=0)) == len(directed)
    undirected, counts = np.unique(np.sort(directed, axis=1), axis=0, return_counts=True)
    assert np.all(counts == 2)
    assert len(np.unique(faces)) == len(verts)  # welded: no unused vertex
    tri = verts[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1).sum()
    volume = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6
    ref_area, ref_volume = measure.mesh_area_volume(mask, spacing)
    assert area == pytest.approx(ref_area, rel=1e-12)
    assert volume == pytest.approx(ref_volume, rel=1e-12) and volume > 0
    # Vertices sit on edge midpoints: half-integer index coordinates, inside the padded box.
    idx = verts / np.asarray(spacing) * 2
    np.testing.assert_allclose(idx, np.round(idx), atol=1e-9)


def test_mesh_of_one_voxel_and_of_a_cube():
    one = np.zeros((3, 3, 3), bool)
    one[1, 1, 1] = True
    area, volume = measure.mesh_area_volume(one, (1, 1, 1))
    # An octahedron through the six face centres: 8 equilateral triangles of side sqrt(1/2).
    assert area == pytest.approx(np.sqrt(3)) and volume == pytest.approx(1 / 6)
    cube = np.ones((4, 5, 6), bool)
    area, volume = measure.mesh_area_volume(cube, (2.0, 1.0, 0.5))
    # Box of 8 x 5 x 3 mm with its 12 edges and 8 corners cut by the half-voxel chamfer.
    verts, faces = measure.surface_mesh(cube, (2.0, 1.0, 0.5))
    lo, hi = verts.min(axis=0), verts.max(axis=0)
    np.testing.assert_allclose(lo, [-1.0, -0.5, -0.25])
    np.testing.assert_allclose(hi, [7.0, 4.5, 2.75])
    assert volume < 8 * 5 * 3 and volume == pytest.approx(_skimage_area_volume(cube, (2, 1, .5))[1])


def test_mesh_serial_equals_threaded(rng):
    mask = _ball((30, 31, 29), (12, 9, 13)) ^ (rng.random((30, 31, 29)) > 0.97)
    mk.set_num_threads(1)
    try:
        serial = measure.mesh_area_volume(mask, (1.0, 0.7, 0.7)), measure.surface_mesh(mask)
    finally:
        mk.set_num_threads(4)
    threaded = measure.mesh_area_volume(mask, (1.0, 0.7, 0.7)), measure.surface_mesh(mask)
    assert serial[0] == threaded[0]
    np.testing.assert_array_equal(serial[1][0], threaded[1][0])
    np.testing.assert_array_equal(serial[1][1], threaded[1][1])


def test_mesh_of_empty_mask_and_image_spacing():
    assert measure.mesh_area_volume(np.zeros((3, 4, 5), bool)) == (0.0, 0.0)
    v, f = measure.surface_mesh(np.zeros((3, 4, 5), np.uint8))
    assert v.shape == (0, 3) and f.shape == (0, 3)
    img = mk.Image(_ball((9, 9, 9), (3, 3, 3)).astype(np.uint8), spacing=(2.0, 1.0, 1.0))
    assert measure.mesh_area_volume(img) == measure.mesh_area_volume(img.array, (2.0, 1.0, 1.0))


@pytest.mark.parametrize("bad, spacing, exc, match", [
    (np.zeros((4, 4), bool), None, ValueError, "3D mask"),
    (np.zeros((4, 4, 4), bool), (1.0, 1.0), ValueError, "spacing must be 3"),
    (np.zeros((4, 4, 4), bool), (1.0, -1.0, 1.0), ValueError, "spacing must be 3 positive"),
    (np.zeros((4, 4, 4), "U1"), None, TypeError, "boolean or numeric"),
])
def test_mesh_errors(bad, spacing, exc, match):
    with pytest.raises(exc, match=match):
        measure.mesh_area_volume(bad, spacing)
    with pytest.raises(exc, match=match):
        measure.surface_mesh(bad, spacing)
