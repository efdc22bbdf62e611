"""equalize_hist / clahe / n4_bias_correction against scikit-image, OpenCV and SimpleITK."""

from __future__ import annotations

import numpy as np
import pytest

import medkern as mk

from _helpers import on_backend, to_numpy

cv2 = pytest.importorskip("cv2")
sitk = pytest.importorskip("SimpleITK")
exposure = pytest.importorskip("skimage.exposure")

CLAHE_DTYPES = [np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64]


# The numba peers compile once per dtype (seconds each): they run on these, the compiled
# backends on every dtype.
NUMBA_DTYPES = (np.uint16, np.float32)


def _skip_numba_dtype(backend, dtype):
    if backend == "numba" and dtype not in NUMBA_DTYPES:
        pytest.skip("numba peer checked on uint16 and float32 (JIT compile time per dtype)")


def _random(rng, dtype, shape):
    """Random image in the range scikit-image accepts for the dtype (floats in [0, 1],
    non-negative integers; int32 within uint16 so that the uint16 view is its reference)."""
    if np.dtype(dtype).kind == "f":
        return rng.random(shape).astype(dtype)
    hi = 256 if dtype == np.uint8 else 4000
    return rng.integers(0, hi, size=shape).astype(dtype)


def _skimage_clahe(a, **kw):
    # scikit-image wraps int32 (it casts to int16 with a warning); the same values as uint16 are
    # the definition medkern follows (min-max of the image's own range).
    ref_in = a.astype(np.uint16) if a.dtype == np.int32 else a
    return exposure.equalize_adapthist(ref_in, **kw)


@pytest.fixture(scope="module")
def mni():
    """MNI152 T1 (nilearn), [k, j, i] = (z, y, x), float32 in [0, 1]."""
    datasets = pytest.importorskip("nilearn.datasets")
    t = np.asarray(datasets.load_mni152_template(resolution=1).dataobj, dtype=np.float32)
    return np.ascontiguousarray(t.transpose(2, 1, 0))


@pytest.fixture(scope="module")
def radiograph():
    """pydicom-data chest radiograph RG1_UNCR.dcm (1955 x 1841, 15-bit), every 4th pixel."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    try:
        path = get_testdata_file("RG1_UNCR.dcm")
    except Exception as exc:  # pydicom-data not installed: pydicom raises its own errors
        pytest.skip(f"pydicom-data RG1_UNCR.dcm unavailable: {exc}")
    if path is None:
        pytest.skip("pydicom-data RG1_UNCR.dcm unavailable")
    return np.ascontiguousarray(pydicom.dcmread(path).pixel_array[::4, ::4])


# ---------------------------------------------------------------------------------------------
# CLAHE, scikit-image definition
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", CLAHE_DTYPES)
@pytest.mark.parametrize("ndim", [2, 3])
def test_clahe_matches_skimage_random(rng, backend, dtype, ndim):
    _skip_numba_dtype(backend, dtype)
    a = _random(rng, dtype, (13, 37, 29)[-ndim:] if ndim == 3 else (45, 38))
    for kw in ({}, {"kernel_size": 6, "clip_limit": 0.05, "nbins": 64}):
        ref = _skimage_clahe(a, **kw)
        out = to_numpy(mk.clahe(on_backend(a, backend), backend=backend, **kw))
        assert out.dtype == np.float32
        # Same grey levels, maps and float32 interpolation sums as scikit-image: the only
        # difference is medkern's float32 output of scikit-image's float64 result.
        np.testing.assert_array_equal(out, ref.astype(np.float32))


def test_clahe_matches_skimage_on_mni(mni, backend):
    slab = np.ascontiguousarray(mni[60:100:2, 40:180:2, 30:160:2])
    ref = exposure.equalize_adapthist(slab, kernel_size=(5, 16, 16), clip_limit=0.02)
    out = mk.clahe(on_backend(slab, backend), kernel_size=(5, 16, 16), clip_limit=0.02,
                   backend=backend)
    np.testing.assert_array_equal(to_numpy(out), ref.astype(np.float32))
    axial = np.ascontiguousarray(mni[90])
    ref2 = exposure.equalize_adapthist(axial)
    out2 = mk.clahe(on_backend(axial, backend), backend=backend)
    np.testing.assert_array_equal(to_numpy(out2), ref2.astype(np.float32))


def test_clahe_matches_skimage_on_radiograph(radiograph, cpu_backend):
    ref = exposure.equalize_adapthist(radiograph, clip_limit=0.02)
    out = mk.clahe(radiograph, clip_limit=0.02, backend=cpu_backend)
    np.testing.assert_array_equal(out, ref.astype(np.float32))


def test_clahe_on_ibsi_mr(shared_data, cpu_backend):
    nib = pytest.importorskip("nibabel")
    path = shared_data / "ibsi" / "ibsi_validation" / "nifti" / "STS_001" / "MR_T1_image.nii.gz"
    if not path.exists():
        pytest.skip(f"{path} not found")
    mr = np.asarray(nib.load(path).dataobj, dtype=np.float32)[:, :, 20:36]
    mr = np.ascontiguousarray(mr.transpose(2, 1, 0))
    # scikit-image takes integers or floats in [0, 1]: the MR as 12-bit integers.
    mr12 = np.round(mr / mr.max() * 4095).astype(np.uint16)
    ref = exposure.equalize_adapthist(mr12, kernel_size=(4, 20, 20))
    out = mk.clahe(mr12, kernel_size=(4, 20, 20), backend=cpu_backend)
    np.testing.assert_array_equal(out, ref.astype(np.float32))
    # The float MR in its own range (scikit-image would reject it) equals the 12-bit one up to the
    # quantisation: same contrast, well correlated.
    out_f = mk.clahe(mr, kernel_size=(4, 20, 20), backend=cpu_backend)
    assert np.corrcoef(out_f.ravel(), out.ravel())[0, 1] > 0.99


def test_clahe_large_kernel_reflects_like_numpy(rng, cpu_backend):
    # Regions larger than the image: numpy's 'reflect' padding folds several times.
    a = _random(rng, np.uint8, (5, 7, 6))
    ref = exposure.equalize_adapthist(a, kernel_size=(9, 11, 13), clip_limit=0.1)
    np.testing.assert_array_equal(mk.clahe(a, kernel_size=(9, 11, 13), clip_limit=0.1,
                                           backend=cpu_backend), ref.astype(np.float32))


def test_clahe_negative_int16_uses_own_range(rng, cpu_backend):
    # CT in HU: medkern rescales the image's own range (scikit-image clips negatives to 0); the
    # result equals scikit-image on the same values shifted to start at 0.
    ct = rng.integers(-1024, 1500, size=(30, 40)).astype(np.int16)
    shifted = (ct.astype(np.int32) + 1024).astype(np.uint16)
    np.testing.assert_array_equal(mk.clahe(ct, backend=cpu_backend),
                                  exposure.equalize_adapthist(shifted).astype(np.float32))


def test_clahe_constant_and_geometry(cpu_backend):
    img = mk.Image(np.full((12, 10), 7, np.uint16), spacing=(0.5, 0.7), origin=(3, 4))
    out = mk.clahe(img, backend=cpu_backend)
    assert isinstance(out, mk.Image) and out.spacing == (0.5, 0.7)
    np.testing.assert_array_equal(out.origin, img.origin)
    np.testing.assert_array_equal(out.array,
                                  exposure.equalize_adapthist(img.array).astype(np.float32))


# ---------------------------------------------------------------------------------------------
# CLAHE, OpenCV definition
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype, levels", [(np.uint8, 256), (np.uint16, 4096), (np.uint16, 65536)])
@pytest.mark.parametrize("shape", [(64, 48), (37, 53), (9, 100)])
@pytest.mark.parametrize("clip, grid", [(40.0, (8, 8)), (2.0, (3, 5)), (0.0, (4, 4))])
def test_clahe_opencv_matches_cv2(rng, cpu_backend, dtype, levels, shape, clip, grid):
    if cpu_backend == "numba" and (dtype == np.uint8 or levels == 65536 or shape != (37, 53)):
        pytest.skip("numba peer checked on one uint16 shape (JIT compile time)")
    a = rng.integers(0, levels, size=shape).astype(dtype)
    ref = cv2.createCLAHE(clipLimit=clip, tileGridSize=grid[::-1]).apply(a)
    out = mk.clahe(a, method="opencv", clip_limit=clip, tile_grid=grid, backend=cpu_backend)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, ref)


def test_clahe_opencv_on_radiograph_and_stack(radiograph, cpu_backend):
    ref = cv2.createCLAHE(clipLimit=3.0, tileGridSize=(8, 8)).apply(radiograph)
    np.testing.assert_array_equal(
        mk.clahe(radiograph, method="opencv", clip_limit=3.0, backend=cpu_backend), ref)
    stack = np.stack([radiograph[:100, :120], radiograph[100:200, :120]])
    out = mk.clahe(stack, method="opencv", clip_limit=3.0, tile_grid=(4, 4), backend=cpu_backend)
    c = cv2.createCLAHE(clipLimit=3.0, tileGridSize=(4, 4))
    np.testing.assert_array_equal(out, np.stack([c.apply(s) for s in stack]))


# ---------------------------------------------------------------------------------------------
# equalize_hist
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("use_mask", [False, True])
def test_equalize_hist_matches_skimage(rng, cpu_backend, dtype, use_mask):
    _skip_numba_dtype(cpu_backend, dtype)
    if dtype == np.uint8:
        a = rng.integers(0, 256, size=(20, 30, 17)).astype(dtype)
    else:
        a = (rng.normal(size=(20, 30, 17)) * 300 + 500).astype(dtype)
    mask = rng.random(a.shape) > 0.6 if use_mask else None
    ref = exposure.equalize_hist(a, nbins=100, mask=mask)
    out = mk.equalize_hist(a, nbins=100, mask=mask, backend=cpu_backend)
    assert out.dtype == np.float32
    # Same bins (numpy.histogram edges / one per integer) and numpy.interp arithmetic.
    np.testing.assert_array_equal(out, ref.astype(np.float32))


def test_equalize_hist_on_real_images(mni, radiograph, cpu_backend):
    ref = exposure.equalize_hist(mni[::3, ::3, ::3], mask=mni[::3, ::3, ::3] > 0.1)
    out = mk.equalize_hist(mni[::3, ::3, ::3], mask=mni[::3, ::3, ::3] > 0.1, backend=cpu_backend)
    np.testing.assert_array_equal(out, ref.astype(np.float32))
    np.testing.assert_array_equal(mk.equalize_hist(radiograph, backend=cpu_backend),
                                  exposure.equalize_hist(radiograph).astype(np.float32))


def test_equalize_hist_constant_float(cpu_backend):
    a = np.full((6, 7), 0.25, np.float32)
    np.testing.assert_array_equal(mk.equalize_hist(a, backend=cpu_backend),
                                  exposure.equalize_hist(a).astype(np.float32))


# ---------------------------------------------------------------------------------------------
# N4
# ---------------------------------------------------------------------------------------------

def _known_bias(shape):
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    if len(shape) == 3:
        k, j, i = grids
        return 0.25 * k + 0.2 * j * j - 0.15 * i + 0.1 * k * i
    j, i = grids
    return 0.3 * j - 0.25 * i * i + 0.1 * i * j


def _sitk_n4(img, mask, iterations):
    s, m = sitk.GetImageFromArray(img), sitk.GetImageFromArray(mask.astype(np.uint8))
    f = sitk.N4BiasFieldCorrectionImageFilter()
    f.SetMaximumNumberOfIterations(list(iterations))
    f.SetConvergenceThreshold(0.0)
    f.Execute(s, m)
    return sitk.GetArrayFromImage(f.GetLogBiasFieldAsImage(s))


@pytest.mark.parametrize("ndim", [2, 3])
def test_n4_matches_simpleitk_on_same_grid(mni, ndim):
    # Same input, no shrinking: the same algorithm gives the same field (up to N4's arbitrary
    # constant, removed by centring); ITK differs in summation order and FFT rounding only.
    # (ITK's histogram range misses the minimum when the first masked voxel holds it: its
    # min/max scan is an if / else-if. Neither grid here starts on the minimum.)
    anat = mni[::5, ::5, ::5] if ndim == 3 else mni[95, ::2, ::2]
    log_true = _known_bias(anat.shape)
    img = (anat * 100 * np.exp(log_true)).astype(np.float32)
    mask = anat > 0.2
    iterations = (15, 15, 15)  # a fixed count: no threshold decides where either one stops
    _, bias = mk.n4_bias_correction(img, mask, shrink_factor=1, iterations=iterations,
                                    convergence_threshold=0.0, return_bias_field=True)
    ours, ref = np.log(bias)[mask], _sitk_n4(img, mask, iterations)[mask]
    ours, ref = ours - ours.mean(), ref - ref.mean()
    assert np.corrcoef(ours, ref)[0, 1] > 0.9999
    assert np.abs(ours - ref).max() < 5e-3
    assert np.corrcoef(ours, log_true[mask])[0, 1] > 0.9


def test_n4_recovers_known_field_on_mni(mni):
    # The SimpleITK user's workflow (shrink 4, four fitting levels) on the 1 mm MNI152 T1 cropped,
    # with a known multiplicative field: recovered-field correlation and white-matter CV.
    anat = np.ascontiguousarray(mni[40:150, 30:200, 20:170])
    log_true = _known_bias(anat.shape)
    img = mk.Image((anat * 100 * np.exp(log_true)).astype(np.float32), spacing=(1, 1, 1))
    mask = anat > 0.2
    corrected, bias = mk.n4_bias_correction(img, mask, shrink_factor=4, return_bias_field=True)
    assert isinstance(corrected, mk.Image) and isinstance(bias, mk.Image)
    lb = np.log(bias.array[mask])
    assert np.corrcoef(lb, log_true[mask])[0, 1] > 0.93
    white = anat > 0.75
    cv_before = img.array[white].std() / img.array[white].mean()
    cv_after = corrected.array[white].std() / corrected.array[white].mean()
    cv_true = anat[white].std() / anat[white].mean()
    assert cv_after < 0.6 * cv_before and cv_after < 1.5 * cv_true
    np.testing.assert_allclose(corrected.array * bias.array, img.array, rtol=2e-6)


def test_n4_without_mask_uses_positive_voxels(mni):
    anat = mni[::5, ::5, ::5]
    log_true = _known_bias(anat.shape)
    img = (anat * 100 * np.exp(log_true)).astype(np.float32)
    img[anat < 0.05] = 0.0
    out = mk.n4_bias_correction(img, shrink_factor=1, iterations=(10, 10))
    assert out.dtype == np.float32 and out.shape == img.shape
    np.testing.assert_array_equal(out[img == 0], 0.0)
    inside = anat > 0.3
    assert np.corrcoef(np.log(img[inside] / out[inside]), log_true[inside])[0, 1] > 0.8


# ---------------------------------------------------------------------------------------------
# threads, errors
# ---------------------------------------------------------------------------------------------

def test_serial_equals_threaded(rng, mni, cpu_backend):
    # Light passes use one thread per 2^18 voxels: every input here is big enough for two.
    vol = _random(rng, np.float32, (64, 96, 96))
    wide = rng.integers(0, 4096, size=(1024, 520)).astype(np.uint16)
    img = (mni[::2, ::2, ::2] * 100 + 1).astype(np.float32)

    def run():
        out = [mk.clahe(vol, backend=cpu_backend),
               mk.clahe(wide, method="opencv", backend=cpu_backend),
               mk.equalize_hist(vol, mask=vol > 0.3, backend=cpu_backend)]
        if cpu_backend == "cpp":
            out.append(mk.n4_bias_correction(img, shrink_factor=1, iterations=(3, 3)))
        return out

    mk.set_num_threads(1)
    try:
        one = run()
    finally:
        mk.set_num_threads(2)
    for a, b in zip(one, run()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda a: mk.clahe(a, clip_limit=-0.1), ValueError, "clip_limit"),
        (lambda a: mk.clahe(a, clip_limit=np.nan), ValueError, "clip_limit"),
        (lambda a: mk.clahe(a, kernel_size=(2, 2)), ValueError, "kernel_size"),
        (lambda a: mk.clahe(a, kernel_size=0), ValueError, "kernel_size"),
        (lambda a: mk.clahe(a, nbins=0), ValueError, "nbins"),
        (lambda a: mk.clahe(a, nbins=2**17), ValueError, "nbins"),
        (lambda a: mk.clahe(np.zeros((64, 512, 512), np.uint8), kernel_size=1), ValueError,
         "larger regions"),
        (lambda a: mk.clahe(a, method="ahe"), ValueError, "method"),
        (lambda a: mk.clahe(a, tile_grid=(8, 8)), ValueError, "tile_grid"),
        (lambda a: mk.clahe(a.astype(np.uint8), method="opencv", kernel_size=4), ValueError,
         "kernel_size"),
        (lambda a: mk.clahe(a, method="opencv"), TypeError, "uint8 or uint16"),
        (lambda a: mk.clahe(a.astype(np.uint8), method="opencv", tile_grid=(0, 4)), ValueError,
         "tile_grid"),
        (lambda a: mk.clahe(np.full((4, 4), np.nan, np.float32)), ValueError, "NaN"),
        (lambda a: mk.clahe(np.zeros((0, 4), np.float32)), ValueError, "empty"),
        (lambda a: mk.clahe(a.astype(np.complex64)), TypeError, "dtype"),
        (lambda a: mk.clahe(a, backend="cuda"), ValueError, "cannot run"),
        (lambda a: mk.equalize_hist(a, nbins=1.5), ValueError, "nbins"),
        (lambda a: mk.equalize_hist(a, mask=np.zeros((2, 2), bool)), ValueError, "mask has shape"),
        (lambda a: mk.equalize_hist(a, mask=np.zeros(a.shape, bool)), ValueError, "no voxel"),
        (lambda a: mk.equalize_hist(np.array([[0, 2**30]], np.int32)), ValueError, "float32"),
        (lambda a: mk.n4_bias_correction(-a), ValueError, "positive"),
        (lambda a: mk.n4_bias_correction(a, iterations=()), ValueError, "iterations"),
        (lambda a: mk.n4_bias_correction(a, iterations=(10, 0)), ValueError, "iterations"),
        (lambda a: mk.n4_bias_correction(a, control_points=3), ValueError, "control_points"),
        (lambda a: mk.n4_bias_correction(a, shrink_factor=(2, 2)), ValueError, "shrink_factor"),
        (lambda a: mk.n4_bias_correction(a, fwhm=0), ValueError, "fwhm"),
        (lambda a: mk.n4_bias_correction(a, wiener_noise=-1), ValueError, "wiener_noise"),
        (lambda a: mk.n4_bias_correction(a, histogram_bins=1), ValueError, "histogram_bins"),
        (lambda a: mk.n4_bias_correction(a, shrink_factor=8), ValueError, "shrink_factor"),
        (lambda a: mk.n4_bias_correction(a, backend="numba"), ValueError, "no 'numba'"),
    ],
)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call(np.arange(1, 6 * 7 * 8 + 1, dtype=np.float32).reshape(6, 7, 8))
