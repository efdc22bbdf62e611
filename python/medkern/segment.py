"""Segmentation: Otsu threshold, connected components, Euclidean distance transform, binary
morphology with physical ball radii, hole filling and component filtering.

Masks are any nonzero voxel; mask outputs are ``bool`` arrays (an Image in, an Image out with
the same geometry). Per-axis quantities are in array-axis order and physical units (mm) come
from the Image's spacing (1 mm per voxel for a bare array).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medkern._dispatch import Kernel, get_num_threads, is_cupy_array
from medkern.image import Image

__all__ = ["label"]


def _cpp_label(x, connectivity):
    from medkern import _core

    return _core.label(x, connectivity, get_num_threads())


_label = Kernel("label", cpp=_cpp_label, numba="medkern._numba.segment:label")


def _split(img: Any, name: str) -> tuple[np.ndarray, Image | None]:
    """The numpy array of an Image or array (2D or 3D) and the Image (or None)."""
    if isinstance(img, Image):
        if img.is_vector:
            raise ValueError(f"{name} is a vector image; this operation takes scalar images")
        array, image = img.array, img
    else:
        array, image = img, None
    if is_cupy_array(array):
        raise TypeError(f"{name} is a CuPy array; segmentation runs on the CPU: pass {name}.get()")
    array = np.asarray(array)
    if array.ndim not in (2, 3):
        raise ValueError(f"{name} must be a 2D or 3D image, got an array of shape {array.shape}")
    return array, image


def _rewrap(out: np.ndarray, image: Image | None) -> Any:
    return image.with_array(out) if image is not None else out


def _connectivity(connectivity: Any, ndim: int) -> int:
    """The 3D neighbourhood (6, 18, 26) the kernels use for a 2D (4, 8) or 3D connectivity."""
    if connectivity is None:
        return 26
    allowed = (4, 8) if ndim == 2 else (6, 18, 26)
    if isinstance(connectivity, bool) or connectivity not in allowed:
        raise ValueError(f"connectivity for a {ndim}D image must be one of {allowed}, got {connectivity!r}")
    return {4: 6, 8: 26}.get(int(connectivity), int(connectivity))


def _label_input(mask: np.ndarray, name: str = "mask") -> np.ndarray:
    if mask.dtype == np.bool_:
        return mask.view(np.uint8)
    if mask.dtype.kind not in "iu":
        raise TypeError(f"{name} has dtype {mask.dtype}; label takes a bool or integer array "
                        "(threshold a probability map first, e.g. mask > 0.5)")
    return mask


def label(mask: Any, connectivity: int | None = None, *, backend: str = "auto") -> tuple[Any, int]:
    """Connected components: ``(labels, n)`` with int32 labels ``1..n`` and 0 for background.

    ``connectivity``: 6, 18 or 26 in 3D; 4 or 8 in 2D; default (None) the full neighbourhood
    (26 / 8). A bool mask is labelled like ``scipy.ndimage.label`` with the matching structure;
    an integer image labels each value's components separately (voxels connect only to
    neighbours with the same value, like ``cc3d.connected_components``), so a 0/1 integer mask
    gives the same result as a bool one. Components are numbered in scan (C) order of their
    first voxel, exactly as scipy numbers them. Float input raises TypeError (threshold first).
    """
    x, image = _split(mask, "mask")
    conn = _connectivity(connectivity, x.ndim)
    labels, n = _label(_label_input(x), conn, backend=backend)
    return _rewrap(labels, image), int(n)
