"""CuPy peers of the separable correlation and the median (cupyx.scipy.ndimage computes the same
definitions: scipy's boundary modes, kernels correlated with origin 0)."""

from __future__ import annotations

import cupy
from cupyx.scipy import ndimage as cndi

from medkern.filters import MODES


def separable_correlate(x, kernels, mode, cval):
    out = cupy.ascontiguousarray(x, dtype=cupy.float32)
    # Axis order 2, 1, 0 as the C++ kernel, float32 throughout.
    for axis in reversed(range(x.ndim)):
        if kernels[axis] is not None:
            out = cndi.correlate1d(out, cupy.asarray(kernels[axis]), axis=axis, mode=MODES[mode],
                                   cval=float(cval))
    return out


def median_filter(x, radius, mode):
    return cndi.median_filter(cupy.ascontiguousarray(x), size=tuple(2 * r + 1 for r in radius),
                              mode=MODES[mode], cval=0.0)
