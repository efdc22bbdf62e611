// Binary dilation and erosion with an explicit structuring element given as offsets (the ball of
// a physical radius, built by the caller). No Python in here.
//
// Dilation: out = OR over offsets d of in shifted by d; erosion: AND, with the outside of the
// grid counting as background (scipy.ndimage's border_value=0). Each offset is one pass of
// byte-wise OR/AND over contiguous row segments, which the compiler vectorises; cost is
// (number of offsets) x (voxels), so large balls go through the distance transform instead.
#pragma once
#include <cstdint>
#include <cstring>

#include "medkern/common.hpp"

namespace medkern {

// offsets: n_offsets x 3 (dk, dj, di). in/out are 0/1 bytes; out may not alias in.
inline void binary_morphology(const std::uint8_t* in, std::uint8_t* out, index_t nk, index_t nj,
                              index_t ni, const std::int32_t* offsets, index_t n_offsets,
                              bool erode, int n_threads) {
#pragma omp parallel for schedule(static) num_threads(clamp_threads(n_threads))
  for (index_t k = 0; k < nk; ++k) {
    std::uint8_t* plane = out + k * nj * ni;
    std::memset(plane, erode ? 1 : 0, static_cast<std::size_t>(nj * ni));
    for (index_t o = 0; o < n_offsets; ++o) {
      const index_t dk = offsets[3 * o], dj = offsets[3 * o + 1], di = offsets[3 * o + 2];
      const index_t ks = k + dk;
      // Output voxel i reads input i + di; columns whose source lies outside the grid.
      const index_t i0 = std::max<index_t>(0, -di), i1 = std::min<index_t>(ni, ni - di);
      for (index_t j = 0; j < nj; ++j) {
        std::uint8_t* o_row = plane + j * ni;
        const index_t js = j + dj;
        const bool inside = ks >= 0 && ks < nk && js >= 0 && js < nj && i0 < i1;
        if (!inside) {
          if (erode) std::memset(o_row, 0, static_cast<std::size_t>(ni));
          continue;
        }
        const std::uint8_t* src = in + (ks * nj + js) * ni + di;
        if (erode) {
          for (index_t i = 0; i < i0; ++i) o_row[i] = 0;
          for (index_t i = i0; i < i1; ++i) o_row[i] &= src[i];
          for (index_t i = i1; i < ni; ++i) o_row[i] = 0;
        } else {
          for (index_t i = i0; i < i1; ++i) o_row[i] |= src[i];
        }
      }
    }
  }
}

}  // namespace medkern
