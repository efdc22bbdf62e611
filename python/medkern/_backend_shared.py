"""Definitions that every backend of a kernel family shares (C++ driver, Numba, CuPy).

This module imports nothing from medkern's API modules, so the API modules and the backend
modules (``_numba``, ``_cupy``) can all import it without an import cycle.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from medkern._dispatch import array_module

# ------------------------------------------------------------------------------ filters
MODES = ("reflect", "nearest", "mirror", "wrap", "constant")  # order = medkern::Boundary codes


def pad3(values, fill):
    return [fill] * (3 - len(values)) + list(values)


def bilateral_domain_weights(spacing, sigma_mm, radius) -> np.ndarray:
    """Gaussian of the physical offset over the (2r+1) box, normalised to sum 1, as a flat
    float32 array in (k, j, i) row-major order (ITK normalises its domain kernel the same way).
    Arguments have three entries (2D images padded with a leading axis)."""
    grids = np.meshgrid(*[np.arange(-r, r + 1) * sp / sg for r, sp, sg in zip(radius, spacing, sigma_mm)],
                        indexing="ij")
    w = np.exp(-0.5 * sum(g * g for g in grids)).ravel()
    return (w / w.sum()).astype(np.float32)


# ------------------------------------------------------------------------------ resampling
def fill_outside(out: Any, taps: Sequence[tuple], fill: float) -> Any:
    """Exact ``fill`` on the output slabs whose coordinate fell outside the input on any axis
    (``valid == 0`` in a tap table), after the separable passes; the C++ driver does the same."""
    xp = array_module(out)
    for a in range(3):
        invalid = np.asarray(taps[a][2]) == 0
        if invalid.any():
            sl: list[Any] = [slice(None)] * 3
            sl[a] = xp.asarray(invalid)
            out[tuple(sl)] = fill
    return out


# ------------------------------------------------------------------------------ contrast
# CLAHE maps every image onto this many levels before its histograms (scikit-image's NR_OF_GRAY).
CLAHE_GRAY_LEVELS = 2**14


def clahe_level_table(r_min: int, r_max: int) -> np.ndarray:
    """float32 output of each CLAHE result level: scikit-image's final rescale_intensity onto
    [0, 1] in double (a constant result is clipped to [0, 1] instead)."""
    r = np.arange(CLAHE_GRAY_LEVELS, dtype=np.float64)
    if r_max > r_min:
        return ((r - r_min) / (r_max - r_min)).astype(np.float32)
    return np.clip(r, 0.0, 1.0).astype(np.float32)
