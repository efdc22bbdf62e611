// Radiomics kernels outside the texture matrices (IBSI reference manual, chapter 3).
#pragma once
#include <cstdint>

#include "medkern/texture.hpp"

namespace medkern::radiomics {

// Local intensity (IBSI §3.2): for each centre voxel, the mean of the image voxels at the given
// index offsets (the voxels whose centres lie in a 1 cm³ sphere), skipping offsets off the grid.
// Centres are flat indices; each one is independent, so any thread count gives the same bits.
template <class T>
void offset_means(const T* image, texture::Grid g, const std::int64_t* centres, index_t n_centres,
                  const std::int64_t* offsets, index_t n_offsets, double* out, int n_threads) {
#pragma omp parallel for schedule(static) num_threads(clamp_threads(n_threads))
  for (index_t c = 0; c < n_centres; ++c) {
    const index_t i = centres[c];
    const index_t z = i / (g.ny * g.nx), y = (i / g.nx) % g.ny, x = i % g.nx;
    double sum = 0.0;
    index_t count = 0;
    for (index_t o = 0; o < n_offsets; ++o) {
      const index_t zz = z + offsets[3 * o], yy = y + offsets[3 * o + 1], xx = x + offsets[3 * o + 2];
      if (!g.inside(zz, yy, xx)) continue;
      sum += static_cast<double>(image[g.at(zz, yy, xx)]);
      ++count;
    }
    out[c] = sum / static_cast<double>(count);
  }
}

}  // namespace medkern::radiomics
