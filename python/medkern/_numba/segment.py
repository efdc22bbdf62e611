"""Numba peers of cpp/include/medkern/label.hpp and distance.hpp (same algorithms)."""

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
def _scan_row(x, k, j, start, end, first, fill):
    """Runs of equal nonzero values in row (k, j); stored from index ``first`` when ``fill``."""
    ni = x.shape[2]
    n = 0
    i = 0
    while i < ni:
        v = x[k, j, i]
        if v == 0:
            i += 1
            continue
        if fill:
            start[first + n] = i
        while i + 1 < ni and x[k, j, i + 1] == v:
            i += 1
        if fill:
            end[first + n] = i
        n += 1
        i += 1
    return n


@numba.njit(cache=True)
def _label_runs(x, connectivity):
    """Run-based two-pass labelling (He, Chao & Suzuki 2008), numbered in scan order."""
    nk, nj, ni = x.shape
    n_rows = nk * nj
    row_begin = np.zeros(n_rows + 1, np.int64)
    for r in range(n_rows):
        row_begin[r + 1] = row_begin[r] + _scan_row(x, r // nj, r % nj, row_begin, row_begin, 0, False)
    n_runs = row_begin[n_rows]
    start = np.empty(n_runs, np.int64)
    end = np.empty(n_runs, np.int64)
    for r in range(n_rows):
        _scan_row(x, r // nj, r % nj, start, end, row_begin[r], True)
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


@numba.njit(cache=True)
def _envelope(f, d, s, border_sites, v, z):
    """Lower envelope of parabolas f(q) + (s (p - q))^2 (Felzenszwalb & Huttenlocher 2012)."""
    n = f.size
    s2 = s * s
    k = -1
    first = -1 if border_sites else 0
    last = n + 1 if border_sites else n
    for q in range(first, last):
        fq = 0.0 if (q < 0 or q >= n) else f[q]
        if fq == np.inf:
            continue
        x = -np.inf
        while k >= 0:
            r = v[k]
            fr = 0.0 if (r < 0 or r >= n) else f[r]
            x = ((fq + s2 * q * q) - (fr + s2 * r * r)) / (2.0 * s2 * (q - r))
            if x <= z[k]:
                k -= 1
                x = -np.inf
            else:
                break
        k += 1
        v[k] = q
        z[k] = x
    if k < 0:
        return False
    c = 0
    for p in range(n):
        while c < k and z[c + 1] < p:
            c += 1
        r = v[c]
        fr = 0.0 if (r < 0 or r >= n) else f[r]
        dp = s * (p - r)
        d[p] = dp * dp + fr
    return True


@numba.njit(parallel=True, cache=True)
def _rows_pass(m, out, s, sites_nonzero, border_sites):
    n_rows, ni = m.shape
    for r in numba.prange(n_rows):
        last = -1.0 if border_sites else -np.inf
        for i in range(ni):
            if (m[r, i] != 0) == sites_nonzero:
                last = float(i)
            d = s * (i - last)
            out[r, i] = np.float32(d * d)
        nxt = float(ni) if border_sites else np.inf
        for i in range(ni - 1, -1, -1):
            if (m[r, i] != 0) == sites_nonzero:
                nxt = float(i)
            d = s * (nxt - i)
            out[r, i] = min(out[r, i], np.float32(d * d))


@numba.njit(parallel=True, cache=True)
def _lines_pass(a, s, border_sites, take_sqrt):
    """Envelope along axis 1 of a (n_outer, n, ni) view, i contiguous."""
    n_outer, n, ni = a.shape
    for o in numba.prange(n_outer):
        f = np.empty(n)
        d = np.empty(n)
        v = np.empty(n + 3, np.int64)
        z = np.empty(n + 3)
        for i in range(ni):
            for p in range(n):
                f[p] = a[o, p, i]
            if _envelope(f, d, s, border_sites, v, z):
                for p in range(n):
                    f[p] = d[p]
            for p in range(n):
                a[o, p, i] = np.float32(np.sqrt(f[p])) if take_sqrt else np.float32(f[p])


def distance_transform(m, spacing, sites_nonzero, border_sites, squared):
    set_threads()
    three_d = m.ndim == 3
    m3 = np.ascontiguousarray(m).reshape((-1,) + m.shape[-2:]) if three_d else m.reshape((1,) + m.shape)
    nk, nj, ni = m3.shape
    out = np.empty((nk, nj, ni), np.float32)
    if out.size == 0:
        return out.reshape(m.shape)
    sp = (spacing[0] if three_d else 1.0, spacing[-2], spacing[-1])
    _rows_pass(m3.reshape(nk * nj, ni), out.reshape(nk * nj, ni), sp[2], sites_nonzero, border_sites)
    planes = nk > 1 or (three_d and border_sites)
    _lines_pass(out, sp[1], border_sites, not squared and not planes)
    if planes:
        _lines_pass(out.transpose(1, 0, 2), sp[0], border_sites, not squared)
    return out.reshape(m.shape)


@numba.njit(parallel=True, cache=True)
def _morphology(m, out, offsets, erode):
    nk, nj, ni = m.shape
    for k in numba.prange(nk):
        for j in range(nj):
            for i in range(ni):
                acc = erode
                for o in range(offsets.shape[0]):
                    ks, js, is_ = k + offsets[o, 0], j + offsets[o, 1], i + offsets[o, 2]
                    inside = 0 <= ks < nk and 0 <= js < nj and 0 <= is_ < ni
                    v = inside and m[ks, js, is_] != 0
                    if erode and not v:
                        acc = False
                        break
                    if not erode and v:
                        acc = True
                        break
                out[k, j, i] = acc


def binary_morphology(m, offsets, erode):
    set_threads()
    m3 = m.reshape((-1,) + m.shape[-2:]) if m.ndim == 3 else m.reshape((1,) + m.shape)
    out = np.empty(m3.shape, np.uint8)
    _morphology(np.ascontiguousarray(m3), out, np.ascontiguousarray(offsets, np.int64), bool(erode))
    return out.reshape(m.shape)
