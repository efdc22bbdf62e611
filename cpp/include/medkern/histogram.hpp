// Histograms for thresholding (Otsu), restricted to a mask. No Python in here.
#pragma once
#include <cstdint>
#include <vector>

#include "medkern/common.hpp"

namespace medkern {

// Counts per bin: bin b holds edges[b] <= x < edges[b + 1], the last bin also x == edges[nbins]
// (numpy.histogram's rule; values outside are not counted). The bin is first guessed from the
// uniform spacing, then corrected against the edges themselves, so float rounding in the guess
// never moves a value across an edge. NaN is never counted. Thread partials are integers, so
// the sum does not depend on the thread count.
template <class T>
void histogram_edges(const T* x, const std::uint8_t* mask, index_t n, const double* edges,
                     index_t nbins, std::int64_t* counts, int n_threads) {
  const double first = edges[0], last = edges[nbins];
  const double scale = last > first ? double(nbins) / (last - first) : 0.0;
  const int threads = clamp_threads(n_threads);
  std::vector<std::int64_t> partial(static_cast<std::size_t>(threads * nbins), 0);
#pragma omp parallel num_threads(threads)
  {
#ifdef _OPENMP
    std::int64_t* c = partial.data() + omp_get_thread_num() * nbins;
#else
    std::int64_t* c = partial.data();
#endif
#pragma omp for schedule(static)
    for (index_t p = 0; p < n; ++p) {
      if (mask && !mask[p]) continue;
      const double v = static_cast<double>(x[p]);
      if (!(v >= first && v <= last)) continue;
      index_t b = std::min<index_t>(static_cast<index_t>((v - first) * scale), nbins - 1);
      while (b > 0 && v < edges[b]) --b;
      while (b < nbins - 1 && v >= edges[b + 1]) ++b;
      ++c[b];
    }
  }
  for (index_t b = 0; b < nbins; ++b) {
    std::int64_t s = 0;
    for (int t = 0; t < threads; ++t) s += partial[static_cast<std::size_t>(t * nbins + b)];
    counts[b] = s;
  }
}

}  // namespace medkern
