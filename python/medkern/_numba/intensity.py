"""Numba peers of cpp/include/medkern/intensity.hpp and common.hpp (same arithmetic)."""

from __future__ import annotations

import numba
import numpy as np

from medkern._numba import set_threads

_BLOCK = 1 << 16  # kReductionBlock in common.hpp: same blocking, same rounding


@numba.njit(parallel=True, cache=True)
def _affine(x, out, scale, offset, lo, hi):
    for i in numba.prange(x.size):
        v = scale * np.float64(x[i]) + offset
        v = lo if v < lo else v
        v = hi if v > hi else v
        out[i] = np.float32(v)


@numba.njit(parallel=True, cache=True)
def _moments(x, mask, use_mask):
    n_blocks = (x.size + _BLOCK - 1) // _BLOCK
    part = np.zeros((n_blocks, 5))
    part[:, 3] = np.inf
    part[:, 4] = -np.inf
    nans = np.zeros(n_blocks, dtype=np.int64)
    for b in numba.prange(n_blocks):
        for i in range(b * _BLOCK, min(x.size, (b + 1) * _BLOCK)):
            if use_mask and mask[i] == 0:
                continue
            v = np.float64(x[i])
            if np.isnan(v):
                nans[b] += 1
                continue
            part[b, 0] += 1
            part[b, 1] += v
            part[b, 2] += v * v
            part[b, 3] = min(part[b, 3], v)
            part[b, 4] = max(part[b, 4], v)
    tot = np.zeros(5)
    tot[3] = np.inf
    tot[4] = -np.inf
    for b in range(n_blocks):
        tot[0] += part[b, 0]
        tot[1] += part[b, 1]
        tot[2] += part[b, 2]
        tot[3] = min(tot[3], part[b, 3])
        tot[4] = max(tot[4], part[b, 4])
    return tot, nans.sum()


def affine_intensity(x, scale, offset, lo, hi):
    set_threads()
    x = np.ascontiguousarray(x)
    out = np.empty(x.shape, dtype=np.float32)
    _affine(x.reshape(-1), out.reshape(-1), float(scale), float(offset), float(lo), float(hi))
    return out


def moments(x, mask):
    set_threads()
    x = np.ascontiguousarray(x).reshape(-1)
    use_mask = mask is not None
    m = np.ascontiguousarray(mask, dtype=np.uint8).reshape(-1) if use_mask else np.zeros(1, np.uint8)
    tot, nans = _moments(x, m, use_mask)
    return {"count": tot[0], "sum": tot[1], "sum_sq": tot[2], "min": tot[3], "max": tot[4],
            "nan_count": int(nans)}
