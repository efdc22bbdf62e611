"""window / normalize against SimpleITK and numpy, on every backend."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

import medkern as mk

from _helpers import on_backend, to_numpy

DTYPES = [np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64]


def _random(rng, dtype, shape=(17, 33, 29)):
    if np.dtype(dtype).kind == "f":
        return (rng.normal(size=shape) * 300).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -2000), min(info.max, 3000), size=shape).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ndim", [2, 3])
def test_window_matches_sitk(rng, backend, dtype, ndim):
    a = _random(rng, dtype, (17, 33, 29)[-ndim:])
    center, width = 40.0, 400.0
    ref = sitk.GetArrayFromImage(
        sitk.IntensityWindowing(sitk.Cast(sitk.GetImageFromArray(a), sitk.sitkFloat64),
                                center - width / 2, center + width / 2, 0.0, 1.0))
    out = to_numpy(mk.window(on_backend(a, backend), center, width, backend=backend))
    assert out.dtype == np.float32
    # float32 output of a double computation: half an ulp at 1.0.
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-7)


def test_window_on_real_ct(rng, backend):
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    out = to_numpy(mk.window(on_backend(hu, backend), -600, 1500, backend=backend))
    ref = np.clip((hu - (-600 - 750)) / 1500, 0, 1)
    np.testing.assert_allclose(out, ref, atol=1e-6)


def test_window_keeps_nan_and_geometry(backend):
    a = np.array([[np.nan, 0.0], [10.0, 1e9]], np.float32)
    img = mk.Image(on_backend(a, backend), spacing=(2, 3), origin=(1, 2))
    out = mk.window(img, 5, 10, backend=backend)
    assert isinstance(out, mk.Image) and out.spacing == (2.0, 3.0)
    o = to_numpy(out)
    assert np.isnan(o[0, 0]) and o[0, 1] == 0.0 and o[1, 0] == 1.0 and o[1, 1] == 1.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_normalize_zscore_matches_numpy_and_sitk(rng, backend, dtype):
    a = _random(rng, dtype)
    out = to_numpy(mk.normalize(on_backend(a, backend), "zscore", backend=backend))
    ref = (a.astype(np.float64) - a.mean(dtype=np.float64)) / a.std(dtype=np.float64)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    # SimpleITK's Normalize uses the sample std (n-1); medkern the population std like MONAI.
    s = sitk.GetArrayFromImage(sitk.Normalize(sitk.Cast(sitk.GetImageFromArray(a), sitk.sitkFloat64)))
    n = a.size
    np.testing.assert_allclose(out * np.sqrt((n - 1) / n), s, rtol=1e-5, atol=1e-5)


def test_normalize_masked_and_percentile(rng, backend):
    a = _random(rng, np.float32)
    mask = rng.random(a.shape) > 0.7
    xa, xm = on_backend(a, backend), on_backend(mask, backend)
    z = to_numpy(mk.normalize(xa, "zscore", mask=xm, backend=backend))
    v = a[mask].astype(np.float64)
    np.testing.assert_allclose(z, (a - v.mean()) / v.std(), rtol=1e-5, atol=1e-5)
    mm = to_numpy(mk.normalize(xa, "minmax", mask=xm, backend=backend))
    np.testing.assert_allclose(mm, (a - v.min()) / (v.max() - v.min()), rtol=1e-5, atol=1e-6)
    p = to_numpy(mk.normalize(xa, "percentile", mask=xm, percentiles=(1, 99), clip=True,
                                      backend=backend))
    lo, hi = np.percentile(v, [1, 99])
    np.testing.assert_allclose(p, np.clip((a - lo) / (hi - lo), 0, 1), rtol=1e-5, atol=1e-6)


def test_normalize_constant_image_is_zero(backend):
    a = np.full((4, 4, 4), 7.0, np.float32)
    out = to_numpy(mk.normalize(on_backend(a, backend), backend=backend))
    np.testing.assert_array_equal(out, 0.0)


def test_serial_equals_threaded(rng, cpu_backend):
    a = _random(rng, np.float32, (64, 64, 70))
    mk.set_num_threads(1)
    try:
        one = mk.normalize(a, backend=cpu_backend)
    finally:
        mk.set_num_threads(2)
    two = mk.normalize(a, backend=cpu_backend)
    np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda a: mk.window(a, 0, 0), ValueError, "width"),
        (lambda a: mk.window(a, np.nan, 10), ValueError, "center"),
        (lambda a: mk.window(a, 0, 10, output_range=(1, 0)), ValueError, "output_range"),
        (lambda a: mk.normalize(a, "l2"), ValueError, "method"),
        (lambda a: mk.normalize(a, mask=np.zeros((2, 2), bool)), ValueError, "mask has shape"),
        (lambda a: mk.normalize(a, mask=np.zeros(a.shape, bool)), ValueError, "no voxel"),
        (lambda a: mk.normalize(a.astype(np.complex64)), TypeError, "dtype"),
        (lambda a: mk.normalize(np.full((3, 3), np.nan, np.float32)), ValueError, "NaN"),
        (lambda a: mk.normalize(np.zeros((0, 3), np.float32)), ValueError, "empty"),
        (lambda a: mk.normalize(a, "percentile", percentiles=(50, 10)), ValueError, "percentiles"),
        (lambda a: mk.window(a, 0, 10, backend="cuda"), ValueError, "cannot run"),
        (lambda a: mk.window(a, 0, 10, backend="gpu"), ValueError, "backend"),
        (lambda a: mk.window(np.zeros(4), 0, 10), ValueError, "2D or 3D"),
    ],
)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call(np.arange(27, dtype=np.float32).reshape(3, 3, 3))


def test_set_num_threads_validates():
    with pytest.raises(ValueError, match="positive integer"):
        mk.set_num_threads(0)
    with pytest.raises(ValueError, match="positive integer"):
        mk.set_num_threads(1.5)


def test_backends_report_reasons():
    b = mk.backends()
    assert set(b) == {"cpp", "numba", "cuda", "cupy"}
    assert b["cpp"].available, b["cpp"].detail
    for status in b.values():
        assert status.detail  # every entry says what it is or why it is missing
