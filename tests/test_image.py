"""Image geometry against SimpleITK and nibabel: oblique, flipped and anisotropic, 2D and 3D."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

import medkern as mk

from _helpers import random_direction


def _oblique_image(rng, ndim=3, dtype=np.float32):
    shape = (5, 6, 7)[:ndim] if ndim == 3 else (6, 7)
    return mk.Image(
        rng.normal(size=shape).astype(dtype),
        spacing=(2.5, 0.7, 0.9)[-ndim:],
        origin=rng.normal(scale=50, size=ndim),
        direction=random_direction(rng, ndim),
    )


@pytest.mark.parametrize("ndim", [2, 3])
def test_affine_matches_sitk_index_to_physical(rng, ndim):
    img = _oblique_image(rng, ndim)
    s = img.to_sitk()
    for _ in range(10):
        idx = rng.integers(0, np.array(img.shape))
        expected = s.TransformIndexToPhysicalPoint([int(v) for v in idx[::-1]])
        np.testing.assert_allclose(img.index_to_world(idx), expected, atol=1e-9)
        cont = rng.uniform(-1, np.array(img.shape))
        expected = s.TransformContinuousIndexToPhysicalPoint([float(v) for v in cont[::-1]])
        np.testing.assert_allclose(img.index_to_world(cont), expected, atol=1e-9)
        np.testing.assert_allclose(img.world_to_index(expected), cont, atol=1e-9)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64])
def test_sitk_round_trip_is_exact(rng, ndim, dtype):
    img = _oblique_image(rng, ndim, dtype)
    back = mk.Image.from_sitk(img.to_sitk())
    assert back.shape == img.shape and back.dtype == img.dtype
    np.testing.assert_array_equal(back.array, img.array)
    assert back.spacing == img.spacing
    np.testing.assert_array_equal(back.origin, img.origin)
    np.testing.assert_array_equal(back.direction, img.direction)


def test_sitk_axis_order_is_reversed(rng):
    a = rng.normal(size=(3, 4, 5)).astype(np.float32)
    img = mk.Image(a, spacing=(3.0, 2.0, 1.0))
    s = img.to_sitk()
    assert s.GetSize() == (5, 4, 3)
    assert s.GetSpacing() == (1.0, 2.0, 3.0)
    assert s.GetPixel(4, 2, 1) == a[1, 2, 4]


@pytest.mark.parametrize("version", [1, 2])
def test_nifti_round_trip(tmp_path, rng, version):
    img = _oblique_image(rng, 3)
    path = tmp_path / "x.nii.gz"
    mk.write(img, path, nifti_version=version)
    back = mk.read(path)
    np.testing.assert_array_equal(back.array, img.array)
    # NIfTI-1 stores the affine in float32; NIfTI-2 in float64 (exact).
    atol = 1e-4 if version == 1 else 1e-12
    np.testing.assert_allclose(back.spacing, img.spacing, atol=atol)
    np.testing.assert_allclose(back.origin, img.origin, atol=atol)
    np.testing.assert_allclose(back.direction, img.direction, atol=atol)


def test_nifti_geometry_agrees_with_sitk(tmp_path, rng):
    img = _oblique_image(rng, 3)
    path = tmp_path / "x.nii"
    mk.write(img, path, nifti_version=1)
    s = sitk.ReadImage(str(path))
    back = mk.Image.from_sitk(s)
    np.testing.assert_array_equal(back.array, img.array)
    np.testing.assert_allclose(back.origin, img.origin, atol=1e-4)
    np.testing.assert_allclose(back.direction, img.direction, atol=1e-5)
    np.testing.assert_allclose(back.spacing, img.spacing, atol=1e-5)


def test_nibabel_reads_ras(tmp_path):
    import nibabel as nib

    img = mk.Image(np.zeros((2, 3, 4), np.int16), spacing=(3, 2, 1), origin=(10, 20, 30))
    nii = img.to_nibabel()
    assert nii.shape == (4, 3, 2)
    # LPS (10, 20, 30) is RAS (-10, -20, 30); LPS x axis points to RAS -x.
    np.testing.assert_allclose(nii.affine[:3, 3], [-10, -20, 30])
    np.testing.assert_allclose(nii.affine[:3, :3], np.diag([-1, -2, 3]))
    assert isinstance(nii, nib.Nifti1Image)


def test_slicing_is_a_view_with_geometry(rng):
    img = _oblique_image(rng, 3)
    sub = img[1:4, ::2, 3:]
    assert np.shares_memory(sub.array, img.array)
    np.testing.assert_allclose(sub.index_to_world([0, 0, 0]), img.index_to_world([1, 0, 3]))
    np.testing.assert_allclose(sub.index_to_world([1, 1, 1]), img.index_to_world([2, 2, 4]))


def test_geometry_is_immutable(rng):
    img = _oblique_image(rng, 3)
    with pytest.raises(ValueError):
        img.origin[0] = 1.0
    with pytest.raises(AttributeError):
        img.spacing = (1, 1, 1)


def test_with_array_keeps_geometry_and_checks_the_array(rng):
    img = mk.Image(np.zeros((3, 4, 5)), spacing=(2.0, 1.0, 0.5), origin=(1, 2, 3), direction=np.eye(3))
    out = img.with_array(rng.random((3, 4, 5)).astype(np.float32))
    assert out.spacing == img.spacing and out.dtype == np.float32 and not out.is_vector
    np.testing.assert_array_equal(out.origin, img.origin)
    np.testing.assert_array_equal(out.direction, img.direction)
    vec = img.with_array(np.zeros((3, 4, 5, 3), np.float32), vector=True)
    assert vec.is_vector and vec.shape == (3, 4, 5) and vec.spacing == img.spacing
    with pytest.raises(ValueError, match=r"spatial shape \(3, 4, 6\) differs"):
        img.with_array(np.zeros((3, 4, 6)))
    with pytest.raises(ValueError, match="differs"):  # one axis too many, not a vector image
        mk.Image(np.zeros((3, 4))).with_array(np.zeros((3, 4, 5)))
    with pytest.raises(ValueError, match="2D or 3D array"):
        img.with_array(np.zeros((3, 4, 5, 2, 2)))
    with pytest.raises(TypeError, match="not supported"):
        img.with_array(np.zeros((3, 4, 5), np.complex64))
    with pytest.raises(ValueError, match="at least one component"):
        img.with_array(np.zeros((3, 4, 5, 0)), vector=True)


def test_vector_image_round_trip(tmp_path, rng):
    field = mk.Image(rng.normal(size=(4, 5, 6, 3)), spacing=(2, 1, 1), vector=True)
    assert field.shape == (4, 5, 6) and field.ndim == 3
    back = mk.Image.from_sitk(field.to_sitk())
    assert back.is_vector
    np.testing.assert_array_equal(back.array, field.array)
    mk.write(field, tmp_path / "f.nii.gz", nifti_version=2)
    back = mk.read(tmp_path / "f.nii.gz")
    assert back.is_vector
    np.testing.assert_array_equal(back.array, field.array)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"array": np.zeros(5)}, "2D or 3D"),
        ({"array": np.zeros((2, 2), dtype=np.complex64)}, "dtype"),
        ({"array": np.zeros((2, 2, 2)), "spacing": (1, 1)}, "spacing"),
        ({"array": np.zeros((2, 2, 2)), "spacing": (1, 0, 1)}, "positive"),
        ({"array": np.zeros((2, 2, 2)), "origin": (0, np.nan, 0)}, "origin"),
        ({"array": np.zeros((2, 2, 2)), "direction": np.zeros((3, 3))}, "singular"),
        ({"array": np.zeros((2, 2, 2)), "direction": np.eye(2)}, "3x3"),
    ],
)
def test_bad_geometry_is_rejected(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        mk.Image(**kwargs)


def test_write_is_atomic_and_keeps_old_file(tmp_path):
    path = tmp_path / "x.nii.gz"
    mk.write(mk.Image(np.ones((2, 2, 2), np.float32)), path)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="nifti_version"):
        mk.write(mk.Image(np.zeros((2, 2, 2), np.float32)), path, nifti_version=3)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.nii.gz"]


def test_write_rejects_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match="unsupported output format"):
        mk.write(mk.Image(np.zeros((2, 2), np.float32)), tmp_path / "x.png")


def test_direction_columns_must_be_unit_vectors(tmp_path):
    # A scaled column stretched the world extent beyond what spacing says, silently.
    with pytest.raises(ValueError, match=r"direction columns must be unit vectors .* lengths \[1.0, 1.118034, 1.0\]"):
        mk.Image(np.zeros((4, 5, 6)), direction=[[1, .5, 0], [0, 1, 0], [0, 0, 1]])
    path = tmp_path / "scaled.mha"
    mk.write(mk.Image(np.zeros((4, 5, 6), np.float32)), path)
    path.write_bytes(path.read_bytes().replace(b"TransformMatrix = 1 0 0 0 1 0 0 0 1",
                                               b"TransformMatrix = 1 0 0 0 1 0 0 0 3"))
    with pytest.raises(ValueError, match=r"scaled.mha: TransformMatrix .* not unit vectors"):
        mk.read(path)
