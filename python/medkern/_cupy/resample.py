"""CuPy peers of the resampling kernels (same tap tables, boundary rules and label votes as
cpp/include/medkern/resample.hpp), built from CuPy array operations and cupyx.scipy.ndimage's
B-spline prefilter and cubic evaluation. Used when medkern._cuda is unavailable."""

from __future__ import annotations

import cupy
import numpy as np
from cupyx.scipy import ndimage as cndi


def _interp_dtype(dtype) -> np.dtype:
    return np.dtype(np.float64 if dtype == np.float64 else np.float32)


def resample_separable(x, taps, order, prefilter, fill):
    dtype = _interp_dtype(x.dtype)
    cur = x.astype(dtype)
    for a in order:
        idx, w, _ = taps[a]
        if prefilter:
            cur = cndi.spline_filter1d(cur, order=3, axis=a, mode="mirror", output=dtype)
        d_idx = cupy.asarray(idx, dtype=cupy.int64)
        d_w = cupy.asarray(w, dtype=dtype)
        shape_w = [1, 1, 1]
        shape_w[a] = idx.shape[0]
        acc = None
        for t in range(idx.shape[1]):
            term = cupy.take(cur, d_idx[:, t], axis=a) * d_w[:, t].reshape(shape_w)
            acc = term if acc is None else acc + term
        cur = acc
    from medkern._backend_shared import fill_outside

    return fill_outside(cur.astype(dtype, copy=False), taps, fill)


def gather_nearest(x, idx0, idx1, idx2, fill_bits):
    idx = [cupy.asarray(i, dtype=cupy.int64) for i in (idx0, idx1, idx2)]
    out = x
    for a, i in enumerate(idx):
        out = cupy.take(out, cupy.maximum(i, 0), axis=a)
    out = cupy.ascontiguousarray(out)
    invalid = (idx[0] < 0)[:, None, None] | (idx[1] < 0)[None, :, None] | (idx[2] < 0)[None, None, :]
    out[cupy.broadcast_to(invalid, out.shape)] = x.dtype.type(fill_bits)
    return out


def _sample(x, code, c, fill):
    """Samples of the 3D array x at c (3, N) with the conventions of resample.hpp."""
    n = x.shape
    inside = cupy.ones(c.shape[1], dtype=bool)
    for a in range(3):
        inside &= (c[a] >= -0.5) & (c[a] < n[a] - 0.5)
    # Points outside get fill: their coordinates (possibly NaN or huge) are replaced before any
    # conversion to an index, as resample.hpp only converts points inside.
    c = cupy.where(inside[None, :], c, 0.0)
    if code == 0:
        i = [cupy.clip(cupy.floor(c[a] + 0.5).astype(cupy.int64), 0, n[a] - 1) for a in range(3)]
        v = x[i[0], i[1], i[2]]
        return cupy.where(inside, v, x.dtype.type(fill))
    if code == 2:
        v = cndi.map_coordinates(x, c, order=3, mode="mirror", prefilter=False, output=np.float64)
        return cupy.where(inside, v, fill).astype(x.dtype)
    f = cupy.floor(c)
    t = c - f
    f = f.astype(cupy.int64)
    lo = [cupy.clip(f[a], 0, n[a] - 1) for a in range(3)]
    hi = [cupy.clip(f[a] + 1, 0, n[a] - 1) for a in range(3)]
    if code == 1:
        def lerp(a, b, s):
            return a + s * (b - a)

        v = [[[x[i0, i1, i2].astype(cupy.float64) for i2 in (lo[2], hi[2])] for i1 in (lo[1], hi[1])]
             for i0 in (lo[0], hi[0])]
        r = [[lerp(v[p][q][0], v[p][q][1], t[2]) for q in range(2)] for p in range(2)]
        s = [lerp(r[p][0], r[p][1], t[1]) for p in range(2)]
        out = lerp(s[0], s[1], t[0]).astype(_interp_dtype(x.dtype))
        return cupy.where(inside, out, fill)
    # label: corners in visiting order (nearest first), summed weight of each corner's label;
    # argmax takes the first maximum, i.e. the label met first among the tied ones.
    near_hi = t >= 0.5
    labels, weights = [], []
    for corner in range(8):
        w = cupy.ones(c.shape[1])
        ii = []
        for a in range(3):
            use_hi = near_hi[a] != bool((corner >> a) & 1)
            ii.append(cupy.where(use_hi, hi[a], lo[a]))
            w = w * cupy.where(use_hi, t[a], 1.0 - t[a])
        labels.append(x[ii[0], ii[1], ii[2]])
        weights.append(w)
    labels = cupy.stack(labels)
    weights = cupy.stack(weights)
    # adding the corners in visiting order gives each label the same float sum as the C++ votes
    totals = cupy.zeros_like(weights)
    for corner in range(8):
        totals = totals + weights[corner][None, :] * (labels == labels[corner][None, :])
    best = cupy.argmax(totals, axis=0)
    v = cupy.take_along_axis(labels, best[None, :], axis=0)[0]
    return cupy.where(inside, v, x.dtype.type(fill))


def warp(x, code, out_shape, matrix, disp, disp_matrix, fill):
    m = np.asarray(matrix, dtype=np.float64).reshape(3, 4)
    grid = cupy.meshgrid(*[cupy.arange(s, dtype=cupy.float64) for s in out_shape], indexing="ij")
    c = cupy.stack([m[a, 0] * grid[0] + m[a, 1] * grid[1] + m[a, 3] + m[a, 2] * grid[2] for a in range(3)])
    if disp is not None:
        r = np.asarray(disp_matrix, dtype=np.float64)
        u = cupy.asarray(disp, dtype=cupy.float32)
        for a in range(3):
            for q in range(r.shape[1]):
                c[a] += r[a, q] * u[..., q]
    return _sample(cupy.ascontiguousarray(x), code, c.reshape(3, -1), fill).reshape(tuple(out_shape))


def map_coordinates(x, code, coords, fill):
    coords = cupy.asarray(coords, dtype=cupy.float64)
    if coords.shape[0] == 2:
        coords = cupy.concatenate([cupy.zeros((1, coords.shape[1])), coords])
    return _sample(cupy.ascontiguousarray(x), code, coords, fill)


def bspline_coefficients(x):
    return cndi.spline_filter(x, order=3, output=_interp_dtype(x.dtype), mode="mirror")
