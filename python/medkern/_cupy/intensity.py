"""GPU side of the intensity kernels: the affine map's call into medkern._cuda, and CuPy peers
(same arithmetic as intensity.hpp / intensity.cu)."""

from __future__ import annotations

import cupy

from medkern._cupy import current_stream

_affine = cupy.ElementwiseKernel(
    "T x, float64 scale, float64 offset, float64 lo, float64 hi",
    "float32 out",
    """
    double v = scale * (double)x + offset;
    v = v < lo ? lo : v;
    v = v > hi ? hi : v;
    out = (float)v;
    """,
    "medkern_affine_intensity",
)


def affine_intensity(x, scale, offset, lo, hi):
    return _affine(cupy.ascontiguousarray(x), float(scale), float(offset), float(lo), float(hi))


def affine_intensity_cuda(x, scale, offset, lo, hi):
    from medkern import _cuda

    x = cupy.ascontiguousarray(x)
    out = cupy.empty(x.shape, dtype=cupy.float32)
    _cuda.affine_intensity(x.data.ptr, x.dtype, out.data.ptr, x.size, scale, offset, lo, hi,
                           current_stream())
    return out


def moments(x, mask):
    v = x.astype(cupy.float64).ravel()
    if mask is not None:
        v = v[mask.ravel() != 0]
    nan = cupy.isnan(v)
    nan_count = int(nan.sum())
    v = v[~nan]
    if v.size == 0:
        return {"count": 0.0, "sum": 0.0, "sum_sq": 0.0, "min": float("inf"), "max": float("-inf"),
                "nan_count": nan_count}
    return {"count": float(v.size), "sum": float(v.sum()), "sum_sq": float((v * v).sum()),
            "min": float(v.min()), "max": float(v.max()), "nan_count": nan_count}
