"""Numba peer of cpp/include/medkern/polygon.hpp (same crossing rule, same intervals)."""

from __future__ import annotations

import numba
import numpy as np

from medkern._numba import set_threads


@numba.njit(parallel=True, cache=True)
def _fill(xy, start, slice_of, mask):
    nk, nj, ni = mask.shape
    for r in numba.prange(nk * nj):
        k = r // nj
        y = float(r % nj)
        xs = np.empty(0, dtype=np.float64)
        for p in range(slice_of.size):
            if slice_of[p] != k:
                continue
            a, b = start[p], start[p + 1]
            for v in range(a, b):
                w = v + 1 if v + 1 < b else a
                x0, y0, x1, y1 = xy[v, 0], xy[v, 1], xy[w, 0], xy[w, 1]
                if (y0 <= y) != (y1 <= y):
                    xs = np.append(xs, x0 + (y - y0) * (x1 - x0) / (y1 - y0))
        if xs.size < 2:
            continue
        xs = np.sort(xs)
        for c in range(0, xs.size - 1, 2):
            lo = max(np.ceil(xs[c]), 0.0)
            hi = min(np.ceil(xs[c + 1]), float(ni))
            for i in range(int(lo), int(hi)):
                mask[k, r % nj, i] = 1


def fill_polygons(xy, start, slice_of, nk, nj, ni):
    set_threads()
    mask = np.zeros((nk, nj, ni), dtype=np.uint8)
    _fill(np.ascontiguousarray(xy, dtype=np.float64), np.ascontiguousarray(start, dtype=np.int64),
          np.ascontiguousarray(slice_of, dtype=np.int64), mask)
    return mask
