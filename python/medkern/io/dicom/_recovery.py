"""Recovery of an irregular series: slices shifted onto the first one's grid (gantry tilt) and
interpolated along the normal onto a regular grid."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from medkern.io.dicom._geometry import _Layout


def _shift_plane(plane: np.ndarray, dj: float, di: float, fill: float) -> np.ndarray:
    """plane sampled at (j - dj, i - di), bilinear; outside the plane -> fill."""
    out = plane
    for axis, d in ((0, dj), (1, di)):
        if d == 0:
            continue
        n = out.shape[axis]
        src = np.arange(n, dtype=np.float64) - d
        lo = np.floor(src).astype(np.intp)
        w = (src - lo).astype(np.float32)
        a = np.take(out, np.clip(lo, 0, n - 1), axis=axis)
        b = np.take(out, np.clip(lo + 1, 0, n - 1), axis=axis)
        shape = [1, 1]
        shape[axis] = n
        out = a * (1 - w.reshape(shape)) + b * w.reshape(shape)
        outside = ((src < 0) | (src > n - 1)).reshape(shape)
        out = np.where(outside, np.float32(fill), out).astype(np.float32)
    return out


def _recover(values: np.ndarray, layout: _Layout) -> np.ndarray:
    fill = float(values.min())
    if layout.shifts is not None:
        values = np.stack([_shift_plane(values[k], layout.shifts[k, 0], layout.shifts[k, 1], fill)
                           for k in range(values.shape[0])])
    if layout.interpolation is None:
        return values.astype(np.float32, copy=False)
    out = np.empty((len(layout.interpolation),) + values.shape[1:], dtype=np.float32)
    for k, (a, b, w) in enumerate(layout.interpolation):
        out[k] = values[a] * np.float32(1 - w) + values[b] * np.float32(w) if w > 0 else values[a]
    return out
