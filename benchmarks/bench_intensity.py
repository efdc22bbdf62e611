"""window / normalize vs SimpleITK and numpy (memory-bound: one read, one write per voxel)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

import medkern as mk

from _harness import Case


def cases(quick: bool) -> list[Case]:
    shape = (64, 256, 256) if quick else (160, 512, 512)
    rng = np.random.default_rng(0)
    ct = rng.integers(-1024, 2000, size=shape, dtype=np.int16)
    s = sitk.GetImageFromArray(ct)
    nbytes = ct.nbytes + ct.size * 4
    return [
        Case(
            f"window {shape} int16 -> float32",
            lambda: mk.window(ct, 40, 400),
            {
                "SimpleITK IntensityWindowing": lambda: sitk.IntensityWindowing(s, -160, 240, 0, 1),
                "numpy clip": lambda: np.clip((ct.astype(np.float32) + 160) / 400, 0, 1),
            },
            bytes_moved=nbytes,
        ),
        Case(
            f"normalize zscore {shape} int16",
            lambda: mk.normalize(ct, "zscore"),
            {"SimpleITK Normalize": lambda: sitk.Normalize(s),
             "numpy": lambda: (ct - ct.mean()) / ct.std()},
            bytes_moved=2 * ct.nbytes + ct.size * 4,
        ),
    ]
