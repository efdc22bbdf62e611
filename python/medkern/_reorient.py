"""Exact reorientation: array axes permuted and flipped toward an orientation code (no resampling)."""

from __future__ import annotations

import itertools

import numpy as np

from medkern.image import Image

__all__ = ["ORIENTATION_LETTERS", "reorient"]

# Orientation code letter -> (world axis, sign) in LPS: the direction an array axis increases toward.
ORIENTATION_LETTERS = {"L": (0, 1), "R": (0, -1), "P": (1, 1), "A": (1, -1), "S": (2, 1), "I": (2, -1)}


def reorient(img: Image, code: str) -> Image:
    """Permute and flip the array axes to point toward an orientation code (exact, no resampling).

    The voxels and their world positions are unchanged; only the array order and the geometry
    that describes it change.

    Parameters
    ----------
    img : Image
        The image.
    code : str
        Per array axis, the LPS direction it should increase toward: letters from ``L R P A S
        I`` (``"SPL"`` is medkern's default orientation). Oblique images get the closest
        axis-aligned match.

    Returns
    -------
    Image
        The reoriented image (``img`` itself when it already has that orientation).

    Raises
    ------
    KeyError
        A letter that is not an orientation letter.

    See Also
    --------
    medkern.resample : Change the spacing instead.

    Examples
    --------
    >>> img = mk.Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), spacing=(3.0, 1.0, 0.5))
    >>> mk.inference.reorient(img, "LPS")            # axis 0 now runs along x
    Image(shape=(4, 3, 2), dtype=int16, spacing=(0.5, 1, 3), origin=(0, 0, 0), numpy)
    """
    out = _reoriented_view(img, code)
    return out if out is img else out.with_array(np.ascontiguousarray(out.array))


def _reoriented_view(img: Image, code: str) -> Image:
    """:func:`reorient` with the array left as a (possibly non-contiguous) view."""
    target = [ORIENTATION_LETTERS[c] for c in code]
    d = img.direction
    best = max(itertools.permutations(range(img.ndim)),
               key=lambda perm: sum(abs(d[w, a]) for (w, _), a in zip(target, perm)))
    flips = [int(np.sign(d[w, a]) != s) for (w, s), a in zip(target, best)]
    if list(best) == list(range(img.ndim)) and not any(flips):
        return img
    index0 = np.array([img.shape[a] - 1 if f else 0 for a, f in zip(best, flips)], dtype=np.float64)
    origin_index = np.zeros(img.ndim)
    origin_index[list(best)] = index0
    direction = np.stack([d[:, a] * (-1 if f else 1) for a, f in zip(best, flips)], axis=1)
    array = np.transpose(img.array, best)
    array = np.flip(array, [t for t, f in enumerate(flips) if f])
    return Image(array, [img.spacing[a] for a in best], img.index_to_world(origin_index), direction)


def _orientation_code(direction: np.ndarray) -> str:
    """The code :func:`reorient` takes to bring an image back to ``direction`` (closest axis per array axis)."""
    letters = {v: k for k, v in ORIENTATION_LETTERS.items()}
    code = ""
    for a in range(direction.shape[1]):
        w = int(np.argmax(np.abs(direction[:, a])))
        code += letters[(w, 1 if direction[w, a] > 0 else -1)]
    return code
