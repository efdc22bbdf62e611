"""Segmentation kernels against scipy.ndimage, scikit-image and cc3d, on every CPU backend."""

from __future__ import annotations

import cc3d
import numpy as np
import pytest
import scipy.ndimage as ndi

import medkern as mk
from medkern._segment import ball, ball_offsets

from _helpers import serial_and_threaded

LABEL_DTYPES = [np.bool_, np.uint8, np.int8, np.int16, np.uint16, np.int32, np.uint32, np.int64]
CONNECTIVITY = [(3, 6, 1), (3, 18, 2), (3, 26, 3), (2, 4, 1), (2, 8, 2)]  # ndim, ours, scipy rank


def _blobs(rng, shape, density=0.5, sigma=1.0):
    """Random masks with structure at several scales (smoothed noise), not only salt and pepper."""
    return ndi.gaussian_filter(rng.random(shape), sigma) > np.quantile(
        ndi.gaussian_filter(rng.random(shape), sigma), 1 - density)


def _scan_order(labels):
    """Renumber labels by first occurrence in C order (scipy's numbering)."""
    flat = labels.ravel()
    values, first = np.unique(flat, return_index=True)
    order = values[np.argsort(first)]
    order = order[order != 0]
    lut = np.zeros(int(flat.max()) + 1, np.int64)
    lut[order] = np.arange(1, len(order) + 1)
    return lut[labels]


def _sts_masks(shared_data, modality="CT", n=3):
    import nibabel as nib

    for case in sorted((shared_data / "ibsi" / "ibsi_validation" / "nifti").glob("STS_0*"))[:n]:
        img = nib.load(case / f"{modality}_mask.nii.gz")
        yield case.name, np.asarray(img.dataobj) > 0, tuple(float(z) for z in img.header.get_zooms())


# ---------------------------------------------------------------------------------------- label
@pytest.mark.parametrize("dtype", LABEL_DTYPES)
@pytest.mark.parametrize("ndim, conn, rank", CONNECTIVITY)
def test_label_binary_equals_scipy_and_cc3d(rng, cpu_backend, dtype, ndim, conn, rank):
    shape = (9, 14, 17)[-ndim:]
    for density, sigma in ((0.5, 0.0), (0.3, 0.0), (0.5, 1.0)):
        mask = _blobs(rng, shape, density, sigma) if sigma else rng.random(shape) < density
        labels, n = mk.label(mask.astype(dtype), conn, backend=cpu_backend)
        ref, n_ref = ndi.label(mask, ndi.generate_binary_structure(ndim, rank))
        assert labels.dtype == np.int32 and n == n_ref
        np.testing.assert_array_equal(labels, ref)  # numbering too: scan order like scipy
        cc = cc3d.connected_components(mask.astype(np.uint8), connectivity=conn)
        np.testing.assert_array_equal(labels, _scan_order(cc))


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.int64])
@pytest.mark.parametrize("ndim, conn, rank", CONNECTIVITY)
def test_label_multilabel_equals_cc3d(rng, cpu_backend, dtype, ndim, conn, rank):
    shape = (10, 13, 15)[-ndim:]
    values = rng.integers(0, 4, size=shape).astype(dtype)
    labels, n = mk.label(values, conn, backend=cpu_backend)
    ref = cc3d.connected_components(values, connectivity=conn)
    assert n == ref.max()
    np.testing.assert_array_equal(labels, _scan_order(ref))
    # Each component holds one value; each value's components are scipy's on that value's mask.
    for v in range(1, 4):
        sub, n_sub = ndi.label(values == v, ndi.generate_binary_structure(ndim, rank))
        assert len(np.unique(labels[values == v])) == n_sub


def test_label_real_masks_and_quantised_ct(shared_data):
    import nibabel as nib

    for name, mask, _ in _sts_masks(shared_data, "PET"):
        for conn, rank in ((6, 1), (18, 2), (26, 3)):
            labels, n = mk.label(mask, conn)
            ref, n_ref = ndi.label(mask, ndi.generate_binary_structure(3, rank))
            assert n == n_ref, name
            np.testing.assert_array_equal(labels, ref)
    # A real multi-label volume: CT quantised into 100 HU bands, against cc3d.
    ct = np.asarray(nib.load(shared_data / "ibsi" / "ibsi_validation" / "nifti" / "STS_001" /
                             "CT_image.nii.gz").dataobj)[:60, :60, :40]
    bands = np.clip((ct.astype(np.int32) + 1100) // 100, 0, 40).astype(np.int16)
    labels, n = mk.label(bands, 26)
    ref = cc3d.connected_components(bands, connectivity=26)
    np.testing.assert_array_equal(labels, _scan_order(ref))


def test_label_serial_equals_threaded(rng):
    mask = _blobs(rng, (40, 33, 35), 0.5, 1.0)
    serial, threaded = serial_and_threaded(lambda: mk.label(mask))
    assert serial[1] == threaded[1]
    np.testing.assert_array_equal(serial[0], threaded[0])


def test_label_edge_cases_and_image(cpu_backend):
    assert mk.label(np.zeros((4, 5, 6), bool), backend=cpu_backend)[1] == 0
    full, n = mk.label(np.ones((4, 5, 6), bool), backend=cpu_backend)
    assert n == 1 and np.all(full == 1)
    img = mk.Image(np.eye(5, dtype=np.uint8), spacing=(2.0, 3.0), origin=(1.0, 2.0))
    out, n = mk.label(img, 4, backend=cpu_backend)
    assert isinstance(out, mk.Image) and out.spacing == (2.0, 3.0) and n == 5
    assert mk.label(img, 8, backend=cpu_backend)[1] == 1
    assert mk.label(np.zeros((0, 4, 4), bool), backend=cpu_backend)[1] == 0


@pytest.mark.parametrize("args, exc, match", [
    ((np.zeros((4, 4, 4), np.float32),), TypeError, "threshold a probability map"),
    ((np.zeros((4, 4, 4), bool), 4), ValueError, "connectivity for a 3D image"),
    ((np.zeros((4, 4), bool), 6), ValueError, "connectivity for a 2D image"),
    ((np.zeros((4, 4, 4), bool), True), ValueError, "connectivity"),
    ((np.zeros(4, bool),), ValueError, "2D or 3D"),
])
def test_label_errors(args, exc, match):
    with pytest.raises(exc, match=match):
        mk.label(*args)


# -------------------------------------------------------------------------- distance transform
SPACINGS_3D = [(1.0, 1.0, 1.0), (2.5, 0.7, 0.9)]


@pytest.mark.parametrize("dtype", [np.bool_, np.uint8, np.int16, np.int32, np.float32])
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("spacing", SPACINGS_3D)
def test_distance_transform_equals_scipy(rng, cpu_backend, dtype, ndim, spacing):
    spacing = spacing[-ndim:]
    shape = (11, 19, 23)[-ndim:]
    for density in (0.05, 0.5, 0.97):
        mask = rng.random(shape) > density
        if mask.all():
            mask.flat[0] = False
        out = mk.distance_transform(mask.astype(dtype), spacing, backend=cpu_backend)
        ref = ndi.distance_transform_edt(mask, sampling=spacing)
        assert out.dtype == np.float32
        # Exact squared distances, float32 storage: relative error below 1e-6.
        np.testing.assert_allclose(out, ref, rtol=1e-6, atol=0)


def test_distance_transform_squared_image_and_real_mask(shared_data):
    for _name, mask, spacing in _sts_masks(shared_data, "CT", n=2):
        spacing = spacing[::-1]  # NIfTI zooms are (i, j, k); the test keeps the array as loaded
        mask = np.ascontiguousarray(mask)
        img = mk.Image(mask, spacing=spacing)
        out = mk.distance_transform(img)
        assert isinstance(out, mk.Image) and out.spacing == img.spacing
        ref = ndi.distance_transform_edt(mask, sampling=spacing)
        np.testing.assert_allclose(out.array, ref, rtol=1e-6)
        sq = mk.distance_transform(img, squared=True).array
        np.testing.assert_allclose(sq, ref ** 2, rtol=2e-6)


def test_distance_transform_without_background_is_inf(cpu_backend):
    out = mk.distance_transform(np.ones((3, 4, 5), bool), backend=cpu_backend)
    assert np.all(np.isinf(out))


def test_distance_transform_serial_equals_threaded(rng):
    mask = _blobs(rng, (30, 40, 35), 0.6, 1.5)
    serial, threaded = serial_and_threaded(lambda: mk.distance_transform(mask, (3.0, 0.8, 0.8)))
    np.testing.assert_array_equal(serial, threaded)


# ---------------------------------------------------------------------------------- morphology
MORPHOLOGY = [(mk.binary_dilate, ndi.binary_dilation), (mk.binary_erode, ndi.binary_erosion),
              (mk.binary_open, ndi.binary_opening), (mk.binary_close, ndi.binary_closing)]


@pytest.mark.parametrize("ours, ref", MORPHOLOGY, ids=lambda f: getattr(f, "__name__", ""))
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("radius", [0.0, 1.0, 2.0, 4.6, 9.0])  # 9 mm: through the EDT
def test_morphology_equals_scipy_with_ball(rng, cpu_backend, ours, ref, ndim, radius):
    spacing = (2.0, 0.8, 1.1)[-ndim:]
    shape = (12, 21, 19)[-ndim:]
    mask = _blobs(rng, shape, 0.4, 1.2)
    img = mk.Image(mask, spacing=spacing)
    out = ours(img, radius, backend=cpu_backend)
    assert isinstance(out, mk.Image) and out.array.dtype == np.bool_
    np.testing.assert_array_equal(out.array, ref(mask, ball(radius, spacing)))


def test_morphology_direct_and_distance_paths_agree(rng, monkeypatch):
    import medkern._segment as seg

    mask = _blobs(rng, (14, 17, 16), 0.4, 1.0)
    img = mk.Image(mask, spacing=(1.5, 0.7, 0.7))
    direct = [mk.binary_dilate(img, 2.2).array, mk.binary_erode(img, 2.2).array]
    monkeypatch.setattr(seg, "_DIRECT_MAX_PASSES", 0)
    via_edt = [mk.binary_dilate(img, 2.2).array, mk.binary_erode(img, 2.2).array]
    np.testing.assert_array_equal(direct[0], via_edt[0])
    np.testing.assert_array_equal(direct[1], via_edt[1])


def test_morphology_and_fill_serial_equal_threaded(rng):
    mask = _blobs(rng, (24, 30, 28), 0.5, 1.2)
    img = mk.Image(mask, spacing=(2.0, 0.9, 0.9))
    ops = (lambda: mk.binary_dilate(img, 2.5).array, lambda: mk.binary_erode(img, 6.0).array,
           lambda: mk.fill_holes(mask), lambda: mk.threshold_otsu(mask.astype(np.float32) + mask.sum()))
    serial, threaded = serial_and_threaded(lambda: [op() for op in ops])
    for a, b in zip(serial, threaded):
        np.testing.assert_array_equal(a, b)


def test_ball_offsets_include_the_sphere():
    off = ball_offsets(2.0, (1.0, 1.0, 1.0))
    assert len(off) == 33  # lattice points with |d|^2 <= 4, the sphere's six poles included
    assert [0, 0, 2] in off.tolist() and [1, 1, 1] in off.tolist()
    assert len(ball_offsets(1.0, (2.0, 2.0))) == 1  # radius below the spacing: the centre alone
    element = ball(2.5, (2.0, 1.0, 1.0))
    assert element.shape == (3, 5, 5) and element.sum() == len(ball_offsets(2.5, (2.0, 1.0, 1.0)))
    assert element[1, 2, 2] and element[0, 2, 2] and not element[0, 0, 2]


def test_fill_holes_equals_scipy(rng, cpu_backend, shared_data):
    for shape in ((15, 17), (9, 14, 13)):
        mask = _blobs(rng, shape, 0.6, 1.0)
        np.testing.assert_array_equal(mk.fill_holes(mask, backend=cpu_backend), ndi.binary_fill_holes(mask))
    for _name, mask, _ in _sts_masks(shared_data, "PET", n=2):
        holed = mask.copy()
        holed[tuple(np.array(np.nonzero(mask)).mean(axis=1).astype(int))] = False
        np.testing.assert_array_equal(mk.fill_holes(holed), ndi.binary_fill_holes(holed))


def test_largest_and_small_components(rng, cpu_backend):
    mask = np.zeros((10, 12, 12), bool)
    mask[1:3, 1:3, 1:3] = True          # 8 voxels
    mask[5:9, 5:9, 5:9] = True          # 64 voxels
    mask[0, 11, 11] = True              # 1 voxel
    img = mk.Image(mask, spacing=(2.0, 1.0, 0.5))  # 1 mm^3 voxels
    big = mk.largest_component(img, backend=cpu_backend)
    assert isinstance(big, mk.Image) and big.array.sum() == 64 and big.array[6, 6, 6]
    kept = mk.remove_small_components(img, 8.0, backend=cpu_backend).array
    assert kept.sum() == 72 and not kept[0, 11, 11]
    assert mk.remove_small_components(img, 8.5, backend=cpu_backend).array.sum() == 64
    assert not mk.largest_component(np.zeros((3, 3), bool), backend=cpu_backend).any()
    # Diagonal neighbours: one component with 26-connectivity, separate with 6.
    diag = np.zeros((3, 3, 3), bool)
    diag[0, 0, 0] = diag[1, 1, 1] = True
    assert mk.largest_component(diag, backend=cpu_backend).sum() == 2
    assert mk.largest_component(diag, 6, backend=cpu_backend).sum() == 1


# ----------------------------------------------------------------------------------------- otsu
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64])
def test_threshold_otsu_equals_skimage(rng, cpu_backend, dtype):
    from skimage.filters import threshold_otsu

    if np.dtype(dtype).kind == "f":
        img = np.concatenate([rng.normal(0, 1, 3000), rng.normal(5, 2, 5000)]).astype(dtype)
    else:
        img = np.concatenate([rng.normal(40, 10, 3000), rng.normal(150, 20, 5000)])
        img = np.clip(img, 0, 255).astype(dtype)
    img = img.reshape(8, 40, 25)
    assert mk.threshold_otsu(img, backend=cpu_backend) == pytest.approx(float(threshold_otsu(img)), rel=1e-7)
    mask = rng.random(img.shape) > 0.5
    assert mk.threshold_otsu(img, mask=mask, backend=cpu_backend) == pytest.approx(
        float(threshold_otsu(img[mask])), rel=1e-7)


def test_threshold_otsu_real_ct_and_constant(shared_data):
    import nibabel as nib
    from skimage.filters import threshold_otsu

    ct = np.asarray(nib.load(shared_data / "ibsi" / "ibsi_validation" / "nifti" / "STS_001" /
                             "CT_image.nii.gz").dataobj)
    assert mk.threshold_otsu(ct) == float(threshold_otsu(ct))
    ct32 = ct.astype(np.float32)
    assert mk.threshold_otsu(ct32, nbins=128) == pytest.approx(float(threshold_otsu(ct32, nbins=128)))
    assert mk.threshold_otsu(np.full((3, 4), 7, np.int16)) == 7.0


# ------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("call, exc, match", [
    (lambda: mk.binary_dilate(np.zeros((4, 4), bool), -1.0), ValueError, "radius_mm must be finite and >= 0"),
    (lambda: mk.binary_erode(np.zeros((4, 4), bool), (1, 2)), TypeError, "radius_mm must be a number"),
    (lambda: mk.binary_open(np.zeros((4, 4), "U1"), 1.0), TypeError, "boolean or numeric"),
    (lambda: mk.binary_close(np.full((4, 4), np.nan), 1.0), ValueError, r"mask has 16 non-finite voxel\(s\) \(16 NaN"),
    (lambda: mk.distance_transform(np.zeros((4, 4), bool), (1.0, 0.0)), ValueError, "spacing must be 2 positive"),
    (lambda: mk.distance_transform(np.zeros((4, 4), bool), (1.0, 1.0, 1.0)), ValueError, "spacing must be 2"),
    (lambda: mk.distance_transform(np.zeros((2, 2, 2, 2), bool)), ValueError, "2D or 3D"),
    (lambda: mk.remove_small_components(np.zeros((4, 4), bool), -5), ValueError, "min_volume_mm3"),
    (lambda: mk.largest_component(np.zeros((4, 4), bool), 6), ValueError, "connectivity for a 2D"),
    (lambda: mk.threshold_otsu(np.zeros((4, 4), bool)), TypeError, "numeric image"),
    (lambda: mk.threshold_otsu(np.zeros((4, 4)), nbins=1), ValueError, "nbins must be an integer >= 2"),
    (lambda: mk.threshold_otsu(np.array([[1.0, np.nan]])), ValueError, "NaN"),
    (lambda: mk.threshold_otsu(np.ones((4, 4)), mask=np.zeros((4, 4), bool)), ValueError, "no voxel"),
    (lambda: mk.threshold_otsu(np.ones((4, 4)), mask=np.zeros((4, 5), bool)), ValueError, "mask has shape"),
])
def test_segment_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
