"""GPU timings: each medkern CUDA kernel vs its CuPy fallback and the CPU kernel, one table."""

from __future__ import annotations

import time

import numpy as np

import medkern as mk


def _time(fn, sync, repeats=10):
    fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    import cupy

    sync = cupy.cuda.Device().synchronize
    ct = np.random.default_rng(0).integers(-1024, 2000, size=(160, 512, 512), dtype=np.int16)
    g = cupy.asarray(ct)
    vol = np.random.default_rng(1).random((128, 256, 256), dtype=np.float32)
    gv = cupy.asarray(vol)
    rows = []
    cases = [
        ("window 160x512x512 int16", lambda b: mk.window(g, 40, 400, backend=b),
         lambda: mk.window(ct, 40, 400)),
        ("normalize zscore", lambda b: mk.normalize(g, backend=b), lambda: mk.normalize(ct)),
        ("clahe 3D 128x256x256 float32", lambda b: mk.clahe(gv, backend=b),
         lambda: mk.clahe(vol)),
        ("gaussian sigma=2 vox 128x256x256", lambda b: mk.gaussian(gv, sigma_vox=2.0, backend=b),
         lambda: mk.gaussian(vol, sigma_vox=2.0)),
        ("median r=1 128x256x256", lambda b: mk.median(gv, 1, backend=b), lambda: mk.median(vol, 1)),
        ("bilateral 1.5 vox / 0.1 128x256x256", lambda b: mk.bilateral(gv, 1.5, 0.1, backend=b),
         lambda: mk.bilateral(vol, 1.5, 0.1)),
    ]
    ct_img, g_img = mk.Image(ct, spacing=(2.5, 0.7, 0.7)), mk.Image(g, spacing=(2.5, 0.7, 0.7))
    rot = mk.Affine.rotation((0, 0, 10), center=ct_img.index_to_world((np.array(ct.shape) - 1) / 2))
    for interp in ("linear", "cubic", "nearest"):
        cases.append((f"resample -> 1 mm {interp}",
                      lambda b, i=interp: mk.resample(g_img, 1.0, i, antialias=False, backend=b),
                      lambda i=interp: mk.resample(ct_img, 1.0, i, antialias=False)))
    cases.append(("resample_to rotation 10 deg linear", lambda b: mk.resample_to(g_img, g_img, rot, backend=b),
                  lambda: mk.resample_to(ct_img, ct_img, rot)))
    for name, gpu, cpu in cases:
        t_cuda = _time(lambda gpu=gpu: gpu("cuda"), sync)
        t_cupy = _time(lambda gpu=gpu: gpu("cupy"), sync)
        t_cpu = _time(cpu, lambda: None, repeats=3)
        rows.append(f"| {name} | {t_cuda * 1e3:.2f} | {t_cupy * 1e3:.2f} | {t_cpu * 1e3:.1f} | {t_cpu / t_cuda:.0f}× |")
    print("\n| case | cuda (ms) | cupy (ms) | cpu (ms) | cuda vs cpu |\n|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
