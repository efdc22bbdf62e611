"""Property tests (Hypothesis) of the kernels against their references.

For any shape (2D/3D, 1-voxel axes included), dtype and memory layout (C, Fortran, strided views,
negative strides, byte-swapped) that a signature admits, a kernel returns the reference result
(scipy.ndimage / scikit-image, with the tolerance stated per test) or raises a clear TypeError /
ValueError. The documented dtypes (uint8, int16, uint16, int32, float32, float64; bool for masks)
must never be rejected on an ordinary shape. Examples are kept small and few so that the whole file
runs in well under a minute.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import medkern as mk  # noqa: E402

ndi = pytest.importorskip("scipy.ndimage")

PROFILE = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

DOCUMENTED = ("uint8", "int16", "uint16", "int32", "float32", "float64")
ODD = ("int8", "int64", "uint64", "float16")
LAYOUTS = ("C", "F", "strided", "reversed", "byteswapped")


# ------------------------------------------------------------------ strategies
@st.composite
def shapes(draw, min_side: int = 1, max_side: int = 7, ndims=(2, 3)):
    nd = draw(st.sampled_from(ndims))
    return tuple(draw(st.integers(min_side, max_side)) for _ in range(nd))


def _values(draw, shape, dtype: np.dtype) -> np.ndarray:
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if dtype.kind == "b":
        return rng.random(shape) > draw(st.sampled_from([0.2, 0.5, 0.8]))
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        span = draw(st.sampled_from([3, 50, 1000]))
        lo = max(int(info.min), -span if info.min < 0 else 0)
        hi = min(int(info.max), span)
        return rng.integers(lo, hi, shape, endpoint=True).astype(dtype)
    scale = draw(st.sampled_from([1.0, 100.0, 3000.0]))
    return (rng.standard_normal(shape) * scale).astype(dtype)


def _layout(x: np.ndarray, layout: str) -> np.ndarray:
    if layout == "F":
        return np.asfortranarray(x)
    if layout == "strided":
        big = np.zeros(tuple(2 * n for n in x.shape), dtype=x.dtype)
        big[tuple(slice(None, None, 2) for _ in x.shape)] = x
        return big[tuple(slice(None, None, 2) for _ in x.shape)]
    if layout == "reversed":
        flipped = np.ascontiguousarray(x[::-1])
        return flipped[::-1]
    if layout == "byteswapped":
        return x.astype(x.dtype.newbyteorder("S")) if x.dtype.itemsize > 1 else x
    return np.ascontiguousarray(x)


@st.composite
def images(draw, dtypes=DOCUMENTED + ODD, min_side: int = 1, max_side: int = 7, ndims=(2, 3)):
    """(array with an arbitrary layout, its plain C-contiguous native copy, documented?)"""
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    shape = draw(shapes(min_side, max_side, ndims))
    base = _values(draw, shape, dtype)
    x = _layout(base, draw(st.sampled_from(LAYOUTS)))
    assert np.array_equal(x, base)
    ordinary = min(shape) >= 2
    return x, base, dtype.name in DOCUMENTED and ordinary


def run_or_reject(fn, documented: bool):
    """The kernel's result, or None when it rejected the input with a clear TypeError/ValueError.
    A documented dtype on an ordinary shape must not be rejected."""
    try:
        return fn()
    except (TypeError, ValueError) as exc:
        assert str(exc).strip(), f"{type(exc).__name__} without a message"
        assert not documented, f"documented input rejected: {type(exc).__name__}: {exc}"
        return None


def assert_close(got, want, rtol: float, atol_scale: float):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol_scale * scale)


# ------------------------------------------------------------------ filters
@PROFILE
@given(img=images(), sigma=st.lists(st.sampled_from([0.0, 0.5, 1.0, 1.7, 3.0]), min_size=3, max_size=3))
def test_gaussian_matches_scipy(img, sigma):
    """gaussian(sigma_vox) == scipy gaussian_filter (mode reflect, truncate 4) to float32 precision."""
    x, base, documented = img
    s = sigma[: x.ndim]
    out = run_or_reject(lambda: mk.gaussian(x, sigma_vox=s), documented)
    if out is None:
        return
    assert out.dtype == np.float32 and out.shape == x.shape
    want = ndi.gaussian_filter(base.astype(np.float64), s, mode="reflect", truncate=4.0)
    assert_close(out, want, rtol=1e-4, atol_scale=1e-5)


@PROFILE
@given(img=images(), radius=st.integers(0, 3), mode=st.sampled_from(["nearest", "reflect", "constant"]))
def test_median_matches_scipy(img, radius, mode):
    """median(radius) == scipy median_filter(size=2r+1) exactly, in the input's dtype."""
    x, base, documented = img
    out = run_or_reject(lambda: mk.median(x, radius=radius, mode=mode), documented)
    if out is None:
        return
    assert out.shape == x.shape and out.dtype == base.dtype
    want = ndi.median_filter(base.astype(np.float64) if base.dtype == np.float16 else base,
                             size=2 * radius + 1, mode=mode)
    np.testing.assert_array_equal(np.asarray(out, dtype=np.float64), want.astype(np.float64))


@PROFILE
@given(img=images(dtypes=("float32", "float64"), min_side=2))
def test_median_rejects_nan(img):
    x, _, _ = img
    x = x.copy()
    x.flat[x.size // 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        mk.median(x, radius=1)


# ------------------------------------------------------------------ segmentation
_STRUCTURE_RANK = {4: 1, 8: 2, 6: 1, 18: 2, 26: 3}


@PROFILE
@given(img=images(dtypes=("bool", "uint8", "int16", "int32", "int64", "uint16"), max_side=8), data=st.data())
def test_label_matches_scipy(img, data):
    """label(mask != 0) numbers components like scipy.ndimage.label with the same connectivity."""
    x, base, _ = img
    mask = x != 0 if x.dtype != np.bool_ else x
    mask_base = base != 0
    conn = data.draw(st.sampled_from([4, 8] if x.ndim == 2 else [6, 18, 26]))
    labels, n = mk.label(mask, connectivity=conn)
    want, n_want = ndi.label(mask_base, structure=ndi.generate_binary_structure(x.ndim, _STRUCTURE_RANK[conn]))
    assert n == n_want
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, want)


@PROFILE
@given(img=images(dtypes=("uint8", "int16", "int32", "uint16"), max_side=6))
def test_label_integer_image_is_cc3d_per_value(img):
    """An integer image: each value's components separately; a component never mixes values."""
    x, base, _ = img
    labels, n = mk.label(x)
    assert labels.shape == x.shape and labels.max() == n
    assert np.all((labels == 0) == (base == 0))
    for c in range(1, n + 1):
        assert np.unique(base[labels == c]).size == 1


@PROFILE
@given(img=images(dtypes=("bool", "uint8", "int16", "float32"), max_side=8),
       spacing=st.lists(st.sampled_from([0.5, 1.0, 2.5]), min_size=3, max_size=3))
def test_distance_transform_matches_scipy(img, spacing):
    """distance_transform == scipy distance_transform_edt(sampling=spacing), relative 1e-5;
    inf where the image holds no zero voxel (documented)."""
    x, base, _ = img
    sp = spacing[: x.ndim]
    out = run_or_reject(lambda: mk.distance_transform(x, spacing=sp), documented=False)
    if out is None:
        return
    fg = base != 0
    assert out.dtype == np.float32 and out.shape == x.shape
    if fg.all():
        assert np.all(np.isinf(out))
        return
    want = ndi.distance_transform_edt(fg, sampling=sp)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)


@PROFILE
@given(img=images(dtypes=DOCUMENTED + ("int8", "float16"), min_side=1))
def test_threshold_otsu_matches_skimage(img):
    """threshold_otsu == skimage.filters.threshold_otsu (integer images: one bin per value; float
    images: 256 bins over [min, max]); a constant image gives its value."""
    from skimage.filters import threshold_otsu

    x, base, documented = img
    out = run_or_reject(lambda: mk.threshold_otsu(x), documented)
    if out is None:
        return
    if base.min() == base.max():
        assert out == float(base.min())
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "looks like an RGB image" for a last axis of 3 or 4
        if base.dtype == np.float16:  # scikit-image bins float16 in float16: compare on float32
            want = threshold_otsu(base.astype(np.float32))
            assert abs(out - want) <= 1e-2 * max(1.0, abs(want)) + (float(base.max()) - float(base.min())) / 128
            return
        want = threshold_otsu(base)
    assert out == pytest.approx(float(want), rel=1e-6, abs=1e-6 * (float(base.max()) - float(base.min())))


# ------------------------------------------------------------------ resampling
@PROFILE
@given(img=images(dtypes=("uint8", "int16", "float32", "float64"), min_side=1, max_side=6), data=st.data())
def test_resample_matches_scipy_zoom(img, data):
    """resample to a spacing that gives a whole number of voxels == scipy zoom(order=1,
    grid_mode=True, mode='nearest') without antialiasing; output keeps the field of view."""
    x, base, _ = img
    factors = []
    for n in x.shape:
        options = [1.0, 0.5] + ([2.0] if n % 2 == 0 else [])
        factors.append(data.draw(st.sampled_from(options)))  # new spacing / old spacing
    spacing = tuple(0.8 * f for f in factors)
    src = mk.Image(x, spacing=(0.8,) * x.ndim)
    out = mk.resample(src, spacing, antialias=False)
    zoom = [1.0 / f for f in factors]
    want = ndi.zoom(base.astype(np.float64), zoom, order=1, grid_mode=True, mode="nearest")
    assert out.shape == want.shape
    assert_close(out.array, want, rtol=1e-5, atol_scale=1e-5)
    # the field of view is kept: the first voxel centre moves by (new - old) / 2 along each axis
    shift = src.direction @ ((np.asarray(spacing) - 0.8) / 2)
    np.testing.assert_allclose(out.origin, np.asarray(src.origin) + shift, atol=1e-9)
    extent_in = np.asarray(x.shape) * 0.8
    extent_out = np.asarray(out.shape) * np.asarray(out.spacing)
    np.testing.assert_allclose(extent_out, extent_in, rtol=1e-12)


@PROFILE
@given(img=images(dtypes=("uint8", "int16", "float32", "float64"), min_side=1, max_side=6))
def test_resample_to_own_spacing_is_identity(img):
    x, base, _ = img
    out = mk.resample(mk.Image(x, spacing=(1.3,) * x.ndim), 1.3)
    assert out.shape == x.shape
    assert_close(out.array, base, rtol=1e-6, atol_scale=1e-6)


# ------------------------------------------------------------------ intensity
@PROFILE
@given(img=images(), center=st.floats(-500, 500), width=st.floats(0.5, 3000))
def test_window_matches_definition(img, center, width):
    """window == clip((x - (c - w/2)) / w, 0, 1) in float32."""
    x, base, documented = img
    out = run_or_reject(lambda: mk.window(x, center, width), documented)
    if out is None:
        return
    assert out.dtype == np.float32
    want = np.clip((base.astype(np.float64) - (center - width / 2)) / width, 0, 1)
    np.testing.assert_allclose(out, want, rtol=0, atol=2e-6)


@PROFILE
@given(img=images(min_side=1), method=st.sampled_from(["zscore", "minmax"]))
def test_normalize_matches_definition(img, method):
    """zscore: (x - mean) / std (ddof 0), minmax: (x - min) / (max - min); constant image -> 0."""
    x, base, documented = img
    out = run_or_reject(lambda: mk.normalize(x, method), documented)
    if out is None:
        return
    b = base.astype(np.float64)
    if method == "zscore":
        std = b.std()
        want = (b - b.mean()) / std if std > 0 else np.zeros_like(b)
    else:
        ptp = b.max() - b.min()
        want = (b - b.min()) / ptp if ptp > 0 else np.zeros_like(b)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)


@PROFILE
@given(img=images(dtypes=("uint8", "uint16", "float32", "float64"), min_side=1, max_side=9),
       clip=st.sampled_from([0.0, 0.01, 0.05]), data=st.data())
def test_clahe_matches_skimage(img, clip, data):
    """clahe == skimage.exposure.equalize_adapthist for the inputs scikit-image takes as they are
    (unsigned integers, floats in [0, 1]) to float32 precision; else [0, 1] output or a clear error."""
    from skimage.exposure import equalize_adapthist

    x, base, documented = img
    if base.dtype.kind == "f":
        lo, hi = float(base.min()), float(base.max())
        base = ((base - lo) / (hi - lo) if hi > lo else np.zeros_like(base)).astype(base.dtype)
        x = _layout(base, "F" if not x.flags.c_contiguous else "C")
    kernel = data.draw(st.one_of(st.none(), st.integers(1, 4)))
    out = run_or_reject(lambda: mk.clahe(x, clip_limit=clip, kernel_size=kernel), documented)
    if out is None:
        return
    assert out.dtype == np.float32 and out.shape == x.shape
    assert np.all(np.isfinite(out)) and out.min() >= 0 and out.max() <= 1
    if min(base.shape) < 2 or base.min() == base.max():
        return  # scikit-image divides by zero or warns on these; only the range is checked
    if base.ndim == 3 and base.shape[-1] in (3, 4):
        return  # scikit-image takes these for RGB(A) images and equalises their HSV value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = equalize_adapthist(base, kernel_size=kernel, clip_limit=clip)
    np.testing.assert_allclose(out, want, rtol=0, atol=2e-6)


@PROFILE
@given(img=images(dtypes=("float32", "float64"), min_side=1),
       which=st.sampled_from(["nan", "inf", "-inf"]))
def test_histogram_kernels_reject_non_finite(img, which):
    """clahe, equalize_hist and threshold_otsu raise ValueError on a non-finite voxel."""
    x, _, _ = img
    x = x.copy()
    x.flat[0] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}[which]
    for fn in (mk.clahe, mk.equalize_hist, mk.threshold_otsu):
        with pytest.raises(ValueError):
            fn(x)


# ------------------------------------------------------------------ shapes every kernel refuses
@pytest.mark.parametrize("fn", [
    lambda x: mk.gaussian(x, sigma_vox=1.0), lambda x: mk.median(x, 1), lambda x: mk.label(x > 0),
    lambda x: mk.distance_transform(x), lambda x: mk.resample(x, 2.0), lambda x: mk.window(x, 0, 1),
    lambda x: mk.normalize(x), lambda x: mk.clahe(x), lambda x: mk.threshold_otsu(x),
], ids=["gaussian", "median", "label", "distance_transform", "resample", "window", "normalize", "clahe",
        "threshold_otsu"])
@pytest.mark.parametrize("shape", [(), (0, 5, 5), (5, 0), (2, 3, 4, 5)], ids=["0-d", "empty3d", "empty2d", "4d"])
def test_degenerate_shapes_raise(fn, shape):
    x = np.ones(shape, np.float32)
    try:
        out = fn(x)
    except (TypeError, ValueError) as exc:
        assert str(exc).strip()
        return
    # an empty input may come back empty, with its shape
    res = out[0] if isinstance(out, tuple) else out
    res = res.array if isinstance(res, mk.Image) else res
    assert np.size(x) == 0 and np.shape(res) == shape, f"{shape} gave {type(out).__name__} {np.shape(res)}"


@pytest.mark.parametrize("dtype", ["complex64", "object", "U2", "datetime64[s]"])
@pytest.mark.parametrize("fn", [
    lambda x: mk.gaussian(x, sigma_vox=1.0), lambda x: mk.median(x, 1), lambda x: mk.label(x),
    lambda x: mk.resample(x, 2.0), lambda x: mk.window(x, 0, 1), lambda x: mk.normalize(x),
    lambda x: mk.clahe(x), lambda x: mk.threshold_otsu(x),
], ids=["gaussian", "median", "label", "resample", "window", "normalize", "clahe", "threshold_otsu"])
def test_unsupported_dtypes_raise(fn, dtype):
    x = np.zeros((4, 5, 6), dtype=dtype)
    with pytest.raises((TypeError, ValueError)):
        fn(x)


# ------------------------------------------------------------------ threads
_THREADED = {
    "gaussian": lambda x: mk.gaussian(x, sigma_vox=1.5),
    "median": lambda x: mk.median(x, radius=1),
    "label": lambda x: mk.label(x > np.median(x))[0],
    "distance_transform": lambda x: mk.distance_transform(x > np.median(x)),
    "clahe": lambda x: mk.clahe(x),
    "resample": lambda x: mk.resample(x, 0.7),
    "normalize": lambda x: mk.normalize(x),
    "threshold_otsu": lambda x: np.float64(mk.threshold_otsu(x)),
}


@pytest.mark.parametrize("name", sorted(_THREADED))
@settings(max_examples=5, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(img=images(dtypes=("uint8", "int16", "float32"), min_side=2, max_side=12))
def test_one_and_several_threads_agree(name, img):
    """Results are identical for 1 and N threads (the design's contract), bit for bit."""
    x, _, _ = img
    before = mk.get_num_threads()
    try:
        mk.set_num_threads(1)
        one = np.asarray(_THREADED[name](x))
        mk.set_num_threads(4)
        many = np.asarray(_THREADED[name](x))
    finally:
        mk.set_num_threads(before)
    np.testing.assert_array_equal(one, many)
