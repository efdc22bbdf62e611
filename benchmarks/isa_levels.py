"""Speed of the hot kernels at every SIMD level (medkern._cpu) against their references.

    python benchmarks/isa_levels.py                  # every case
    python benchmarks/isa_levels.py linear rotation  # cases whose name contains a word

Each case runs at every available level in alternating rounds (so machine noise hits the levels
alike) and reports the median per level, the speed-up over the baseline level, and the ratio to
the reference (timed in the same process; SimpleITK with all cores). The results of the levels are
also compared bit for bit.
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
import time

import numpy as np
import scipy.ndimage as ndi
import SimpleITK as sitk

import medkern as mk
from medkern import _cpu

try:
    import volresample
except ImportError:  # reference only
    volresample = None


def _timed(fn) -> float:
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _sitk_resampler(out: mk.Image, interpolator, transform=None):
    f = sitk.ResampleImageFilter()
    f.SetReferenceImage(out.to_sitk())
    f.SetInterpolator(interpolator)
    if interpolator != sitk.sitkNearestNeighbor:
        f.SetOutputPixelType(sitk.sitkFloat32)
    if transform is not None:
        f.SetTransform(transform)
    return f


def cases():
    rng = np.random.default_rng(0)
    shape = (160, 512, 512)
    ct16 = ndi.uniform_filter(rng.integers(-1024, 2000, size=shape, dtype=np.int16), 3)
    ct = ct16.astype(np.float32)
    img, img16 = mk.Image(ct, spacing=(2.5, 0.7, 0.7)), mk.Image(ct16, spacing=(2.5, 0.7, 0.7))
    out = mk.resample(img, 1.0, antialias=False)
    tag = "CT 160x512x512 (2.5, 0.7, 0.7) -> 1 mm"
    vr = volresample
    yield (f"{tag} float32 linear", lambda: mk.resample(img, 1.0, antialias=False),
           "volresample linear", vr and (lambda: vr.resample(ct, out.shape, "linear")), 7)
    yield (f"{tag} int16 nearest", lambda: mk.resample(img16, 1.0, "nearest"),
           "volresample nearest", vr and (lambda: vr.resample(ct16, out.shape, "nearest")), 9)
    yield (f"{tag} float32 cubic", lambda: mk.resample(img, 1.0, "cubic", antialias=False),
           "volresample cubic", vr and (lambda: vr.resample(ct, out.shape, "cubic")), 3)

    n = 256
    cube = ndi.uniform_filter(rng.normal(size=(n, n, n)).astype(np.float32), 3)
    vol = mk.Image(cube, spacing=(1.0, 1.0, 1.0))
    centre = vol.index_to_world(np.full(3, (n - 1) / 2))
    rot = mk.Affine.rotation((0, 0, 10), center=centre)
    s_vol, rot_filter = vol.to_sitk(), _sitk_resampler(vol, sitk.sitkLinear, rot.to_sitk())
    yield (f"{n}^3 rotation 10 deg linear", lambda: mk.resample_to(vol, vol, rot),
           "SimpleITK Resample Euler", lambda: rot_filter.Execute(s_vol), 7)
    obl = mk.Affine.rotation((7, -12, 25), center=centre)
    obl_filter = _sitk_resampler(vol, sitk.sitkLinear, obl.to_sitk())
    yield (f"{n}^3 oblique rotation (7, -12, 25) deg linear", lambda: mk.resample_to(vol, vol, obl),
           "SimpleITK Resample Euler", lambda: obl_filter.Execute(s_vol), 7)

    vol01 = rng.random((n, n, n), dtype=np.float32)
    s01 = sitk.GetImageFromArray(vol01)
    ct_cube = rng.integers(-1000, 2000, size=(n, n, n), dtype=np.int16)
    s_ct = sitk.GetImageFromArray(ct_cube)
    yield (f"gaussian sigma=2 vox {n}^3 float32 (fir)", lambda: mk.gaussian(vol01, sigma_vox=2.0),
           "scipy gaussian_filter", lambda: ndi.gaussian_filter(vol01, 2.0), 7)
    yield (f"median r=1 {n}^3 int16", lambda: mk.median(ct_cube, 1),
           "SimpleITK Median", lambda: sitk.Median(s_ct, [1, 1, 1]), 5)
    yield (f"median r=1 {n}^3 float32", lambda: mk.median(vol01, 1),
           "SimpleITK Median", lambda: sitk.Median(s01, [1, 1, 1]), 5)
    slab = (128, 256, 256)
    mr = np.clip(ndi.zoom(rng.random(tuple(s // 16 for s in slab)), 16, order=1)
                 + 0.05 * rng.standard_normal(slab), 0, 1).astype(np.float32)
    s_mr = sitk.GetImageFromArray(mr)
    yield ("bilateral 128x256x256 sigma_s=1.5 vox sigma_r=0.1", lambda: mk.bilateral(mr, 1.5, 0.1),
           "SimpleITK Bilateral", lambda: sitk.Bilateral(s_mr, 1.5, 0.1), 3)


def main(words: list[str]) -> None:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(os.cpu_count() or 1)
    levels = _cpu.available_levels()
    print(f"levels {', '.join(levels)}; medkern threads {mk.get_num_threads()}")
    for name, fn, ref_name, ref, repeats in cases():
        if words and not any(w in name for w in words):
            continue
        results, times = {}, {level: [] for level in levels}
        for level in levels:  # warm-up, and the results to compare
            with _cpu.use_level(level):
                r = fn()
                results[level] = (r.array if isinstance(r, mk.Image) else r).view(np.uint8)
        same = all(np.array_equal(results[level], results["baseline"]) for level in levels)
        for _ in range(repeats):
            for level in levels:
                with _cpu.use_level(level):
                    times[level].append(_timed(fn))
        med = {level: statistics.median(t) for level, t in times.items()}
        t_ref = statistics.median(_timed(ref) for _ in range(max(1, min(3, repeats)))) if ref else None
        print(f"\n{name}  (bit-identical across levels: {same})")
        for level in levels:
            vs_ref = f", {t_ref / med[level]:.2f}x {ref_name} ({t_ref:.4f} s)" if t_ref else ""
            print(f"  {level:8s} {med[level]:.4f} s  {med['baseline'] / med[level]:.2f}x baseline{vs_ref}")


if __name__ == "__main__":
    main(sys.argv[1:])
