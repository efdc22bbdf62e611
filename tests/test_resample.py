"""resample / resample_to / warp / map_coordinates against scipy.ndimage and SimpleITK.

Tolerances: linear and cubic results are float32 (float64 for float64 input) while scipy and ITK
compute in double, so results agree to float32 rounding of the data range: 1e-5 relative to the
input's largest magnitude. Nearest and label results are exact, except where a sample point sits
on a rounding tie within float rounding of the coordinates (those voxels are excluded).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import SimpleITK as sitk

import medkern as mk
from medkern._resample import map_coordinates

from _helpers import on_backend, random_direction, to_numpy

DTYPES = [np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64]
ORDER = {"nearest": 0, "linear": 1, "cubic": 3}
# scipy boundary mode that equals medkern's rule inside [-0.5, n - 0.5)
MODE = {"nearest": "nearest", "linear": "nearest", "cubic": "mirror"}
SITK_INTERP = {"nearest": sitk.sitkNearestNeighbor, "linear": sitk.sitkLinear, "cubic": sitk.sitkBSpline}


def _random(rng, dtype, shape, smooth=1.0):
    a = ndi.gaussian_filter(rng.normal(size=shape), smooth) * 400 + 100
    if np.dtype(dtype).kind == "f":
        return a.astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(a, info.min, info.max).astype(dtype)


def _tol(x):
    return 1e-5 * max(1.0, float(np.abs(x.astype(np.float64)).max()))


def _zoom_map(n_in, n_out, old, new):
    n_in, n_out = np.asarray(n_in), np.asarray(n_out)
    scale = np.asarray(new, float) / np.asarray(old, float)
    return scale, (n_in - 1) / 2 - (n_out - 1) / 2 * scale


def _not_tie(coords):
    """Mask of sample points not within 1e-6 of a nearest-neighbour rounding tie."""
    frac = np.abs(np.asarray(coords) - np.floor(coords) - 0.5)
    return np.all(frac > 1e-6, axis=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("interpolation", ["linear", "cubic"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_resample_matches_scipy(rng, cpu_backend, dtype, interpolation, ndim):
    if cpu_backend == "numba" and dtype not in (np.int16, np.float32):
        pytest.skip("numba converts every dtype to float64 first; two dtypes bound the JIT time")
    shape = (11, 19, 23)[-ndim:]
    spacing = (2.5, 0.7, 0.9)[-ndim:]
    new = (1.0, 1.3, 0.6)[-ndim:]
    x = _random(rng, dtype, shape)
    out = mk.resample(mk.Image(x, spacing=spacing), new, interpolation, antialias=True, backend=cpu_backend)
    assert out.dtype == (np.float64 if dtype == np.float64 else np.float32)
    assert out.spacing == new
    scale, offset = _zoom_map(shape, out.shape, spacing, new)
    smoothed = ndi.gaussian_filter(x.astype(np.float64), np.maximum(0, (scale - 1) / 2), mode="mirror")
    ref = ndi.affine_transform(smoothed, scale, offset, output_shape=out.shape,
                               order=ORDER[interpolation], mode=MODE[interpolation])
    np.testing.assert_allclose(out.array, ref, rtol=0, atol=_tol(x))


@pytest.mark.parametrize("interpolation", ["linear", "cubic"])
def test_resample_is_zoom_grid_mode(rng, cpu_backend, interpolation):
    # 24 * 1.5 mm = 36 mm = 18 * 2 mm: whole extent, so resample == zoom(grid_mode=True).
    x = _random(rng, np.float32, (10, 24, 30))
    out = mk.resample(mk.Image(x, spacing=(2.0, 1.5, 1.0)), (1.0, 2.0, 1.5), interpolation,
                      antialias=False, backend=cpu_backend)
    assert out.shape == (20, 18, 20)
    ref = ndi.zoom(x.astype(np.float64), np.array(out.shape) / np.array(x.shape), order=ORDER[interpolation],
                   mode="grid-mirror" if interpolation == "cubic" else "nearest", grid_mode=True)
    if interpolation == "cubic":
        ref = ndi.affine_transform(x.astype(np.float64), np.array(x.shape) / np.array(out.shape),
                                   (np.array(x.shape) / np.array(out.shape) - 1) / 2,
                                   output_shape=out.shape, order=3, mode="mirror")
    np.testing.assert_allclose(out.array, ref, rtol=0, atol=_tol(x))
    # the field of view is kept: first and last voxel edges coincide, centre too
    img = mk.Image(x, spacing=(2.0, 1.5, 1.0), origin=(5, -3, 2))
    r = mk.resample(img, (1.0, 2.0, 1.5), interpolation, backend=cpu_backend)
    lo_in = img.index_to_world(np.full(3, -0.5))
    lo_out = r.index_to_world(np.full(3, -0.5))
    np.testing.assert_allclose(lo_out, lo_in, atol=1e-9)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, np.int64, np.bool_])
@pytest.mark.parametrize("ndim", [2, 3])
def test_resample_nearest_keeps_dtype_and_matches_scipy(rng, cpu_backend, dtype, ndim):
    if cpu_backend == "numba" and dtype not in (np.uint8, np.float32):
        pytest.skip("numba copies element bits; two element sizes bound the JIT time")
    shape = (9, 17, 21)[-ndim:]
    x = (rng.random(shape) * 50).astype(dtype)
    spacing, new = (3.0, 0.8, 0.9)[-ndim:], (1.1, 1.7, 0.45)[-ndim:]
    out = mk.resample(mk.Image(x, spacing=spacing), new, "nearest", backend=cpu_backend)
    assert out.dtype == x.dtype
    scale, offset = _zoom_map(shape, out.shape, spacing, new)
    coords = np.stack(np.meshgrid(*[np.arange(n) for n in out.shape], indexing="ij")).astype(float)
    coords = coords * scale.reshape((-1,) + (1,) * ndim) + offset.reshape((-1,) + (1,) * ndim)
    ref = ndi.map_coordinates(x.astype(np.float64), coords, order=0, mode="nearest")
    ok = _not_tie(coords)
    assert ok.mean() > 0.5
    np.testing.assert_array_equal(out.array[ok].astype(np.float64), ref[ok])


def test_resample_bare_array_uses_unit_spacing(rng, cpu_backend):
    x = _random(rng, np.float32, (8, 12, 10))
    out = mk.resample(x, 2.0, antialias=False, backend=cpu_backend)
    assert isinstance(out, np.ndarray) and out.shape == (4, 6, 5)
    ref = ndi.zoom(x.astype(np.float64), 0.5, order=1, mode="nearest", grid_mode=True)
    np.testing.assert_allclose(out, ref, atol=_tol(x))


def _oblique_pair(rng, shape=(14, 18, 16), ref_shape=(12, 15, 17)):
    x = _random(rng, np.float32, shape, smooth=1.5)
    img = mk.Image(x, spacing=(1.5, 1.1, 0.9), origin=(3, -2, 5), direction=random_direction(rng))
    centre = img.index_to_world((np.array(shape) - 1) / 2)
    d2 = random_direction(rng, flip=False)
    sp = np.array((1.2, 1.0, 1.3))
    origin = centre - d2 @ (sp * (np.array(ref_shape) - 1) / 2)
    ref = mk.Image(np.zeros(ref_shape, np.uint8), spacing=sp, origin=origin, direction=d2)
    return img, ref, centre


@pytest.mark.parametrize("interpolation", ["nearest", "linear", "cubic"])
def test_resample_to_oblique_matches_sitk(rng, cpu_backend, interpolation):
    img, ref, centre = _oblique_pair(rng)
    t = mk.Affine.rotation((5, -7, 10), center=centre) @ mk.Affine.from_parts(np.eye(3) * 1.05, (1, 2, -1))
    out = mk.resample_to(img, ref, t, interpolation, fill=-5, backend=cpu_backend)
    s = sitk.Resample(img.to_sitk(), ref.to_sitk(), t.to_sitk(), SITK_INTERP[interpolation], -5.0,
                      sitk.sitkFloat32)
    expected = mk.Image.from_sitk(s)
    assert out.same_geometry(expected, atol=1e-9)
    assert (out.array == -5).mean() > 0.05  # part of the output lies outside the input
    np.testing.assert_allclose(out.array, expected.array, rtol=0, atol=1e-4 * np.abs(img.array).max())


@pytest.mark.parametrize("interpolation", ["nearest", "linear", "cubic"])
def test_resample_to_flipped_axis_aligned_matches_sitk(rng, cpu_backend, interpolation):
    # flipped axes and a spacing change: the separable path
    x = _random(rng, np.int16, (12, 20, 18))
    img = mk.Image(x, spacing=(2.0, 0.8, 0.7), origin=(10, 20, -30), direction=np.diag([-1.0, 1.0, -1.0]))
    ref = mk.Image(np.zeros((20, 13, 15), np.uint8), spacing=(1.1, 1.3, 0.9), origin=(5, 18, -28),
                   direction=np.diag([-1.0, -1.0, 1.0]))
    out = mk.resample_to(img, ref, interpolation=interpolation, fill=3, backend=cpu_backend)
    s = sitk.Resample(img.to_sitk(), ref.to_sitk(), sitk.Transform(), SITK_INTERP[interpolation], 3.0,
                      sitk.sitkFloat64)
    np.testing.assert_allclose(out.array, sitk.GetArrayFromImage(s), rtol=0, atol=1e-4 * np.abs(x).max())
    assert out.dtype == (np.int16 if interpolation == "nearest" else np.float32)


def test_warp_displacement_field_and_composites_match_sitk(rng, cpu_backend):
    img, ref, centre = _oblique_pair(rng)
    u = ndi.gaussian_filter(rng.normal(size=ref.shape + (3,)), (2, 2, 2, 0)) * 20
    field = mk.DisplacementField(ref.with_array(u, vector=True))
    t = mk.Affine.rotation((3, 4, -6), center=centre)
    cases = [(field, field.to_sitk()),
             (t @ field, sitk.CompositeTransform([t.to_sitk(), field.to_sitk()])),
             (field @ t, sitk.CompositeTransform([field.to_sitk(), t.to_sitk()]))]
    for transform, sitk_transform in cases:
        out = mk.warp(img, transform, reference=ref, backend=cpu_backend)
        s = sitk.Resample(img.to_sitk(), ref.to_sitk(), sitk_transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        np.testing.assert_allclose(out.array, sitk.GetArrayFromImage(s), rtol=0,
                                   atol=1e-4 * np.abs(img.array).max())


def test_displacement_field_on_another_grid(rng, cpu_backend):
    img, ref, _ = _oblique_pair(rng)
    coarse = mk.resample(ref, (3.0, 3.0, 3.0), "nearest")
    u = ndi.gaussian_filter(rng.normal(size=coarse.shape + (3,)), (1, 1, 1, 0)) * 10
    field = mk.DisplacementField(coarse.with_array(u, vector=True))
    out = mk.warp(img, field, reference=ref, backend=cpu_backend)
    s = sitk.Resample(img.to_sitk(), ref.to_sitk(), field.to_sitk(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    np.testing.assert_allclose(out.array, sitk.GetArrayFromImage(s), rtol=0, atol=1e-4 * np.abs(img.array).max())


@pytest.mark.parametrize("interpolation", ["nearest", "linear", "cubic"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_map_coordinates_matches_scipy(rng, cpu_backend, interpolation, ndim):
    x = _random(rng, np.float32, (9, 13, 11)[-ndim:])
    n = np.array(x.shape)
    coords = rng.uniform(-0.15, 1.1, size=(ndim, 400)) * n[:, None]
    out = map_coordinates(x, coords, interpolation, fill=-7.0, backend=cpu_backend)
    ref = ndi.map_coordinates(x.astype(np.float64), coords, order=ORDER[interpolation], mode=MODE[interpolation])
    inside = np.all((coords >= -0.5) & (coords < n[:, None] - 0.5), axis=0)
    assert 0.2 < inside.mean() < 0.9
    ok = inside & (_not_tie(coords) if interpolation == "nearest" else True)
    np.testing.assert_allclose(out[ok], ref[ok], rtol=0, atol=_tol(x))
    np.testing.assert_array_equal(out[~inside], -7.0)
    assert out.shape == (400,)
    assert map_coordinates(x, coords.reshape(ndim, 20, 20), interpolation).shape == (20, 20)


@pytest.mark.parametrize("shape", [(5, 1, 7), (1, 6, 1), (4, 5, 1), (1, 1, 1), (2, 2, 2)])
def test_degenerate_axes(rng, cpu_backend, shape):
    """Length-1 and length-2 axes on the oblique per-voxel path: scipy agrees inside the image."""
    x = rng.normal(size=shape).astype(np.float32)
    m = np.eye(4)
    m[:3, :3] = [[0.9, 0.1, 0.0], [0.0, 0.95, 0.05], [0.02, 0.0, 1.0]]
    m[:3, 3] = 0.1
    for interpolation in ("nearest", "linear", "cubic"):
        out = mk.resample_to(mk.Image(x), mk.Image(np.zeros((6, 5, 4))), mk.Affine(m), interpolation,
                             fill=-9, backend=cpu_backend)
        grid = np.stack(np.meshgrid(*[np.arange(n) for n in (6, 5, 4)], indexing="ij")).reshape(3, -1)
        # default direction reverses the axes: world (x, y, z) = index (i, j, k)
        c = (m[:3, :3][::-1, ::-1] @ grid.astype(float) + m[:3, 3][::-1, None])
        inside = np.all((c >= -0.5) & (c < np.array(shape)[:, None] - 0.5), axis=0)
        ok = inside & (_not_tie(c) if interpolation == "nearest" else True)
        ref = ndi.map_coordinates(x.astype(np.float64), c, order=ORDER[interpolation], mode=MODE[interpolation])
        np.testing.assert_allclose(out.array.ravel()[ok], ref[ok], rtol=0, atol=1e-5)
        np.testing.assert_array_equal(out.array.ravel()[~inside], -9)


def test_label_interpolation_is_largest_summed_weight(rng, cpu_backend):
    x = (ndi.gaussian_filter(rng.normal(size=(12, 14, 16)), 1.5) > 0.05).astype(np.uint8) * 7
    spacing, new = (2.0, 1.0, 1.0), (0.7, 0.6, 1.3)
    out = mk.resample(mk.Image(x, spacing=spacing), new, "label", backend=cpu_backend)
    assert out.dtype == np.uint8 and set(np.unique(out.array)) <= {0, 7}
    scale, offset = _zoom_map(x.shape, out.shape, spacing, new)
    lin = ndi.affine_transform((x == 7).astype(np.float64), scale, offset, output_shape=out.shape, order=1,
                               mode="nearest")
    clear = np.abs(lin - 0.5) > 1e-9
    np.testing.assert_array_equal(out.array[clear] == 7, lin[clear] > 0.5)


@pytest.mark.parametrize("n_labels", [2, 3, 6])
def test_label_interpolation_on_noisy_labels(rng, cpu_backend, n_labels):
    """Every neighbourhood pattern (uniform, two labels, many): the label with the largest summed
    trilinear weight, i.e. the argmax of the linearly interpolated indicator maps (scipy)."""
    x = rng.integers(0, n_labels, size=(9, 11, 13)).astype(np.int16) * 3 - 2
    x[:4, :5] = 4  # a uniform block
    x[5:7, 6:8] = 1  # whole rows of one label (shortcut) next to a row of another (votes)
    x[6, 7] = 7
    spacing, new = (2.0, 1.0, 1.0), (0.7, 0.6, 1.3)
    out = mk.resample(mk.Image(x, spacing=spacing), new, "label", backend=cpu_backend)
    scale, offset = _zoom_map(x.shape, out.shape, spacing, new)
    values = np.unique(x)
    votes = np.stack([ndi.affine_transform((x == v).astype(np.float64), scale, offset,
                                           output_shape=out.shape, order=1, mode="nearest") for v in values])
    top = np.sort(votes, axis=0)
    clear = top[-1] - top[-2] > 1e-9
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(out.array[clear], values[np.argmax(votes, axis=0)][clear])


def test_label_interpolation_keeps_thin_structures(rng, cpu_backend):
    lab = np.zeros((20, 40, 40), np.int32)
    lab[5:15, 10:30, 10:30] = 1
    lab[5:15, 19:21, 10:30] = 2  # two voxels thin plate inside label 1
    lab[8:10, 12:14, 12:14] = 300
    img = mk.Image(lab, spacing=(1.0, 1.0, 1.0))
    out = mk.resample(img, (1.0, 1.3, 1.3), "label", backend=cpu_backend)
    assert out.dtype == np.int32
    assert set(np.unique(out.array)) <= {0, 1, 2, 300}
    assert set(np.unique(out.array)) == {0, 1, 2, 300}
    back = mk.resample_to(out, img, interpolation="label", backend=cpu_backend)
    assert set(np.unique(back.array)) == {0, 1, 2, 300}
    assert np.mean(back.array == lab) > 0.97


def test_warp_round_trip(rng, cpu_backend):
    x = _random(rng, np.float32, (24, 28, 26), smooth=3)
    img = mk.Image(x, spacing=(1.2, 1.0, 0.9))
    centre = img.index_to_world((np.array(x.shape) - 1) / 2)
    t = mk.Affine.rotation((4, -3, 8), center=centre) @ mk.Affine.from_parts(np.eye(3), (1.5, -1, 0.5))
    back = mk.warp(mk.warp(img, t, backend=cpu_backend), t.inverse(), backend=cpu_backend)
    inner = (slice(6, -6),) * 3
    err = np.abs(back.array[inner] - x[inner]).max()
    assert err < 0.05 * (x.max() - x.min())


def test_displacement_field_inverse(rng):
    ref = mk.Image(np.zeros((16, 18, 20), np.uint8), spacing=(2.0, 1.5, 1.5))
    u = ndi.gaussian_filter(rng.normal(size=ref.shape + (3,)), (3, 3, 3, 0)) * 6
    field = mk.DisplacementField(ref.with_array(u, vector=True))
    inv = field.inverse()
    pts = ref.index_to_world(rng.uniform(4, 11, size=(200, 3)))
    np.testing.assert_allclose(field.apply(inv.apply(pts)), pts, atol=0.02)
    np.testing.assert_allclose((field @ inv).apply(pts), pts, atol=0.02)


@pytest.mark.parametrize("new", [
    (1.0, 1.0, 1.0),    # slices thicker than the output (CT): in-plane passes, then axis 0
    (3.0, 1.2, 0.8),    # axis 0 shrinks most: axis 0 first, then the in-plane passes
    (1.6, 2.5, 0.8),    # axis 0 between the in-plane passes
    (4.0, 6.0, 0.8),    # anti-aliasing taps along axis 0 (many cached slices) after one in-plane pass
    (0.9, 0.7, 0.7),    # axis 0 alone
])
@pytest.mark.parametrize("antialias", [False, True])
def test_separable_passes_per_output_slice(rng, cpu_backend, new, antialias):
    """Axis-aligned linear resampling runs every pass per output slice, keeping the in-plane
    passed input slices in a small cache: scipy agrees, out-of-field slabs get the exact fill,
    and 1, 2 and 3 threads give the same bits."""
    x = _random(rng, np.int16, (23, 26, 21), smooth=1.5)
    spacing = (2.0, 0.7, 0.7) if new[1] != 0.7 else (1.7, 0.7, 0.7)
    img = mk.Image(x, spacing=spacing)
    runs = []
    for n in (1, 2, 3):
        mk.set_num_threads(n)
        try:
            runs.append(mk.resample(img, new, "linear", antialias=antialias, backend=cpu_backend).array)
        finally:
            mk.set_num_threads(2)
    for other in runs[1:]:
        np.testing.assert_array_equal(other, runs[0])
    out = runs[0]
    scale, offset = _zoom_map(x.shape, out.shape, spacing, new)
    sigma = np.maximum(0, (scale - 1) / 2) if antialias else 0
    ref = ndi.affine_transform(ndi.gaussian_filter(x.astype(np.float64), sigma, mode="mirror"), scale, offset,
                               output_shape=out.shape, order=1, mode="nearest")
    np.testing.assert_allclose(out, ref, rtol=0, atol=_tol(x))
    # a reference grid reaching beyond the input on every axis: whole out-of-field slices too
    ref_img = mk.Image(np.zeros((30, 12, 9)), spacing=new, origin=(-9.0, -4.0, -6.0))
    moved = mk.resample_to(img, ref_img, interpolation="linear", fill=-7, backend=cpu_backend).array
    c = [(ref_img.origin[::-1][a] + new[a] * np.arange(ref_img.shape[a])) / spacing[a] for a in range(3)]
    inside = [(v >= -0.5) & (v < n - 0.5) for v, n in zip(c, x.shape)]
    assert not inside[0].all() and inside[0].any()
    grid = np.meshgrid(*c, indexing="ij")
    want = ndi.map_coordinates(x.astype(np.float64), grid, order=1, mode="nearest")
    mask = inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]
    np.testing.assert_allclose(moved[mask], want[mask], rtol=0, atol=_tol(x))
    np.testing.assert_array_equal(moved[~mask], -7)


def test_gather_nearest_matches_numpy_indexing(rng):
    """The axis-aligned nearest kernel (with AVX-512, in-plane runs gathered as window permutes,
    masked at the row's end) copies exactly in[idx0][idx1][idx2], fill where an index is -1:
    random shapes, element sizes, scales (upsampling, downsampling past 2x, flipped) and offsets."""
    from medkern import _core
    from medkern._resample import _nearest_index

    for trial in range(120):
        dtype = [np.uint8, np.int16, np.float32, np.float64][trial % 4]
        n = rng.integers(1, 90, 3)
        m = rng.integers(1, 140, 3)
        scale = rng.uniform(-3, 3, 3) if trial % 3 == 0 else n / m
        offset = rng.uniform(-5, 5, 3) if trial % 2 == 0 else (scale - 1) / 2
        idx = [_nearest_index(int(a), int(b), float(c), float(o)) for a, b, c, o in zip(n, m, scale, offset)]
        bits = (rng.normal(size=n) * 1000).astype(dtype).view(f"u{np.dtype(dtype).itemsize}")
        expected = np.full(tuple(m), 7, bits.dtype)
        inside = (idx[0] >= 0)[:, None, None] & (idx[1] >= 0)[None, :, None] & (idx[2] >= 0)[None, None, :]
        expected[inside] = bits[np.ix_(*[np.maximum(a, 0) for a in idx])][inside]
        np.testing.assert_array_equal(_core.gather_nearest(bits, *idx, 7, 2), expected)


def test_serial_equals_threaded(rng, cpu_backend):
    img, ref, centre = _oblique_pair(rng, (20, 30, 26), (22, 24, 28))
    t = mk.Affine.rotation((10, 0, 5), center=centre)
    lab = mk.Image((img.array > 100).astype(np.uint8), **img.geometry)
    runs = []
    for n in (1, 2):
        mk.set_num_threads(n)
        try:
            runs.append([
                mk.resample(img, (0.7, 1.9, 1.1), "cubic", backend=cpu_backend).array,
                mk.resample(img, (0.7, 1.9, 1.1), "linear", backend=cpu_backend).array,
                mk.resample_to(img, ref, t, "cubic", backend=cpu_backend).array,
                mk.resample_to(img, ref, t, "linear", backend=cpu_backend).array,
                mk.resample_to(lab, ref, t, "label", backend=cpu_backend).array,
            ])
        finally:
            mk.set_num_threads(2)
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("interpolation", ["nearest", "linear", "cubic", "label"])
def test_every_backend_matches_cpp(rng, backend, interpolation):
    """numba, CUDA and CuPy against the C++ kernels (float32 rounding apart; copies exact)."""
    img, ref, centre = _oblique_pair(rng, (12, 15, 14), (10, 13, 12))
    if interpolation == "label":
        img = img.with_array((img.array > 100).astype(np.uint8) + (img.array > 300))
    u = ndi.gaussian_filter(rng.normal(size=ref.shape + (3,)), (2, 2, 2, 0)) * 5
    field = mk.DisplacementField(ref.with_array(u, vector=True))
    t = mk.Affine.rotation((5, -3, 8), center=centre)
    pts = rng.uniform(-1, 14, size=(3, 50))

    def run(b, x):
        moved = x.with_array(on_backend(x.array, b))
        return [to_numpy(mk.resample(moved, (0.8, 1.7, 1.2), interpolation, backend=b)),
                to_numpy(mk.resample_to(moved, ref, t, interpolation, fill=2, backend=b)),
                to_numpy(mk.warp(moved, t @ field, reference=ref, interpolation=interpolation,
                                         backend=b)),
                to_numpy(map_coordinates(moved.array, on_backend(pts, b), interpolation,
                                                 backend=b))]

    exact = interpolation in ("nearest", "label")
    for got, want in zip(run(backend, img), run("cpp", img)):
        assert got.dtype == want.dtype
        if exact:
            assert np.mean(got == want) > 0.999  # coordinates may round differently at exact ties
        else:
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(img.array).max())


@pytest.fixture(scope="module")
def mni152():
    """nilearn's MNI152 T1 template (1 mm), read from the package data without importing nilearn."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        pytest.skip("nilearn is not installed")
    path = Path(spec.origin).parent / "datasets" / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    if not path.is_file():
        pytest.skip(f"MNI152 template not found in nilearn at {path}")
    return mk.read(path)


def test_real_mni152(cpu_backend, mni152):
    img = mni152[40:120, 60:140, 50:130]
    x = np.asarray(img.array, dtype=np.float32)
    img = img.with_array(x)
    out = mk.resample(img, (2.0, 2.5, 3.0), "linear", antialias=False, backend=cpu_backend)
    scale, offset = _zoom_map(x.shape, out.shape, img.spacing, (2.0, 2.5, 3.0))
    ref = ndi.affine_transform(x.astype(np.float64), scale, offset, output_shape=out.shape, order=1, mode="nearest")
    np.testing.assert_allclose(out.array, ref, rtol=0, atol=_tol(x))
    s = sitk.Resample(img.to_sitk(), out.to_sitk(), sitk.Transform(), sitk.sitkBSpline, 0.0, sitk.sitkFloat64)
    cub = mk.resample_to(img, out, interpolation="cubic", backend=cpu_backend)
    np.testing.assert_allclose(cub.array, sitk.GetArrayFromImage(s), rtol=0, atol=1e-4 * np.abs(x).max())


@pytest.mark.parametrize("shape", [(7, 40, 33), (1, 40, 33)])
def test_in_plane_rotation_matches_simpleitk(rng, cpu_backend, shape):
    """A rotation about the slice axis keeps every sample on an input plane (the sampler then
    reads one plane); a 3D volume and a single slice against SimpleITK's linear Resample."""
    x = rng.normal(size=shape).astype(np.float32)
    img = mk.Image(x, spacing=(2.0, 0.8, 0.9))
    t = mk.Affine.rotation((0, 0, 17), center=img.index_to_world((np.array(shape) - 1) / 2))
    out = mk.resample_to(img, img, t, "linear", fill=-5, backend=cpu_backend)
    s = sitk.Resample(img.to_sitk(), img.to_sitk(), t.to_sitk(), sitk.sitkLinear, -5.0, sitk.sitkFloat32)
    np.testing.assert_allclose(out.array, sitk.GetArrayFromImage(s), rtol=0, atol=1e-5)
    assert (out.array == -5).mean() > 0.05  # the corners left the field of view


def _warp_coordinates(m, shape_out):
    """The continuous input indices the affine warp evaluates, in its own arithmetic (row start
    M[:, 0] k + M[:, 1] j + M[:, 3], then plus M[:, 2] i), flattened to map_coordinates' layout."""
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape_out), indexing="ij")
    return np.stack([(m[a, 0] * k + m[a, 1] * j + m[a, 3]) + m[a, 2] * i for a in range(3)]).reshape(3, -1)


def _rotation_index_map(shape, angles_deg, shift=(0.0, 0.0, 0.0)):
    """3 x 4 index map: a rotation about the array's centre (axes 0-1, 0-2, 1-2), then a shift."""
    r = np.eye(3)
    for (p, q), a in zip(((0, 1), (0, 2), (1, 2)), np.deg2rad(angles_deg)):
        g = np.eye(3)
        g[p, p] = g[q, q] = np.cos(a)
        g[p, q], g[q, p] = -np.sin(a), np.sin(a)
        r = r @ g
    centre = (np.array(shape) - 1) / 2
    return np.hstack([r, (centre - r @ centre + np.array(shift))[:, None]])


@pytest.mark.parametrize("case", ["in_plane", "between_planes", "oblique", "single_slice"])
def test_affine_warp_fast_paths_equal_checked_sampling(rng, case):
    """The affine warp fills rows outside the image without sampling, streams the planes of a map
    within axis-0 planes and evaluates interior points in blocks: every voxel must equal the
    checked point-by-point path (map_coordinates at the same continuous indices), bit for bit,
    for every interpolation, at every instruction-set level, edges and fill included."""
    from medkern import _cpu

    shape = (1, 37, 41) if case == "single_slice" else (9, 37, 41)
    angles = {"oblique": (7, -12, 25)}.get(case, (0, 0, 17))
    shift = (0.5, 0.3, -0.2) if case == "between_planes" else (0.0, 1.7, -2.3)
    m = _rotation_index_map(shape, angles, shift)
    if case == "single_slice":
        m[0] = (1.0, 0.0, 0.0, 0.0)
    out_shape = (shape[0], 33, 45)  # another grid: rows run partly outside the image
    coords = _warp_coordinates(m, out_shape)
    smooth = ndi.uniform_filter(rng.normal(size=shape), 3)
    inputs = {
        "float32": (smooth.astype(np.float32), (0, 1), -7.0),
        "int16": ((smooth * 900).astype(np.int16), (0, 1), -7),
        "cubic": (_cpu.binding("bspline_coefficients")(smooth.astype(np.float32), 1), (2,), -7.0),
        "labels": (rng.integers(0, 4, size=shape).astype(np.uint8), (3, 0), 5),
    }
    for level in _cpu.available_levels():
        with _cpu.use_level(level):
            warp, points = _cpu.binding("warp"), _cpu.binding("map_coordinates")
            for name, (x, interpolations, fill) in inputs.items():
                for interpolation in interpolations:
                    data, fill_arg = x, float(fill)
                    if interpolation in (0, 3):  # nearest and label copy elements: as bits
                        data = x.view(f"u{x.itemsize}")
                        fill_arg = int(np.array(fill, x.dtype).view(data.dtype))
                    got = warp(data, interpolation, out_shape, m.ravel(), None, None, fill_arg, 2)
                    ref = points(data, interpolation, coords, fill_arg, 1).reshape(out_shape)
                    if interpolation in (0, 3):
                        got, ref = got.view(x.dtype), ref.view(x.dtype)
                    assert (got == fill).any() and (got != fill).mean() > 0.5, (name, interpolation)
                    np.testing.assert_array_equal(got, ref, err_msg=f"{level} {name} {interpolation}")


def test_affine_warp_equals_checked_sampling_on_random_maps(rng):
    """Random index maps on small grids (a length-1 axis, rows whose step is zero, maps within
    axis-0 planes, integral maps, grids mostly outside the image): the warp's fast paths against
    the checked point path, bit for bit, every interpolation, every instruction-set level."""
    from medkern import _cpu

    for trial in range(60):
        shape = tuple(int(v) for v in rng.integers(1, 9, 3))
        out_shape = tuple(int(v) for v in rng.integers(1, 11, 3))
        m = np.zeros((3, 4))
        m[:, :3] = rng.normal(size=(3, 3)) * rng.choice([0.3, 1.0, 2.0])
        kind = trial % 4
        if kind == 0:
            m[0, 1:3] = 0.0  # within axis-0 planes
        elif kind == 1:
            m[:, 2] = 0.0  # every row stays on one point
        elif kind == 2:
            m[:, :3] = np.round(m[:, :3])
        m[:, 3] = rng.normal(size=3) * 4
        coords = _warp_coordinates(m, out_shape)
        x = rng.normal(size=shape).astype(np.float32)
        for level in _cpu.available_levels():
            with _cpu.use_level(level):
                warp, points = _cpu.binding("warp"), _cpu.binding("map_coordinates")
                bits = int(np.array(-7, np.float32).view(np.uint32))
                for interpolation, data, fill in ((0, x.view(np.uint32), bits), (1, x, -7.0),
                                                  (2, _cpu.binding("bspline_coefficients")(x, 1), -7.0),
                                                  (3, rng.integers(0, 3, shape).astype(np.uint8), 5)):
                    got = warp(data, interpolation, out_shape, m.ravel(), None, None, fill, 2)
                    ref = points(data, interpolation, coords, fill, 1).reshape(out_shape)
                    np.testing.assert_array_equal(got.view(np.uint8), ref.view(np.uint8),
                                                  err_msg=f"{level} trial {trial} interpolation {interpolation}")


def test_warp_refuses_rows_it_cannot_count():
    """The warp counts a row's columns in int32: a longer output row is refused before anything
    is allocated, at every level."""
    from medkern import _cpu

    x = np.zeros((2, 2, 2), np.float32)
    for level in _cpu.available_levels():
        with _cpu.use_level(level), pytest.raises(ValueError, match="2\\^31 voxels"):
            _cpu.binding("warp")(x, 1, (1, 1, 2 ** 31), np.eye(3, 4).ravel(), None, None, 0.0, 1)


def test_real_ibsi_ct(shared_data, cpu_backend):
    ct = mk.read(shared_data / "ibsi" / "ibsi_1_ct_radiomics_phantom" / "nifti" / "image" / "phantom.nii.gz")
    ct = ct[10:40, 40:140, 50:150]
    x = np.asarray(ct.array)
    out = mk.resample(ct, (1.0, 1.0, 1.0), "cubic", antialias=False, backend=cpu_backend)
    scale, offset = _zoom_map(x.shape, out.shape, ct.spacing, (1.0, 1.0, 1.0))
    ref = ndi.affine_transform(x.astype(np.float64), scale, offset, output_shape=out.shape, order=3, mode="mirror")
    np.testing.assert_allclose(out.array, ref, rtol=0, atol=_tol(x))
    t = mk.Affine.rotation((0, 0, 10), center=ct.index_to_world((np.array(x.shape) - 1) / 2))
    lin = mk.resample_to(ct, out, t, "linear", fill=-1000, backend=cpu_backend)
    s = sitk.Resample(ct.to_sitk(), out.to_sitk(), t.to_sitk(), sitk.sitkLinear, -1000.0, sitk.sitkFloat32)
    np.testing.assert_allclose(lin.array, sitk.GetArrayFromImage(s), rtol=0, atol=1e-4 * np.abs(x).max())


# ---------------------------------------------------------------------- transforms
def test_affine_algebra(rng):
    a = mk.Affine.rotation((10, 20, 30), center=(1, 2, 3)) @ mk.Affine.from_parts(np.diag([1, 2, 3.0]), (4, 5, 6))
    b = mk.Affine.rotation(15, center=(1, 1))
    pts = rng.normal(size=(10, 3))
    np.testing.assert_allclose(a.inverse().apply(a.apply(pts)), pts, atol=1e-12)
    np.testing.assert_allclose((a @ a.inverse()).matrix, np.eye(4), atol=1e-12)
    np.testing.assert_allclose((a @ a).apply(pts), a.apply(a.apply(pts)), atol=1e-12)
    assert b.ndim == 2 and a.ndim == 3
    np.testing.assert_allclose(b.apply([[2.0, 1.0]]), [[1 + np.cos(np.pi / 12), 1 + np.sin(np.pi / 12)]])


def test_affine_sitk_and_files(rng, tmp_path):
    e = sitk.Euler3DTransform((1.0, 2.0, 3.0), 0.1, -0.2, 0.3, (4.0, 5.0, 6.0))
    a = mk.Affine.from_sitk(e)
    pts = rng.normal(size=(5, 3)) * 10
    np.testing.assert_allclose(a.apply(pts), [e.TransformPoint(tuple(p)) for p in pts], atol=1e-10)
    np.testing.assert_allclose(a.to_sitk().TransformPoint((1.0, 2.0, 3.0)), e.TransformPoint((1.0, 2.0, 3.0)))
    for t in (e, sitk.VersorRigid3DTransform((0.1, 0.2, 0.3, float(np.sqrt(0.86))), (1.0, 2.0, 3.0), (0.5, 0.5, 0.5)),
              sitk.Similarity3DTransform(1.2, (0, 0, 1), 0.3, (1.0, -2.0, 0.5), (3.0, 2.0, 1.0)),
              sitk.TranslationTransform(3, (1.0, 2.0, 3.0))):
        for suffix in (".txt", ".mat", ".tfm"):
            path = tmp_path / f"t{suffix}"
            sitk.WriteTransform(t, str(path))
            got = mk.Affine.read(path)
            np.testing.assert_allclose(got.apply(pts), [t.TransformPoint(tuple(p)) for p in pts], atol=1e-9)
    for suffix in (".txt", ".mat"):
        path = tmp_path / f"mine{suffix}"
        a.write(path)
        back = sitk.ReadTransform(str(path))
        np.testing.assert_allclose([back.TransformPoint(tuple(p)) for p in pts], a.apply(pts), atol=1e-9)
        assert mk.Affine.read(path).allclose(a)
    comp = sitk.CompositeTransform([e, sitk.TranslationTransform(3, (1.0, 0.0, 0.0))])
    np.testing.assert_allclose(mk.Affine.from_sitk(comp).apply(pts),
                               [comp.TransformPoint(tuple(p)) for p in pts], atol=1e-10)


def test_ants_float_mat(tmp_path):
    """antsRegistration writes 'AffineTransform_float_3_3' as single precision MATLAB v4."""
    import struct

    lin = np.array([[0.98, -0.17, 0.0], [0.17, 0.98, 0.02], [0.0, -0.02, 1.0]])
    params = np.concatenate([lin.ravel(), [1.5, -2.0, 3.25]]).astype(np.float32)
    center = np.array([10.0, 20.0, 30.0], np.float32)

    def entry(name, values):
        raw = name.encode() + b"\0"
        return struct.pack("<5i", 10, values.size, 1, 0, len(raw)) + raw + values.astype("<f4").tobytes()

    path = tmp_path / "ants0GenericAffine.mat"
    path.write_bytes(entry("AffineTransform_float_3_3", params) + entry("fixed", center))
    a = mk.Affine.read(path)
    t = sitk.ReadTransform(str(path))
    pts = np.array([[0.0, 0.0, 0.0], [12.0, -5.0, 40.0]])
    np.testing.assert_allclose(a.apply(pts), [t.TransformPoint(tuple(p)) for p in pts], atol=1e-4)


def test_displacement_field_sitk_round_trip(rng):
    ref = mk.Image(np.zeros((5, 6, 7), np.uint8), spacing=(2.0, 1.0, 1.5), origin=(1, 2, 3))
    u = rng.normal(size=ref.shape + (3,))
    f = mk.DisplacementField(ref.with_array(u, vector=True))
    st = f.to_sitk()
    pts = ref.index_to_world(rng.uniform(0, 4, size=(20, 3)))
    np.testing.assert_allclose(f.apply(pts), [st.TransformPoint(tuple(p)) for p in pts], atol=1e-6)
    g = mk.DisplacementField.from_sitk(st)
    np.testing.assert_allclose(g.field.array, u)


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda img: mk.resample(img, 1.0, "bilinear"), ValueError, "interpolation"),
        (lambda img: mk.resample(img, (1.0, 2.0)), ValueError, "spacing needs"),
        (lambda img: mk.resample(img, 0.0), ValueError, "spacing must be finite and positive"),
        (lambda img: mk.resample(img, "a"), TypeError, "spacing"),
        (lambda img: mk.resample(img, 1.0, antialias="yes"), TypeError, "antialias"),
        (lambda img: mk.resample(img, 1.0, "label"), TypeError, "label"),
        (lambda img: mk.resample(img.astype(np.uint8), 1.0, "nearest", fill=2.5), ValueError, "fill"),
        (lambda img: mk.resample(img.astype(np.uint8), 1.0, "nearest", fill=300), ValueError, "fill"),
        (lambda img: mk.resample(img, 1.0, fill="x"), TypeError, "fill"),
        (lambda img: mk.resample(img.array[:0], 1.0), ValueError, "empty"),
        (lambda img: mk.resample(img.array.astype(np.complex64), 1.0), TypeError, "dtype"),
        (lambda img: mk.resample(img.array.astype(np.complex64), 1.0, "nearest"), TypeError, "dtype"),
        (lambda img: map_coordinates(img.array.astype(np.float16), np.zeros((3, 2))), TypeError, "dtype"),
        (lambda img: mk.resample_to(img, img.array), TypeError, "reference"),
        (lambda img: mk.resample_to(img, mk.Image(np.zeros((4, 5)))), ValueError, "same ndim"),
        (lambda img: mk.resample_to(img, img, transform=np.eye(4)), TypeError, "transform"),
        (lambda img: mk.resample_to(img, img, transform=mk.Affine.identity(2)), ValueError, "2D"),
        (lambda img: mk.warp(img, None), TypeError, "transform"),
        (lambda img: mk.resample(img, 1.0, backend="cuda"), ValueError, "cuda"),
        (lambda img: map_coordinates(img.array, np.zeros((2, 5))), ValueError, "coordinates"),
        (lambda img: mk.Affine(np.eye(5)), ValueError, "4x4"),
        (lambda img: mk.Affine(np.zeros((4, 4))), ValueError, "last row"),
        (lambda img: mk.Affine(np.diag([1, 1, 0, 1.0])), ValueError, "singular"),
        (lambda img: mk.Affine(np.full((4, 4), np.nan)), ValueError, "finite"),
        (lambda img: mk.Affine.identity(3).apply(np.zeros((4, 2))), ValueError, "trailing axis"),
        (lambda img: mk.Affine.identity(3) @ mk.Affine.identity(2), ValueError, "compose"),
        (lambda img: mk.DisplacementField(img), TypeError, "vector"),
        (lambda img: mk.DisplacementField(mk.Image(np.zeros((3, 4, 5, 2)), vector=True)), ValueError,
         "components"),
        (lambda img: mk.Affine.read("/nonexistent/t.txt"), FileNotFoundError, "not found"),
    ],
)
def test_bad_input(call, exc, match):
    img = mk.Image(np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6))
    with pytest.raises(exc, match=match):
        call(img)


def test_bad_transform_files(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_text("hello\n")
    with pytest.raises(ValueError, match="Insight Transform File"):
        mk.Affine.read(p)
    p.write_text("#Insight Transform File V1.0\n#Transform 0\nTransform: BSplineTransform_double_3_3\n"
                 "Parameters: 1 2 3\nFixedParameters: 0 0 0\n")
    with pytest.raises(ValueError, match="unsupported ITK transform"):
        mk.Affine.read(p)
