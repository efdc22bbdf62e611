"""Enhancement filters against scipy.ndimage, SimpleITK and scikit-image, on every backend."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import SimpleITK as sitk

import medkern as mk

from _helpers import on_backend, to_numpy

DTYPES = [np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64]
MODES = ["reflect", "nearest", "mirror", "wrap", "constant"]


def _random(rng, dtype, shape):
    if np.dtype(dtype).kind == "f":
        return (rng.normal(size=shape) * 100).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -1000), min(info.max, 1000), size=shape).astype(dtype)


def _sitk(a, spacing=None):
    s = sitk.GetImageFromArray(a)
    if spacing is not None:
        s.SetSpacing(tuple(float(v) for v in spacing[::-1]))
    return s


def _skip_gpu_only_cpu(backend, kernel_has_gpu: bool):
    if backend in ("cuda", "cupy") and not kernel_has_gpu:
        pytest.skip("CPU-only kernel")


@pytest.fixture(scope="module")
def mni():
    """A 48^3 crop of the MNI152 T1 template (real anatomy, float32, 1 mm)."""
    nilearn_datasets = pytest.importorskip("nilearn.datasets")
    img = nilearn_datasets.load_mni152_template(resolution=1)
    a = np.asarray(img.get_fdata(), dtype=np.float32)
    return np.ascontiguousarray(a[70:118, 90:138, 60:108])


@pytest.fixture(scope="module")
def chest():
    """A 256^2 crop of the pydicom-data chest radiograph (uint16)."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    path = get_testdata_file("RG1_UNCR.dcm")
    if path is None:
        pytest.skip("pydicom-data chest radiograph not installed")
    return np.ascontiguousarray(pydicom.dcmread(path).pixel_array[800:1056, 800:1056])


# ------------------------------------------------------------------ gaussian (FIR)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ndim", [2, 3])
def test_gaussian_fir_matches_scipy(rng, backend, dtype, ndim):
    a = _random(rng, dtype, (11, 19, 23)[-ndim:])
    sigma = (1.0, 2.0, 0.7)[-ndim:]
    out = to_numpy(mk.gaussian(on_backend(a, backend), sigma_vox=sigma, backend=backend))
    ref = ndi.gaussian_filter(a.astype(np.float64), sigma, mode="reflect", truncate=4.0)
    assert out.dtype == np.float32
    # float32 weights and accumulation against scipy's double: a few float32 ulps of the data scale.
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-6 * np.abs(ref).max() + 1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_gaussian_modes_and_truncate(rng, backend, mode):
    a = _random(rng, np.float32, (9, 12, 7))  # shorter than the kernel on axis 2: wrap-arounds
    out = to_numpy(mk.gaussian(on_backend(a, backend), sigma_vox=(1.5, 0, 2.5),
                                       truncate=3.0, mode=mode, cval=2.5, backend=backend))
    ref = ndi.gaussian_filter(a.astype(np.float64), (1.5, 0, 2.5), mode=mode, cval=2.5, truncate=3.0)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4)


@pytest.mark.parametrize("mode", MODES)
def test_gaussian_axis0_ring_across_threads(rng, cpu_backend, mode):
    """Axis 0 longer than the kernel, so each thread's run of slices fills and recycles its ring
    of filtered planes (and "wrap" reads planes from the far end): scipy's values, and the same
    bits for 1, 2 and 3 threads."""
    a = _random(rng, np.float32, (40, 9, 11))
    ref = ndi.gaussian_filter(a.astype(np.float64), (3.0, 1.0, 0.8), mode=mode, cval=-1.0)
    outs = []
    for threads in (1, 2, 3):
        mk.set_num_threads(threads)
        outs.append(to_numpy(mk.gaussian(a, sigma_vox=(3.0, 1.0, 0.8), mode=mode, cval=-1.0,
                                         backend=cpu_backend)))
    # float32 weights and sums against scipy's double, as in test_gaussian_fir_matches_scipy
    np.testing.assert_allclose(outs[0], ref, rtol=0, atol=2e-6 * np.abs(ref).max() + 1e-6)
    for out in outs[1:]:
        np.testing.assert_array_equal(out, outs[0])


def test_gaussian_sigma_mm_uses_spacing(rng, backend):
    a = _random(rng, np.float32, (10, 16, 16))
    img = mk.Image(on_backend(a, backend), spacing=(3.0, 0.5, 1.0), origin=(1, 2, 3))
    out = mk.gaussian(img, 1.5, backend=backend)
    assert isinstance(out, mk.Image) and out.spacing == img.spacing
    np.testing.assert_array_equal(out.origin, img.origin)
    ref = ndi.gaussian_filter(a.astype(np.float64), (0.5, 3.0, 1.5))
    np.testing.assert_allclose(to_numpy(out), ref, atol=1e-4)


def test_gaussian_on_mni(mni, cpu_backend):
    out = mk.gaussian(mni, sigma_vox=2.0, backend=cpu_backend)
    ref = ndi.gaussian_filter(mni.astype(np.float64), 2.0)
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-6 * np.abs(ref).max())


# ------------------------------------------------------------------ gaussian (recursive)
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_gaussian_recursive_matches_sitk(rng, cpu_backend, dtype, ndim):
    a = _random(rng, dtype, (9, 21, 17)[-ndim:])
    spacing = (2.0, 0.8, 1.1)[-ndim:]
    img = mk.Image(a, spacing=spacing)
    out = mk.gaussian(img, 1.7, method="recursive", backend=cpu_backend).array
    ref = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(
        sitk.Cast(_sitk(a, spacing), sitk.sitkFloat32), 1.7))
    # Same Deriche coefficients, pass order and float storage between passes as ITK.
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_gaussian_recursive_on_mni(mni, cpu_backend):
    out = mk.gaussian(mni, sigma_vox=2.0, method="recursive", backend=cpu_backend)
    ref = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(_sitk(mni), 2.0))
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6 * np.abs(ref).max())


# ------------------------------------------------------------------ mean, LoG, unsharp
@pytest.mark.parametrize("mode", MODES)
def test_mean_filter_matches_scipy(rng, backend, mode):
    a = _random(rng, np.int16, (8, 13, 11))
    out = to_numpy(mk.mean_filter(on_backend(a, backend), (1, 2, 3), mode=mode,
                                          backend=backend))
    ref = ndi.uniform_filter(a.astype(np.float64), (3, 5, 7), mode=mode)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-3)  # float32 sums of values up to 1000


@pytest.mark.parametrize("ndim", [2, 3])
def test_log_matches_scipy(rng, backend, ndim):
    a = _random(rng, np.float32, (12, 15, 14)[-ndim:])
    out = to_numpy(mk.log_filter(on_backend(a, backend), sigma_vox=1.5, backend=backend))
    ref = ndi.gaussian_laplace(a.astype(np.float64), 1.5)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_log_physical_units(rng):
    a = _random(rng, np.float32, (12, 14, 16))
    img = mk.Image(a, spacing=(2.0, 1.0, 0.5))
    out = mk.log_filter(img, 2.0).array
    sv = (1.0, 2.0, 4.0)
    ref = sum(ndi.gaussian_filter(a.astype(np.float64), sv, order=[2 if b == ax else 0 for b in range(3)])
              / img.spacing[ax] ** 2 for ax in range(3))
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_unsharp_mask_matches_sitk_and_scipy(mni, cpu_backend):
    ref = sitk.GetArrayFromImage(sitk.UnsharpMask(_sitk(mni), [1.5] * 3, 0.8, 0.0))
    out = mk.unsharp_mask(mni, 1.5, 0.8, method="recursive", backend=cpu_backend)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    out = mk.unsharp_mask(mni, 1.5, 0.8, mode="nearest", backend=cpu_backend)
    x = mni.astype(np.float64)
    ref = x + 0.8 * (x - ndi.gaussian_filter(x, 1.5, mode="nearest"))
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


# ------------------------------------------------------------------ IBSI 2 phantoms
def _ibsi2_phantom(shared_data, name):
    folder = shared_data / "ibsi" / "ibsi_2_digital_phantom" / "nifti" / name / "image"
    return mk.read(next(folder.glob("*.nii*")))


@pytest.mark.parametrize("mode", ["constant", "nearest", "wrap", "reflect"])
def test_ibsi2_mean_filter_tests_1a(shared_data, mode):
    # IBSI 2 phase 1 tests 1.a.1-1.a.4: checkerboard, 3D mean filter of support 15 voxels, with
    # zero / nearest / periodic / mirror padding (IBSI "mirror" is scipy's "reflect").
    img = _ibsi2_phantom(shared_data, "checkerboard")
    a = img.array.astype(np.float64)
    out = mk.mean_filter(img, 7, mode=mode)
    assert isinstance(out, mk.Image) and out.spacing == (2.0, 2.0, 2.0)
    np.testing.assert_allclose(out.array, ndi.uniform_filter(a, 15, mode=mode), rtol=0, atol=1e-3)


@pytest.mark.parametrize("phantom, sigma_mm, mode", [("impulse", 3.0, "constant"),
                                                     ("checkerboard", 5.0, "reflect"),
                                                     ("sphere", 2.0, "nearest")])
def test_ibsi2_log_tests_2(shared_data, phantom, sigma_mm, mode):
    # IBSI 2 phase 1 tests 2.a (impulse, sigma 3 mm, zero padding) and 2.b (checkerboard, sigma
    # 5 mm, mirror padding): 3D LoG with a 4-sigma cutoff, sigma in mm on the 2 mm grid.
    img = _ibsi2_phantom(shared_data, phantom)
    a = img.array.astype(np.float64)
    out = mk.log_filter(img, sigma_mm, mode=mode).array
    ref = ndi.gaussian_laplace(a, sigma_mm / 2.0, mode=mode, truncate=4.0) / 4.0  # per mm^2
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    if phantom == "impulse":
        # The response to an impulse is the LoG kernel itself: most negative at the impulse.
        assert out.argmin() == a.argmax() and out.min() < 0


# ------------------------------------------------------------------ median
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ndim", [2, 3])
def test_median_matches_scipy_and_sitk(rng, backend, dtype, ndim):
    if backend == "numba" and dtype not in (np.float32, np.int16):
        pytest.skip("numba compiles per dtype; two dtypes cover its code path")
    a = _random(rng, dtype, (9, 17, 21)[-ndim:])
    x = on_backend(a, backend)
    out = to_numpy(mk.median(x, 1, backend=backend))
    assert out.dtype == a.dtype
    np.testing.assert_array_equal(out, sitk.GetArrayFromImage(sitk.Median(_sitk(a), [1] * ndim)))
    np.testing.assert_array_equal(out, ndi.median_filter(a, 3, mode="nearest"))
    radius = (2, 1, 3)[-ndim:]
    out = to_numpy(mk.median(x, radius, mode="reflect", backend=backend))
    np.testing.assert_array_equal(out, ndi.median_filter(a, [2 * r + 1 for r in radius]))


@pytest.mark.parametrize("mode", MODES)
def test_median_modes(rng, backend, mode):
    a = _random(rng, np.float32, (7, 6, 9))
    out = to_numpy(mk.median(on_backend(a, backend), (1, 2, 0), mode=mode, backend=backend))
    np.testing.assert_array_equal(out, ndi.median_filter(a, (3, 5, 1), mode=mode, cval=0.0))


def test_median_on_chest_radiograph(chest):
    out = mk.median(chest, 2)
    np.testing.assert_array_equal(out, sitk.GetArrayFromImage(sitk.Median(_sitk(chest), [2, 2])))


# ------------------------------------------------------------------ bilateral
@pytest.mark.parametrize("ndim", [2, 3])
def test_bilateral_matches_sitk(rng, cpu_backend, ndim):
    a = rng.random((10, 20, 24)[-ndim:], dtype=np.float32)
    spacing = (1.5, 0.9, 1.2)[-ndim:]
    out = mk.bilateral(mk.Image(a, spacing=spacing), 1.6, 0.15, backend=cpu_backend).array
    ref = sitk.GetArrayFromImage(sitk.Bilateral(_sitk(a, spacing), 1.6, 0.15))
    # float32 accumulation of ~10^3 weights; a distance exactly on a table-bin edge may fall in the
    # neighbouring bin under float vs ITK's double rounding (rare, bounded by one weight's share).
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4)
    assert np.abs(out - ref).mean() < 1e-6


def test_bilateral_on_mni(mni, cpu_backend):
    a = np.ascontiguousarray(mni[:24, :32, :32])
    out = mk.bilateral(a, 1.0, 20.0, backend=cpu_backend)
    ref = sitk.GetArrayFromImage(sitk.Bilateral(_sitk(a), 1.0, 20.0))
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4 * np.abs(ref).max())


def test_bilateral_int_input(rng, cpu_backend):
    a = rng.integers(0, 200, (8, 12, 12)).astype(np.uint8)
    out = mk.bilateral(a, 1.0, 30.0, backend=cpu_backend)
    ref = sitk.GetArrayFromImage(sitk.Bilateral(sitk.Cast(_sitk(a), sitk.sitkFloat32), 1.0, 30.0))
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-3)  # float32 of values up to 200


# The GPU paths accumulate in float32 with expf (CUDA) or CuPy's exp, against ITK's double and the
# C++ SIMD exp: the bounds of the CPU tests above, for the same reason (a distance on a range-table
# bin edge may land in the neighbouring bin).
@pytest.mark.parametrize("backend", ["cuda", "cupy"], indirect=True)
@pytest.mark.parametrize("ndim", [2, 3])
def test_bilateral_gpu_matches_cpp_and_sitk(rng, backend, ndim):
    a = rng.random((10, 20, 24)[-ndim:], dtype=np.float32)
    spacing = (1.5, 0.9, 1.2)[-ndim:]
    img = mk.Image(on_backend(a, backend), spacing=spacing)
    out = to_numpy(mk.bilateral(img, 1.6, 0.15, backend=backend))
    assert out.dtype == np.float32 and out.shape == a.shape
    refs = [sitk.GetArrayFromImage(sitk.Bilateral(_sitk(a, spacing), 1.6, 0.15))]
    if mk.backends()["cpp"]:
        refs.append(mk.bilateral(mk.Image(a, spacing=spacing), 1.6, 0.15, backend="cpp").array)
    for ref in refs:
        np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4)
        assert np.abs(out - ref).mean() < 1e-6


@pytest.mark.parametrize("backend", ["cuda", "cupy"], indirect=True)
def test_bilateral_gpu_int_input_and_radius(rng, backend):
    a = rng.integers(0, 200, (8, 12, 12)).astype(np.uint8)
    out = to_numpy(mk.bilateral(on_backend(a, backend), 1.0, 30.0, backend=backend))
    ref = sitk.GetArrayFromImage(sitk.Bilateral(sitk.Cast(_sitk(a), sitk.sitkFloat32), 1.0, 30.0))
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-3)  # float32 of values up to 200
    if mk.backends()["cpp"]:
        # An explicit, anisotropic box (radius overrides the one from sigma_spatial_mm).
        out = to_numpy(mk.bilateral(on_backend(a, backend), (1.0, 2.0, 0.5), 30.0,
                                            radius=(1, 3, 2), backend=backend))
        ref = mk.bilateral(a, (1.0, 2.0, 0.5), 30.0, radius=(1, 3, 2), backend="cpp")
        np.testing.assert_allclose(out, ref, rtol=0, atol=1e-3)


# ------------------------------------------------------------------ bilateral grid
def _ct_phantom(rng, shape=(40, 96, 96), spacing=(2.0, 0.8, 0.8)):
    """A chest-CT-like int16 volume in HU: air, a soft-tissue body, two lungs, a spine and ribs
    (bone), a contrast-filled vessel, and 15 HU of noise."""
    z, y, x = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)],
                          indexing="ij")
    hu = np.full(shape, -1000.0)
    body = (y / 30) ** 2 + (x / 36) ** 2 < 1
    hu[body] = 40
    for side in (-1, 1):
        hu[((y + 2) / 20) ** 2 + ((x - side * 17) / 13) ** 2 < 1] = -850
    hu[((y - 22) / 5) ** 2 + (x / 5) ** 2 < 1] = 700                    # vertebra
    ring = np.abs(np.hypot(y / 30, x / 36) - 0.93) < 0.025
    hu[ring & (np.cos(z / 3) > 0.3)] = 900                               # ribs, every few slices
    hu[(y / 4) ** 2 + ((x + 5) / 4) ** 2 < 1] = 250                      # aorta with contrast
    hu += 15 * rng.standard_normal(shape)
    return mk.Image(np.clip(hu, -1024, 3071).astype(np.int16), spacing=spacing)


def _grid_error(img, sigma_mm, sigma_range):
    """Error of method='grid' against the exact filter, relative to the intensity range."""
    exact = np.asarray(unwrap_array(mk.bilateral(img, sigma_mm, sigma_range)))
    grid = np.asarray(unwrap_array(mk.bilateral(img, sigma_mm, sigma_range, method="grid")))
    a = unwrap_array(img)
    assert grid.dtype == np.float32 and grid.shape == a.shape
    err = np.abs(grid.astype(np.float64) - exact) / float(a.max() - a.min())
    return err.mean(), np.percentile(err, 99), 10 * np.log10(1 / np.mean(err**2))


def unwrap_array(x):
    return x.array if isinstance(x, mk.Image) else x


# The documented error of method="grid" against the exact filter (relative to the intensity range:
# mean absolute error, 99th percentile, PSNR), asserted with margin over what was measured:
#   MNI152 T1 crop, 2 mm, 10% of range     3.0e-3  1.5e-2  47.2 dB
#   CT phantom (int16 HU), 1.5 mm, 50 HU   2.9e-4  1.0e-3  68.7 dB
#   uniform noise 3D, 1.5 vox, 0.15        4.5e-3  1.8e-2  44.5 dB
#   uniform noise 2D, 2 vox, 0.15          5.6e-3  2.1e-2  42.7 dB
#   anisotropic CT (3 x 0.7 x 0.7 mm)      3.0e-4  1.2e-3  68.3 dB
GRID_ERROR_BOUNDS = {"mni": (4.5e-3, 2.2e-2, 44), "ct": (6e-4, 2.5e-3, 62),
                     "noise": (6.5e-3, 2.7e-2, 41), "noise2d": (8e-3, 3.2e-2, 39)}


@pytest.mark.parametrize("case", sorted(GRID_ERROR_BOUNDS))
def test_bilateral_grid_error_vs_exact(mni, rng, case):
    if case == "mni":
        img, sigma_mm, sigma_range = mni, 2.0, 0.1 * float(np.ptp(mni))
    elif case == "ct":
        img, sigma_mm, sigma_range = _ct_phantom(rng), 1.5, 50.0
    elif case == "noise":
        img, sigma_mm, sigma_range = rng.random((24, 40, 40), dtype=np.float32), 1.5, 0.15
    else:
        img, sigma_mm, sigma_range = rng.random((120, 100), dtype=np.float32), 2.0, 0.15
    mean, p99, psnr = _grid_error(img, sigma_mm, sigma_range)
    max_mean, max_p99, min_psnr = GRID_ERROR_BOUNDS[case]
    assert mean < max_mean and p99 < max_p99 and psnr > min_psnr, (mean, p99, psnr)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bilateral_grid_dtypes(rng, dtype):
    a = _random(rng, dtype, (12, 30, 34))
    if np.dtype(dtype).kind == "u":
        a = (a.astype(np.int64) % 200).astype(dtype)
    mean, p99, psnr = _grid_error(a, 1.5, 0.1 * float(np.ptp(a)))  # measured 3.2-3.4e-3, 1.3-1.5e-2, 47 dB
    assert mean < 5e-3 and p99 < 2.2e-2 and psnr > 44, (mean, p99, psnr)


def test_bilateral_grid_anisotropic_spacing(rng):
    # 3 mm slices, 0.7 mm in-plane, sigma 1.5 mm: one grid cell per slice (sigma 0.5 voxel there),
    # 3.2 voxels per cell in-plane. Measured on noise: 6.4e-3, 2.8e-2, 41.2 dB; reading the
    # voxels as isotropic doubles the mean error.
    img = mk.Image(rng.random((16, 48, 48), dtype=np.float32), spacing=(3.0, 0.7, 0.7))
    mean, p99, psnr = _grid_error(img, 1.5, 0.2)
    assert mean < 9e-3 and p99 < 4e-2 and psnr > 38, (mean, p99, psnr)
    exact = mk.bilateral(img, 1.5, 0.2).array
    iso = mk.bilateral(img.array, 1.5, 0.2, method="grid")
    assert np.abs(iso - exact).mean() > 1.5 * mean
    # and on the CT phantom (measured 3.0e-4, 1.2e-3, 68.3 dB)
    mean, p99, psnr = _grid_error(_ct_phantom(rng, (20, 80, 80), (3.0, 0.7, 0.7)), 1.5, 60.0)
    assert mean < 6e-4 and p99 < 2.5e-3 and psnr > 62, (mean, p99, psnr)


def test_bilateral_grid_threads_identical(rng):
    # 60 slices at sigma 1.2 voxels: enough grid planes for several slabs of work, which must give
    # the same bits as one.
    a = _ct_phantom(rng, (60, 40, 48), (1.0, 1.0, 1.0)).array
    mk.set_num_threads(1)
    try:
        one = mk.bilateral(a, 1.2, 40.0, method="grid")
        mk.set_num_threads(5)
        five = mk.bilateral(a, 1.2, 40.0, method="grid")
    finally:
        mk.set_num_threads(2)
    np.testing.assert_array_equal(one, five)
    np.testing.assert_array_equal(one, mk.bilateral(a, 1.2, 40.0, method="grid"))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ndim", [2, 3])
def test_bilateral_grid_constant_stays_constant(dtype, ndim):
    a = np.full((9, 17, 23)[-ndim:], 77, dtype)
    out = mk.bilateral(a, 2.0, 5.0, method="grid")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.float32(77))


@pytest.mark.parametrize("ndim", [2, 3])
def test_bilateral_grid_keeps_step_edge(rng, ndim):
    # A 1000 HU step under 20 HU noise, sigma_range 60: the two sides do not mix, while the noise
    # is smoothed as by the exact filter.
    shape = (16, 40, 40)[-ndim:]
    clean = np.where(np.arange(shape[-1]) < 20, 0.0, 1000.0) * np.ones(shape)
    noisy = (clean + 20 * rng.standard_normal(shape)).astype(np.float32)
    out = mk.bilateral(noisy, 2.0, 60.0, method="grid")
    exact = mk.bilateral(noisy, 2.0, 60.0)
    side = (clean == 0)
    assert out[side].max() < 100 and out[~side].min() > 900          # no mixing across the edge
    assert np.abs(out - clean).std() < 0.5 * np.abs(noisy - clean).std()   # noise smoothed
    np.testing.assert_allclose(out, exact, atol=0.01 * 1000 + 4 * 20 * 0.2)
    step = np.repeat(clean[..., :1, :], 3, axis=-2).astype(np.float32)
    np.testing.assert_allclose(mk.bilateral(step, 2.0, 60.0, method="grid"), step, atol=1e-3)


def test_bilateral_grid_beyond_memory_bound():
    a = np.zeros((4, 64, 64), np.float32)
    a[0, 0, 0] = 1e9  # one outlier stretches the intensity axis to 10^9 / sigma_range cells
    with pytest.raises(ValueError, match="Raise sigma_range, clip outlying intensities"):
        mk.bilateral(a, 1.0, 1.0, method="grid")


# ------------------------------------------------------------------ anisotropic diffusion
@pytest.mark.parametrize("method", ["gradient", "curvature"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_diffusion_matches_sitk(rng, cpu_backend, method, ndim):
    a = rng.random((9, 18, 20)[-ndim:], dtype=np.float32)
    spacing = (2.0, 1.0, 0.8)[-ndim:]
    out = mk.anisotropic_diffusion(mk.Image(a, spacing=spacing), 4, conductance=1.5, method=method,
                                   backend=cpu_backend).array
    fn = sitk.GradientAnisotropicDiffusion if method == "gradient" else sitk.CurvatureAnisotropicDiffusion
    step = min(spacing) / 2 ** (ndim + 1)
    ref = sitk.GetArrayFromImage(fn(_sitk(a, spacing), timeStep=step, conductanceParameter=1.5,
                                    numberOfIterations=4))
    assert np.abs(ref - a).max() > 0.05  # the comparison is not trivially identity
    # float32 arithmetic and a polynomial exp against ITK's double: ~1e-6 per iteration.
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-5)


def test_diffusion_on_mni(mni, cpu_backend):
    a = np.ascontiguousarray(mni[:20, :24, :24])
    out = mk.anisotropic_diffusion(a, 5, method="curvature", backend=cpu_backend)
    ref = sitk.GetArrayFromImage(sitk.CurvatureAnisotropicDiffusion(
        _sitk(a), timeStep=0.0625, conductanceParameter=1.0, numberOfIterations=5))
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_diffusion_large_step_warns():
    with pytest.warns(RuntimeWarning, match="stable step"):
        mk.anisotropic_diffusion(np.ones((6, 6, 6), np.float32), 1, time_step=0.2)


# ------------------------------------------------------------------ threads, geometry
@pytest.mark.parametrize("call", [
    lambda a, b: mk.gaussian(a, sigma_vox=1.3, backend=b),
    lambda a, b: mk.gaussian(a, sigma_vox=1.3, method="recursive", backend=b),
    lambda a, b: mk.median(a, 1, backend=b),
    lambda a, b: mk.bilateral(a, 1.0, 50.0, backend=b),
    lambda a, b: mk.anisotropic_diffusion(a, 2, method="curvature", backend=b),
    lambda a, b: mk.log_filter(a, sigma_vox=1.0, backend=b),
], ids=["gaussian", "recursive", "median", "bilateral", "curvature", "log"])
def test_serial_equals_threaded(rng, cpu_backend, call):
    a = _random(rng, np.float32, (13, 20, 35))
    mk.set_num_threads(1)
    try:
        one = call(a, cpu_backend)
    finally:
        mk.set_num_threads(2)
    np.testing.assert_array_equal(one, call(a, cpu_backend))


def test_cpp_equals_numba(rng):
    if not (mk.backends()["cpp"] and mk.backends()["numba"]):
        pytest.skip("needs both CPU backends")
    a = _random(rng, np.float32, (6, 9, 10))
    for fn in (lambda b: mk.median(a, 1, backend=b),
               lambda b: mk.gaussian(a, sigma_vox=1.0, method="recursive", backend=b)):
        np.testing.assert_array_equal(fn("cpp"), fn("numba"))


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda a: mk.gaussian(a), ValueError, "exactly one of sigma_mm"),
        (lambda a: mk.gaussian(a, 1.0, sigma_vox=1.0), ValueError, "exactly one of sigma_mm"),
        (lambda a: mk.gaussian(a, -1.0), ValueError, "sigma_mm must be >= 0"),
        (lambda a: mk.gaussian(a, (1, 2)), ValueError, "sigma_mm needs 1 or 3 values"),
        (lambda a: mk.gaussian(a, 1.0, truncate=0), ValueError, "truncate"),
        (lambda a: mk.gaussian(a, 1.0, mode="edge"), ValueError, "mode must be one of"),
        (lambda a: mk.gaussian(a, 1.0, method="box"), ValueError, "method must be 'fir' or 'recursive'"),
        (lambda a: mk.gaussian(a, 1.0, method="recursive", mode="wrap"), ValueError, "needs method='fir'"),
        (lambda a: mk.gaussian(a[:2], 1.0, method="recursive"), ValueError, ">= 4 voxels"),
        (lambda a: mk.gaussian(np.zeros((0, 4), np.float32), 1.0), ValueError, "empty"),
        (lambda a: mk.gaussian(a.astype(np.complex64), 1.0), TypeError, "dtype"),
        (lambda a: mk.gaussian(np.zeros(5, np.float32), 1.0), ValueError, "2D or 3D"),
        (lambda a: mk.median(a, 1.5), ValueError, "non-negative integers"),
        (lambda a: mk.median(a, -1), ValueError, "non-negative integers"),
        (lambda a: mk.median(np.full((4, 4), np.nan, np.float32)), ValueError, "NaN"),
        (lambda a: mk.median(a, 1, backend="cupy"), ValueError, "cannot run"),
        (lambda a: mk.mean_filter(a, 1, mode="bad"), ValueError, "mode must be one of"),
        (lambda a: mk.log_filter(a, (1, 0, 1)), ValueError, "sigma must be > 0"),
        (lambda a: mk.bilateral(a, 0.0, 1.0), ValueError, "sigma_spatial_mm must be > 0"),
        (lambda a: mk.bilateral(a, 1.0, 0.0), ValueError, "sigma_range must be positive"),
        (lambda a: mk.bilateral(a, 1.0, np.inf), ValueError, "sigma_range must be positive"),
        (lambda a: mk.bilateral(a, 1.0, 1.0, method="fast"), ValueError, "method must be 'exact' or"),
        (lambda a: mk.bilateral(a, 1.0, 1.0, radius=1, method="grid"), ValueError, "drop radius"),
        (lambda a: mk.bilateral(np.full((4, 4), np.nan, np.float32), 1.0, 1.0, method="grid"),
         ValueError, "NaN"),
        (lambda a: mk.bilateral(np.full((4, 4), np.inf), 1.0, 1.0, method="grid"), ValueError, "inf"),
        (lambda a: mk.anisotropic_diffusion(a, method="heat"), ValueError, "method must be"),
        (lambda a: mk.anisotropic_diffusion(a, -1), ValueError, "iterations"),
        (lambda a: mk.anisotropic_diffusion(a, 2.5), ValueError, "iterations"),
        (lambda a: mk.anisotropic_diffusion(a, conductance=0), ValueError, "conductance"),
        (lambda a: mk.anisotropic_diffusion(a, time_step=-1), ValueError, "time_step"),
        (lambda a: mk.unsharp_mask(a, 1.0, np.nan), ValueError, "amount"),
    ],
)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call(np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7))
