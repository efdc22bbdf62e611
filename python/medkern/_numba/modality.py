"""Numba peer of cpp/include/medkern/modality.hpp (same bit handling, same double arithmetic)."""

from __future__ import annotations

import numba
import numpy as np

from medkern._numba import set_threads


@numba.njit(parallel=True, cache=True)
def _lut(stored, out, slope, intercept, bits_stored, is_signed, invert, integral, width):
    n_frames, frame_size = stored.shape
    trim = integral and 0 < bits_stored < width
    low_mask = (np.int64(1) << bits_stored) - 1 if trim else np.int64(-1)
    shift = 64 - bits_stored
    max_unsigned = (np.int64(1) << (bits_stored if bits_stored > 0 else width)) - 1
    for f in numba.prange(n_frames):
        a, b = slope[f], intercept[f]
        for i in range(frame_size):
            if integral:
                s = np.int64(stored[f, i])
                if trim:
                    s = (s << shift) >> shift if is_signed else s & low_mask
                if invert:
                    s = -1 - s if is_signed else max_unsigned - s
                v = np.float64(s)
            else:
                v = np.float64(stored[f, i])
            out[f, i] = v * a + b


def modality_lut(stored, out, slope, intercept, bits_stored, is_signed, invert):
    set_threads()
    n = stored.shape[0]
    flat_in = np.ascontiguousarray(stored).reshape(n, -1)
    flat_out = out.reshape(n, -1)
    integral = stored.dtype.kind in "iu"
    _lut(flat_in, flat_out, np.asarray(slope, dtype=np.float64), np.asarray(intercept, dtype=np.float64),
         int(bits_stored), bool(is_signed), bool(invert), integral, stored.dtype.itemsize * 8)
