"""GPU side of the resampling kernels: the calls that hand CuPy arrays to medkern._cuda, and their
CuPy peers (same tap tables, boundary rules and label votes as cpp/include/medkern/resample.hpp),
built from CuPy array operations and cupyx.scipy.ndimage's B-spline prefilter and cubic
evaluation, used when medkern._cuda is unavailable."""

from __future__ import annotations

import math

import cupy
import numpy as np
from cupyx.scipy import ndimage as cndi

from medkern._backend_shared import fill_outside
from medkern._cupy import current_stream

# resample.hpp's Interpolation codes, as the API passes them.
_NEAREST, _LINEAR, _CUBIC, _LABEL = range(4)


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
    if code == _NEAREST:
        i = [cupy.clip(cupy.floor(c[a] + 0.5).astype(cupy.int64), 0, n[a] - 1) for a in range(3)]
        v = x[i[0], i[1], i[2]]
        return cupy.where(inside, v, x.dtype.type(fill))
    if code == _CUBIC:
        v = cndi.map_coordinates(x, c, order=3, mode="mirror", prefilter=False, output=np.float64)
        return cupy.where(inside, v, fill).astype(x.dtype)
    f = cupy.floor(c)
    t = c - f
    f = f.astype(cupy.int64)
    lo = [cupy.clip(f[a], 0, n[a] - 1) for a in range(3)]
    hi = [cupy.clip(f[a] + 1, 0, n[a] - 1) for a in range(3)]
    if code == _LINEAR:
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


# ------------------------------------------------------------------------------ medkern._cuda
def _ptr(a) -> int:
    return 0 if a is None else a.data.ptr


def resample_separable_cuda(x, taps, order, prefilter, fill):
    from medkern import _cuda

    stream = current_stream()
    dtype = np.dtype(np.float64 if x.dtype == np.float64 else np.float32)
    cur = cupy.ascontiguousarray(x)
    for a in order:
        idx, w, _ = taps[a]
        shape = tuple(cur.shape)
        outer, inner = math.prod(shape[:a]), math.prod(shape[a + 1:])
        out = cupy.empty(shape[:a] + (idx.shape[0],) + shape[a + 1:], dtype=dtype)
        d_idx = cupy.asarray(idx, dtype=cupy.int64)
        d_w = cupy.asarray(w, dtype=dtype)
        scratch = cupy.empty(cur.size, dtype=dtype) if prefilter else None
        _cuda.resample_axis_pass(cur.data.ptr, cur.dtype, out.data.ptr, outer, shape[a], inner, idx.shape[0],
                                 d_idx.data.ptr, d_w.data.ptr, idx.shape[1], bool(prefilter), _ptr(scratch),
                                 stream)
        cur = out
    return fill_outside(cur, taps, fill)


def gather_nearest_cuda(x, idx0, idx1, idx2, fill_bits):
    from medkern import _cuda

    stream = current_stream()
    idx = [cupy.asarray(i, dtype=cupy.int64) for i in (idx0, idx1, idx2)]
    out = cupy.empty(tuple(int(i.size) for i in idx), dtype=x.dtype)
    _cuda.gather_nearest(x.data.ptr, x.dtype, list(x.shape), out.data.ptr, list(out.shape), idx[0].data.ptr,
                         idx[1].data.ptr, idx[2].data.ptr, int(fill_bits), stream)
    return out


def _cuda_fill(x, code, fill):
    """(output dtype, float fill, fill bits) as the CUDA launchers take them."""
    if code in (_NEAREST, _LABEL):
        return x.dtype, 0.0, int(fill)
    return np.dtype(np.float64 if x.dtype == np.float64 else np.float32), float(fill), 0


def warp_cuda(x, code, out_shape, matrix, disp, disp_matrix, fill):
    from medkern import _cuda

    stream = current_stream()
    x = cupy.ascontiguousarray(x)
    dtype, fill_f, fill_bits = _cuda_fill(x, code, fill)
    out = cupy.empty(tuple(out_shape), dtype=dtype)
    d = None if disp is None else cupy.ascontiguousarray(cupy.asarray(disp, dtype=cupy.float32))
    n_comp = 0 if d is None else int(d.shape[-1])
    r = [] if d is None else [float(v) for v in np.asarray(disp_matrix).ravel()]
    _cuda.resample_warp(x.data.ptr, x.dtype, list(x.shape), code, out.data.ptr, list(out.shape),
                        [float(v) for v in np.asarray(matrix).ravel()], _ptr(d), n_comp, r, fill_f, fill_bits,
                        stream)
    return out


def map_coordinates_cuda(x, code, coords, fill):
    from medkern import _cuda

    stream = current_stream()
    x = cupy.ascontiguousarray(x)
    coords = cupy.ascontiguousarray(cupy.asarray(coords, dtype=cupy.float64))
    dtype, fill_f, fill_bits = _cuda_fill(x, code, fill)
    out = cupy.empty(coords.shape[1], dtype=dtype)
    _cuda.resample_points(x.data.ptr, x.dtype, list(x.shape), code, out.data.ptr, coords.data.ptr,
                          coords.shape[1], coords.shape[0], fill_f, fill_bits, stream)
    return out


def bspline_coefficients_cuda(x):
    from medkern import _cuda

    stream = current_stream()
    x = cupy.ascontiguousarray(x)
    out = cupy.empty(x.shape, dtype=np.float64 if x.dtype == np.float64 else np.float32)
    _cuda.bspline_coefficients(x.data.ptr, x.dtype, list(x.shape), out.data.ptr, stream)
    return out
