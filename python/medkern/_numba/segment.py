"""Numba peers of cpp/include/medkern/label.hpp, distance.hpp and histogram.hpp (same algorithms)."""

from __future__ import annotations

import numba
import numpy as np

from medkern._numba import set_threads


@numba.njit(cache=True)
def _find(parent, x):
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


@numba.njit(cache=True)
def _label_runs(x, connectivity):
    """Run-based two-pass labelling (He, Chao & Suzuki 2008), numbered in scan order."""
    nk, nj, ni = x.shape
    n_rows = nk * nj
    row_begin = np.zeros(n_rows + 1, np.int64)
    for r in range(n_rows):
        k, j = r // nj, r % nj
        n = 0
        i = 0
        while i < ni:
            v = x[k, j, i]
            if v == 0:
                i += 1
                continue
            while i + 1 < ni and x[k, j, i + 1] == v:
                i += 1
            n += 1
            i += 1
        row_begin[r + 1] = row_begin[r] + n
    n_runs = row_begin[n_rows]
    start = np.empty(n_runs, np.int64)
    end = np.empty(n_runs, np.int64)
    for r in range(n_rows):
        k, j = r // nj, r % nj
        a = row_begin[r]
        i = 0
        while i < ni:
            v = x[k, j, i]
            if v == 0:
                i += 1
                continue
            start[a] = i
            while i + 1 < ni and x[k, j, i + 1] == v:
                i += 1
            end[a] = i
            a += 1
            i += 1
    parent = np.arange(n_runs + 1, dtype=np.int64)
    d18 = 1 if connectivity >= 18 else 0
    d26 = 1 if connectivity == 26 else 0
    nbrs = np.array([[0, -1, d18], [-1, 0, d18], [-1, -1, d26], [-1, 1, d26]], np.int64)
    n_nbrs = 4 if d18 else 2
    for r in range(n_rows):
        k, j = r // nj, r % nj
        for q in range(n_nbrs):
            kb, jb, widen = k + nbrs[q, 0], j + nbrs[q, 1], nbrs[q, 2]
            if kb < 0 or jb < 0 or jb >= nj:
                continue
            rb = kb * nj + jb
            p = row_begin[rb]
            for a in range(row_begin[r], row_begin[r + 1]):
                v = x[k, j, start[a]]
                while p < row_begin[rb + 1] and end[p] < start[a] - widen:
                    p += 1
                b = p
                while b < row_begin[rb + 1] and start[b] <= end[a] + widen:
                    if x[kb, jb, start[b]] == v:
                        ra, rb_ = _find(parent, a + 1), _find(parent, b + 1)
                        if ra < rb_:
                            parent[rb_] = ra
                        elif rb_ < ra:
                            parent[ra] = rb_
                    b += 1
    n = 0
    for lab in range(1, n_runs + 1):
        if parent[lab] == lab:
            n += 1
            parent[lab] = n
        else:
            parent[lab] = parent[parent[lab]]
    out = np.zeros((nk, nj, ni), np.int32)
    for r in range(n_rows):
        k, j = r // nj, r % nj
        for a in range(row_begin[r], row_begin[r + 1]):
            for i in range(start[a], end[a] + 1):
                out[k, j, i] = parent[a + 1]
    return out, n


def label(x, connectivity):
    # One compiled specialisation: int64 holds every label dtype's values exactly.
    x = np.ascontiguousarray(x, dtype=np.int64)
    x3 = x.reshape((1,) + x.shape) if x.ndim == 2 else x
    out, n = _label_runs(x3, connectivity)
    return out.reshape(x.shape), int(n)
