"""The hot kernels give the same bits at every SIMD level this CPU and build offer (baseline,
AVX2+FMA, AVX-512; medkern._cpu), and mk.backends() names the level in use."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.ndimage as ndi

import medkern as mk

_cpu = pytest.importorskip("medkern._cpu")
if not mk.backends()["cpp"]:
    pytest.skip("the compiled extension is not built", allow_module_level=True)

LEVELS = _cpu.available_levels()
WIDE = [level for level in LEVELS if level != "baseline"]


def at_every_level(fn, *args, **kwargs):
    """{level: fn(*args, **kwargs) computed at that level} for every available level."""
    out = {}
    for level in LEVELS:
        with _cpu.use_level(level) as used:
            assert used == level
            out[level] = fn(*args, **kwargs)
    return out


def assert_same_bits(results: dict) -> None:
    base = results["baseline"]
    base = base.array if isinstance(base, mk.Image) else base
    for level, r in results.items():
        r = r.array if isinstance(r, mk.Image) else r
        assert r.dtype == base.dtype and r.shape == base.shape, level
        # compared as bytes: NaN and signed zeros must match too
        assert np.array_equal(r.view(np.uint8), base.view(np.uint8)), f"{level} differs from baseline"


def ct_like(rng, shape, dtype):
    """Smooth CT-like intensities: air, soft tissue and bone in HU, with noise."""
    x = ndi.uniform_filter(rng.normal(0, 1, size=shape), 5)
    x = np.where(x > 0.05, 1000.0, np.where(x > -0.05, 40.0, -1000.0)) + rng.normal(0, 20, size=shape)
    return x.astype(dtype)


@pytest.fixture(scope="module")
def volumes():
    rng = np.random.default_rng(7)
    shape = (23, 61, 77)  # odd sizes: every vector loop has a remainder
    return {
        "random float32": rng.normal(size=shape).astype(np.float32),
        "ct-like float32": ct_like(rng, shape, np.float32),
        "ct-like int16": ct_like(rng, shape, np.int16),
        "random int16": rng.integers(-1024, 3000, size=shape, dtype=np.int16),
    }


def test_levels_reported():
    assert LEVELS[0] == "baseline"
    assert _cpu.active_level() in LEVELS
    # the best level is the default
    assert os.environ.get(_cpu.ENV) or _cpu.active_level() == LEVELS[-1]
    for level in LEVELS:
        with _cpu.use_level(level):
            assert mk.backends()["cpp"].detail.endswith(f"SIMD level {level})")
    assert mk.backends()["cpp"].detail.endswith(f"SIMD level {_cpu.active_level()})")


def test_wide_levels_built_where_the_cpu_has_them():
    # A CPU with AVX2 (AVX-512) must get the avx2 (avx512) module when the build made one.
    import importlib.util

    for level in _cpu.cpu_levels():
        built = level == "baseline" or importlib.util.find_spec(f"medkern._core_{level}") is not None
        assert (level in LEVELS) == built, level


@pytest.mark.parametrize("level", ["baseline", "avx2", "avx512"])
def test_environment_override(level):
    code = "import medkern as mk; print(mk.backends()['cpp'].detail)"
    env = dict(os.environ, MEDKERN_ISA=level)
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout
    expected = level if level in LEVELS else LEVELS[-1]
    assert out.strip().endswith(f"SIMD level {expected})")


def test_unavailable_level_warns_and_falls_back():
    with pytest.raises(ValueError, match="MEDKERN_ISA"):
        with _cpu.use_level("sse9"):
            pass
    missing = [level for level in _cpu.LEVELS if level not in LEVELS]
    if not missing:
        pytest.skip("every level is available here")
    with pytest.warns(RuntimeWarning, match="not available"):
        with _cpu.use_level(missing[0]) as used:
            assert used == LEVELS[-1]


needs_wide = pytest.mark.skipif(not WIDE, reason="only the baseline level is available here")


@needs_wide
@pytest.mark.parametrize("name", ["random float32", "ct-like float32", "ct-like int16"])
@pytest.mark.parametrize("interpolation", ["nearest", "linear", "cubic", "label"])
def test_resample_spacing(volumes, name, interpolation):
    x = volumes[name]
    if interpolation == "label":
        x = (x > np.median(x)).astype(np.int16) + (x > np.quantile(x, 0.9)).astype(np.int16)
    img = mk.Image(x, spacing=(2.5, 0.7, 0.7))
    for spacing in (1.0, (1.3, 0.45, 1.1)):
        for antialias in (False, True) if interpolation in ("linear", "cubic") else (False,):
            assert_same_bits(at_every_level(mk.resample, img, spacing, interpolation, antialias=antialias))


@needs_wide
@pytest.mark.parametrize("name", ["random float32", "ct-like float32", "ct-like int16"])
@pytest.mark.parametrize("interpolation", ["nearest", "linear", "cubic"])
def test_rotation_and_affine_warp(volumes, name, interpolation):
    vol = mk.Image(volumes[name], spacing=(1.5, 0.9, 0.8))
    centre = vol.index_to_world((np.array(vol.shape) - 1) / 2)
    for t in (mk.Affine.rotation((0, 0, 10), center=centre),         # in-plane (axis 0 fixed)
              mk.Affine.rotation((7, -12, 25), center=centre),       # oblique
              mk.Affine(np.array([[1.1, 0.05, 0, 2.3], [0.02, 0.93, 0.1, -1.7],
                                  [0, -0.04, 1.05, 0.9], [0, 0, 0, 1]]))):
        assert_same_bits(at_every_level(mk.resample_to, vol, vol, t, interpolation))


@needs_wide
def test_displacement_warp_and_points(volumes):
    rng = np.random.default_rng(3)
    vol = mk.Image(volumes["ct-like float32"], spacing=(1.5, 0.9, 0.8))
    u = ndi.gaussian_filter(rng.normal(size=vol.shape + (3,)), (3, 3, 3, 0)) * 40
    field = mk.DisplacementField(vol.with_array(u.astype(np.float32), vector=True))
    for interpolation in ("nearest", "linear", "cubic"):
        assert_same_bits(at_every_level(mk.warp, vol, field, interpolation=interpolation))
    coords = rng.uniform(-2, np.array(vol.shape)[:, None] + 1, size=(3, 5000))
    for interpolation in ("nearest", "linear", "cubic"):
        assert_same_bits(at_every_level(mk.map_coordinates, vol.array, coords, interpolation))


@needs_wide
@pytest.mark.parametrize("name", ["random float32", "ct-like float32", "ct-like int16"])
def test_gaussian(volumes, name):
    x = volumes[name]
    for method in ("fir", "recursive"):
        assert_same_bits(at_every_level(mk.gaussian, x, sigma_vox=(1.0, 2.0, 1.5), method=method))
    assert_same_bits(at_every_level(mk.gaussian, x[5], sigma_vox=2.0))
    assert_same_bits(at_every_level(mk.mean_filter, x, 2))


@needs_wide
@pytest.mark.parametrize("name", ["random float32", "ct-like int16", "random int16"])
@pytest.mark.parametrize("radius", [1, 2, (1, 2, 3)])
def test_median(volumes, name, radius):
    x = volumes[name]
    assert_same_bits(at_every_level(mk.median, x, radius))
    assert_same_bits(at_every_level(mk.median, x[3], 1))


@needs_wide
@pytest.mark.parametrize("name", ["random float32", "ct-like float32", "ct-like int16"])
def test_bilateral(volumes, name):
    x = volumes[name]
    img = mk.Image(x, spacing=(2.0, 0.8, 0.8))
    sigma_range = float(np.std(x))
    assert_same_bits(at_every_level(mk.bilateral, img, 1.5, sigma_range * 0.3))
    assert_same_bits(at_every_level(mk.bilateral, x[4], 1.0, sigma_range))


@needs_wide
@pytest.mark.parametrize("method", ["gradient", "curvature"])
def test_anisotropic_diffusion(volumes, method):
    x = volumes["ct-like float32"]
    assert_same_bits(at_every_level(mk.anisotropic_diffusion, x, 3, method=method))
