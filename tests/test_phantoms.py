"""medkern.phantoms: simulated brain-metastasis patients (sizes as stated, grids, seeds, confounders)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import medkern as mk

pytest.importorskip("scipy")
from medkern.phantoms import ACQUISITIONS, simulate_brain_metastases  # noqa: E402


def _synthetic_brain() -> mk.Image:
    """A small skull-stripped 'T1' (1 mm, LPS axes S, P, L): white matter inside a 4 mm cortex,
    CSF-dark ventricles near the centre, background exactly 0; world (0, 0, 0) at its centre."""
    shape = (110, 130, 110)
    centre = (np.asarray(shape) - 1) / 2
    grid = np.indices(shape, dtype=np.float32) - centre[:, None, None, None]
    rho = np.sqrt((grid[0] / 50) ** 2 + (grid[1] / 60) ** 2 + (grid[2] / 50) ** 2)
    t1 = np.where(rho <= 1, 0.87, 0).astype(np.float32)
    t1[(rho <= 1) & (rho > 0.92)] = 0.62
    for side in (-12, 12):
        ventricle = np.sqrt((grid[0] / 10) ** 2 + ((grid[1] - 10) / 25) ** 2 + ((grid[2] - side) / 5) ** 2) <= 1
        t1[ventricle] = 0.3
    spl = np.array([[0.0, 0, 1], [0, 1, 0], [1, 0, 0]])  # array axes toward S, P, L
    return mk.Image(t1, (1.0, 1.0, 1.0), -spl @ centre, spl)


@pytest.fixture(scope="module")
def brain():
    return _synthetic_brain()


@pytest.fixture(scope="module")
def case(brain):
    return simulate_brain_metastases(brain, 3, diameters_mm=(6.0, 10.0, 16.0), acquisition="3T-3D-1mm")


def test_lesions_have_the_stated_size_and_place(case):
    """Truth is analytic (ellipsoid volume, longest axis); the label map holds the voxels at least
    half inside, so its volume matches to the partial-volume rim (5 % at >= 6 mm on 1 mm voxels)
    and its marching-cubes diameter to about a voxel."""
    assert [t.diameter_mm for t in case.truth] == pytest.approx([6.0, 10.0, 16.0], abs=1e-9)
    assert [t.label for t in case.truth] == [1, 2, 3]
    regions = mk.regions(case.lesions)
    assert [r.label for r in regions] == [1, 2, 3]
    for t, r in zip(case.truth, regions):
        a, b, c = t.semi_axes_mm
        assert t.volume_mm3 == pytest.approx(4 / 3 * math.pi * a * b * c, rel=1e-12)
        assert max(t.semi_axes_mm) == pytest.approx(t.diameter_mm / 2, rel=1e-12)
        assert r.volume_mm3 == pytest.approx(t.volume_mm3, rel=0.05)
        assert r.max_diameter_mm == pytest.approx(t.diameter_mm, abs=1.0)
        assert np.linalg.norm(np.subtract(r.centroid, t.centre_lps)) < 0.5
        assert t.kind in ("sphere", "ellipsoid", "ring", "cortical")
    assert case.lesions.array.dtype == np.int32 and case.brain.array.dtype == np.uint8
    assert not np.any((case.lesions.array > 0) & (case.brain.array == 0)), "a lesion leaves the brain"


def test_lesions_enhance_and_the_background_is_zero(case):
    x, labels, brain = case.image.array, case.lesions.array, case.brain.array > 0
    assert x.dtype == np.float32 and np.all(x[~brain] == 0) and np.all(x[brain] > 0)
    white_matter = np.percentile(x[brain & (labels == 0)], 90)
    for t in case.truth:
        if t.kind != "ring":
            # Enhancement is drawn from 1.3-1.9x white matter before contrast change and noise.
            assert np.median(x[labels == t.label]) > 1.1 * white_matter


def test_ring_lesion_has_a_dark_necrotic_core(brain):
    case = simulate_brain_metastases(brain, 4, diameters_mm=(18.0,), acquisition="3T-3D-1mm")
    (t,) = case.truth
    assert t.kind == "ring"  # seed 4 draws a ring for this diameter
    centre = np.round(case.image.world_to_index(np.array([t.centre_lps]))[0]).astype(int)
    core = case.image.array[tuple(slice(c - 1, c + 2) for c in centre)]
    rim = case.image.array[(case.lesions.array == 1)]
    assert core.mean() < 0.6 * np.percentile(rim, 90)
    assert case.lesions.array[tuple(centre)] == 1, "the necrotic core belongs to the lesion"


def test_confounders_are_as_bright_as_lesions(case):
    """Sinuses, cortical veins and choroid plexus: voxels far from every lesion, brighter than any
    tissue of the template (white matter x bias x noise stays under 1.2x), near lesion level."""
    from scipy import ndimage

    conf = case.acquisition["confounders"]
    assert conf["cortical_veins"] >= 4
    x, labels = case.image.array, case.lesions.array
    lesion_level = np.median(x[labels > 0])
    away = ~ndimage.binary_dilation(labels > 0, iterations=4) & (case.brain.array > 0)
    white_matter = np.percentile(x[away], 90)
    assert 0.75 * lesion_level > 1.2 * white_matter
    assert (x[away] > 0.75 * lesion_level).sum() > 500


def test_acquisition_grids(brain):
    thick = simulate_brain_metastases(brain, 5, diameters_mm=(8.0,), acquisition="1.5T-2D-3mm")
    assert thick.image.spacing == pytest.approx((3.0, 1.0, 1.0))
    assert thick.image.shape == (brain.shape[0] // 3, *brain.shape[1:])
    # Each slab is centred on the middle of its three 1 mm slices.
    np.testing.assert_allclose(thick.image.index_to_world(np.zeros((1, 3)))[0],
                               brain.index_to_world(np.array([[1.0, 0, 0]]))[0], atol=1e-9)
    assert thick.lesions.same_geometry(thick.image) and thick.brain.same_geometry(thick.image)
    assert thick.acquisition["name"] == "1.5T-2D-3mm" and thick.acquisition["field_strength_T"] == 1.5
    assert mk.regions(thick.lesions)[0].volume_mm3 == pytest.approx(thick.truth[0].volume_mm3, rel=0.3)
    assert set(ACQUISITIONS) == {"3T-3D-1mm", "1.5T-3D-1mm", "3T-2D-3mm", "1.5T-2D-3mm"}


def test_every_lesion_keeps_a_voxel_on_thick_slices(brain):
    """2 mm lesions on 3 mm slices fill no voxel half-way; each still owns its fullest voxel."""
    case = simulate_brain_metastases(brain, 2, diameters_mm=(2.0, 2.0, 2.0, 2.0), acquisition="3T-2D-3mm")
    assert sorted(np.unique(case.lesions.array)) == [0, 1, 2, 3, 4]
    for t in case.truth:
        voxel = np.argwhere(case.lesions.array == t.label)[0]
        centre = case.image.world_to_index(np.array([t.centre_lps]))[0]
        assert np.all(np.abs((voxel - centre) * case.image.spacing) <= [2.0, 1.5, 1.5])


def test_same_seed_same_patient(brain, case):
    again = simulate_brain_metastases(brain, 3, diameters_mm=(6.0, 10.0, 16.0), acquisition="3T-3D-1mm")
    assert np.array_equal(again.image.array, case.image.array)
    assert np.array_equal(again.lesions.array, case.lesions.array)
    assert again.truth == case.truth
    other = simulate_brain_metastases(brain, 4, diameters_mm=(6.0, 10.0, 16.0), acquisition="3T-3D-1mm")
    assert not np.array_equal(other.lesions.array, case.lesions.array)


def test_drawn_lesions_and_acquisition(brain):
    case = simulate_brain_metastases(brain, 11)
    # Every drawn lesion is in the label map under its own label, and nothing else is.
    labels = np.unique(np.asarray(case.lesions.array))
    expected = list(range(1, len(case.truth) + 1))
    assert sorted(labels[labels > 0].tolist()) == sorted(t.label for t in case.truth) == expected
    assert len(case.truth) <= 6
    assert all(3.0 <= t.diameter_mm <= 25.0 for t in case.truth)
    assert case.acquisition["name"] in ACQUISITIONS
    assert case.image.spacing == pytest.approx(ACQUISITIONS[case.acquisition["name"]]["spacing_mm"])


def test_mni_template_demo_patient():
    """The demo's patient on the real template: every lesion placed, choroid plexus in both atria."""
    location = pytest.importorskip("medkern.analysis.location")
    pytest.importorskip("nilearn.datasets")
    case = simulate_brain_metastases(location.mni_template(), 0, diameters_mm=(6.0, 10.0, 16.0))
    assert [r.label for r in mk.regions(case.lesions)] == [1, 2, 3]
    assert case.acquisition["confounders"]["choroid_plexus"] == 2


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"template": np.zeros((10, 10, 10))}, TypeError, "template must be an mk.Image"),
    ({"template": mk.Image(np.ones((20, 20), np.float32))}, ValueError, "3D scalar"),
    ({"template": mk.Image(np.ones((60, 60, 60), np.float32))}, ValueError, "skull-stripped"),
    ({"seed": -1}, TypeError, "seed must be a non-negative int"),
    ({"seed": True}, TypeError, "seed must be a non-negative int"),
    ({"seed": 1.5}, TypeError, "seed must be a non-negative int"),
    ({"acquisition": "7T"}, ValueError, "acquisition must be one of 3T-3D-1mm"),
    ({"diameters_mm": (1.0,)}, ValueError, r"diameters_mm values must lie in \[2, 40\] mm"),
    ({"diameters_mm": (float("nan"),)}, TypeError, "finite numbers"),
    ({"diameters_mm": "10"}, TypeError, "sequence of lesion diameters"),
    ({"diameters_mm": [5.0] * 21}, ValueError, "at most 20"),
    ({"diameters_mm": [40.0] * 20}, ValueError, "could not place a 40 mm lesion"),
])
def test_bad_arguments(brain, kwargs, error, message):
    args = {"template": brain, "seed": 0, **kwargs}
    with pytest.raises(error, match=message):
        simulate_brain_metastases(args.pop("template"), args.pop("seed"), **args)


@pytest.mark.parametrize("coarse, shape", [((8, 9, 8), (197, 233, 189)), ((3, 8, 8), (61, 233, 189)),
                                           ((2, 2, 2), (10, 3, 7)), ((5, 6, 7), (40, 50, 33))])
def test_cubic_upsample_is_scipy_zoom(coarse, shape):
    """The smooth fields' upsampling is scipy.ndimage.zoom (order 3, grid mode, 'nearest'), to
    rounding: the random coarse noise of the deformation and bias fields at brain sizes."""
    from scipy import ndimage

    from medkern.phantoms import _cubic_upsample

    noise = np.random.default_rng(sum(shape)).normal(size=coarse)
    expected = ndimage.zoom(noise, [n / c for n, c in zip(shape, coarse)], order=3, grid_mode=True, mode="nearest")
    np.testing.assert_allclose(_cubic_upsample(noise, shape), expected, rtol=0, atol=1e-12)
