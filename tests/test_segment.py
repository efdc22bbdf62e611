"""Segmentation kernels against scipy.ndimage, scikit-image and cc3d, on every CPU backend."""

from __future__ import annotations

import cc3d
import numpy as np
import pytest
import scipy.ndimage as ndi

import medkern as mk

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
    mk.set_num_threads(1)
    try:
        serial = mk.label(mask)
    finally:
        mk.set_num_threads(3)
    threaded = mk.label(mask)
    mk.set_num_threads(2)
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
