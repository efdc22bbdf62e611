"""Numba implementations: peers of the C++ kernels, used when medkern._core is unavailable."""

from __future__ import annotations

import numba

from medkern._dispatch import get_num_threads


def set_threads() -> None:
    """Honour medkern.set_num_threads within numba's own pool size."""
    numba.set_num_threads(max(1, min(get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
