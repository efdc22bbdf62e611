"""Numba peers of cpp/include/medkern/texture.hpp and radiomics.hpp: the IBSI texture matrices,
same task layout (one matrix per slice and/or direction), so results equal the C++ ones exactly.
Serial: this is the fallback for a missing compiled extension, and parallel Numba kernels take
several times longer to compile."""

from __future__ import annotations

import numba
import numpy as np


def _directions(by_slice: bool, distance: int) -> np.ndarray:
    out = []
    for dz in range(0, 1 if by_slice else 2):
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if dz > 0 or (dz == 0 and (dy > 0 or (dy == 0 and dx > 0))):
                    out.append((dz * distance, dy * distance, dx * distance))
    return np.array(out, dtype=np.int64)


def _levels(levels, n_levels):
    levels = np.asarray(levels)
    if levels.ndim != 3:
        raise ValueError("levels must be a 3D array (use shape (1, ny, nx) for a 2D image)")
    if n_levels < 1:
        raise ValueError(f"n_levels must be >= 1, got {n_levels}")
    levels = np.ascontiguousarray(levels, dtype=np.int32)
    if levels.size and (levels.min() < 0 or levels.max() > n_levels):
        raise ValueError("levels must lie in [0, n_levels]; found "
                         f"{levels.min() if levels.min() < 0 else levels.max()}")
    return levels


@numba.njit(cache=True)
def _inside(lv, z, y, x):
    return 0 <= z < lv.shape[0] and 0 <= y < lv.shape[1] and 0 <= x < lv.shape[2]


_GLCM, _GLRLM = 0, 1


@numba.njit(cache=True)
def _directional(lv, dirs, n_groups, by_slice, kind, out):
    """GLCM or GLRLM counts, one (group, direction) task per matrix, as texture.hpp."""
    n_dirs = dirs.shape[0]
    for task in range(n_groups * n_dirs):
        grp, d = task // n_dirs, task % n_dirs
        dz, dy, dx = dirs[d, 0], dirs[d, 1], dirs[d, 2]
        z0, z1 = (grp, grp + 1) if by_slice else (0, lv.shape[0])
        for z in range(z0, z1):
            for y in range(lv.shape[1]):
                for x in range(lv.shape[2]):
                    a = lv[z, y, x]
                    if a <= 0:
                        continue
                    if kind == _GLCM:
                        if not _inside(lv, z + dz, y + dy, x + dx) or lv[z + dz, y + dy, x + dx] <= 0:
                            continue
                        b = lv[z + dz, y + dy, x + dx]
                        out[grp, d, a - 1, b - 1] += 1.0
                        out[grp, d, b - 1, a - 1] += 1.0
                    else:
                        if _inside(lv, z - dz, y - dy, x - dx) and lv[z - dz, y - dy, x - dx] == a:
                            continue
                        run = 1
                        while (_inside(lv, z + run * dz, y + run * dy, x + run * dx)
                               and lv[z + run * dz, y + run * dy, x + run * dx] == a):
                            run += 1
                        out[grp, d, a - 1, run - 1] += 1.0


@numba.njit(cache=True)
def _border_distance(mask, by_slice):
    nz, ny, nx = mask.shape
    dist = np.zeros(mask.shape, np.int32)
    far = nz + ny + nx + 1
    for sweep in range(2):  # forward raster pass looking back, then backward looking ahead
        step = -1 if sweep == 0 else 1
        for zi in range(nz):
            z = zi if sweep == 0 else nz - 1 - zi
            for yi in range(ny):
                y = yi if sweep == 0 else ny - 1 - yi
                for xi in range(nx):
                    x = xi if sweep == 0 else nx - 1 - xi
                    if mask[z, y, x] == 0:
                        continue
                    d = far if sweep == 0 else dist[z, y, x]
                    for k in range(0 if not by_slice else 1, 3):
                        zz = z + step if k == 0 else z
                        yy = y + step if k == 1 else y
                        xx = x + step if k == 2 else x
                        inside = 0 <= zz < nz and 0 <= yy < ny and 0 <= xx < nx
                        nb = dist[zz, yy, xx] if inside else 0
                        d = min(d, nb + 1)
                    dist[z, y, x] = d
    return dist


@numba.njit(cache=True)
def _zones(lv, start, order, n_levels, by_slice, dist, use_dist, sizes, dists, n_found):
    nz, ny, nx = lv.shape
    visited = np.zeros(lv.size, np.uint8)
    flat = lv.ravel()
    zr = 0 if by_slice else 1
    n_tasks = start.shape[0] - 1
    for task in range(n_tasks):
        level = task % n_levels + 1
        stack = np.empty(start[task + 1] - start[task] + 1, np.int64)
        count = 0
        for s in range(start[task], start[task + 1]):
            seed = order[s]
            if visited[seed]:
                continue
            visited[seed] = 1
            top = 0
            stack[0] = seed
            size = 0
            dmin = dist[seed] if use_dist else 0
            while top >= 0:
                i = stack[top]
                top -= 1
                size += 1
                if use_dist and dist[i] < dmin:
                    dmin = dist[i]
                z, y, x = i // (ny * nx), (i // nx) % ny, i % nx
                for dz in range(-zr, zr + 1):
                    for dy in range(-1, 2):
                        for dx in range(-1, 2):
                            if not (0 <= z + dz < nz and 0 <= y + dy < ny and 0 <= x + dx < nx):
                                continue
                            j = ((z + dz) * ny + y + dy) * nx + x + dx
                            if flat[j] != level or visited[j]:
                                continue
                            visited[j] = 1
                            top += 1
                            stack[top] = j
            # Zones of a task are stored from its first slot in `order`: at most one per voxel.
            sizes[start[task] + count] = size
            dists[start[task] + count] = dmin
            count += 1
        n_found[task] = count


@numba.njit(cache=True)
def _neighbours(lv, z, y, x, zr, delta, alpha):
    """Sum and count of the ROI neighbours of (z, y, x), and how many are within alpha of it."""
    a = lv[z, y, x]
    total = 0.0
    count = 0
    similar = 0
    for dz in range(-zr, zr + 1):
        for dy in range(-delta, delta + 1):
            for dx in range(-delta, delta + 1):
                if (dz == 0 and dy == 0 and dx == 0) or not _inside(lv, z + dz, y + dy, x + dx):
                    continue
                b = lv[z + dz, y + dy, x + dx]
                if b > 0:
                    total += b
                    count += 1
                    if abs(b - a) <= alpha:
                        similar += 1
    return total, count, similar


@numba.njit(cache=True)
def _ngtdm(lv, by_slice, delta, s, n):
    zr = 0 if by_slice else delta
    for z in range(lv.shape[0]):
        for y in range(lv.shape[1]):
            for x in range(lv.shape[2]):
                a = lv[z, y, x]
                if a <= 0:
                    continue
                total, count, _ = _neighbours(lv, z, y, x, zr, delta, 0)
                if count == 0:
                    continue
                s[z, a - 1] += abs(a - total / count)
                n[z, a - 1] += 1.0


@numba.njit(cache=True)
def _ngldm(lv, by_slice, delta, alpha, out):
    zr = 0 if by_slice else delta
    for z in range(lv.shape[0]):
        for y in range(lv.shape[1]):
            for x in range(lv.shape[2]):
                a = lv[z, y, x]
                if a > 0:
                    out[z, a - 1, _neighbours(lv, z, y, x, zr, delta, alpha)[2]] += 1.0


def glcm(levels, n_levels, by_slice, distance):
    if distance < 1:
        raise ValueError("distance must be >= 1")
    lv = _levels(levels, n_levels)
    dirs = _directions(by_slice, distance)
    n_groups = lv.shape[0] if by_slice else 1
    out = np.zeros((n_groups, len(dirs), n_levels, n_levels))
    _directional(lv, dirs, n_groups, by_slice, _GLCM, out)
    return out


def glrlm(levels, n_levels, by_slice):
    lv = _levels(levels, n_levels)
    dirs = _directions(by_slice, 1)
    n_groups = lv.shape[0] if by_slice else 1
    max_run = max(1 if by_slice else lv.shape[0], lv.shape[1], lv.shape[2])
    out = np.zeros((n_groups, len(dirs), n_levels, max_run))
    _directional(lv, dirs, n_groups, by_slice, _GLRLM, out)
    return out


def zones(levels, n_levels, by_slice, morph_mask):
    lv = _levels(levels, n_levels)
    if morph_mask is not None:
        morph_mask = np.ascontiguousarray(morph_mask, dtype=np.uint8)
        if morph_mask.size != lv.size:
            raise ValueError(f"mask has {morph_mask.size} elements, image has {lv.size}")
        dist = _border_distance(morph_mask.reshape(lv.shape), by_slice).ravel()
    else:
        dist = np.zeros(1, np.int32)
    # Counting sort of ROI voxels by (group, level), as texture.hpp does.
    flat = lv.ravel()
    idx = np.flatnonzero(flat)
    per_group = lv.shape[1] * lv.shape[2] if by_slice else lv.size
    n_groups = lv.shape[0] if by_slice else 1
    task = (idx // per_group) * n_levels + flat[idx] - 1
    order = idx[np.argsort(task, kind="stable")]
    start = np.concatenate([[0], np.cumsum(np.bincount(task, minlength=n_groups * n_levels))])
    sizes = np.zeros(len(order), np.int64)
    dists = np.zeros(len(order), np.int32)
    n_found = np.zeros(n_groups * n_levels, np.int64)
    _zones(lv, start, order, n_levels, by_slice, dist, morph_mask is not None, sizes, dists, n_found)
    keep = np.concatenate([np.arange(start[t], start[t] + n_found[t]) for t in range(len(n_found))]
                          ) if len(n_found) else np.zeros(0, np.int64)
    tasks = np.repeat(np.arange(len(n_found)), n_found)
    return ((tasks // n_levels).astype(np.int32), (tasks % n_levels + 1).astype(np.int32),
            sizes[keep], dists[keep] if morph_mask is not None else np.zeros(len(keep), np.int32))


def ngtdm(levels, n_levels, by_slice, distance):
    if distance < 1:
        raise ValueError("distance must be >= 1")
    lv = _levels(levels, n_levels)
    s = np.zeros((lv.shape[0], n_levels))
    n = np.zeros((lv.shape[0], n_levels))
    _ngtdm(lv, by_slice, distance, s, n)
    return s, n


def ngldm(levels, n_levels, by_slice, distance, alpha):
    if distance < 1:
        raise ValueError("distance must be >= 1")
    if alpha < 0:
        raise ValueError("coarseness alpha must be >= 0")
    lv = _levels(levels, n_levels)
    side = 2 * distance + 1
    out = np.zeros((lv.shape[0], n_levels, side ** 2 if by_slice else side ** 3))
    _ngldm(lv, by_slice, distance, alpha, out)
    return out


@numba.njit(cache=True)
def _offset_means(image, centres, offsets, out):
    nz, ny, nx = image.shape
    for c in range(centres.shape[0]):
        i = centres[c]
        z, y, x = i // (ny * nx), (i // nx) % ny, i % nx
        total = 0.0
        count = 0
        for o in range(offsets.shape[0]):
            zz, yy, xx = z + offsets[o, 0], y + offsets[o, 1], x + offsets[o, 2]
            if 0 <= zz < nz and 0 <= yy < ny and 0 <= xx < nx:
                total += np.float64(image[zz, yy, xx])
                count += 1
        out[c] = total / count


def offset_means(image, centres, offsets):
    image = np.ascontiguousarray(image)
    if image.ndim != 3:
        raise ValueError("image must be a 3D array")
    centres = np.ascontiguousarray(centres, dtype=np.int64)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    if offsets.ndim != 2 or offsets.shape[1] != 3:
        raise ValueError("offsets must be an (n, 3) array of index offsets")
    if len(offsets) == 0:
        raise ValueError("offsets must not be empty")
    if centres.size and (centres.min() < 0 or centres.max() >= image.size):
        raise ValueError("centres must be flat indices into image")
    out = np.empty(len(centres))
    _offset_means(image, centres, offsets, out)
    return out
