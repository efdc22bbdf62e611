"""Lesion measurement on label images: the surface mesh and the per-region measurements.

The surface of a mask is the marching-cubes mesh of its 0.5 iso-level (IBSI 2020 §3.1), built by
the C++ kernel in ``cpp/include/medkern/mesh.hpp``: vertices at the midpoints of grid edges whose
voxels differ, outward-wound triangles, the mask padded by one empty voxel so the mesh is closed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medkern._dispatch import Kernel, get_num_threads
from medkern.image import Image

__all__: list[str] = []


def _cpp_mesh_area_volume(m, spacing):
    from medkern import _core

    area, volume, _ = _core.mesh_area_volume(m, list(spacing), get_num_threads())
    return area, volume


def _cpp_surface_mesh(m):
    from medkern import _core

    return _core.surface_mesh(m, get_num_threads())


_mesh_area_volume = Kernel("mesh_area_volume", cpp=_cpp_mesh_area_volume)
_surface_mesh = Kernel("surface_mesh", cpp=_cpp_surface_mesh)


def _mask_and_spacing(mask: Any, spacing: Any, name: str = "mask") -> tuple[np.ndarray, tuple[float, ...]]:
    """A 3D numpy mask (nonzero = inside) and its spacing (from the Image, else ``spacing``, else 1)."""
    if isinstance(mask, Image):
        if spacing is None:
            spacing = mask.spacing
        mask = mask.array
    if type(mask).__module__.split(".")[0] == "cupy":
        raise TypeError(f"{name} is a CuPy array; the mesh is computed on the CPU: pass {name}.get()")
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"{name} must be a 3D mask, got shape {mask.shape}")
    if mask.dtype != np.bool_ and mask.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be boolean or numeric, got dtype {mask.dtype}")
    if spacing is None:
        spacing = (1.0, 1.0, 1.0)
    spacing = tuple(float(s) for s in (spacing if not np.isscalar(spacing) else (spacing,) * 3))
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be 3 positive finite values (array-axis order), got {spacing}")
    return mask, spacing


def _padded_crop(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bounding box of ``mask != 0`` padded by one empty voxel, as uint8, and its start index."""
    inside = mask != 0
    if not inside.any():
        return np.zeros((0, 0, 0), np.uint8), np.zeros(3, np.int64)
    lo = np.array([np.flatnonzero(inside.any(axis=tuple(b for b in range(3) if b != a)))[[0, -1]]
                   for a in range(3)])
    crop = inside[lo[0, 0]:lo[0, 1] + 1, lo[1, 0]:lo[1, 1] + 1, lo[2, 0]:lo[2, 1] + 1]
    return np.pad(crop.astype(np.uint8), 1), lo[:, 0] - 1


def surface_mesh(mask: Any, spacing: Any = None, *, backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Marching-cubes surface of ``mask != 0`` at iso-level 0.5 (private; used by ``regions``
    and the IBSI morphology features).

    Returns ``(vertices, faces)``: ``vertices`` float64 ``(n, 3)`` in mm along the array axes,
    ``index * spacing`` (add the origin and apply the direction for LPS), ``faces`` int32
    ``(m, 3)`` vertex ids wound so that ``cross(b - a, c - a)`` points out of the object in
    these array-axis coordinates. The mask is treated as padded by empty voxels, so the mesh is
    always closed. It equals ``skimage.measure.marching_cubes(np.pad(mask, 1), 0.5, spacing=...)``
    in area and volume wherever no cube face is a chequerboard (see ``mesh.hpp``).
    ``spacing`` defaults to the Image's spacing (1 mm for a bare array).
    """
    m, sp = _mask_and_spacing(mask, spacing)
    crop, start = _padded_crop(m)
    if crop.size == 0:
        return np.zeros((0, 3)), np.zeros((0, 3), np.int32)
    verts, faces = _surface_mesh(crop, backend=backend)
    return (verts + start) * np.asarray(sp), faces


def mesh_area_volume(mask: Any, spacing: Any = None, *, backend: str = "auto") -> tuple[float, float]:
    """``(surface area mm², enclosed volume mm³)`` of :func:`surface_mesh`, without building it
    (private): the IBSI "surface area (mesh)" and "volume (mesh)" (IBSI 2020 §3.1.1-2).
    """
    m, sp = _mask_and_spacing(mask, spacing)
    crop, _ = _padded_crop(m)
    if crop.size == 0:
        return 0.0, 0.0
    return _mesh_area_volume(crop, sp, backend=backend)
