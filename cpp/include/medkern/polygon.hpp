// Polygon rasterisation on image slices (RTSTRUCT contours -> binary masks): no Python in here.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "medkern/common.hpp"

namespace medkern {

// Fill closed polygons into a (nk, nj, ni) uint8 mask with the even-odd (crossing number) rule
// evaluated at voxel centres: centre (j, i) of slice k is inside when a ray from it crosses the
// edges of all polygons on slice k an odd number of times, so nested contours cut holes (XOR),
// as DICOM RT Structure Sets specify (PS3.3 C.8.8.6.3).
//
// Polygon p has vertices xy[2*v] = i, xy[2*v+1] = j (continuous voxel indices) for v in
// [start[p], start[p+1]); it is closed implicitly and lies on slice slice_of[p] (out-of-range
// slices are ignored). An edge crosses scanline j when exactly one endpoint has y <= j
// (half-open), so a vertex on the scanline is counted once. Along a scanline the inside
// intervals are [x0, x1), [x2, x3), ... of the sorted crossings. Rows are independent, so the
// result does not depend on the thread count.
inline void fill_polygons_even_odd(const double* xy, const std::int64_t* start,
                                   const std::int64_t* slice_of, index_t n_polygons,
                                   std::uint8_t* mask, index_t nk, index_t nj, index_t ni,
                                   int n_threads) {
  struct Edge {
    double x0, y0, x1, y1;
  };
  // Edges grouped by slice (CSR), with each slice's j-range to skip empty rows quickly.
  std::vector<index_t> offset(static_cast<std::size_t>(nk) + 1, 0);
  for (index_t p = 0; p < n_polygons; ++p) {
    const index_t k = slice_of[p];
    if (k >= 0 && k < nk) offset[static_cast<std::size_t>(k) + 1] += start[p + 1] - start[p];
  }
  for (index_t k = 0; k < nk; ++k) offset[k + 1] += offset[k];
  std::vector<Edge> edges(static_cast<std::size_t>(offset[nk]));
  std::vector<index_t> fill = offset;
  for (index_t p = 0; p < n_polygons; ++p) {
    const index_t k = slice_of[p];
    if (k < 0 || k >= nk) continue;
    const index_t a = start[p], b = start[p + 1];
    for (index_t v = a; v < b; ++v) {
      const index_t w = (v + 1 < b) ? v + 1 : a;
      edges[static_cast<std::size_t>(fill[k]++)] = {xy[2 * v], xy[2 * v + 1], xy[2 * w],
                                                    xy[2 * w + 1]};
    }
  }
  std::fill(mask, mask + nk * nj * ni, std::uint8_t{0});
  const index_t n_rows = nk * nj;
  ParallelError error;
#pragma omp parallel num_threads(clamp_threads(n_threads))
  {
    std::vector<double> xs;
#pragma omp for schedule(dynamic, 16)
    for (index_t r = 0; r < n_rows; ++r) {
      if (error.failed()) continue;
      error.capture([&] {
        const index_t k = r / nj;
        const double y = static_cast<double>(r % nj);
        xs.clear();
        for (index_t e = offset[k]; e < offset[k + 1]; ++e) {
          const Edge& g = edges[static_cast<std::size_t>(e)];
          if ((g.y0 <= y) == (g.y1 <= y)) continue;
          const double x = g.x0 + (y - g.y0) * (g.x1 - g.x0) / (g.y1 - g.y0);
          if (!std::isnan(x)) xs.push_back(x);  // std::sort needs an ordering: NaN has none
        }
        if (xs.size() < 2) return;
        std::sort(xs.begin(), xs.end());
        std::uint8_t* row = mask + r * ni;
        // Crossings are clamped to [0, ni] before the conversion to an index (a NaN or infinite
        // vertex would make it undefined); NaN spans fill nothing.
        auto column = [ni](double x) {
          return x >= 0.0 ? static_cast<index_t>(std::min(std::ceil(x), static_cast<double>(ni)))
                          : index_t{0};
        };
        for (std::size_t c = 0; c + 1 < xs.size(); c += 2) {
          const index_t lo = column(xs[c]), hi = column(xs[c + 1]);
          for (index_t i = lo; i < hi; ++i) row[i] = 1;
        }
      });
    }
  }
  error.rethrow();
}

}  // namespace medkern
