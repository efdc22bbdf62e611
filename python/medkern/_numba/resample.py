"""Numba peers of cpp/include/medkern/resample.hpp: the same samplers, boundary rules and tap
tables, evaluated in double and stored in the output dtype (float32 unless the input is float64)."""

from __future__ import annotations

import numba
import numpy as np

from medkern._backend_shared import fill_outside
from medkern._numba import set_threads

_Z = np.sqrt(3.0) - 2.0  # cubic B-spline pole (Unser 1999)


def _interp_dtype(dtype) -> np.dtype:
    return np.dtype(np.float64 if dtype == np.float64 else np.float32)


@numba.njit(cache=True)
def _mirror(i, n):
    if n == 1:
        return 0
    period = 2 * (n - 1)
    i = abs(i) % period
    return i if i < n else period - i


@numba.njit(cache=True)
def _clamp(i, n):
    return 0 if i < 0 else (n - 1 if i >= n else i)


@numba.njit(cache=True)
def _inside(c, n):
    return c >= -0.5 and c < n - 0.5


@numba.njit(cache=True)
def _prefilter_line(c):
    """Mirror-boundary cubic B-spline prefilter with the exact causal initialisation, in place."""
    n = c.size
    if n < 2:
        return
    z = _Z
    gain = (1.0 - z) * (1.0 - 1.0 / z)
    z_n1 = z ** (n - 1)
    init = c[0] + z_n1 * c[n - 1]
    zi = z
    i = 1
    while i < n - 1 and abs(zi) > 1e-20:
        init += zi * (c[i] + z_n1 * c[n - 1 - i])
        zi *= z
        i += 1
    c[0] = gain * init / (1.0 - z_n1 * z_n1)
    for i in range(1, n):
        c[i] = gain * c[i] + z * c[i - 1]
    c[n - 1] = z / (z * z - 1.0) * (z * c[n - 2] + c[n - 1])
    for i in range(n - 2, -1, -1):
        c[i] = z * (c[i + 1] - c[i])


@numba.njit(parallel=True, cache=True)
def _axis_pass(x, out, idx, w, prefilter):
    outer, n, inner = x.shape
    m, taps = idx.shape
    for ob in numba.prange(outer * inner):
        o = ob // inner
        b = ob % inner
        line = np.empty(n)
        for i in range(n):
            line[i] = x[o, i, b]
        if prefilter:
            _prefilter_line(line)
        for q in range(m):
            acc = 0.0
            for t in range(taps):
                acc += w[q, t] * line[idx[q, t]]
            out[o, q, b] = acc


def resample_separable(x, taps, order, prefilter, fill):
    set_threads()
    cur = np.ascontiguousarray(x, dtype=np.float64)  # one compiled specialisation for every dtype
    for a in order:
        idx, w, _ = taps[a]
        shape = cur.shape
        outer, inner = int(np.prod(shape[:a])), int(np.prod(shape[a + 1:]))
        nxt = np.empty((outer, idx.shape[0], inner))
        _axis_pass(cur.reshape(outer, shape[a], inner), nxt, np.ascontiguousarray(idx, dtype=np.int64),
                   np.ascontiguousarray(w, dtype=np.float64), bool(prefilter))
        cur = nxt.reshape(shape[:a] + (idx.shape[0],) + shape[a + 1:])
    return fill_outside(cur.astype(_interp_dtype(x.dtype)), taps, fill)


@numba.njit(parallel=True, cache=True)
def _gather(x, out, idx0, idx1, idx2, fill):
    m0, m1, m2 = out.shape
    for kj in numba.prange(m0 * m1):
        k = kj // m1
        j = kj % m1
        for i in range(m2):
            if idx0[k] < 0 or idx1[j] < 0 or idx2[i] < 0:
                out[k, j, i] = fill
            else:
                out[k, j, i] = x[idx0[k], idx1[j], idx2[i]]


def gather_nearest(x, idx0, idx1, idx2, fill_bits):
    set_threads()
    out = np.empty((idx0.size, idx1.size, idx2.size), dtype=x.dtype)
    _gather(np.ascontiguousarray(x), out, idx0, idx1, idx2, x.dtype.type(fill_bits))
    return out


@numba.njit(cache=True)
def _bspline(t):
    u = 1.0 - t
    return (u * u * u / 6.0, (3.0 * t ** 3 - 6.0 * t * t + 4.0) / 6.0,
            (-3.0 * t ** 3 + 3.0 * t * t + 3.0 * t + 1.0) / 6.0, t ** 3 / 6.0)


@numba.njit(cache=True)
def _sample_interp(x, code, c0, c1, c2, fill):
    """Linear (code 1) or cubic (code 2, x holds B-spline coefficients) sample at (c0, c1, c2)."""
    n0, n1, n2 = x.shape
    if not (_inside(c0, n0) and _inside(c1, n1) and _inside(c2, n2)):
        return fill
    f0, f1, f2 = np.floor(c0), np.floor(c1), np.floor(c2)
    t0, t1, t2 = c0 - f0, c1 - f1, c2 - f2
    i0, i1, i2 = int(f0), int(f1), int(f2)
    if code == 2:
        w0, w1, w2 = _bspline(t0), _bspline(t1), _bspline(t2)
        acc = 0.0
        for a in range(1 if n0 == 1 else 4):
            wa = 1.0 if n0 == 1 else w0[a]
            ia = _mirror(i0 - 1 + a, n0)
            acc1 = 0.0
            for b in range(1 if n1 == 1 else 4):
                wb = 1.0 if n1 == 1 else w1[b]
                ib = _mirror(i1 - 1 + b, n1)
                acc2 = 0.0
                for c in range(1 if n2 == 1 else 4):
                    wc = 1.0 if n2 == 1 else w2[c]
                    acc2 += wc * x[ia, ib, _mirror(i2 - 1 + c, n2)]
                acc1 += wb * acc2
            acc += wa * acc1
        return acc
    a0, b0 = _clamp(i0, n0), _clamp(i0 + 1, n0)
    a1, b1 = _clamp(i1, n1), _clamp(i1 + 1, n1)
    a2, b2 = _clamp(i2, n2), _clamp(i2 + 1, n2)
    v00 = x[a0, a1, a2] + t2 * (x[a0, a1, b2] - x[a0, a1, a2])
    v01 = x[a0, b1, a2] + t2 * (x[a0, b1, b2] - x[a0, b1, a2])
    v10 = x[b0, a1, a2] + t2 * (x[b0, a1, b2] - x[b0, a1, a2])
    v11 = x[b0, b1, a2] + t2 * (x[b0, b1, b2] - x[b0, b1, a2])
    v0 = v00 + t1 * (v01 - v00)
    v1 = v10 + t1 * (v11 - v10)
    return v0 + t0 * (v1 - v0)


@numba.njit(cache=True)
def _sample_copy(x, code, c0, c1, c2, fill, labels, votes):
    """Nearest (code 0) or label (code 3) sample: returns an input element, bit for bit."""
    n0, n1, n2 = x.shape
    if not (_inside(c0, n0) and _inside(c1, n1) and _inside(c2, n2)):
        return fill
    if code == 0:
        return x[_clamp(int(np.floor(c0 + 0.5)), n0), _clamp(int(np.floor(c1 + 0.5)), n1),
                 _clamp(int(np.floor(c2 + 0.5)), n2)]
    f0, f1, f2 = np.floor(c0), np.floor(c1), np.floor(c2)
    t0, t1, t2 = c0 - f0, c1 - f1, c2 - f2
    i0, i1, i2 = int(f0), int(f1), int(f2)
    # largest summed linear weight, nearest corner visited first (see LabelSampler)
    n_labels = 0
    for corner in range(8):
        h0 = ((corner & 1) != 0) != (t0 >= 0.5)
        h1 = ((corner & 2) != 0) != (t1 >= 0.5)
        h2 = ((corner & 4) != 0) != (t2 >= 0.5)
        w = 1.0
        w *= t0 if h0 else 1.0 - t0
        w *= t1 if h1 else 1.0 - t1
        w *= t2 if h2 else 1.0 - t2
        v = x[_clamp(i0 + h0, n0), _clamp(i1 + h1, n1), _clamp(i2 + h2, n2)]
        s = 0
        while s < n_labels and labels[s] != v:
            s += 1
        if s == n_labels:
            labels[s] = v
            votes[s] = 0.0
            n_labels += 1
        votes[s] += w
    best = 0
    for s in range(1, n_labels):
        if votes[s] > votes[best]:
            best = s
    return labels[best]


@numba.njit(cache=True)
def _coordinate(m, disp, r, use_disp, a, k, j, i):
    c = m[a, 0] * k + m[a, 1] * j + m[a, 3] + m[a, 2] * i
    if use_disp:
        for q in range(disp.shape[3]):
            c += r[a, q] * disp[k, j, i, q]
    return c


@numba.njit(parallel=True, cache=True)
def _warp_interp(x, code, out, m, disp, r, use_disp, fill):
    m0, m1, m2 = out.shape
    for kj in numba.prange(m0 * m1):
        k, j = kj // m1, kj % m1
        for i in range(m2):
            out[k, j, i] = _sample_interp(x, code, _coordinate(m, disp, r, use_disp, 0, k, j, i),
                                          _coordinate(m, disp, r, use_disp, 1, k, j, i),
                                          _coordinate(m, disp, r, use_disp, 2, k, j, i), fill)


@numba.njit(parallel=True, cache=True)
def _warp_copy(x, code, out, m, disp, r, use_disp, fill):
    m0, m1, m2 = out.shape
    for kj in numba.prange(m0 * m1):
        k, j = kj // m1, kj % m1
        labels = np.empty(8, dtype=x.dtype)
        votes = np.empty(8)
        for i in range(m2):
            out[k, j, i] = _sample_copy(x, code, _coordinate(m, disp, r, use_disp, 0, k, j, i),
                                        _coordinate(m, disp, r, use_disp, 1, k, j, i),
                                        _coordinate(m, disp, r, use_disp, 2, k, j, i), fill, labels, votes)


def _out_and_fill(x, code, fill):
    if code in (0, 3):
        return x.dtype, x.dtype.type(fill)
    return _interp_dtype(x.dtype), float(fill)


def _as_sampled(x, code):
    """Copies (nearest, label) keep the element bits; linear and cubic read float64, so each loop
    compiles once for them."""
    return np.ascontiguousarray(x, dtype=None if code in (0, 3) else np.float64)


def warp(x, code, out_shape, matrix, disp, disp_matrix, fill):
    set_threads()
    dtype, fill = _out_and_fill(x, code, fill)
    x = _as_sampled(x, code)
    out = np.empty(tuple(out_shape), dtype=dtype)
    use_disp = disp is not None
    d = np.ascontiguousarray(disp, dtype=np.float32) if use_disp else np.zeros((1, 1, 1, 1), np.float32)
    r = np.asarray(disp_matrix, dtype=np.float64) if use_disp else np.zeros((3, 1))
    m = np.asarray(matrix, dtype=np.float64).reshape(3, 4)
    loop = _warp_copy if code in (0, 3) else _warp_interp
    loop(x, code, out, m, d, r, use_disp, fill)
    return out


@numba.njit(parallel=True, cache=True)
def _points_interp(x, code, coords, out, fill):
    ndim, n = coords.shape
    for p in numba.prange(n):
        c0 = coords[0, p] if ndim == 3 else 0.0
        out[p] = _sample_interp(x, code, c0, coords[ndim - 2, p], coords[ndim - 1, p], fill)


@numba.njit(parallel=True, cache=True)
def _points_copy(x, code, coords, out, fill):
    ndim, n = coords.shape
    for p in numba.prange(n):
        labels = np.empty(8, dtype=x.dtype)
        votes = np.empty(8)
        c0 = coords[0, p] if ndim == 3 else 0.0
        out[p] = _sample_copy(x, code, c0, coords[ndim - 2, p], coords[ndim - 1, p], fill, labels, votes)


def map_coordinates(x, code, coords, fill):
    set_threads()
    dtype, fill = _out_and_fill(x, code, fill)
    x = _as_sampled(x, code)
    out = np.empty(coords.shape[1], dtype=dtype)
    loop = _points_copy if code in (0, 3) else _points_interp
    loop(x, code, np.ascontiguousarray(coords, dtype=np.float64), out, fill)
    return out


def bspline_coefficients(x):
    set_threads()
    cur = np.array(x, dtype=np.float64)
    for a in range(3):
        n = cur.shape[a]
        identity = np.arange(n, dtype=np.int64)[:, None]
        outer, inner = int(np.prod(cur.shape[:a])), int(np.prod(cur.shape[a + 1:]))
        nxt = np.empty((outer, n, inner))
        _axis_pass(cur.reshape(outer, n, inner), nxt, identity, np.ones((n, 1)), True)
        cur = nxt.reshape(cur.shape)
    return cur.astype(_interp_dtype(x.dtype))
