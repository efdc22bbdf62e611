// Global intensity histograms and the histogram-equalisation mapping.
//
// The binning and the interpolation reproduce numpy bit for bit (np.histogram with uniform bins
// and np.interp), which is what scikit-image's equalize_hist is built on.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "medkern/common.hpp"

namespace medkern {

// Threads worth starting for `work` voxels of a light per-voxel pass: one per 2^18 voxels, so
// each thread's share stays well above the cost of waking the team (which, on a loaded machine
// where spinning threads lose their core, can exceed the pass itself).
inline int threads_for(index_t work, int n_threads) {
  const index_t useful = std::max<index_t>(1, work >> 18);
  return static_cast<int>(std::min<index_t>(clamp_threads(n_threads), useful));
}

// Index j with xp[j] <= v < xp[j+1] on a sorted grid of n >= 2 points, starting from a guess and
// walking to the exact answer, so the result depends only on the grid values (as numpy's edge
// correction in np.histogram and its binary search in np.interp).
inline index_t locate(const double* xp, index_t n, double v, index_t guess) {
  index_t j = guess < 0 ? 0 : (guess > n - 2 ? n - 2 : guess);
  while (j > 0 && v < xp[j]) --j;
  while (j < n - 2 && v >= xp[j + 1]) ++j;
  return j;
}

// Guess of the cell of v on a grid that is uniform up to rounding.
// The guess is clamped to [0, n - 1] before the conversion to an integer: NaN (an infinite grid
// end, a NaN value) and values far past the grid would make that conversion undefined, and
// locate() clamps to the same range anyway.
struct UniformGuess {
  double first, inv_step, last_cell;
  UniformGuess(const double* xp, index_t n)
      : first(xp[0]),
        inv_step(static_cast<double>(n - 1) / (xp[n - 1] - xp[0])),
        last_cell(static_cast<double>(n - 1)) {}
  index_t operator()(double v) const {
    const double g = (v - first) * inv_step;
    return g > 0 ? static_cast<index_t>(std::min(g, last_cell)) : 0;
  }
};

// Counts of the masked voxels in the bins [edges[b], edges[b+1]), the last bin closed on the
// right (np.histogram). Voxels outside [edges[0], edges[n_bins]] are not counted. Counts are
// integers, so per-thread partial histograms add up to the same result for any thread count.
template <class T>
void histogram_edges(const T* x, const std::uint8_t* mask, index_t n, const double* edges,
                     index_t n_bins, std::int64_t* counts, int n_threads) {
  n_threads = threads_for(n, n_threads);
  std::fill(counts, counts + n_bins, std::int64_t{0});
  const UniformGuess guess(edges, n_bins + 1);
  const double lo = edges[0], hi = edges[n_bins];
  ParallelError error;
#pragma omp parallel num_threads(clamp_threads(n_threads))
  {
    std::vector<std::int64_t> local;
    error.capture([&] { local.assign(static_cast<std::size_t>(n_bins), 0); });
    const bool ok = !error.failed();  // this thread's buffer; an empty one counts nothing
#pragma omp for schedule(static)
    for (index_t i = 0; i < n; ++i) {
      if (!ok || (mask && !mask[i])) continue;
      const double v = static_cast<double>(x[i]);
      if (!(v >= lo && v <= hi)) continue;
      ++local[static_cast<std::size_t>(locate(edges, n_bins + 1, v, guess(v)))];
    }
#pragma omp critical
    if (ok)
      for (index_t b = 0; b < n_bins; ++b) counts[b] += local[static_cast<std::size_t>(b)];
  }
  error.rethrow();
}

// out = np.interp(x, xp, fp) stored as float32: fp[0] left of the grid, fp[n-1] right of it and
// on its last point, fp[j] on a grid point, else slope * (x - xp[j]) + fp[j] with numpy's slope.
template <class T>
void interp_map(const T* x, float* out, index_t n, const double* xp, const double* fp,
                index_t n_points, int n_threads) {
  n_threads = threads_for(n, n_threads);
  if (n_points == 1) {
#pragma omp parallel for schedule(static) num_threads(clamp_threads(n_threads))
    for (index_t i = 0; i < n; ++i) out[i] = static_cast<float>(fp[0]);
    return;
  }
  std::vector<double> slope(static_cast<std::size_t>(n_points - 1));
  for (index_t j = 0; j + 1 < n_points; ++j)
    slope[static_cast<std::size_t>(j)] = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j]);
  const UniformGuess guess(xp, n_points);
  const double first = xp[0], last = xp[n_points - 1];
#pragma omp parallel for schedule(static) num_threads(clamp_threads(n_threads))
  for (index_t i = 0; i < n; ++i) {
    const double v = static_cast<double>(x[i]);
    double r;
    if (v < first) {
      r = fp[0];
    } else if (v >= last) {
      r = fp[n_points - 1];
    } else {
      const index_t j = locate(xp, n_points, v, guess(v));
      r = v == xp[j] ? fp[j] : slope[static_cast<std::size_t>(j)] * (v - xp[j]) + fp[j];
    }
    out[i] = static_cast<float>(r);
  }
}

}  // namespace medkern
