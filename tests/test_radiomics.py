"""IBSI radiomics: texture matrices against scipy/scikit-image built references, features against
scikit-image/scipy, and every implemented feature against the IBSI 1 reference values."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi
import scipy.stats
from skimage.feature import graycomatrix, graycoprops

import medkern as mk
from medkern._radiomics import FAMILIES, _kernels, compliance, glcm

DATA = Path(os.environ.get("MEDKERN_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
REFERENCE = DATA / "ibsi" / "ibsi_1_reference_values.json"


def _random_levels(rng, shape, n_levels=5, fill=0.7):
    lv = rng.integers(1, n_levels + 1, size=shape).astype(np.int32)
    lv[rng.random(shape) > fill] = 0
    return lv


# ---------------------------------------------------------------------------- texture matrices

def test_glcm_matches_skimage_per_direction(rng, cpu_backend):
    lv = _random_levels(rng, (3, 12, 10))
    m = _kernels.glcm(lv, 5, True, 1, backend=cpu_backend)
    assert m.shape == (3, 4, 5, 5)
    for z in range(3):
        # skimage angles 0, 3pi/4, pi/2, pi/4 are offsets (0,1), (1,-1), (1,0), (1,1) (rows down),
        # medkern's direction order. Level 0 (outside the ROI) is dropped from skimage's matrix:
        # pairs need both voxels in the ROI.
        ref = graycomatrix(lv[z].astype(np.uint8), [1], [0, 3 * np.pi / 4, np.pi / 2, np.pi / 4],
                           levels=6, symmetric=True)[1:, 1:, 0, :]
        np.testing.assert_array_equal(m[z], np.moveaxis(ref, -1, 0))


def test_glcm_3d_counts_every_neighbour_pair(rng, cpu_backend):
    lv = _random_levels(rng, (4, 7, 6))
    m = _kernels.glcm(lv, 5, False, 1, backend=cpu_backend)[0]
    assert m.shape == (13, 5, 5)
    roi = lv > 0
    total = 0
    for dz, dy, dx in itertools.product((-1, 0, 1), repeat=3):
        if (dz, dy, dx) == (0, 0, 0):
            continue
        shifted = np.zeros_like(roi)
        src = tuple(slice(max(0, -d), roi.shape[a] - max(0, d)) for a, d in enumerate((dz, dy, dx)))
        dst = tuple(slice(max(0, d), roi.shape[a] - max(0, -d)) for a, d in enumerate((dz, dy, dx)))
        shifted[dst] = roi[src]
        total += int((roi & shifted).sum())
    # Each unordered pair appears in one of the 13 directions, counted twice (symmetric).
    assert m.sum() == total
    np.testing.assert_array_equal(m, np.swapaxes(m, 1, 2))


def _runs(lines, n_levels, max_run):
    out = np.zeros((n_levels, max_run))
    for line in lines:
        for value, grp in itertools.groupby(line):
            if value > 0:
                out[value - 1, len(list(grp)) - 1] += 1
    return out


def test_glrlm_matches_python_runs(rng, cpu_backend):
    lv = _random_levels(rng, (2, 9, 8), n_levels=3, fill=0.85)
    m = _kernels.glrlm(lv, 3, True, backend=cpu_backend)
    assert m.shape == (2, 4, 3, 9)
    for z in range(2):
        a = lv[z]
        lines = {
            0: list(a),                                                   # (0, 1)
            1: [np.fliplr(a).diagonal(k) for k in range(-8, 8)],           # (1, -1)
            2: list(a.T),                                                 # (1, 0)
            3: [a.diagonal(k) for k in range(-8, 8)],                     # (1, 1)
        }
        for d, ls in lines.items():
            np.testing.assert_array_equal(m[z, d], _runs(ls, 3, 9))
    m3 = _kernels.glrlm(lv, 3, False, backend=cpu_backend)[0]
    # Every ROI voxel lies in exactly one run per direction.
    np.testing.assert_array_equal((m3 * np.arange(1, 10)).sum(axis=(1, 2)), np.full(13, (lv > 0).sum()))
    # Directions: the 4 in-plane ones, then dz = 1 with (dy, dx) in raster order: (1, 0, 0) is 8th.
    np.testing.assert_array_equal(m3[8], _runs(lv.reshape(2, -1).T, 3, 9))


@pytest.mark.parametrize("by_slice", [True, False])
def test_zones_match_scipy_label_and_taxicab_distance(rng, cpu_backend, by_slice):
    lv = _random_levels(rng, (4, 10, 9), n_levels=3, fill=0.8)
    morph = ((lv > 0) | (rng.random(lv.shape) > 0.5)).astype(np.uint8)
    group, level, size, dist = _kernels.zones(lv, 3, by_slice, morph, backend=cpu_backend)
    # 8-connected in-plane (no link across slices) or 26-connected.
    structure = np.ones((3, 3, 3), bool)
    if by_slice:
        structure[[0, 2]] = False
    if by_slice:
        d_ref = np.stack([ndi.distance_transform_cdt(np.pad(s, 1), metric="taxicab")[1:-1, 1:-1]
                          for s in morph])
    else:
        d_ref = ndi.distance_transform_cdt(np.pad(morph, 1), metric="taxicab")[1:-1, 1:-1, 1:-1]
    ref = []
    for g in range(1, 4):
        labels, n = ndi.label(lv == g, structure=structure)
        for k in range(1, n + 1):
            where = labels == k
            z = int(np.argwhere(where)[0][0]) if by_slice else 0
            ref.append((z, g, int(where.sum()), int(d_ref[where].min())))
    assert sorted(zip(group.tolist(), level.tolist(), size.tolist(), dist.tolist())) == sorted(ref)


@pytest.mark.parametrize("by_slice", [True, False])
def test_ngtdm_and_ngldm_match_convolution_reference(rng, cpu_backend, by_slice):
    lv = _random_levels(rng, (3, 8, 7), n_levels=4)
    kernel = np.ones((1, 3, 3) if by_slice else (3, 3, 3))
    kernel[tuple(k // 2 for k in kernel.shape)] = 0
    # Slice-wise neighbourhoods never cross slices: convolve each slice on its own then.
    conv = (lambda a: np.stack([ndi.convolve(s, kernel[0], mode="constant") for s in a])) if by_slice \
        else (lambda a: ndi.convolve(a, kernel, mode="constant"))
    roi = (lv > 0).astype(float)
    nb_sum, nb_count = conv(lv.astype(float)), conv(roi)
    s, n = _kernels.ngtdm(lv, 4, by_slice, 1, backend=cpu_backend)
    ngl = _kernels.ngldm(lv, 4, by_slice, 1, 0, backend=cpu_backend)
    for g in range(1, 5):
        sel = (lv == g) & (nb_count > 0)
        np.testing.assert_allclose(s[:, g - 1], [np.abs(g - nb_sum[z][sel[z]] / nb_count[z][sel[z]]).sum()
                                                 for z in range(3)], rtol=1e-12)
        np.testing.assert_array_equal(n[:, g - 1], sel.sum(axis=(1, 2)))
        same = conv((lv == g).astype(float))
        for z in range(3):
            k = same[z][lv[z] == g].astype(int) + 1
            np.testing.assert_array_equal(ngl[z, g - 1], np.bincount(k, minlength=ngl.shape[2] + 1)[1:])


def test_kernels_serial_equals_threaded(rng):
    lv = _random_levels(rng, (6, 20, 18), n_levels=8)
    morph = (lv > 0).astype(np.uint8)
    calls = [lambda: _kernels.glcm(lv, 8, False, 1, backend="cpp"),
             lambda: _kernels.glrlm(lv, 8, True, backend="cpp"),
             lambda: _kernels.zones(lv, 8, False, morph, backend="cpp"),
             lambda: _kernels.ngtdm(lv, 8, False, 1, backend="cpp"),
             lambda: _kernels.ngldm(lv, 8, False, 1, 0, backend="cpp")]
    before = mk.get_num_threads()
    try:
        mk.set_num_threads(1)
        serial = [c() for c in calls]
        mk.set_num_threads(4)
        threaded = [c() for c in calls]
    finally:
        mk.set_num_threads(before)
    for a, b in zip(serial, threaded):
        for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("call", [
    lambda b: _kernels.glcm(np.zeros((4, 4), np.int32), 2, True, 1, backend=b),
    lambda b: _kernels.glrlm(np.full((1, 2, 2), 3, np.int32), 2, True, backend=b),
    lambda b: _kernels.ngtdm(np.full((1, 2, 2), -1, np.int32), 2, True, 1, backend=b),
    lambda b: _kernels.ngldm(np.ones((1, 2, 2), np.int32), 0, True, 1, 0, backend=b),
    lambda b: _kernels.glcm(np.ones((1, 2, 2), np.int32), 2, True, 0, backend=b),
], ids=["not-3d", "level-above-n", "negative-level", "zero-levels", "zero-distance"])
def test_kernel_errors(cpu_backend, call):
    with pytest.raises(ValueError, match="levels|n_levels|distance"):
        call(cpu_backend)


# ---------------------------------------------------------------------------- features

def test_glcm_features_match_skimage_graycoprops(rng):
    img = rng.integers(0, 6, size=(30, 25)).astype(np.uint8)
    p = graycomatrix(img, [1], [0], levels=6, symmetric=True)
    counts = p[:, :, 0, 0].astype(float)[None]
    ours, valid = glcm.features(counts)
    assert valid.all()
    ref = {k: graycoprops(p, k)[0, 0] for k in ("contrast", "dissimilarity", "homogeneity", "ASM",
                                                 "correlation", "mean", "variance")}
    # Same sums in a different order: agreement to rounding.
    np.testing.assert_allclose(ours["Contrast"][0], ref["contrast"], rtol=1e-12)
    np.testing.assert_allclose(ours["Dissimilarity"][0], ref["dissimilarity"], rtol=1e-12)
    np.testing.assert_allclose(ours["Inverse difference moment"][0], ref["homogeneity"], rtol=1e-12)
    np.testing.assert_allclose(ours["Angular second moment"][0], ref["ASM"], rtol=1e-12)
    np.testing.assert_allclose(ours["Correlation"][0], ref["correlation"], rtol=1e-10)
    # skimage counts grey levels from 0, IBSI from 1.
    np.testing.assert_allclose(ours["Joint average"][0], ref["mean"] + 1, rtol=1e-12)
    np.testing.assert_allclose(ours["Joint variance"][0], ref["variance"], rtol=1e-12)


def test_statistics_match_scipy_on_random_roi(rng):
    img = rng.normal(40, 30, size=(5, 16, 14))
    mask = rng.random(img.shape) > 0.4
    r = mk.radiomics(img, mask, features="statistics")
    v = img[mask]
    np.testing.assert_allclose(r["statistics/Mean intensity"], v.mean(), rtol=1e-12)
    np.testing.assert_allclose(r["statistics/Intensity variance"], v.var(), rtol=1e-12)
    np.testing.assert_allclose(r["statistics/Intensity skewness"], scipy.stats.skew(v), rtol=1e-10)
    np.testing.assert_allclose(r["statistics/(Excess) intensity kurtosis"], scipy.stats.kurtosis(v),
                               rtol=1e-10)
    np.testing.assert_allclose(r["statistics/Intensity interquartile range"], scipy.stats.iqr(v),
                               rtol=1e-12)
    assert r.code("statistics/Mean intensity") == "Q4LE"


def test_result_mapping_codes_and_image_geometry(rng):
    a = rng.integers(0, 50, size=(4, 12, 12)).astype(np.int16)
    mask = np.zeros(a.shape, np.uint8)
    mask[1:3, 3:9, 2:10] = 1
    r_arr = mk.radiomics(a, mask, bin_count=8)
    r_img = mk.radiomics(mk.Image(a), mk.Image(mask), bin_count=8)
    assert dict(r_arr) == dict(r_img)
    assert r_arr.by_code("GYBY").keys() == {"3D, averaged", "3D, merged"}
    assert all(f.code for f in r_arr.features)
    # Local intensity uses mm: a coarser voxel puts fewer voxels in the 1 cm³ sphere.
    r_big = mk.radiomics(mk.Image(a, spacing=(5, 5, 5)), mask, features="local_intensity")
    assert r_big["local_intensity/Global intensity peak"] != r_arr["local_intensity/Global intensity peak"]


def test_2d_image_equals_single_slice_volume(rng):
    a = rng.integers(0, 30, size=(15, 13)).astype(np.float32)
    mask = rng.random(a.shape) > 0.3
    r2 = mk.radiomics(a, mask, bin_width=5, texture_dims=("2D", "3D"))
    r3 = mk.radiomics(a[None], mask[None], bin_width=5, texture_dims=("2D", "3D"))
    assert r2.keys() == r3.keys()
    for k in r2:
        assert r2[k] == r3[k] or (np.isnan(r2[k]) and np.isnan(r3[k])), k


def test_numba_equals_cpp_on_real_ct_roi(shared_data):
    img = mk.read(shared_data / "ibsi/ibsi_validation/nifti/STS_019/CT_image.nii.gz")
    mask = mk.read(shared_data / "ibsi/ibsi_validation/nifti/STS_019/CT_mask.nii.gz")
    # Morphology runs the mesh and hull kernels, which are C++ only.
    kw = dict(round_intensities=True, resegment_range=(-1000, 400), bin_width=25,
              texture_dims=("2D", "2.5D", "3D"), features=[f for f in FAMILIES if f != "morphology"])
    a = mk.radiomics(img, mask, backend="cpp", **kw)
    b = mk.radiomics(img, mask, backend="numba", **kw)
    assert len(a) > 400
    for k in a:
        assert a[k] == b[k] or (np.isnan(a[k]) and np.isnan(b[k])), k


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(mask=np.ones((3, 3, 3))), ValueError, "mask has shape"),
    (dict(mask=np.zeros((4, 5, 6))), ValueError, "selects no voxel"),
    (dict(bin_width=None), ValueError, "exactly one of bin_width"),
    (dict(bin_count=8), ValueError, "exactly one of bin_width"),
    (dict(bin_width=-1), ValueError, "bin_width must be positive"),
    (dict(bin_width=None, bin_count=2.5), ValueError, "bin_count must be a positive integer"),
    (dict(features=("glcm", "wavelet")), ValueError, "unknown family 'wavelet'"),
    (dict(texture_dims="4D"), ValueError, "unknown approach '4D'"),
    (dict(resegment_range=(10, -10)), ValueError, "low <= high"),
    (dict(resegment_range=(1e6, 2e6)), ValueError, "no voxel is left"),
    (dict(outlier_sigma=0), ValueError, "outlier_sigma must be positive"),
    (dict(ngldm_alpha=-1), ValueError, "ngldm_alpha must be >= 0"),
    (dict(glcm_distance=0), ValueError, "glcm_distance must be a positive integer"),
    (dict(mask=np.full((4, 5, 6), "a")), TypeError, "mask must be boolean or numeric"),
    (dict(img=np.full((4, 5, 6), np.nan)), ValueError, r"img has 120 non-finite voxel\(s\) inside the mask \(120 NaN"),
])
def test_radiomics_errors(rng, kwargs, exc, match):
    args = dict(img=rng.normal(size=(4, 5, 6)), mask=np.ones((4, 5, 6)), bin_width=0.5)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        mk.radiomics(args.pop("img"), args.pop("mask"), **args)


@pytest.mark.parametrize("roi", [(slice(2, 3), slice(2, 3), slice(3, 4)),   # one voxel
                                 (slice(2, 3), slice(1, 4), slice(2, 5)),   # one slice
                                 (slice(2, 3), slice(2, 3), slice(1, 5))])  # one line
def test_degenerate_rois_give_nan_not_errors(rng, roi):
    a = rng.normal(size=(5, 6, 7))
    mask = np.zeros(a.shape, bool)
    mask[roi] = True
    r = mk.radiomics(a, mask, bin_count=8, texture_dims=("2D", "2.5D", "3D"))
    values = np.array(list(r.values()))
    assert not np.isinf(values).any()
    np.testing.assert_allclose(r["morphology/Volume (voxel counting)"], mask.sum())
    np.testing.assert_allclose(r["statistics/Mean intensity"], a[mask].mean())


def test_uniform_roi(rng):
    r = mk.radiomics(np.full((4, 5, 6), 7.0), np.ones((4, 5, 6)), bin_count=4)
    assert r["statistics/Intensity variance"] == 0
    # Uniform ROI: one grey level, coarseness capped at 1e6 (IBSI §3.10), correlation undefined.
    assert r["ngtdm/Coarseness [3D]"] == 1e6
    assert np.isnan(r["glcm/Correlation [3D, merged]"])
    assert r["glcm/Angular second moment [3D, merged]"] == 1.0


def test_gpu_arrays_are_refused_with_the_fix():
    fake_cupy = type("ndarray", (), {"__module__": "cupy._core.core"})
    with pytest.raises(TypeError, match=r"mask is a CuPy array.*mask.get\(\)"):
        mk.radiomics(np.ones((3, 4, 4)), fake_cupy(), bin_count=4)


def test_families_subset_and_alias(rng):
    a = rng.normal(size=(3, 6, 6))
    r = mk.radiomics(a, np.ones(a.shape), features=("firstorder", "ivh"))
    assert {f.family for f in r.features} == {"statistics", "ivh"}
    # Continuous intensities without an IVH discretisation get 1000 bins (IBSI §3.5).
    assert r["ivh/Intensity at volume fraction 10%"] <= 1001


# ---------------------------------------------------------------------------- interpolation

def test_ibsi_grid_alignment():
    from medkern._radiomics._interpolate import ibsi_grid

    # IBSI §2.4: ceil of the fractional size, grid centres aligned.
    n_new, start, step = ibsi_grid((60, 201, 204), (3.0, 0.977, 0.977), (2.0, 2.0, 2.0))
    np.testing.assert_array_equal(n_new, [90, 99, 100])
    np.testing.assert_allclose(start + (n_new - 1) / 2 * step, (np.array([60, 201, 204]) - 1) / 2)
    np.testing.assert_allclose(step, [2 / 3, 2 / 0.977, 2 / 0.977])


@pytest.mark.parametrize("interpolation, order", [("linear", 1), ("cubic", 3)])
def test_interpolation_matches_scipy_on_ibsi_grid(rng, interpolation, order):
    from medkern._radiomics._interpolate import ibsi_grid, interpolate

    # The ROI lies far enough from the image edges that no edge padding enters the block.
    a = ndi.gaussian_filter(rng.normal(size=(48, 80, 76)), 1.5) * 100
    mask = np.zeros(a.shape, bool)
    mask[22:26, 35:46, 33:43] = True
    img = mk.Image(a, spacing=(2.5, 0.9, 0.8))
    out, out_mask = interpolate(img, mask, np.array([2.0, 1.5, 1.5]), interpolation, "linear", 0.5, "auto")
    n_new, start, step = ibsi_grid(a.shape, img.spacing, (2.0, 1.5, 1.5))
    # The block returned starts where the ROI (plus the local-intensity margin) starts: locate it
    # from the mask and compare the full-grid scipy result there.
    coords = np.meshgrid(*[s + st * np.arange(n) for s, st, n in zip(start, step, n_new)], indexing="ij")
    # Exact 0.5 values (2/3 x 3/4 here) must stay in: scipy's rounding lands on 0.5 itself.
    ref_mask = ndi.map_coordinates(mask.astype(float), coords, order=1, mode="nearest") >= 0.5 - 1e-9
    ref = ndi.map_coordinates(a, coords, order=order, mode="nearest" if order == 1 else "mirror")
    lo = np.argwhere(ref_mask).min(axis=0) - np.argwhere(out_mask).min(axis=0)
    window = tuple(slice(b, b + n) for b, n in zip(lo, out.shape))
    np.testing.assert_array_equal(out_mask, ref_mask[window])
    # Interior samples (the block is far from the image edge here): float64 both ways; the cubic
    # prefilter of the cropped block differs from the full image's by < 0.268^12 relative.
    np.testing.assert_allclose(out, ref[window], rtol=0, atol=1e-9 if order == 1 else 1e-4)


@pytest.mark.parametrize("kwargs, match", [
    (dict(resample_spacing=(1, 2)), "resample_spacing needs 1 or 3 values"),
    (dict(resample_spacing=-1), "resample_spacing must be positive"),
    (dict(resample_spacing=1, interpolation="quintic"), "interpolation must be"),
    (dict(resample_spacing=1, mask_interpolation="cubic"), "mask_interpolation must be"),
    (dict(resample_spacing=1, partial_volume=0), "partial_volume must lie in"),
    (dict(resample_spacing=50.0), "no voxel is left after interpolation"),
])
def test_interpolation_errors(rng, kwargs, match):
    mask = np.zeros((6, 8, 8), bool)
    mask[:2, :2, :2] = True  # off the centre, where a single coarse voxel samples
    with pytest.raises(ValueError, match=match):
        mk.radiomics(rng.normal(size=mask.shape), mask, features="statistics", **kwargs)


# ---------------------------------------------------------------------------- morphology

def _ellipsoid(shape, radii):
    grid = np.indices(shape, dtype=float)
    centre = (np.asarray(shape) - 1) / 2
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def test_morphology_box_at_anisotropic_spacing():
    mask = np.zeros((7, 12, 16), bool)
    mask[1:6, 2:10, 3:15] = True  # 5 x 8 x 12 voxels
    spacing = (2.5, 0.8, 1.2)
    img = mk.Image(np.where(mask, 100, -50).astype(np.int16), spacing=spacing)
    r = mk.radiomics(img, mask, features="morphology")
    n = np.array([5, 8, 12])
    np.testing.assert_allclose(r["morphology/Volume (voxel counting)"], n.prod() * np.prod(spacing))
    # PCA of a uniform box of voxels: variance s^2 (n^2 - 1) / 12 per axis (sample covariance
    # scales it by N / (N - 1)), axis length 4 sqrt(lambda).
    lam = np.sort(np.asarray(spacing) ** 2 * (n ** 2 - 1) / 12)[::-1] * n.prod() / (n.prod() - 1)
    np.testing.assert_allclose([r["morphology/Major axis length"], r["morphology/Minor axis length"],
                                r["morphology/Least axis length"]], 4 * np.sqrt(lam), rtol=1e-12)
    # Mesh vertices sit half a voxel outside the centres of the boundary voxels... minus the
    # cut corners: the convex hull of a box mesh is the mesh itself.
    np.testing.assert_allclose(r["morphology/Volume density (convex hull)"], 1.0, rtol=1e-12)
    np.testing.assert_allclose(r["morphology/Area density (convex hull)"], 1.0, rtol=1e-12)
    # Uniform intensity: the intensity and geometric centres of mass coincide.
    assert abs(r["morphology/Centre of mass shift"]) < 1e-9
    np.testing.assert_allclose(r["morphology/Integrated intensity"], 100 * r["morphology/Volume (mesh)"])


def test_morphology_mesh_hull_and_diameter_match_skimage_scipy(rng):
    from scipy.spatial import ConvexHull
    from scipy.spatial.distance import pdist
    from skimage.measure import marching_cubes, mesh_surface_area

    from medkern import _measure as measure

    mask = _ellipsoid((14, 17, 15), (5.2, 7.1, 6.3))
    spacing = (1.5, 0.9, 1.1)
    r = mk.radiomics(mk.Image(rng.normal(size=mask.shape), spacing=spacing), mask, features="morphology")
    verts, faces, _, _ = marching_cubes(np.pad(mask, 1).astype(float), 0.5, spacing=spacing)
    # A smooth convex shape has no ambiguous cube faces: the same mesh as scikit-image's.
    np.testing.assert_allclose(r["morphology/Surface area (mesh)"], mesh_surface_area(verts, faces), rtol=1e-10)
    ours_verts, _ = measure.surface_mesh(mask, spacing)
    hull = ConvexHull(ours_verts)
    np.testing.assert_allclose(r["morphology/Volume density (convex hull)"],
                               r["morphology/Volume (mesh)"] / hull.volume, rtol=1e-10)
    np.testing.assert_allclose(r["morphology/Area density (convex hull)"],
                               r["morphology/Surface area (mesh)"] / hull.area, rtol=1e-10)
    np.testing.assert_allclose(r["morphology/Maximum 3D diameter"], pdist(ours_verts).max(), rtol=1e-12)


def test_convex_hull_kernel_matches_qhull(rng):
    from scipy.spatial import ConvexHull

    pts = rng.integers(-40, 40, size=(400, 3)).astype(np.int64)
    faces = _kernels.convex_hull(pts)
    a, b, c = (pts[faces[:, k]].astype(float) for k in range(3))
    volume = np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6
    area = np.linalg.norm(np.cross(b - a, c - a), axis=1).sum() / 2
    hull = ConvexHull(pts.astype(float))
    np.testing.assert_allclose([volume, area], [hull.volume, hull.area], rtol=1e-12)
    # Coplanar input has no hull.
    assert len(_kernels.convex_hull(np.c_[pts[:, :2], np.zeros(len(pts), np.int64)])) == 0
    with pytest.raises(ValueError, match="below 2\\*\\*20"):
        _kernels.convex_hull(np.array([[1 << 21, 0, 0]] * 4, np.int64))


def test_moran_and_geary_match_pairwise_definition(rng):
    from medkern._radiomics.morphology import spatial_autocorrelation

    img = rng.normal(size=(4, 7, 6)).cumsum(axis=2)
    mask = rng.random(img.shape) > 0.35
    spacing = (2.0, 0.7, 1.3)
    moran, geary = spatial_autocorrelation(img, mask, spacing)
    pos = np.argwhere(mask) * spacing
    x = img[mask]
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    w = np.where(d > 0, 1 / np.where(d > 0, d, 1), 0)
    y = x - x.mean()
    ref_i = len(x) / w.sum() * (w * np.outer(y, y)).sum() / (y ** 2).sum()
    ref_c = (len(x) - 1) / (2 * w.sum()) * (w * (x[:, None] - x[None]) ** 2).sum() / (y ** 2).sum()
    # The FFT evaluates the same pair sums; rounding of a few thousand terms.
    np.testing.assert_allclose([moran, geary], [ref_i, ref_c], rtol=1e-9)


def test_ellipsoid_area_series():
    from numpy.polynomial.legendre import legval

    from medkern._radiomics.morphology import ellipsoid_area

    np.testing.assert_allclose(ellipsoid_area(3, 3, 3), 4 * np.pi * 9)
    # Spheroids: the exact areas, e = sqrt(1 - c^2 / a^2).
    a, c = 5.0, 2.0
    e = np.sqrt(1 - c * c / (a * a))
    np.testing.assert_allclose(ellipsoid_area(a, c, c), 2 * np.pi * c * c * (1 + a / (c * e) * np.arcsin(e)))
    np.testing.assert_allclose(ellipsoid_area(a, a, c), 2 * np.pi * a * a * (1 + (1 - e * e) / e * np.arctanh(e)))
    # Tri-axial: the IBSI series, evaluated here with numpy's Legendre series.
    a, b, c = 4.0, 3.0, 2.0
    al, be = np.sqrt(1 - b * b / (a * a)), np.sqrt(1 - c * c / (a * a))
    nu = np.arange(21)
    ref = 4 * np.pi * a * b * legval((al ** 2 + be ** 2) / (2 * al * be), (al * be) ** nu / (1 - 4 * nu ** 2))
    np.testing.assert_allclose(ellipsoid_area(a, b, c), ref, rtol=1e-12)


# ---------------------------------------------------------------------------- IBSI reference values

def _reference_params():
    if not REFERENCE.is_file():
        return []
    rows = compliance.reference_rows(REFERENCE)
    return [pytest.param(r, id=f"{r['data']}|{r['family']}|{r['feature']}|{r['aggregation']}")
            for r in rows if r["data"] in compliance.CONFIGS]


@pytest.fixture(scope="module")
def ibsi_results():
    """Feature sets of every reference data set, computed once for all reference rows."""
    if not REFERENCE.is_file():
        pytest.skip(f"IBSI reference values not found at {REFERENCE}")
    return {}


@pytest.mark.parametrize("row", _reference_params())
def test_ibsi_reference_value(ibsi_results, row):
    config = row["data"]
    if config not in ibsi_results:
        ibsi_results[config] = compliance.compute(DATA, config)
    (result,) = compliance.compare([row], ibsi_results[config])
    assert result.ours is not None, "feature not computed"
    assert result.within, (f"{result.name} ({result.aggregation}): ours {result.ours}, "
                           f"reference {result.reference} ± {result.tolerance}")
