"""Hostile input to the kernels: no crash, no hang, no silent wrong answer.

Cases that used to abort or corrupt the process (an exception leaving an OpenMP region, a NaN or
infinite intensity turned into a histogram index) run in a subprocess, so that a regression shows
as a failed test instead of killing pytest. The others assert the exception type and that the
message names the problem, or compare with the reference implementation.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.ndimage as ndi
from skimage import exposure, filters

import medkern as mk
from medkern import _segment

NON_FINITE = [np.nan, np.inf, -np.inf]


def run_isolated(code: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (medkern and numpy imported as mk, np)."""
    prelude = "import numpy as np\nimport medkern as mk\n"
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout)


def assert_isolated_ok(code: str, expect: str = "OK", timeout: float = 120.0) -> None:
    p = run_isolated(code, timeout)
    assert p.returncode == 0, f"exit {p.returncode}\nstdout: {p.stdout[-2000:]}\nstderr: {p.stderr[-4000:]}"
    assert expect in p.stdout, p.stdout[-2000:]


@pytest.fixture
def img(rng):
    return (rng.random((12, 13, 14)) * 100).astype(np.float32)


# ------------------------------------------------------------------------- former crashes
def test_median_huge_radius_is_a_value_error_not_an_abort():
    # std::bad_alloc from the per-thread window buffers used to leave the OpenMP region and call
    # std::terminate (exit -6).
    assert_isolated_ok("""
        x = np.random.default_rng(0).random((2, 3, 3)).astype(np.float32)
        try:
            mk.median(x, radius=1000)
        except ValueError as e:
            assert "radius 1000" in str(e) and "exceeds the image extent" in str(e), e
            print("OK")
    """)


UNDER_ASAN = "libasan" in __import__("os").environ.get("LD_PRELOAD", "")


@pytest.mark.skipif(UNDER_ASAN, reason="ASan's operator new aborts on out-of-memory instead of throwing")
def test_median_kernel_allocation_failure_raises_memory_error():
    # The compiled kernel itself, past the Python checks: the per-thread window buffers for radius
    # 10**5 on every axis cannot be allocated; std::bad_alloc inside the OpenMP region must come
    # back as MemoryError, not std::terminate.
    assert_isolated_ok("""
        from medkern import _core
        x = np.zeros((2, 3, 3), np.float32)
        try:
            _core.median_filter(x, [10**5, 10**5, 10**5], 0, 2)
        except MemoryError as e:
            print("OK", type(e).__name__)
    """)


def test_box_kernels_bound_the_radius():
    # Radii whose window size overflows int64 are refused by the bindings themselves.
    from medkern import _core

    x = np.zeros((2, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"radius must be in \[0, 2\*\*19\]"):
        _core.median_filter(x, [0, 0, 2**40], 0, 2)
    with pytest.raises(ValueError, match="radius must be in"):
        _core.bilateral_filter(x, [1.0] * 3, [1.0] * 3, [2**21, 0, 0], 10.0, 4.0, 100, 2)


@pytest.mark.parametrize("bad", ["np.inf", "-np.inf", "np.nan"])
def test_clahe_kernel_clamps_non_finite_levels(bad):
    # NaN / inf used to be converted to an int histogram index (undefined) and written past the
    # histogram. The compiled kernel must clamp whatever extremes it is given.
    assert_isolated_ok(f"""
        from medkern import _core
        x = np.random.default_rng(1).random((1, 4, 5)).astype(np.float32) * 100
        x[0, 1, 2] = {bad}
        for lo, hi in ((0.0, 100.0), (float(np.nanmin(x)), float(np.nanmax(x))), (np.nan, np.nan),
                       (-np.inf, np.inf), (50.0, 60.0)):
            out = _core.clahe_skimage(x, [1, 2, 2], lo, hi, False, 256, 2, 2)
            assert out.shape == x.shape
        u = np.clip(x, 0, 1)
        out = _core.clahe_skimage(u, [1, 2, 2], 0.2, 0.3, True, 64, 2, 2)  # extremes that do not hold
        assert out.shape == x.shape
        print("OK")
    """)


def test_clahe_numba_peer_clamps_non_finite_levels():
    pytest.importorskip("numba")
    assert_isolated_ok("""
        from medkern._numba.contrast import clahe_skimage
        x = np.random.default_rng(1).random((1, 4, 5)).astype(np.float32) * 100
        x[0, 1, 2] = np.inf
        x[0, 2, 2] = np.nan
        out = clahe_skimage(x, (1, 2, 2), 0.0, 100.0, False, 256, 2)
        assert out.shape == x.shape
        print("OK")
    """)


@pytest.mark.parametrize("fn", ["clahe", "equalize_hist", "threshold_otsu"])
@pytest.mark.parametrize("bad", ["np.inf", "-np.inf", "np.nan"])
def test_histogram_kernels_reject_non_finite(fn, bad):
    # Before: clahe wrote past its histogram (heap corruption on small inputs); threshold_otsu
    # returned NaN and equalize_hist all NaN for one infinite voxel.
    assert_isolated_ok(f"""
        x = np.random.default_rng(2).random((2, 3, 4)).astype(np.float32)
        x[1, 1, 1] = {bad}
        try:
            mk.{fn}(x)
        except ValueError as e:
            assert "img has 1 non-finite voxel(s)" in str(e), e
            print("OK")
    """)


def test_histogram_kernel_with_infinite_edges_and_nan_values():
    assert_isolated_ok("""
        from medkern import _core
        x = np.array([np.nan, np.inf, -np.inf, 0.0, 1.0, 5.0], np.float64)
        for edges in ([-np.inf, 0.0, np.inf], [0.0, np.nan, 2.0], [0.0, 1e308, np.inf], [-1e308, 1e308]):
            counts = _core.histogram_edges(x, None, np.asarray(edges, np.float64), 2)
            assert counts.sum() <= x.size
        out = _core.interp_map(x, np.array([0.0, 1.0, np.inf]), np.array([0.0, 0.5, 1.0]), 2)
        assert out.shape == x.shape
        print("OK")
    """)


def test_n4_kernels_with_non_finite_log_intensities():
    # n4_fit binned (v - lo) / slope with an infinite slope or value: NaN -> undefined index.
    assert_isolated_ok("""
        from medkern import _core
        rng = np.random.default_rng(3)
        log_image = rng.random((6, 7, 8))
        log_image[2, 3, 4] = np.inf
        log_image[1, 1, 1] = np.nan
        mask = np.ones(log_image.shape, np.uint8)
        u = [np.linspace(0, 1, n) for n in log_image.shape]
        u[0][0] = np.nan
        r = _core.n4_fit(log_image, mask, u, [4, 4, 4], [True, True, True], [3], 50, 0.15, 0.01, 0.0, 2)
        assert r["lattice"].ndim == 3
        print("OK")
    """)


def test_n4_rejects_non_finite_inside_mask(img):
    x = img + 1
    x[3, 4, 5] = np.inf
    with pytest.raises(ValueError, match=r"n4_bias_correction: img has 1 non-finite voxel\(s\) inside the mask"):
        mk.n4_bias_correction(x, mask=np.ones(x.shape, bool), shrink_factor=1)
    with pytest.raises(ValueError, match=r"non-finite voxel\(s\) \(0 NaN, 1 \+-inf\)"):
        mk.n4_bias_correction(x, shrink_factor=1)


@pytest.mark.parametrize("call, match", [
    ("mk.gaussian(x, 1e7)", "kernel radius of 40000000 voxels along axis 0 is far beyond the image"),
    ("mk.gaussian(x, sigma_vox=1.0, truncate=1e9)", "kernel radius"),
    ("mk.log_filter(x, 1e7)", "kernel radius"),
    ("mk.unsharp_mask(x, 1e7)", "kernel radius"),
    ("mk.mean_filter(x, 10**9)", "radius of 1000000000 voxels"),
    ("mk.bilateral(x, 1e6, 10.0)", "exceeds the image extent"),
    ("mk.bilateral(x, 1.0, 10.0, radius=10**6)", "exceeds the image extent"),
    ("mk.anisotropic_diffusion(x, iterations=10**12)", "iterations must be <= 100000"),
    ("mk.clahe(x, kernel_size=10**9)", "exceeds 4 x the image extent"),
    ("mk.clahe((x * 2).astype(np.uint8), method='opencv', tile_grid=10**6)", "more tiles than pixels"),
    ("mk.clahe((x * 2).astype(np.uint8)[0], method='opencv', tile_grid=(10**5, 10**5))", "more tiles than pixels"),
    ("mk.equalize_hist(x, nbins=10**10)", "nbins must be <="),
    ("mk.threshold_otsu(x, nbins=10**10)", "nbins must be <="),
    ("mk.n4_bias_correction(x + 1, shrink_factor=1, iterations=(10**9,))", "iterations must be <= 10000"),
    ("mk.n4_bias_correction(x + 1, shrink_factor=1, histogram_bins=10**10)", "histogram_bins must be in"),
    ("mk.n4_bias_correction(x + 1, shrink_factor=1, control_points=10**6)", "control points at the last level"),
    ("mk.register(mk.Image(x), mk.Image(x), levels=(10**9,))", "exceeds the largest image extent"),
    ("mk.register(mk.Image(x), mk.Image(x), max_iterations=10**12)", "max_iterations must be"),
    ("mk.resample(mk.Image(x), 1e-9)", "voxels (at most"),
])
def test_exploding_parameters_raise_quickly(call, match):
    # Each used to hang, exhaust memory or abort; now a ValueError before any work.
    assert_isolated_ok(f"""
        x = np.random.default_rng(4).random((12, 13, 14)).astype(np.float32) * 100
        try:
            {call}
        except ValueError as e:
            assert {match!r} in str(e), e
            print("OK")
    """, timeout=60)


def test_warp_label_far_outside_is_fill():
    # Axis-aligned label resampling computed neighbour taps for points far outside the image
    # (float -> int conversion of ~1e19, undefined); those points are fill.
    assert_isolated_ok("""
        lab = mk.Image((np.random.default_rng(5).random((6, 7, 8)) > 0.5).astype(np.uint8))
        for shift in (1e19, -1e19, 1e300):
            a = np.eye(4)
            a[:3, 3] = shift
            out = mk.warp(lab, mk.Affine(a), interpolation="label", fill=0)
            assert not out.array.any()
            out = mk.warp(lab, mk.Affine(a), interpolation="nearest", fill=0)
            assert not out.array.any()
        print("OK")
    """)


def test_polygon_fill_with_non_finite_vertices():
    assert_isolated_ok("""
        from medkern import _core
        xy = np.array([1.0, 1.0, np.nan, 1.0, 4.0, 4.0, 1.0, np.inf, -np.inf, 2.0, 1e300, 3.0]).reshape(-1, 2)
        start = np.array([0, 6], np.int64)
        try:
            _core.fill_polygons(xy, start, np.array([0], np.int64), 1, 6, 6, 2)
        except ValueError as e:
            assert "finite vertex" in str(e), e
            print("OK")
    """)


# ------------------------------------------------------------------------- non-finite policy
REJECTING = {
    "median": lambda x: mk.median(x),
    "bilateral": lambda x: mk.bilateral(x, 1.0, 10.0),
    "anisotropic_diffusion": lambda x: mk.anisotropic_diffusion(x),
    "normalize": lambda x: mk.normalize(x),
    "normalize_minmax": lambda x: mk.normalize(x, "minmax"),
    "normalize_percentile": lambda x: mk.normalize(x, "percentile"),
    "equalize_hist": lambda x: mk.equalize_hist(x),
    "clahe": lambda x: mk.clahe(x),
    "threshold_otsu": lambda x: mk.threshold_otsu(x),
    "register": lambda x: mk.register(mk.Image(x), mk.Image(np.nan_to_num(x, posinf=0, neginf=0))),
    "regions": lambda x: mk.regions(np.ones(x.shape, np.uint8), x),
    "radiomics": lambda x: mk.radiomics(x, np.ones(x.shape, np.uint8), features="statistics"),
}


@pytest.mark.parametrize("name", sorted(REJECTING))
@pytest.mark.parametrize("bad", NON_FINITE, ids=["nan", "inf", "-inf"])
def test_non_finite_rejected_with_count(img, name, bad):
    img[3, 4, 5] = bad
    img[0, 0, 1] = bad
    n_nan, n_inf = (2, 0) if np.isnan(bad) else (0, 2)
    with pytest.raises(ValueError, match=rf"2 non-finite voxel\(s\).*\({n_nan} NaN, {n_inf} \+-inf\)"):
        REJECTING[name](img)


@pytest.mark.parametrize("bad", NON_FINITE, ids=["nan", "inf", "-inf"])
def test_linear_filters_propagate_like_scipy(img, bad):
    img[5, 6, 7] = bad
    ours = mk.gaussian(img, sigma_vox=1.0)
    ref = ndi.gaussian_filter(img.astype(np.float64), 1.0, truncate=4.0)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    np.testing.assert_array_equal(np.isposinf(ours), np.isposinf(ref))
    finite = np.isfinite(ref)
    np.testing.assert_allclose(ours[finite], ref[finite], rtol=1e-5, atol=1e-4)  # float32 sums
    # scipy's uniform_filter (running sums) carries a NaN along the rest of each line; the box
    # filter's definition (and medkern) keeps it to the box: compare with the plain correlation.
    box = mk.mean_filter(img, 1)
    ref = ndi.correlate(img.astype(np.float64), np.full((3, 3, 3), 1 / 27), mode="reflect")
    np.testing.assert_array_equal(np.isfinite(box), np.isfinite(ref))


def test_window_maps_infinities_to_the_range_ends(img):
    img[0, 0, 0], img[0, 0, 1], img[0, 0, 2] = np.inf, -np.inf, np.nan
    out = mk.window(img, 50, 100)
    assert out[0, 0, 0] == 1.0 and out[0, 0, 1] == 0.0 and np.isnan(out[0, 0, 2])


def test_threshold_otsu_ignores_non_finite_outside_mask(img):
    mask = np.ones(img.shape, bool)
    mask[0] = False
    img[0, 0, 0] = np.inf
    assert mk.threshold_otsu(img, mask=mask) == pytest.approx(filters.threshold_otsu(img[1:]), abs=0)


def test_threshold_otsu_full_int32_range():
    # Used to raise AttributeError (np.float64.type) for integer images spanning > 2**20 values;
    # they are binned into nbins float bins like a float image.
    x = np.array([[-2**31, 2**31 - 1], [0, 5]], np.int32)
    t = mk.threshold_otsu(x)
    assert t == mk.threshold_otsu(x.astype(np.float64))
    assert -2**31 < t < 2**31 - 1


@pytest.mark.parametrize("fn", [lambda x: mk.equalize_hist(x), lambda x: mk.threshold_otsu(x),
                                lambda x: mk.clahe(x), lambda x: mk.normalize(x, "minmax"),
                                lambda x: mk.normalize(x)])
def test_overflowing_range_is_refused(fn):
    x = np.zeros((4, 5), np.float64)
    x[0, 0], x[1, 1] = -1e308, 1e308
    with pytest.raises(ValueError, match="overflow"):
        fn(x)


def test_equalize_hist_unchanged_on_valid_input(rng):
    x = rng.normal(size=(20, 30)).astype(np.float32)
    np.testing.assert_array_equal(mk.equalize_hist(x), exposure.equalize_hist(x).astype(np.float32))


# ------------------------------------------------------------------------- recursive Gaussian
def test_recursive_gaussian_huge_sigma_refused(img):
    with pytest.raises(ValueError, match=r"sigma of 1e\+06 voxels along axis 0 exceeds 4 x the axis length"):
        mk.gaussian(img, 1e6, method="recursive")


def test_recursive_gaussian_largest_sigma_stays_in_range(img):
    # Before the bound, sigma 1e6 gave +-7e16 on data in [0, 100]. At the largest sigma accepted
    # (4 x the shortest axis) the result stays within the input range.
    out = mk.gaussian(img, sigma_vox=4.0 * min(img.shape), method="recursive")
    assert img.min() - 1e-3 <= out.min() and out.max() <= img.max() + 1e-3


# ------------------------------------------------------------------------- radiomics
def test_radiomics_inf_voxel_in_roi(img):
    img[2, 2, 2] = np.inf
    with pytest.raises(ValueError, match=r"radiomics: img has 1 non-finite voxel\(s\) inside the mask"):
        mk.radiomics(img, np.ones(img.shape, np.uint8), bin_width=25)


def test_radiomics_inf_outside_roi_is_ignored(img):
    mask = np.zeros(img.shape, np.uint8)
    mask[2:8, 2:8, 2:8] = 1
    ref = mk.radiomics(img, mask, features="statistics")
    img[0, 0, 0] = np.inf
    out = mk.radiomics(img, mask, features="statistics")
    assert dict(out) == dict(ref)


def test_radiomics_nan_mask(img):
    m = np.ones(img.shape, np.float32)
    m[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"radiomics: mask has 1 non-finite voxel\(s\)"):
        mk.radiomics(img, m, features="statistics")


def test_radiomics_mask_geometry_mismatch(img):
    mask = mk.Image(np.ones(img.shape, np.uint8), spacing=(2.0, 2.0, 2.0))
    with pytest.raises(ValueError, match=r"mask geometry differs from img geometry: spacing"):
        mk.radiomics(mk.Image(img), mask, features="statistics")
    mask = mk.Image(np.ones(img.shape, np.uint8), origin=(0.0, 0.0, 5.0))
    with pytest.raises(ValueError, match="geometry differs.*origin"):
        mk.radiomics(mk.Image(img), mask, features="statistics")


def test_radiomics_too_many_grey_levels(img):
    with pytest.raises(ValueError, match="grey levels"):
        mk.radiomics(img, np.ones(img.shape, np.uint8), features="glcm", bin_width=1e-12)
    with pytest.raises(ValueError, match="bin_count"):
        mk.radiomics(img, np.ones(img.shape, np.uint8), features="glcm", bin_count=10**9)


def test_regions_geometry_mismatch(img):
    labels = mk.Image(np.ones(img.shape, np.uint8))
    with pytest.raises(ValueError, match="regions: img geometry differs from labels geometry: spacing"):
        mk.regions(labels, mk.Image(img, spacing=(1.0, 1.0, 3.0)))


# ------------------------------------------------------------------------- morphology bounds
def test_huge_ball_is_capped_exactly():
    # A ball beyond the image diagonal is capped to it: same result, bounded work.
    m = np.zeros((6, 7, 8), bool)
    m[3, 3, 3] = m[0, 6, 1] = True
    diag = float(np.hypot(np.hypot(6, 7), 8))
    ref = ndi.binary_dilation(m, structure=_segment.ball(diag, (1.0, 1.0, 1.0)))
    assert ref.all()
    np.testing.assert_array_equal(mk.binary_dilate(m, 1e9), ref)
    assert not mk.binary_erode(np.ones_like(m), 1e9).any()
    np.testing.assert_array_equal(mk.binary_close(m, 1e300), np.zeros_like(m))


def test_mask_with_infinity_refused():
    m = np.zeros((4, 5), np.float32)
    m[1, 1] = np.inf
    with pytest.raises(ValueError, match=r"mask has 1 non-finite voxel\(s\)"):
        mk.binary_dilate(m, 1.0)


# ------------------------------------------------------------------------- resampling
def test_resample_to_non_finite_map_refused(img):
    ref = mk.Image(img, origin=(1e308, 1e308, 1e308))
    with pytest.raises(ValueError, match="not finite in float64"):
        mk.resample_to(mk.Image(img, spacing=(1e-300, 1e-300, 1e-300)), ref)


def test_warp_far_translation_is_fill(img):
    a = np.eye(4)
    a[:3, 3] = 1e300
    for interpolation in ("nearest", "linear", "cubic"):
        out = mk.warp(mk.Image(img), mk.Affine(a), interpolation=interpolation, fill=-1.0)
        assert (out.array == -1).all()


def test_affine_determinant_overflow():
    with pytest.raises(ValueError, match="determinant"):
        mk.Affine(np.diag([1e200, 1e200, 1e200, 1.0]))


def test_displacement_field_non_finite_samples_fill(img):
    d = np.zeros(img.shape + (3,), np.float32)
    d[1, 1, 1, 0] = np.nan
    d[2, 2, 2, 1] = np.inf
    out = mk.warp(mk.Image(img), mk.DisplacementField(mk.Image(d, vector=True)), fill=-5.0).array
    assert out[1, 1, 1] == -5.0 and out[2, 2, 2] == -5.0
    keep = np.ones(img.shape, bool)
    keep[1, 1, 1] = keep[2, 2, 2] = False
    np.testing.assert_array_equal(out[keep], img[keep])


# ------------------------------------------------------------------------- shapes and dtypes
KERNELS = {
    "gaussian": lambda x: mk.gaussian(x, 1.0),
    "gaussian_recursive": lambda x: mk.gaussian(x, 1.0, method="recursive"),
    "mean_filter": lambda x: mk.mean_filter(x),
    "log_filter": lambda x: mk.log_filter(x, 1.0),
    "unsharp_mask": lambda x: mk.unsharp_mask(x, 1.0),
    "median": lambda x: mk.median(x),
    "bilateral": lambda x: mk.bilateral(x, 1.0, 10.0),
    "anisotropic_diffusion": lambda x: mk.anisotropic_diffusion(x),
    "window": lambda x: mk.window(x, 0.5, 1.0),
    "normalize": lambda x: mk.normalize(x),
    "equalize_hist": lambda x: mk.equalize_hist(x),
    "clahe": lambda x: mk.clahe(x),
    "n4_bias_correction": lambda x: mk.n4_bias_correction(x, shrink_factor=1),
    "threshold_otsu": lambda x: mk.threshold_otsu(x),
    "resample": lambda x: mk.resample(x, 2.0),
    "regions": lambda x: mk.regions(np.ones(np.shape(x), np.uint8), x),
}
BAD_ARRAYS = {
    "empty": (lambda a: a[:0], ValueError, "empty|zero|no voxel"),
    "1d": (lambda a: a[0, 0], ValueError, "2D or 3D"),
    "4d": (lambda a: a[None], ValueError, "2D or 3D|4D"),
    "0d": (lambda a: a[0, 0, 0], ValueError, "2D or 3D|0D"),
    "complex": (lambda a: a.astype(np.complex64), TypeError, "complex64"),
    "object": (lambda a: a.astype(object), TypeError, "object"),
}


@pytest.mark.parametrize("bad", sorted(BAD_ARRAYS))
@pytest.mark.parametrize("name", sorted(KERNELS))
def test_bad_arrays_raise_clear_errors(img, name, bad):
    make, exc, match = BAD_ARRAYS[bad]
    if (name, bad) == ("regions", "empty"):
        assert KERNELS[name](make(img)) == []  # no voxel, no region: a valid answer
        return
    with pytest.raises(exc, match=match):
        KERNELS[name](make(img / 100 + 0.01))


@pytest.mark.parametrize("layout", ["fortran", "byteswapped", "strided"])
@pytest.mark.parametrize("name", sorted(KERNELS))
def test_memory_layouts_give_the_c_order_result(img, name, layout):
    x = img / 100 + 0.01
    ref = KERNELS[name](np.ascontiguousarray(x[:, ::2, ::-1] if layout == "strided" else x))
    y = {"fortran": np.asfortranarray(x), "byteswapped": x.astype(x.dtype.newbyteorder()),
         "strided": x[:, ::2, ::-1]}[layout]
    out = KERNELS[name](y)
    if name == "regions":
        assert [r.intensity_mean for r in out] == [r.intensity_mean for r in ref]
    else:
        np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))


def test_clahe_kernel_saturates_caller_extremes_and_clip_limit():
    # Extremes outside an integer image's type, and a clip limit beyond int range, were converted
    # to integers unchecked.
    assert_isolated_ok("""
        from medkern import _core
        x = (np.random.default_rng(6).random((1, 8, 9)) * 200).astype(np.uint8)
        for lo, hi in ((np.nan, np.nan), (-1e300, 1e300), (0.0, 1e12)):
            assert _core.clahe_skimage(x, [1, 4, 4], lo, hi, False, 256, 4, 2).shape == x.shape
        ref = _core.clahe_opencv(x, 2, 2, 0.0, 2)
        np.testing.assert_array_equal(_core.clahe_opencv(x, 2, 2, 1e300, 2), ref)
        print("OK")
    """)


def test_opencv_clahe_huge_clip_limit_is_no_clipping():
    pytest.importorskip("cv2")
    import cv2

    x = (np.random.default_rng(7).random((32, 40)) * 255).astype(np.uint8)
    ref = cv2.createCLAHE(clipLimit=0.0, tileGridSize=(4, 4)).apply(x)
    np.testing.assert_array_equal(mk.clahe(x, method="opencv", clip_limit=1e300, tile_grid=(4, 4)), ref)


def test_bindings_bound_counts_that_feed_index_arithmetic():
    from medkern import _core

    log_image = np.random.default_rng(8).random((6, 7, 8))
    u = [np.linspace(0, 1, n) for n in log_image.shape]
    mask = np.ones(log_image.shape, np.uint8)
    with pytest.raises(ValueError, match="histogram_bins must be in"):
        _core.n4_fit(log_image, mask, u, [4, 4, 4], [True] * 3, [2], 2**30, 0.15, 0.01, 0.0, 2)
    x = np.zeros((4, 5, 6), np.float32)
    for sigma in (np.inf, np.nan, 1e300):
        with pytest.raises(ValueError, match="sigma must be in"):
            _core.smooth_shrink(x, [1, 1, 1], [sigma, 0.0, 0.0], 2)


@pytest.mark.parametrize("fn", [mk.equalize_hist, mk.threshold_otsu, mk.clahe])
def test_float32_range_near_its_limit_is_refused(fn):
    # Finite float32 extremes whose difference overflows float32 gave non-finite bins (NaN Otsu
    # threshold, non-finite equalisation).
    x = (np.random.default_rng(0).random((5, 6, 7)) * 100).astype(np.float32)
    x.flat[3], x.flat[10] = 3e38, -3e38
    with pytest.raises(ValueError, match=r"too wide for float32 histograms"):
        fn(x)


def test_resample_far_beyond_the_field_of_view_is_refused():
    # The anti-aliasing tap table grew with the spacing ratio: 30 GiB for 1e9 mm.
    with pytest.raises(ValueError, match=r"1e\+09 times the input spacing on an axis of 5 voxels"):
        mk.resample(mk.Image(np.zeros((5, 6, 7), np.float32)), 1e9)
    assert mk.resample(mk.Image(np.zeros((5, 6, 7), np.float32)), 20.0).shape == (1, 1, 1)


def test_radiomics_resampling_grid_is_bounded_before_allocating():
    img = mk.Image(np.random.default_rng(0).random((10, 10, 10)).astype(np.float32) * 100)
    mask = np.zeros((10, 10, 10), np.uint8)
    mask[3:7, 3:7, 3:7] = 1
    with pytest.raises(ValueError, match=r"resample_spacing \(0.0001, 0.0001, 0.0001\) mm puts the ROI on a "
                                         r"100000 x 100000 x 100000 grid"):
        mk.radiomics(img, mask, features=("firstorder", "glcm"), bin_count=16, resample_spacing=1e-4)
