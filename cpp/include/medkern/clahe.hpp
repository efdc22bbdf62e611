// Contrast-limited adaptive histogram equalisation (Zuiderveld, Graphics Gems IV, 1994).
//
// Two definitions users compare against, each reproduced to the bit:
// - scikit-image `equalize_adapthist` (N-d; 2D runs as 3D with one slice): 14-bit grey levels,
//   contextual regions of `kernel` voxels tiled from the image origin, the image reflected
//   (numpy 'reflect') past its far end, maps interpolated multilinearly between region centres
//   and held constant outside the outermost centres.
// - OpenCV `CLAHE::apply` (2D, uint8 / uint16): full-depth histograms on a tile grid, the image
//   extended by BORDER_REFLECT_101 when the grid does not divide it, bilinear interpolation.
#pragma once
#include <array>
#include <cstdint>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#include "medkern/common.hpp"
#include "medkern/histogram.hpp"

namespace medkern {

constexpr int kClaheGrayLevels = 1 << 14;  // NR_OF_GRAY in scikit-image's _adapthist.py

// Round half to even for 0 <= v < 2^52 without depending on the FPU mode or SSE4.1: adding
// 2^52 leaves no fractional bits, so the addition itself rounds (IEEE round-to-nearest-even).
inline double round_half_even_nonneg(double v) {
  constexpr double kShift = 4503599627370496.0;  // 2^52
  return (v + kShift) - kShift;
}
inline float round_half_even_nonneg(float v) {
  constexpr float kShift = 8388608.0f;  // 2^23
  return (v + kShift) - kShift;
}

// ---------------------------------------------------------------------------------------------
// scikit-image semantics
// ---------------------------------------------------------------------------------------------

// The 16-bit value scikit-image's img_as_uint gives a float image in [0, 1] (rint of x * 65535
// in the input's own precision), or the value itself for every other input.
template <class T>
inline double clahe_prequantise(T v, bool unit_float) {
  if constexpr (std::is_floating_point_v<T>) {
    if (unit_float) return static_cast<double>(round_half_even_nonneg(v * T(65535)));
  }
  (void)unit_float;
  return static_cast<double>(v);
}

// Grey level q = rint((u - lo) / (hi - lo) * 16383) (rescale_intensity to 14 bits, in double),
// then the histogram bin q / bin_size; a constant image is all level 0.
struct ClaheLevels {
  double lo, hi, scale;
  int bin_size;
  ClaheLevels(double lo_, double hi_, int bin_size_)
      : lo(lo_),
        hi(hi_),
        scale(hi_ > lo_ ? double(kClaheGrayLevels - 1) / (hi_ - lo_) : 0.0),
        bin_size(bin_size_) {}
  // Levels outside [0, 16383] (a value outside [lo, hi], an infinite or overflowing range) and
  // NaN are clamped to the grey range before the conversion to int, which would be undefined for
  // them and whose result indexes the histograms.
  static double clamp_level(double y) {
    return y >= 0.0 ? std::min(y, double(kClaheGrayLevels - 1)) : 0.0;
  }
  int exact(double u) const {
    if (!(hi > lo)) return 0;
    const double q =
        round_half_even_nonneg(clamp_level((u - lo) / (hi - lo) * double(kClaheGrayLevels - 1)));
    return static_cast<int>(q) / bin_size;
  }
  // Same result without a division per voxel: the product by the reciprocal is within a few ulp
  // of the exact level, so it decides the rounding unless it lies next to a half-integer.
  int operator()(double u) const {
    const double y = clamp_level((u - lo) * scale);
    const double frac = y - std::floor(y);
    if (std::fabs(frac - 0.5) < 1e-6) return exact(u);
    return static_cast<int>(round_half_even_nonneg(y)) / bin_size;
  }
};

// Histogram bin of every voxel; x_min / x_max are the image's extremes. Values with at most
// 2^16 distinct 16-bit levels (8- and 16-bit integers, floats in [0, 1] after img_as_uint) go
// through a table; int32 and other floats are quantised voxel by voxel.
template <class T>
void clahe_bin_image(const T* x, std::uint16_t* bins, index_t n, double x_min, double x_max,
                     bool unit_float, int bin_size, int n_threads) {
  // The extremes come from the caller as doubles: saturated to T's range before the conversion
  // (undefined for an integer T otherwise, e.g. NaN or a value past the type).
  auto to_t = [](double v) -> T {
    if constexpr (std::is_integral_v<T>) {
      constexpr double lo_t = static_cast<double>(std::numeric_limits<T>::lowest());
      constexpr double hi_t = static_cast<double>(std::numeric_limits<T>::max());
      return static_cast<T>(v >= lo_t ? (v <= hi_t ? v : hi_t) : lo_t);
    } else {
      return static_cast<T>(v);
    }
  };
  const ClaheLevels level(clahe_prequantise(to_t(x_min), unit_float),
                          clahe_prequantise(to_t(x_max), unit_float), bin_size);
  constexpr bool small_int = std::is_integral_v<T> && sizeof(T) <= 2;
  if (small_int || (std::is_floating_point_v<T> && unit_float)) {
    // Table over the 16-bit levels lo .. hi (the raw value, or rint(x * 65535)). The extremes
    // come from the caller: they are clamped to the 16-bit range here, and every voxel's level to
    // the table, so extremes that do not hold (or a NaN voxel) cannot index outside it.
    auto level16 = [](double v) -> index_t {
      return v >= -32768.0 ? static_cast<index_t>(std::min(v, 65535.0)) : index_t{-32768};
    };
    const index_t lo = level16(level.lo), hi = std::max(lo, level16(level.hi));
    std::vector<std::uint16_t> table(static_cast<std::size_t>(hi - lo + 1));
    for (std::size_t v = 0; v < table.size(); ++v)
      table[v] = static_cast<std::uint16_t>(
          level.exact(static_cast<double>(lo + static_cast<index_t>(v))));
    const std::uint16_t* t = table.data();
    const double first = static_cast<double>(lo), last = static_cast<double>(hi);
#pragma omp parallel for schedule(static) num_threads(clamp_threads(n_threads))
    for (index_t i = 0; i < n; ++i) {
      const double q = clahe_prequantise(x[i], unit_float);
      bins[i] = t[static_cast<index_t>(q >= first ? std::min(q, last) : first) - lo];
    }
  } else {
#pragma omp parallel for schedule(static) num_threads(clamp_threads(n_threads))
    for (index_t i = 0; i < n; ++i)
      bins[i] = static_cast<std::uint16_t>(level(clahe_prequantise(x[i], unit_float)));
  }
}

// Contextual-region layout of a 3D image (a 2D image is one slice with kernel 1 along axis 0).
struct ClaheGrid {
  std::array<index_t, 3> shape, kernel, tiles;  // tiles = ceil(shape / kernel)
  ClaheGrid(const index_t* shape_, const index_t* kernel_) {
    for (int a = 0; a < 3; ++a) {
      shape[a] = shape_[a];
      kernel[a] = kernel_[a];
      tiles[a] = (shape[a] + kernel[a] - 1) / kernel[a];
    }
  }
  index_t n_tiles() const { return tiles[0] * tiles[1] * tiles[2]; }
  index_t tile_voxels() const { return kernel[0] * kernel[1] * kernel[2]; }
};

// numpy.pad(mode='reflect') seen from the padded side: position p >= 0 of an axis of length s.
inline index_t reflect_index(index_t p, index_t s) {
  if (s == 1) return 0;
  const index_t period = 2 * (s - 1);
  p %= period;
  return p < s ? p : period - p;
}

// scikit-image clip_histogram: clip at clip_limit, hand out the excess evenly, then the remainder
// in strided passes. Kept step for step (including its integer divisions), since the order in
// which the remainder is handed out decides the map.
inline void clahe_clip_histogram(std::int64_t* hist, index_t nbins, std::int64_t clip_limit) {
  std::int64_t n_excess = 0;
  for (index_t b = 0; b < nbins; ++b)
    if (hist[b] > clip_limit) {
      n_excess += hist[b] - clip_limit;
      hist[b] = clip_limit;
    }
  const std::int64_t bin_incr = n_excess / nbins;
  const std::int64_t upper = clip_limit - bin_incr;
  for (index_t b = 0; b < nbins; ++b)
    if (hist[b] < upper) {
      hist[b] += bin_incr;
      n_excess -= bin_incr;
    }
  for (index_t b = 0; b < nbins; ++b)
    if (hist[b] >= upper && hist[b] < clip_limit) {
      n_excess += hist[b] - clip_limit;
      hist[b] = clip_limit;
    }
  while (n_excess > 0) {
    const std::int64_t before = n_excess;
    for (index_t start = 0; start < nbins; ++start) {
      std::int64_t under = 0;
      for (index_t b = 0; b < nbins; ++b) under += hist[b] < clip_limit;
      const index_t step = std::max<index_t>(1, static_cast<index_t>(under / n_excess));
      for (index_t b = start; b < nbins; b += step)
        if (hist[b] < clip_limit) {
          ++hist[b];
          --n_excess;
        }
      if (n_excess <= 0) break;
    }
    if (before == n_excess) break;
  }
}

// Grey-level map of every contextual region: histogram (image reflected past its far end),
// clip, cumulative sum scaled to [0, 16383] and truncated (scikit-image map_histogram).
inline void clahe_tile_maps(const std::uint16_t* bins, const ClaheGrid& g, index_t nbins,
                            std::int64_t clip_limit, double* maps, int n_threads) {
  std::array<std::vector<index_t>, 3> src;  // padded position -> image position, per axis
  for (int a = 0; a < 3; ++a) {
    src[a].resize(static_cast<std::size_t>(g.tiles[a] * g.kernel[a]));
    for (std::size_t p = 0; p < src[a].size(); ++p)
      src[a][p] = reflect_index(static_cast<index_t>(p), g.shape[a]);
  }
  const double scale = double(kClaheGrayLevels - 1) / static_cast<double>(g.tile_voxels());
  const index_t plane = g.shape[1] * g.shape[2];
  ParallelError error;
#pragma omp parallel num_threads(clamp_threads(n_threads))
  {
    std::vector<std::int64_t> hist;
    error.capture([&] { hist.resize(static_cast<std::size_t>(2 * nbins)); });
#pragma omp for schedule(dynamic)
    for (index_t t = 0; t < g.n_tiles(); ++t) {
      if (error.failed()) continue;
      const index_t t0 = t / (g.tiles[1] * g.tiles[2]), t1 = (t / g.tiles[2]) % g.tiles[1],
                    t2 = t % g.tiles[2];
      // Two interleaved histograms break the store-to-load chain of runs of equal bins.
      std::fill(hist.begin(), hist.end(), std::int64_t{0});
      std::int64_t* h0 = hist.data();
      std::int64_t* h1 = hist.data() + nbins;
      const index_t c_first = t2 * g.kernel[2], k2 = g.kernel[2];
      const bool inside2 = c_first + k2 <= g.shape[2];
      const index_t* s2 = src[2].data() + c_first;
      for (index_t a = 0; a < g.kernel[0]; ++a) {
        const index_t k = src[0][static_cast<std::size_t>(t0 * g.kernel[0] + a)];
        for (index_t b = 0; b < g.kernel[1]; ++b) {
          const std::uint16_t* row =
              bins + k * plane +
              src[1][static_cast<std::size_t>(t1 * g.kernel[1] + b)] * g.shape[2];
          if (inside2) {
            const std::uint16_t* r = row + c_first;
            index_t c = 0;
            for (; c + 1 < k2; c += 2) {
              ++h0[r[c]];
              ++h1[r[c + 1]];
            }
            if (c < k2) ++h0[r[c]];
          } else {
            for (index_t c = 0; c < k2; ++c) ++h0[row[s2[c]]];
          }
        }
      }
      for (index_t b = 0; b < nbins; ++b) h0[b] += h1[b];
      clahe_clip_histogram(hist.data(), nbins, clip_limit);
      double* map = maps + t * nbins;
      std::int64_t cum = 0;
      for (index_t b = 0; b < nbins; ++b) {
        cum += hist[static_cast<std::size_t>(b)];
        const double v = static_cast<double>(cum) * scale;
        map[b] = static_cast<double>(
            static_cast<std::int64_t>(std::min(v, double(kClaheGrayLevels - 1))));
      }
    }
  }
  error.rethrow();
}

// Interpolation weights of one axis at image position x: the region centres around it and the
// weight of the upper one (k // 2 of reflected padding in front, as scikit-image pads).
struct ClaheAxisWeights {
  index_t tile[2];
  double weight[2];
  ClaheAxisWeights(index_t x, index_t kernel, index_t tiles) {
    const index_t p = x + kernel / 2, block = p / kernel;
    const double c = static_cast<double>(p % kernel) / static_cast<double>(kernel);
    tile[0] = std::min(std::max<index_t>(block - 1, 0), tiles - 1);
    tile[1] = std::min(block, tiles - 1);
    weight[0] = 1.0 - c;
    weight[1] = c;
  }
};

// Result grey level of every voxel, written over its bin (each voxel reads only its own bin),
// and the extremes of the result. Arithmetic follows scikit-image's _clahe: each corner term is
// (map * weight) in double, with the weight the product over axes from the last axis to the
// first, rounded to float32 and summed in float32 in corner order (axis 0 slowest); the sum is
// truncated to an integer. Corners with a zero axis weight add +0 there and are skipped here.
inline void clahe_interpolate(std::uint16_t* bins, const ClaheGrid& g, index_t nbins,
                              const double* maps, int& r_min, int& r_max, int n_threads) {
  const index_t I = g.shape[2];
  std::vector<index_t> tile_lo(static_cast<std::size_t>(I)), tile_hi(static_cast<std::size_t>(I));
  std::vector<double> c_lo(static_cast<std::size_t>(I)), c_hi(static_cast<std::size_t>(I));
  for (index_t i = 0; i < I; ++i) {
    const ClaheAxisWeights w(i, g.kernel[2], g.tiles[2]);
    tile_lo[static_cast<std::size_t>(i)] = w.tile[0] * nbins;
    tile_hi[static_cast<std::size_t>(i)] = w.tile[1] * nbins;
    c_lo[static_cast<std::size_t>(i)] = w.weight[0];
    c_hi[static_cast<std::size_t>(i)] = w.weight[1];
  }
  const index_t rows = g.shape[0] * g.shape[1];
  const index_t tile_row = g.tiles[2] * nbins;
  int lo = kClaheGrayLevels, hi = -1;
  ParallelError error;
#pragma omp parallel reduction(min : lo) reduction(max : hi) num_threads(clamp_threads(n_threads))
  {
    std::vector<double> weights;
    error.capture([&] { weights.resize(static_cast<std::size_t>(8 * I)); });
#pragma omp for schedule(static)
    for (index_t row = 0; row < rows; ++row) {
      if (error.failed()) continue;
      const ClaheAxisWeights w0(row / g.shape[1], g.kernel[0], g.tiles[0]);
      const ClaheAxisWeights w1(row % g.shape[1], g.kernel[1], g.tiles[1]);
      // Active (axis 0, axis 1) corners in scikit-image's order, their map rows and weights.
      const double* plane[4];
      int n_corners = 0;
      for (int e0 = 0; e0 < 2; ++e0) {
        if (w0.weight[e0] == 0.0) continue;
        for (int e1 = 0; e1 < 2; ++e1) {
          if (w1.weight[e1] == 0.0) continue;
          plane[n_corners] = maps + (w0.tile[e0] * g.tiles[1] + w1.tile[e1]) * tile_row;
          double* wl = &weights[static_cast<std::size_t>(2 * n_corners * I)];
          double* wh = wl + I;
          const double f1 = w1.weight[e1], f0 = w0.weight[e0];
          for (index_t i = 0; i < I; ++i) {
            wl[i] = (c_lo[static_cast<std::size_t>(i)] * f1) * f0;
            wh[i] = (c_hi[static_cast<std::size_t>(i)] * f1) * f0;
          }
          ++n_corners;
        }
      }
      // Voxels in batches, corner by corner: each voxel keeps its own summation order while
      // the batch gives the processor independent addition chains to overlap.
      constexpr index_t kBatch = 16;
      std::uint16_t* b = bins + row * I;
      for (index_t i0 = 0; i0 < I; i0 += kBatch) {
        const index_t nb = std::min(kBatch, I - i0);
        index_t off_lo[kBatch], off_hi[kBatch];
        float acc[kBatch];
        for (index_t v = 0; v < nb; ++v) {
          off_lo[v] = tile_lo[static_cast<std::size_t>(i0 + v)] + b[i0 + v];
          off_hi[v] = tile_hi[static_cast<std::size_t>(i0 + v)] + b[i0 + v];
          acc[v] = 0.0f;
        }
        for (int c = 0; c < n_corners; ++c) {
          const double* map = plane[c];
          const double* wl = &weights[static_cast<std::size_t>(2 * c * I + i0)];
          const double* wh = wl + I;
          for (index_t v = 0; v < nb; ++v) {
            acc[v] += static_cast<float>(map[off_lo[v]] * wl[v]);
            acc[v] += static_cast<float>(map[off_hi[v]] * wh[v]);
          }
        }
        for (index_t v = 0; v < nb; ++v) {
          const int r = static_cast<int>(acc[v]);
          b[i0 + v] = static_cast<std::uint16_t>(r);
          lo = std::min(lo, r);
          hi = std::max(hi, r);
        }
      }
    }
  }
  error.rethrow();
  r_min = lo;
  r_max = hi;
}

// Final rescale_intensity of the integral result levels onto [0, 1] (in double, stored as float);
// a constant result is clipped to [0, 1] as scikit-image does.
inline void clahe_rescale(const std::uint16_t* levels, float* out, index_t n, int r_min, int r_max,
                          int n_threads) {
  std::vector<float> table(kClaheGrayLevels);
  for (int r = 0; r < kClaheGrayLevels; ++r)
    table[static_cast<std::size_t>(r)] =
        r_max > r_min ? static_cast<float>(double(r - r_min) / double(r_max - r_min))
                      : static_cast<float>(std::min(std::max(double(r), 0.0), 1.0));
  const float* t = table.data();
#pragma omp parallel for schedule(static) num_threads(clamp_threads(n_threads))
  for (index_t i = 0; i < n; ++i) out[i] = t[levels[i]];
}

// The whole scikit-image pipeline: x (3D, shape[0] == 1 for 2D) -> float32 in [0, 1].
template <class T>
void clahe_skimage(const T* x, float* out, const index_t* shape, const index_t* kernel,
                   double x_min, double x_max, bool unit_float, index_t nbins,
                   std::int64_t clip_limit, int n_threads) {
  const ClaheGrid g(shape, kernel);
  const index_t n = shape[0] * shape[1] * shape[2];
  n_threads = threads_for(n, n_threads);
  const int bin_size =
      1 + kClaheGrayLevels / static_cast<int>(std::min<index_t>(nbins, kClaheGrayLevels + 1));
  std::unique_ptr<std::uint16_t[]> bins(new std::uint16_t[static_cast<std::size_t>(n)]);
  clahe_bin_image(x, bins.get(), n, x_min, x_max, unit_float, bin_size, n_threads);
  std::vector<double> maps(static_cast<std::size_t>(g.n_tiles() * nbins));
  clahe_tile_maps(bins.get(), g, nbins, clip_limit, maps.data(), n_threads);
  int r_min = 0, r_max = 0;
  clahe_interpolate(bins.get(), g, nbins, maps.data(), r_min, r_max, n_threads);
  clahe_rescale(bins.get(), out, n, r_min, r_max, n_threads);
}

// ---------------------------------------------------------------------------------------------
// OpenCV semantics (imgproc/src/clahe.cpp)
// ---------------------------------------------------------------------------------------------

// cv::borderInterpolate for BORDER_REFLECT_101.
inline index_t reflect101_index(index_t p, index_t len) {
  if (len == 1) return 0;
  while (p < 0 || p >= len) p = p < 0 ? -p : 2 * (len - 1) - p;
  return p;
}

// One 2D image. T is uint8_t (256 bins) or uint16_t (65536 bins). Each tile's look-up table is
// only built over the grey levels its pixels and its neighbours' pixels hold (the only levels
// the interpolation reads); the clipped and redistributed cumulative histogram is evaluated in
// closed form there, which is what makes 16-bit CLAHE cheap.
template <class T>
void clahe_opencv_slice(const T* src, T* dst, index_t rows, index_t cols, index_t tiles_y,
                        index_t tiles_x, double clip_limit, int n_threads) {
  constexpr index_t hist_size = index_t(1) << (8 * sizeof(T));
  index_t ext_rows = rows, ext_cols = cols;
  if (rows % tiles_y != 0 || cols % tiles_x != 0) {
    ext_rows = rows + tiles_y - rows % tiles_y;
    ext_cols = cols + tiles_x - cols % tiles_x;
  }
  const index_t tile_h = ext_rows / tiles_y, tile_w = ext_cols / tiles_x;
  const int tile_total = static_cast<int>(tile_h * tile_w);
  int clip = 0;
  if (clip_limit > 0.0)
    clip =
        std::max(static_cast<int>(std::min(clip_limit * tile_total / static_cast<double>(hist_size),
                                           static_cast<double>(std::numeric_limits<int>::max()))),
                 1);  // a huge clip limit (no clipping) saturates instead of overflowing int
  const float lut_scale = static_cast<float>(hist_size - 1) / static_cast<float>(tile_total);

  std::vector<index_t> row_src(static_cast<std::size_t>(ext_rows)),
      col_src(static_cast<std::size_t>(ext_cols));
  for (index_t y = 0; y < ext_rows; ++y)
    row_src[static_cast<std::size_t>(y)] = reflect101_index(y, rows);
  for (index_t x = 0; x < ext_cols; ++x)
    col_src[static_cast<std::size_t>(x)] = reflect101_index(x, cols);

  // Calls f(row pointer at the tile's first column, column table or null) for each tile row;
  // the table is only needed where the tile reaches into the reflected border.
  auto for_each_tile_row = [&](index_t ty, index_t tx, auto&& f) {
    const bool inside = (tx + 1) * tile_w <= cols;
    const index_t* cx = col_src.data() + tx * tile_w;
    for (index_t y = ty * tile_h; y < (ty + 1) * tile_h; ++y) {
      const T* row = src + row_src[static_cast<std::size_t>(y)] * cols;
      if (inside)
        f(row + tx * tile_w, static_cast<const index_t*>(nullptr));
      else
        f(row, cx);
    }
  };

  const index_t n_tiles = tiles_y * tiles_x;
  std::vector<int> tile_lo(static_cast<std::size_t>(n_tiles)),
      tile_hi(static_cast<std::size_t>(n_tiles));
#pragma omp parallel for schedule(static) num_threads(clamp_threads(n_threads))
  for (index_t t = 0; t < n_tiles; ++t) {
    const index_t ty = t / tiles_x, tx = t % tiles_x;
    int lo = static_cast<int>(hist_size), hi = -1;
    for_each_tile_row(ty, tx, [&](const T* row, const index_t* cx) {
      if (cx) {
        for (index_t x = 0; x < tile_w; ++x) {
          lo = std::min(lo, static_cast<int>(row[cx[x]]));
          hi = std::max(hi, static_cast<int>(row[cx[x]]));
        }
      } else {
        for (index_t x = 0; x < tile_w; ++x) {
          lo = std::min(lo, static_cast<int>(row[x]));
          hi = std::max(hi, static_cast<int>(row[x]));
        }
      }
    });
    tile_lo[static_cast<std::size_t>(t)] = lo;
    tile_hi[static_cast<std::size_t>(t)] = hi;
  }
  // Levels each table must cover: the union over the 3x3 neighbouring tiles, since a pixel reads
  // the tables of the tile it lies in and of its neighbours towards its nearest tile corner.
  std::vector<int> need_lo(static_cast<std::size_t>(n_tiles)),
      need_hi(static_cast<std::size_t>(n_tiles));
  std::vector<index_t> lut_offset(static_cast<std::size_t>(n_tiles) + 1, 0);
  for (index_t t = 0; t < n_tiles; ++t) {
    const index_t ty = t / tiles_x, tx = t % tiles_x;
    int lo = static_cast<int>(hist_size), hi = -1;
    for (index_t ny = std::max<index_t>(ty - 1, 0); ny <= std::min(ty + 1, tiles_y - 1); ++ny)
      for (index_t nx = std::max<index_t>(tx - 1, 0); nx <= std::min(tx + 1, tiles_x - 1); ++nx) {
        lo = std::min(lo, tile_lo[static_cast<std::size_t>(ny * tiles_x + nx)]);
        hi = std::max(hi, tile_hi[static_cast<std::size_t>(ny * tiles_x + nx)]);
      }
    need_lo[static_cast<std::size_t>(t)] = lo;
    need_hi[static_cast<std::size_t>(t)] = hi;
    lut_offset[static_cast<std::size_t>(t) + 1] =
        lut_offset[static_cast<std::size_t>(t)] + (hi - lo + 1);
  }
  std::unique_ptr<T[]> lut(new T[static_cast<std::size_t>(lut_offset.back())]);

  ParallelError error;
#pragma omp parallel num_threads(clamp_threads(n_threads))
  {
    std::vector<int> hist;
    error.capture([&] { hist.assign(static_cast<std::size_t>(hist_size), 0); });
#pragma omp for schedule(dynamic)
    for (index_t t = 0; t < n_tiles; ++t) {
      if (error.failed()) continue;
      const index_t ty = t / tiles_x, tx = t % tiles_x;
      const int lo = tile_lo[static_cast<std::size_t>(t)],
                hi = tile_hi[static_cast<std::size_t>(t)];
      std::fill(hist.begin() + lo, hist.begin() + hi + 1, 0);
      int* h = hist.data();
      for_each_tile_row(ty, tx, [&](const T* row, const index_t* cx) {
        if (cx) {
          for (index_t x = 0; x < tile_w; ++x) ++h[row[cx[x]]];
        } else {
          for (index_t x = 0; x < tile_w; ++x) ++h[row[x]];
        }
      });
      int redist_batch = 0, residual = 0, residual_step = 1;
      if (clip > 0) {
        int clipped = 0;
        for (int v = lo; v <= hi; ++v)
          if (hist[static_cast<std::size_t>(v)] > clip) {
            clipped += hist[static_cast<std::size_t>(v)] - clip;
            hist[static_cast<std::size_t>(v)] = clip;
          }
        redist_batch = clipped / static_cast<int>(hist_size);
        residual = clipped - redist_batch * static_cast<int>(hist_size);
        if (residual != 0) residual_step = std::max(static_cast<int>(hist_size) / residual, 1);
      }
      // OpenCV's running sum at level v: clipped counts up to v, plus redist_batch for every
      // level up to v, plus one for each residual level (0, step, 2 step, ...) up to v.
      const int first = need_lo[static_cast<std::size_t>(t)],
                last = need_hi[static_cast<std::size_t>(t)];
      T* table = lut.get() + lut_offset[static_cast<std::size_t>(t)] - first;
      // Running sum entering level `first`: counts below it, redist_batch per level below it, and
      // the residual levels (0, step, 2 step, ... residual of them) below it.
      int sum = redist_batch * first;
      for (int v = lo; v < std::min(first, hi + 1); ++v) sum += hist[static_cast<std::size_t>(v)];
      int extra =
          residual > 0 ? std::min(residual, (first + residual_step - 1) / residual_step) : 0;
      int next_extra = extra < residual ? extra * residual_step : -1;
      for (int v = first; v <= last; ++v) {
        if (v >= lo && v <= hi) sum += hist[static_cast<std::size_t>(v)];
        sum += redist_batch;
        if (v == next_extra) {
          ++extra;
          next_extra = extra < residual ? extra * residual_step : -1;
        }
        const float r = round_half_even_nonneg(static_cast<float>(sum + extra) * lut_scale);
        table[v] = static_cast<T>(std::min(r, static_cast<float>(hist_size - 1)));
      }
    }
  }
  error.rethrow();

  // Bilinear interpolation between the four nearest tile tables (CLAHE_Interpolation_Body).
  std::vector<index_t> x_tile1(static_cast<std::size_t>(cols)),
      x_tile2(static_cast<std::size_t>(cols));
  std::vector<float> x_a(static_cast<std::size_t>(cols)), x_a1(static_cast<std::size_t>(cols));
  const float inv_tw = 1.0f / static_cast<float>(tile_w),
              inv_th = 1.0f / static_cast<float>(tile_h);
  for (index_t x = 0; x < cols; ++x) {
    const float txf = static_cast<float>(x) * inv_tw - 0.5f;
    const index_t tx1 = static_cast<index_t>(std::floor(txf));
    x_a[static_cast<std::size_t>(x)] = txf - static_cast<float>(tx1);
    x_a1[static_cast<std::size_t>(x)] = 1.0f - x_a[static_cast<std::size_t>(x)];
    x_tile1[static_cast<std::size_t>(x)] = std::max<index_t>(tx1, 0);
    x_tile2[static_cast<std::size_t>(x)] = std::min(tx1 + 1, tiles_x - 1);
  }
  // Where level v of tile row ty, column pixel x starts in the packed tables: lut[base + v].
  std::vector<index_t> base1(static_cast<std::size_t>(tiles_y * cols)),
      base2(static_cast<std::size_t>(tiles_y * cols));
  for (index_t ty = 0; ty < tiles_y; ++ty)
    for (index_t x = 0; x < cols; ++x) {
      const std::size_t t1 =
          static_cast<std::size_t>(ty * tiles_x + x_tile1[static_cast<std::size_t>(x)]);
      const std::size_t t2 =
          static_cast<std::size_t>(ty * tiles_x + x_tile2[static_cast<std::size_t>(x)]);
      base1[static_cast<std::size_t>(ty * cols + x)] = lut_offset[t1] - need_lo[t1];
      base2[static_cast<std::size_t>(ty * cols + x)] = lut_offset[t2] - need_lo[t2];
    }
  const T* lut_base = lut.get();
#pragma omp parallel for schedule(static) num_threads(clamp_threads(n_threads))
  for (index_t y = 0; y < rows; ++y) {
    const float tyf = static_cast<float>(y) * inv_th - 0.5f;
    const index_t ty1 = static_cast<index_t>(std::floor(tyf));
    const float ya = tyf - static_cast<float>(ty1), ya1 = 1.0f - ya;
    const index_t plane1 = std::max<index_t>(ty1, 0) * cols;
    const index_t plane2 = std::min(ty1 + 1, tiles_y - 1) * cols;
    const index_t *b11 = &base1[static_cast<std::size_t>(plane1)],
                  *b12 = &base2[static_cast<std::size_t>(plane1)];
    const index_t *b21 = &base1[static_cast<std::size_t>(plane2)],
                  *b22 = &base2[static_cast<std::size_t>(plane2)];
    const T* s = src + y * cols;
    T* d = dst + y * cols;
    for (index_t x = 0; x < cols; ++x) {
      const index_t v = s[x];
      const std::size_t xs = static_cast<std::size_t>(x);
      const float l11 = lut_base[b11[x] + v], l12 = lut_base[b12[x] + v];
      const float l21 = lut_base[b21[x] + v], l22 = lut_base[b22[x] + v];
      const float res =
          (l11 * x_a1[xs] + l12 * x_a[xs]) * ya1 + (l21 * x_a1[xs] + l22 * x_a[xs]) * ya;
      const float r = round_half_even_nonneg(std::max(res, 0.0f));
      d[x] = static_cast<T>(std::min(r, static_cast<float>(hist_size - 1)));
    }
  }
}

// A stack of 2D slices (axis 0), each equalised on its own as OpenCV would.
template <class T>
void clahe_opencv(const T* src, T* dst, index_t slices, index_t rows, index_t cols, index_t tiles_y,
                  index_t tiles_x, double clip_limit, int n_threads) {
  n_threads = threads_for(rows * cols, n_threads);
  for (index_t s = 0; s < slices; ++s)
    clahe_opencv_slice(src + s * rows * cols, dst + s * rows * cols, rows, cols, tiles_y, tiles_x,
                       clip_limit, n_threads);
}

}  // namespace medkern
