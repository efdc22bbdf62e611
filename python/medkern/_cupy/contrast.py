"""CLAHE (scikit-image definition) on CuPy arrays.

``clahe_skimage_cuda`` drives the fused kernels of cpp/cuda/clahe.cu; ``clahe_skimage`` is the
CuPy fallback written as array operations over all regions at once (the shape of scikit-image's
own implementation). Both compute the arithmetic of cpp/include/medkern/clahe.hpp.
"""

from __future__ import annotations

import math

import cupy
import numpy as np

from medkern._backend_shared import CLAHE_GRAY_LEVELS, clahe_level_table
from medkern._cupy import current_stream

_LEVEL = cupy.ElementwiseKernel(
    "T u, float64 lo, float64 hi, int32 bin_size",
    "uint16 b",
    """
    int level = 0;
    if (hi > lo) {
        // rescale_intensity to 14 bits in double, rounded half to even (np.round)
        double y = __dmul_rn(__ddiv_rn(__dsub_rn((double)u, lo), __dsub_rn(hi, lo)), 16383.0);
        // clamped before the conversion (NaN, values outside [lo, hi]), as clahe.hpp
        level = (int)rint(y >= 0.0 ? fmin(y, 16383.0) : 0.0);
    }
    b = (unsigned short)(level / bin_size);
    """,
    "medkern_clahe_level",
)


def _bin_size(nbins: int) -> int:
    return 1 + CLAHE_GRAY_LEVELS // min(nbins, CLAHE_GRAY_LEVELS + 1)


def _extremes(dtype, x_min, x_max, unit_float):
    """The image extremes as the 16-bit levels the quantisation starts from."""
    if unit_float:
        unit = dtype.type(65535)
        return float(np.rint(dtype.type(x_min) * unit)), float(np.rint(dtype.type(x_max) * unit))
    return float(x_min), float(x_max)


def _finish(levels):
    table = cupy.asarray(clahe_level_table(int(levels.min()), int(levels.max())))
    return table[levels]


def clahe_skimage_cuda(x, kernel, x_min, x_max, unit_float, nbins, clip_limit):
    from medkern import _cuda

    x = cupy.ascontiguousarray(x)
    stream = current_stream()
    lo, hi = _extremes(x.dtype, x_min, x_max, unit_float)
    bins = cupy.empty(x.shape, dtype=cupy.uint16)
    _cuda.clahe_bin_image(x.data.ptr, x.dtype, bins.data.ptr, x.size, lo, hi, bool(unit_float),
                          _bin_size(nbins), stream)
    n_tiles = math.prod(-(-s // k) for s, k in zip(x.shape, kernel))
    hist = cupy.empty(n_tiles * nbins, dtype=cupy.uint32)
    maps = cupy.empty(n_tiles * nbins, dtype=cupy.float64)
    shape, kernel = tuple(int(s) for s in x.shape), tuple(int(k) for k in kernel)
    _cuda.clahe_tile_maps(bins.data.ptr, shape, kernel, nbins, clip_limit, hist.data.ptr,
                          maps.data.ptr, stream)
    _cuda.clahe_interpolate(bins.data.ptr, shape, kernel, nbins, maps.data.ptr, stream)
    return _finish(bins)


def _clip_histograms(h, clip_limit):
    """scikit-image clip_histogram on every row of h (regions x bins) at once."""
    n_bins = h.shape[1]
    excess = cupy.maximum(h - clip_limit, 0).sum(axis=1)
    h = cupy.minimum(h, clip_limit)
    bin_incr = excess // n_bins
    upper = (clip_limit - bin_incr)[:, None]
    low = h < upper
    excess -= low.sum(axis=1) * bin_incr
    h = h + low * bin_incr[:, None]
    mid = (h >= upper) & (h < clip_limit)
    excess += (h * mid).sum(axis=1) - mid.sum(axis=1) * clip_limit
    h = cupy.where(mid, clip_limit, h)
    # The remainder goes out in strided passes; each region leaves the pass loop once its excess
    # is spent and the outer loop once a whole round hands nothing out.
    index = cupy.arange(n_bins)
    active = excess > 0
    while bool(active.any()):
        before = excess.copy()
        running = active.copy()
        for start in range(n_bins):
            under = (h < clip_limit).sum(axis=1)
            step = cupy.maximum(1, under // cupy.maximum(excess, 1))[:, None]
            add = running[:, None] & (index >= start) & ((index - start) % step == 0) & (h < clip_limit)
            h = h + add
            excess -= add.sum(axis=1)
            running &= excess > 0
            if not bool(running.any()):
                break
        active &= (excess > 0) & (excess != before)
    return h


def _axis_weights(size, kernel, tiles):
    p = np.arange(size) + kernel // 2
    block = p // kernel
    c = (p % kernel) / kernel
    tile = (np.clip(block - 1, 0, tiles - 1), np.minimum(block, tiles - 1))
    return [cupy.asarray(t) for t in tile], [cupy.asarray(1.0 - c), cupy.asarray(c)]


def clahe_skimage(x, kernel, x_min, x_max, unit_float, nbins, clip_limit):
    x = cupy.ascontiguousarray(x)
    if unit_float:  # scikit-image's img_as_uint, in the input's own precision
        x = cupy.rint(x * x.dtype.type(65535))
    lo, hi = _extremes(np.dtype(x.dtype), x_min, x_max, unit_float)
    bins = _LEVEL(x, lo, hi, _bin_size(nbins))
    tiles = tuple(-(-s // k) for s, k in zip(x.shape, kernel))
    # Regions: the image reflected past its far end to whole regions, one row per region.
    padded = cupy.pad(bins, [(0, t * k - s) for t, k, s in zip(tiles, kernel, x.shape)],
                      mode="reflect")
    blocks = padded.reshape(tiles[0], kernel[0], tiles[1], kernel[1], tiles[2], kernel[2])
    blocks = blocks.transpose(0, 2, 4, 1, 3, 5).reshape(math.prod(tiles), -1)
    keys = cupy.arange(blocks.shape[0], dtype=cupy.int64)[:, None] * nbins + blocks
    hist = cupy.bincount(keys.ravel(), minlength=blocks.shape[0] * nbins).reshape(-1, nbins)
    hist = _clip_histograms(hist.astype(cupy.int64), int(clip_limit))
    maps = cupy.cumsum(hist, axis=1).astype(cupy.float64)
    maps *= (CLAHE_GRAY_LEVELS - 1) / math.prod(kernel)
    maps = cupy.minimum(maps, CLAHE_GRAY_LEVELS - 1).astype(cupy.int64).astype(cupy.float64)

    (t0, w0), (t1, w1), (t2, w2) = (_axis_weights(s, k, t) for s, k, t in zip(x.shape, kernel, tiles))
    acc = cupy.zeros(x.shape, dtype=cupy.float32)
    for e0 in (0, 1):
        for e1 in (0, 1):
            for e2 in (0, 1):
                region = (t0[e0][:, None, None] * tiles[1] + t1[e1][None, :, None]) * tiles[2] \
                    + t2[e2][None, None, :]
                weight = (w2[e2][None, None, :] * w1[e1][None, :, None]) * w0[e0][:, None, None]
                acc += (maps[region, bins] * weight).astype(cupy.float32)
    return _finish(acc.astype(cupy.int32))
