"""Numba peers of cpp/include/medkern/{filters,median,bilateral,diffusion}.hpp (same definitions:
same boundary rules, kernels, range table semantics and ITK discretisations)."""

from __future__ import annotations

import math

import numba
import numpy as np

from medkern._backend_shared import bilateral_domain_weights, pad3
from medkern._numba import set_threads


@numba.njit(cache=True)
def _index(i, n, mode):
    """medkern::boundary_index: 0 reflect, 1 nearest, 2 mirror, 3 wrap, 4 constant (-1)."""
    if 0 <= i < n:
        return i
    if mode == 1:
        return 0 if i < 0 else n - 1
    if mode == 0:
        m = i % (2 * n)
        return m if m < n else 2 * n - 1 - m
    if mode == 2:
        if n == 1:
            return 0
        m = i % (2 * n - 2)
        return m if m < n else 2 * n - 2 - m
    if mode == 3:
        return i % n
    return -1


@numba.njit(parallel=True, cache=True)
def _correlate_axis(x, w, axis, mode, cval, out):
    n0, n1, n2 = x.shape
    r = w.size // 2
    for k in numba.prange(n0):
        for j in range(n1):
            for i in range(n2):
                acc = np.float32(0.0)
                for t in range(w.size):
                    if axis == 0:
                        q = _index(k + t - r, n0, mode)
                        v = cval if q < 0 else x[q, j, i]
                    elif axis == 1:
                        q = _index(j + t - r, n1, mode)
                        v = cval if q < 0 else x[k, q, i]
                    else:
                        q = _index(i + t - r, n2, mode)
                        v = cval if q < 0 else x[k, j, q]
                    acc += w[t] * np.float32(v)
                out[k, j, i] = acc


def _as3d(x):
    return x.reshape((1,) * (3 - x.ndim) + x.shape)


def separable_correlate(x, kernels, mode, cval):
    set_threads()
    shape = x.shape
    cur = np.ascontiguousarray(_as3d(x), dtype=np.float32)
    kernels = pad3(kernels, ())
    # Same pass order as the C++ kernel (axis 2, 1, then 0) so float rounding matches closely.
    for axis in (2, 1, 0):
        if len(kernels[axis]) == 0:
            continue
        out = np.empty_like(cur)
        _correlate_axis(cur, np.asarray(kernels[axis], np.float32), axis, mode, np.float32(cval), out)
        cur = out
    return cur.reshape(shape)


def _deriche(sigma):
    """medkern::DericheGaussian (Deriche 1993 coefficients as ITK normalises them)."""
    a0, b0, w0, l0 = 1.3530, 1.8151, 0.6681, -1.3932
    a1, b1, w1, l1 = -0.3531, 0.0902, 2.0787, -1.3732
    c0, s0, c1, s1 = math.cos(w0 / sigma), math.sin(w0 / sigma), math.cos(w1 / sigma), math.sin(w1 / sigma)
    e0, e1 = math.exp(l0 / sigma), math.exp(l1 / sigma)
    d = np.array([-2 * (e1 * c1 + e0 * c0),
                  4 * c1 * c0 * e0 * e1 + e0 * e0 + e1 * e1,
                  -2 * c0 * e0 * e1 * e1 - 2 * c1 * e1 * e0 * e0,
                  e0 * e0 * e1 * e1])
    n = np.array([a0 + a1,
                  e1 * (b1 * s1 - (a1 + 2 * a0) * c1) + e0 * (b0 * s0 - (a0 + 2 * a1) * c0),
                  2 * e0 * e1 * ((a0 + a1) * c1 * c0 - b0 * c1 * s0 - b1 * c0 * s1)
                  + a1 * e0 * e0 + a0 * e1 * e1,
                  e1 * e0 * e0 * (b1 * s1 - a1 * c1) + e0 * e1 * e1 * (b0 * s0 - a0 * c0)])
    sum_d = 1.0 + d.sum()
    n = n / (2 * n.sum() / sum_d - n[0])
    m = np.array([n[1] - d[0] * n[0], n[2] - d[1] * n[0], n[3] - d[2] * n[0], -d[3] * n[0]])
    return n, m, d, d * n.sum() / sum_d, d * m.sum() / sum_d


@numba.njit(parallel=True, cache=True)
def _deriche_lines(v, n, m, d, bn, bm):
    """Filters every row of the 2D float32 array v (lines x samples) in place, in double."""
    lines, ln = v.shape
    for li in numba.prange(lines):
        x = v[li].astype(np.float64)
        y = np.empty(ln)
        a = np.empty(ln)
        for t in range(ln):
            acc = 0.0
            for q in range(4):
                acc += (x[t - q] if t - q >= 1 else x[0]) * n[q]
            for q in range(4):
                acc -= y[t - 1 - q] * d[q] if t - 1 - q >= 0 else x[0] * bn[q]
            y[t] = acc
        e = ln - 1
        for t in range(e, -1, -1):
            acc = 0.0
            for q in range(4):
                acc += (x[t + 1 + q] if t + 1 + q <= e else x[e]) * m[q]
            for q in range(4):
                acc -= a[t + 1 + q] * d[q] if t + 1 + q <= e else x[e] * bm[q]
            a[t] = acc
        for t in range(ln):
            v[li, t] = np.float32(y[t] + a[t])


def recursive_gaussian(x, sigma_vox):
    set_threads()
    shape = x.shape
    v = np.array(_as3d(x), dtype=np.float32)
    sig = [0.0] * (3 - x.ndim) + list(sigma_vox)
    for axis in ((0, 2, 1) if x.ndim == 3 else (1, 2)):
        if sig[axis] <= 0:
            continue
        moved = np.ascontiguousarray(np.moveaxis(v, axis, -1))
        flat = moved.reshape(-1, moved.shape[-1])
        _deriche_lines(flat, *_deriche(sig[axis]))
        v = np.ascontiguousarray(np.moveaxis(flat.reshape(moved.shape), -1, axis))
    return v.reshape(shape)


@numba.njit(parallel=True, cache=True)
def _median(x, r0, r1, r2, mode, out):
    n0, n1, n2 = x.shape
    size = (2 * r0 + 1) * (2 * r1 + 1) * (2 * r2 + 1)
    for k in numba.prange(n0):
        buf = np.empty(size, x.dtype)
        for j in range(n1):
            for i in range(n2):
                e = 0
                for dk in range(-r0, r0 + 1):
                    kk = _index(k + dk, n0, mode)
                    for dj in range(-r1, r1 + 1):
                        jj = _index(j + dj, n1, mode)
                        for di in range(-r2, r2 + 1):
                            ii = _index(i + di, n2, mode)
                            buf[e] = 0 if (kk < 0 or jj < 0 or ii < 0) else x[kk, jj, ii]
                            e += 1
                out[k, j, i] = np.sort(buf)[size // 2]


def median_filter(x, radius, mode):
    set_threads()
    x3 = np.ascontiguousarray(_as3d(x))
    r = [0] * (3 - x.ndim) + list(radius)
    out = np.empty_like(x3)
    _median(x3, r[0], r[1], r[2], mode, out)
    return out.reshape(x.shape)


@numba.njit(cache=True)
def _exp_neg(x):
    """medkern::exp_neg8 on one lane, in float32 arithmetic (same reduction and polynomial)."""
    x = max(x, np.float32(-87.0))
    n = np.int32(x * np.float32(1.44269504088896341) - np.float32(0.5))  # round, x <= 0
    nf = np.float32(n)
    r = (x - nf * np.float32(0.693359375)) + nf * np.float32(2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + np.float32(1.0)
    return p * np.float32(2.0) ** n


@numba.njit(parallel=True, cache=True)
def _bilateral(x, wd, r0, r1, r2, cutoff, to_bin, bin_width, nhiv, samples, out):
    n0, n1, n2 = x.shape
    for k in numba.prange(n0):
        for j in range(n1):
            for i in range(n2):
                c = x[k, j, i]
                num = np.float32(0.0)
                den = np.float32(0.0)
                q = 0
                for dk in range(-r0, r0 + 1):
                    kk = min(max(k + dk, 0), n0 - 1)
                    for dj in range(-r1, r1 + 1):
                        jj = min(max(j + dj, 0), n1 - 1)
                        for di in range(-r2, r2 + 1):
                            v = x[kk, jj, min(max(i + di, 0), n2 - 1)]
                            d = abs(v - c)
                            b = np.float32(min(np.int32(d * to_bin), samples - 1))
                            at = b * bin_width
                            if d < cutoff:
                                w = wd[q] * _exp_neg(nhiv * at * at)
                                num += w * v
                                den += w
                            q += 1
                out[k, j, i] = num / den


def bilateral_filter(x, spacing, sigma_mm, radius, sigma_range, cutoff_sigmas, samples):
    set_threads()
    r = pad3(radius, 0)
    wd = bilateral_domain_weights(pad3(spacing, 1.0), pad3(sigma_mm, 1.0), r)
    x3 = np.ascontiguousarray(_as3d(x), dtype=np.float32)
    out = np.empty_like(x3)
    f = np.float32
    _bilateral(x3, wd, r[0], r[1], r[2], f(cutoff_sigmas * sigma_range),
               f(samples / (cutoff_sigmas * sigma_range)), f(cutoff_sigmas * sigma_range / samples),
               f(-0.5 / sigma_range**2), samples, out)
    return out.reshape(x.shape)


@numba.njit(cache=True)
def _px(x, k, j, i):
    n0, n1, n2 = x.shape
    return x[min(max(k, 0), n0 - 1), min(max(j, 0), n1 - 1), min(max(i, 0), n2 - 1)]


@numba.njit(parallel=True, cache=True)
def _diffusion_step(x, sp, first_axis, inv_k, curvature, dt, out):
    n0, n1, n2 = x.shape
    for k in numba.prange(n0):
        for j in range(n1):
            for i in range(n2):
                x0 = x[k, j, i]
                fwd = np.zeros(3, np.float32)
                bwd = np.zeros(3, np.float32)
                cen = np.zeros(3, np.float32)
                for a in range(3):
                    ak, aj, ai = int(a == 0), int(a == 1), int(a == 2)
                    xp = _px(x, k + ak, j + aj, i + ai)
                    xm = _px(x, k - ak, j - aj, i - ai)
                    fwd[a] = (xp - x0) * sp[a]
                    bwd[a] = (x0 - xm) * sp[a]
                    cen[a] = np.float32(0.5) * (xp - xm) * sp[a]
                speed = np.float32(0.0)
                for a in range(first_axis, 3):
                    ak, aj, ai = int(a == 0), int(a == 1), int(a == 2)
                    gf = fwd[a] * fwd[a]
                    gb = bwd[a] * bwd[a]
                    for b in range(first_axis, 3):
                        if b == a:
                            continue
                        bk, bj, bi = int(b == 0), int(b == 1), int(b == 2)
                        aug = np.float32(0.5) * sp[b] * (_px(x, k + ak + bk, j + aj + bj, i + ai + bi)
                                                         - _px(x, k + ak - bk, j + aj - bj, i + ai - bi))
                        dim = np.float32(0.5) * sp[b] * (_px(x, k - ak + bk, j - aj + bj, i - ai + bi)
                                                         - _px(x, k - ak - bk, j - aj - bj, i - ai - bi))
                        gf += np.float32(0.25) * (cen[b] + aug) * (cen[b] + aug)
                        gb += np.float32(0.25) * (cen[b] + dim) * (cen[b] + dim)
                    cf = _exp_neg(gf * inv_k) if inv_k != 0 else np.float32(0.0)
                    cb = _exp_neg(gb * inv_k) if inv_k != 0 else np.float32(0.0)
                    if curvature:
                        speed += (fwd[a] / math.sqrt(np.float32(1e-10) + gf) * cf
                                  - bwd[a] / math.sqrt(np.float32(1e-10) + gb) * cb)
                    else:
                        speed += fwd[a] * cf - bwd[a] * cb
                if curvature:
                    g = np.float32(0.0)
                    for a in range(first_axis, 3):
                        if speed > 0:
                            g += min(bwd[a], 0) ** 2 + max(fwd[a], 0) ** 2
                        else:
                            g += max(bwd[a], 0) ** 2 + min(fwd[a], 0) ** 2
                    speed *= math.sqrt(g)
                out[k, j, i] = x0 + dt * speed


@numba.njit(cache=True)
def _mean_gradient_sq(x, sp):
    n0, n1, n2 = x.shape
    total = 0.0
    for k in range(n0):
        for j in range(n1):
            acc = 0.0
            for i in range(n2):
                g0 = 0.5 * (np.float64(_px(x, k + 1, j, i)) - _px(x, k - 1, j, i)) * sp[0]
                g1 = 0.5 * (np.float64(_px(x, k, j + 1, i)) - _px(x, k, j - 1, i)) * sp[1]
                g2 = 0.5 * (np.float64(_px(x, k, j, i + 1)) - _px(x, k, j, i - 1)) * sp[2]
                acc += g0 * g0 + g1 * g1 + g2 * g2
            total += acc
    return total / x.size


def anisotropic_diffusion(x, spacing, iterations, time_step, conductance, kind):
    set_threads()
    pad = 3 - x.ndim
    inv_sp = 1.0 / np.array([1.0] * pad + list(spacing))
    cur = np.array(_as3d(x), dtype=np.float32)
    nxt = np.empty_like(cur)
    for _ in range(iterations):
        k = _mean_gradient_sq(cur, inv_sp) * conductance * conductance * -2.0
        inv_k = np.float32(0.0 if k == 0 else 1.0 / k)
        _diffusion_step(cur, inv_sp.astype(np.float32), 3 - x.ndim, inv_k, kind == 1,
                        np.float32(time_step), nxt)
        cur, nxt = nxt, cur
    return cur.reshape(x.shape)
