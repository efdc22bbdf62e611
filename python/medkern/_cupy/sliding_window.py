"""Sliding-window blending on the GPU with CuPy: the same patch grid, weights and float32
operation order as the C++ path (and MONAI), for CuPy volumes and a ``fn`` that stays on the device
(e.g. a CUDA :class:`medkern.Model`, which binds CuPy arrays without a host round trip)."""

from __future__ import annotations

from typing import Any, Callable

import cupy
import numpy as np


def run_windows(x, fn: Callable, grid: np.ndarray, roi: tuple[int, ...], weight: np.ndarray,
                batch_size: int, progress: Any):
    """x: (N, C, *spatial) CuPy float; returns the blended (N, C_out, *spatial) float32 output.
    ``progress``: a :class:`medkern._progress.Progress`, updated before each batch."""
    w = cupy.asarray(weight.reshape(roi))
    n_win = len(grid)
    total = x.shape[0] * n_win
    out = None
    weight_sum = cupy.zeros(x.shape[2:], dtype=cupy.float32)
    for start in grid:
        weight_sum[tuple(slice(s, s + r) for s, r in zip(start, roi))] += w
    for first in range(0, total, batch_size):
        progress.update("patches", first / total)
        idx = range(first, min(first + batch_size, total))
        windows = [(n // n_win, tuple(slice(s, s + r) for s, r in zip(grid[n % n_win], roi))) for n in idx]
        batch = cupy.stack([x[(b, slice(None)) + sl] for b, sl in windows]).astype(cupy.float32, copy=False)
        pred = cupy.asarray(fn(batch))
        if pred.ndim != 2 + len(roi) or pred.shape[0] != len(windows) or tuple(pred.shape[2:]) != roi:
            raise ValueError(f"sliding_window: fn returned shape {pred.shape} for a batch of shape "
                             f"{batch.shape}; expected (batch, channels, *roi_size)")
        if out is None:
            out = cupy.zeros((x.shape[0], pred.shape[1]) + x.shape[2:], dtype=cupy.float32)
        pred = pred.astype(cupy.float32, copy=False) * w
        for p, (b, sl) in enumerate(windows):
            out[(b, slice(None)) + sl] += pred[p]
    out /= weight_sum
    return out
