"""GPU side of the registration kernels: the metric's call into medkern._cuda, and the CuPy peer
of the pyramid's smooth-and-shrink (same taps as registration.hpp's AxisTaps, applied as one small
dense matrix per axis)."""

from __future__ import annotations

import cupy
import numpy as np

from medkern._cupy import current_stream

_METRIC_CODES = {"mse": 0, "ncc": 1, "mi": 2}


def _axis_matrix(n_in: int, shrink: int, sigma_vox: float) -> np.ndarray:
    """(n_out, n_in) weights: Gaussian of sigma_vox truncated at ceil(3 sigma) and renormalised
    (linear interpolation below 0.2 voxel), centred at o * shrink + (shrink - 1) / 2, borders
    clamped (folded onto the edge voxels)."""
    n_out = max(1, n_in // shrink)
    radius = 1.0 if sigma_vox < 0.2 else np.ceil(3 * sigma_vox)
    out = np.zeros((n_out, n_in))
    for o in range(n_out):
        centre = o * shrink + 0.5 * (shrink - 1)
        taps = np.arange(int(np.ceil(centre - radius - 1e-9)), int(np.floor(centre + radius + 1e-9)) + 1)
        d = taps - centre
        w = np.maximum(0.0, 1 - np.abs(d)) if sigma_vox < 0.2 else np.exp(-0.5 * d * d / sigma_vox**2)
        np.add.at(out[o], np.clip(taps, 0, n_in - 1), w / w.sum())
    return out


def smooth_shrink(x, shrink, sigma_vox):
    out = cupy.asarray(x, dtype=cupy.float64)
    for axis in (2, 1, 0):
        m = cupy.asarray(_axis_matrix(out.shape[axis], int(shrink[axis]), float(sigma_vox[axis])))
        out = cupy.moveaxis(cupy.tensordot(m, cupy.moveaxis(out, axis, 0), axes=1), 0, axis)
    return cupy.ascontiguousarray(out, dtype=cupy.float32)


def registration_metric_cuda(fixed, moving, indices, fixed_values, moving_mask, to_moving, kind, bins, ranges):
    from medkern import _cuda

    def ptr(a):
        return 0 if a is None else a.data.ptr

    count = fixed.size if indices is None else int(indices.size)
    accumulator = cupy.empty(bins * bins + 64, dtype=cupy.float64)
    cache = cupy.empty(max(1, 5 * count) if kind == "mi" else 1, dtype=cupy.float32)
    return _cuda.registration_metric(
        _METRIC_CODES[kind], fixed.data.ptr, ptr(fixed_values), ptr(indices), count,
        tuple(fixed.shape), moving.data.ptr, tuple(moving.shape), ptr(moving_mask),
        [float(v) for v in np.asarray(to_moving).ravel()], bins, tuple(ranges), accumulator.data.ptr,
        cache.data.ptr, current_stream())
