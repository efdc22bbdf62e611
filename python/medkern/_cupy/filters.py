"""Filters on CuPy arrays: the launchers of the CUDA kernels (cpp/cuda/filters.cu, ``*_cuda``) and
their CuPy peers. cupyx.scipy.ndimage computes the separable correlation and the median with the
same definitions (scipy's boundary modes, kernels correlated with origin 0); the bilateral peer is
written as whole-array operations."""

from __future__ import annotations

import cupy
from cupyx.scipy import ndimage as cndi

from medkern._backend_shared import MODES, bilateral_domain_weights, pad3
from medkern._cupy import current_stream


# ------------------------------------------------------------------ CUDA kernels
# medkern._cuda is imported per call: it is optional, and the CuPy peers below run without it.
def separable_correlate_cuda(x, kernels, mode, cval):
    from medkern import _cuda

    cur = cupy.ascontiguousarray(x)
    shape = pad3(x.shape, 1)
    kernels = pad3(kernels, ())
    for axis in (2, 1, 0):  # the C++ pass order
        if len(kernels[axis]) == 0:
            continue
        w = cupy.asarray(kernels[axis], dtype=cupy.float32)
        out = cupy.empty(x.shape, cupy.float32)
        _cuda.correlate_axis(cur.data.ptr, cur.dtype, out.data.ptr, shape, axis, w.data.ptr, int(w.size),
                             mode, float(cval), current_stream())
        cur = out
    return cur if cur.dtype == cupy.float32 else cur.astype(cupy.float32)


def median_filter_cuda(x, radius, mode):
    from medkern import _cuda

    x = cupy.ascontiguousarray(x)
    out = cupy.empty_like(x)
    _cuda.median_filter(x.data.ptr, x.dtype, out.data.ptr, pad3(x.shape, 1), pad3(radius, 0), mode,
                        current_stream())
    return out


def bilateral_filter_cuda(x, spacing, sigma_mm, radius, sigma_range, cutoff_sigmas, samples):
    from medkern import _cuda

    x = cupy.ascontiguousarray(x)
    r = pad3(radius, 0)
    wd = cupy.asarray(bilateral_domain_weights(pad3(spacing, 1.0), pad3(sigma_mm, 1.0), r))
    out = cupy.empty(x.shape, cupy.float32)
    cutoff = cutoff_sigmas * sigma_range
    _cuda.bilateral_filter(x.data.ptr, x.dtype, out.data.ptr, pad3(x.shape, 1), wd.data.ptr, r,
                           cutoff, samples / cutoff, cutoff / samples, -0.5 / sigma_range**2,
                           current_stream())
    return out


# ------------------------------------------------------------------ CuPy peers
def separable_correlate(x, kernels, mode, cval):
    out = cupy.ascontiguousarray(x, dtype=cupy.float32)
    # Axis order 2, 1, 0 as the C++ kernel, float32 throughout.
    for axis in reversed(range(x.ndim)):
        if len(kernels[axis]):
            out = cndi.correlate1d(out, cupy.asarray(kernels[axis]), axis=axis, mode=MODES[mode],
                                   cval=float(cval))
    return out


def median_filter(x, radius, mode):
    return cndi.median_filter(cupy.ascontiguousarray(x), size=tuple(2 * r + 1 for r in radius),
                              mode=MODES[mode], cval=0.0)


def bilateral_filter(x, spacing, sigma_mm, radius, sigma_range, cutoff_sigmas, samples):
    """medkern::bilateral_filter as whole-array CuPy operations, one shifted view per offset."""
    r = pad3(radius, 0)
    wd = bilateral_domain_weights(pad3(spacing, 1.0), pad3(sigma_mm, 1.0), r)
    x3 = cupy.ascontiguousarray(x, dtype=cupy.float32).reshape(pad3(x.shape, 1))
    padded = cupy.pad(x3, [(v, v) for v in r], mode="edge")
    cutoff = cutoff_sigmas * sigma_range
    to_bin, bin_width = samples / cutoff, cutoff / samples
    num = cupy.zeros_like(x3)
    den = cupy.zeros_like(x3)
    n0, n1, n2 = x3.shape
    q = 0
    for dk in range(2 * r[0] + 1):
        for dj in range(2 * r[1] + 1):
            for di in range(2 * r[2] + 1):
                v = padded[dk:dk + n0, dj:dj + n1, di:di + n2]
                d = cupy.abs(v - x3)
                at = cupy.floor(d * to_bin) * bin_width
                w = cupy.where(d < cutoff, float(wd[q]) * cupy.exp(-0.5 / sigma_range**2 * at * at), 0)
                num += w * v
                den += w
                q += 1
    return (num / den).astype(cupy.float32).reshape(x.shape)
