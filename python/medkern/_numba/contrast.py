"""Numba peers of cpp/include/medkern/histogram.hpp and clahe.hpp (same arithmetic, same bits)."""

from __future__ import annotations

import numba
import numpy as np

from medkern._backend_shared import CLAHE_GRAY_LEVELS as GRAY_LEVELS
from medkern._backend_shared import clahe_level_table
from medkern._numba import set_threads


@numba.njit(cache=True)
def _locate(xp, v, guess):
    n = xp.size
    j = min(max(guess, 0), n - 2)
    while j > 0 and v < xp[j]:
        j -= 1
    while j < n - 2 and v >= xp[j + 1]:
        j += 1
    return j


@numba.njit(cache=True)
def _guess(xp, v):
    # clamped before the conversion (NaN, values far past the grid), as histogram.hpp
    g = (v - xp[0]) * ((xp.size - 1) / (xp[xp.size - 1] - xp[0]))
    return np.int64(min(g, xp.size - 1)) if g > 0 else 0


@numba.njit(parallel=True, cache=True)
def _histogram_edges(x, mask, use_mask, edges, n_chunks):
    n_bins = edges.size - 1
    part = np.zeros((n_chunks, n_bins), dtype=np.int64)
    lo, hi = edges[0], edges[n_bins]
    step = (x.size + n_chunks - 1) // n_chunks
    for c in numba.prange(n_chunks):
        for i in range(c * step, min(x.size, (c + 1) * step)):
            if use_mask and mask[i] == 0:
                continue
            v = np.float64(x[i])
            if not (v >= lo and v <= hi):
                continue
            part[c, _locate(edges, v, _guess(edges, v))] += 1
    return part.sum(axis=0)


def histogram_edges(x, mask, edges):
    set_threads()
    x = np.ascontiguousarray(x).reshape(-1)
    use_mask = mask is not None
    m = np.ascontiguousarray(mask, dtype=np.uint8).reshape(-1) if use_mask else np.zeros(1, np.uint8)
    edges = np.ascontiguousarray(edges, dtype=np.float64)
    # Integer counts add up exactly in any order; the chunk count only bounds the memory.
    n_chunks = max(1, min(numba.get_num_threads(), (1 << 23) // max(edges.size - 1, 1)))
    return _histogram_edges(x, m, use_mask, edges, n_chunks)


@numba.njit(parallel=True, cache=True)
def _interp(x, out, xp, fp):
    n = xp.size
    if n == 1:
        for i in numba.prange(x.size):
            out[i] = np.float32(fp[0])
        return
    slope = np.empty(n - 1)
    for j in range(n - 1):
        slope[j] = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j])
    for i in numba.prange(x.size):
        v = np.float64(x[i])
        if v < xp[0]:
            r = fp[0]
        elif v >= xp[n - 1]:
            r = fp[n - 1]
        else:
            j = _locate(xp, v, _guess(xp, v))
            r = fp[j] if v == xp[j] else slope[j] * (v - xp[j]) + fp[j]
        out[i] = np.float32(r)


def interp_map(x, xp, fp):
    set_threads()
    x = np.ascontiguousarray(x)
    out = np.empty(x.shape, dtype=np.float32)
    _interp(x.reshape(-1), out.reshape(-1), np.ascontiguousarray(xp, np.float64),
            np.ascontiguousarray(fp, np.float64))
    return out


# --------------------------------------------------------------------------------------------
# CLAHE, scikit-image definition
# --------------------------------------------------------------------------------------------

@numba.njit(cache=True)
def _level(u, lo, hi, bin_size):
    if not hi > lo:
        return 0
    # clamped to the grey range before the conversion (NaN, values outside [lo, hi]), as clahe.hpp
    y = (u - lo) / (hi - lo) * (GRAY_LEVELS - 1)
    y = min(y, GRAY_LEVELS - 1) if y >= 0 else 0.0
    return np.int64(np.rint(y)) // bin_size


@numba.njit(parallel=True, cache=True)
def _bin_image(u, bins, lo, hi, bin_size):
    for i in numba.prange(u.size):
        bins[i] = _level(np.float64(u[i]), lo, hi, bin_size)


@numba.njit(cache=True)
def _reflect(p, s):
    if s == 1:
        return 0
    period = 2 * (s - 1)
    p %= period
    return p if p < s else period - p


@numba.njit(cache=True)
def _clip_histogram(hist, clip_limit):
    nbins = hist.size
    n_excess = 0
    for b in range(nbins):
        if hist[b] > clip_limit:
            n_excess += hist[b] - clip_limit
            hist[b] = clip_limit
    bin_incr = n_excess // nbins
    upper = clip_limit - bin_incr
    for b in range(nbins):
        if hist[b] < upper:
            hist[b] += bin_incr
            n_excess -= bin_incr
    for b in range(nbins):
        if hist[b] >= upper and hist[b] < clip_limit:
            n_excess += hist[b] - clip_limit
            hist[b] = clip_limit
    while n_excess > 0:
        before = n_excess
        for start in range(nbins):
            under = 0
            for b in range(nbins):
                if hist[b] < clip_limit:
                    under += 1
            step = max(1, under // n_excess)
            for b in range(start, nbins, step):
                if hist[b] < clip_limit:
                    hist[b] += 1
                    n_excess -= 1
            if n_excess <= 0:
                break
        if before == n_excess:
            break


@numba.njit(parallel=True, cache=True)
def _tile_maps(bins, kernel, tiles, nbins, clip_limit):
    shape = bins.shape
    n_tiles = tiles[0] * tiles[1] * tiles[2]
    maps = np.empty((n_tiles, nbins))
    scale = (GRAY_LEVELS - 1) / (kernel[0] * kernel[1] * kernel[2])
    for t in numba.prange(n_tiles):
        t0 = t // (tiles[1] * tiles[2])
        t1 = (t // tiles[2]) % tiles[1]
        t2 = t % tiles[2]
        hist = np.zeros(nbins, dtype=np.int64)
        for a in range(kernel[0]):
            k = _reflect(t0 * kernel[0] + a, shape[0])
            for b in range(kernel[1]):
                j = _reflect(t1 * kernel[1] + b, shape[1])
                for c in range(kernel[2]):
                    hist[bins[k, j, _reflect(t2 * kernel[2] + c, shape[2])]] += 1
        _clip_histogram(hist, clip_limit)
        cum = 0
        for b in range(nbins):
            cum += hist[b]
            maps[t, b] = np.float64(np.int64(min(cum * scale, GRAY_LEVELS - 1)))
    return maps


@numba.njit(cache=True)
def _axis_weights(x, kernel, tiles):
    p = x + kernel // 2
    block = p // kernel
    c = (p % kernel) / kernel
    return min(max(block - 1, 0), tiles - 1), min(block, tiles - 1), 1.0 - c, c


@numba.njit(parallel=True, cache=True)
def _interpolate(bins, kernel, tiles, maps, levels):
    K, J, I = bins.shape  # noqa: E741
    lo_part = np.full(K, GRAY_LEVELS, dtype=np.int64)
    hi_part = np.full(K, -1, dtype=np.int64)
    for k in numba.prange(K):
        a0, b0, wa0, wb0 = _axis_weights(k, kernel[0], tiles[0])
        for j in range(J):
            a1, b1, wa1, wb1 = _axis_weights(j, kernel[1], tiles[1])
            for i in range(I):
                a2, b2, wa2, wb2 = _axis_weights(i, kernel[2], tiles[2])
                v = bins[k, j, i]
                acc = np.float32(0.0)
                for e0 in range(2):
                    t0 = a0 if e0 == 0 else b0
                    f0 = wa0 if e0 == 0 else wb0
                    if f0 == 0.0:
                        continue
                    for e1 in range(2):
                        t1 = a1 if e1 == 0 else b1
                        f1 = wa1 if e1 == 0 else wb1
                        if f1 == 0.0:
                            continue
                        row = (t0 * tiles[1] + t1) * tiles[2]
                        acc += np.float32(maps[row + a2, v] * ((wa2 * f1) * f0))
                        acc += np.float32(maps[row + b2, v] * ((wb2 * f1) * f0))
                r = np.int64(acc)
                levels[k, j, i] = r
                lo_part[k] = min(lo_part[k], r)
                hi_part[k] = max(hi_part[k], r)
    return lo_part.min(), hi_part.max()


@numba.njit(parallel=True, cache=True)
def _rescale(levels, out, table):
    for i in numba.prange(levels.size):
        out[i] = table[levels[i]]


def clahe_skimage(x, kernel, x_min, x_max, unit_float, nbins, clip_limit):
    set_threads()
    x = np.ascontiguousarray(x)
    kernel = np.asarray(kernel, dtype=np.int64)
    tiles = (np.asarray(x.shape) + kernel - 1) // kernel
    bin_size = 1 + GRAY_LEVELS // min(nbins, GRAY_LEVELS + 1)
    if unit_float:  # scikit-image's img_as_uint, in the input's own precision
        unit = x.dtype.type(65535)
        x = np.rint(x * unit)
        x_min, x_max = np.rint(x.dtype.type(x_min) * unit), np.rint(x.dtype.type(x_max) * unit)
    bins = np.empty(x.shape, dtype=np.int64)
    _bin_image(x.reshape(-1), bins.reshape(-1), float(x_min), float(x_max), bin_size)
    maps = _tile_maps(bins, kernel, tiles, int(nbins), int(clip_limit))
    levels = np.empty(x.shape, dtype=np.int64)
    r_min, r_max = _interpolate(bins, kernel, tiles, maps, levels)
    out = np.empty(x.shape, dtype=np.float32)
    _rescale(levels.reshape(-1), out.reshape(-1), clahe_level_table(r_min, r_max))
    return out


# --------------------------------------------------------------------------------------------
# CLAHE, OpenCV definition (imgproc/src/clahe.cpp), full tables per tile
# --------------------------------------------------------------------------------------------

@numba.njit(cache=True)
def _reflect101(p, n):
    if n == 1:
        return 0
    while p < 0 or p >= n:
        p = -p if p < 0 else 2 * (n - 1) - p
    return p


@numba.njit(parallel=True, cache=True)
def _opencv_slice(src, dst, tiles_y, tiles_x, clip_limit, hist_size):
    rows, cols = src.shape
    ext_rows, ext_cols = rows, cols
    if rows % tiles_y != 0 or cols % tiles_x != 0:
        ext_rows = rows + tiles_y - rows % tiles_y
        ext_cols = cols + tiles_x - cols % tiles_x
    tile_h = ext_rows // tiles_y
    tile_w = ext_cols // tiles_x
    total = tile_h * tile_w
    clip = 0
    if clip_limit > 0.0:
        # saturated at int32 before the conversion, as clahe.hpp (a huge limit: no clipping)
        clip = max(np.int64(min(clip_limit * total / hist_size, 2147483647.0)), 1)
    lut_scale = np.float32(hist_size - 1) / np.float32(total)
    max_level = np.float32(hist_size - 1)
    lut = np.empty((tiles_y * tiles_x, hist_size), dtype=np.float32)
    for t in numba.prange(tiles_y * tiles_x):
        ty = t // tiles_x
        tx = t % tiles_x
        hist = np.zeros(hist_size, dtype=np.int64)
        for y in range(ty * tile_h, (ty + 1) * tile_h):
            sy = _reflect101(y, rows)
            for x in range(tx * tile_w, (tx + 1) * tile_w):
                hist[src[sy, _reflect101(x, cols)]] += 1
        if clip > 0:
            clipped = 0
            for v in range(hist_size):
                if hist[v] > clip:
                    clipped += hist[v] - clip
                    hist[v] = clip
            batch = clipped // hist_size
            residual = clipped - batch * hist_size
            for v in range(hist_size):
                hist[v] += batch
            if residual != 0:
                step = max(hist_size // residual, 1)
                v = 0
                while v < hist_size and residual > 0:
                    hist[v] += 1
                    v += step
                    residual -= 1
        s = 0
        for v in range(hist_size):
            s += hist[v]
            lut[t, v] = min(np.rint(np.float32(s) * lut_scale), max_level)
    inv_tw = np.float32(1.0) / np.float32(tile_w)
    inv_th = np.float32(1.0) / np.float32(tile_h)
    half = np.float32(0.5)
    one = np.float32(1.0)
    for y in numba.prange(rows):
        tyf = np.float32(y) * inv_th - half
        ty1 = np.int64(np.floor(tyf))
        ya = tyf - np.float32(ty1)
        ya1 = one - ya
        p1 = max(ty1, 0) * tiles_x
        p2 = min(ty1 + 1, tiles_y - 1) * tiles_x
        for x in range(cols):
            txf = np.float32(x) * inv_tw - half
            tx1 = np.int64(np.floor(txf))
            xa = txf - np.float32(tx1)
            xa1 = one - xa
            c1 = max(tx1, 0)
            c2 = min(tx1 + 1, tiles_x - 1)
            v = src[y, x]
            res = (lut[p1 + c1, v] * xa1 + lut[p1 + c2, v] * xa) * ya1 + \
                  (lut[p2 + c1, v] * xa1 + lut[p2 + c2, v] * xa) * ya
            dst[y, x] = min(np.rint(max(res, np.float32(0.0))), max_level)


def clahe_opencv(x, tiles_y, tiles_x, clip_limit):
    set_threads()
    x = np.ascontiguousarray(x)
    out = np.empty_like(x)
    hist_size = 256 if x.dtype == np.uint8 else 65536
    for s in range(x.shape[0]):
        _opencv_slice(x[s], out[s], int(tiles_y), int(tiles_x), float(clip_limit), hist_size)
    return out
