// Binary dilation and erosion by a structuring element that is convex along i (a ball), given as
// its rows: for each (dk, dj) the half-width w of its run of offsets di in [-w, w]. No Python.
//
// Dilation: out = OR over offsets d of in shifted by d; erosion: AND, the outside of the grid
// counting as background (scipy.ndimage's border_value=0). The element is decomposed into its
// rows (line-segment decomposition, Soille 2003 §3.9): the input is first filtered along i with
// each distinct half-width, then each row of the element is one byte-wise OR (AND) of that
// filtered volume shifted by (dk, dj). Every loop is a contiguous byte loop the compiler
// vectorises. Cost: (distinct widths x (2w + 1) row shifts + rows) passes, instead of one pass
// per offset.
#pragma once
#include <cstdint>
#include <cstring>
#include <vector>

#include "medkern/common.hpp"

namespace medkern {

namespace morph {

// filtered = in dilated (eroded) along i by [-w, w]; erosion treats i < 0 and i >= ni as
// background.
inline void filter_rows(const std::uint8_t* in, std::uint8_t* filtered, index_t n_rows, index_t ni,
                        index_t w, bool erode, int n_threads) {
#pragma omp parallel for schedule(static) num_threads(clamp_threads(n_threads))
  for (index_t r = 0; r < n_rows; ++r) {
    // Distinct buffers: restrict lets the byte loops vectorise without overlap checks.
    const std::uint8_t* __restrict a = in + r * ni;
    std::uint8_t* __restrict o = filtered + r * ni;
    std::memcpy(o, a, static_cast<std::size_t>(ni));
    for (index_t d = 1; d <= w; ++d) {
      if (erode) {
        // o[i] &= a[i - d] and a[i + d], zero where either lies outside the row.
        for (index_t i = 0; i < std::min(d, ni); ++i) o[i] = 0;
        for (index_t i = std::max<index_t>(0, ni - d); i < ni; ++i) o[i] = 0;
        for (index_t i = d; i < ni - d; ++i) o[i] &= a[i - d] & a[i + d];
      } else {
        for (index_t i = d; i < ni; ++i) o[i] |= a[i - d];
        for (index_t i = 0; i + d < ni; ++i) o[i] |= a[i + d];
      }
    }
  }
}

}  // namespace morph

// rows: n_rows x 3 (dk, dj, w). in/out are 0/1 bytes; out may not alias in.
inline void binary_morphology(const std::uint8_t* in, std::uint8_t* out, index_t nk, index_t nj,
                              index_t ni, const std::int32_t* rows, index_t n_rows, bool erode,
                              int n_threads) {
  const index_t plane = nj * ni, n = nk * plane;
  std::memset(out, erode ? 1 : 0, static_cast<std::size_t>(n));
  std::vector<std::int32_t> widths;
  for (index_t r = 0; r < n_rows; ++r) widths.push_back(rows[3 * r + 2]);
  std::sort(widths.begin(), widths.end());
  widths.erase(std::unique(widths.begin(), widths.end()), widths.end());
  std::vector<std::uint8_t> filtered(static_cast<std::size_t>(n));
  for (const std::int32_t w : widths) {
    morph::filter_rows(in, filtered.data(), nk * nj, ni, w, erode, n_threads);
    const std::uint8_t* src = filtered.data();
#pragma omp parallel for schedule(static) num_threads(clamp_threads(n_threads))
    for (index_t k = 0; k < nk; ++k) {
      for (index_t r = 0; r < n_rows; ++r) {
        if (rows[3 * r + 2] != w) continue;
        const index_t ks = k + rows[3 * r], dj = rows[3 * r + 1];
        for (index_t j = 0; j < nj; ++j) {
          std::uint8_t* __restrict o = out + k * plane + j * ni;
          const index_t js = j + dj;
          if (ks < 0 || ks >= nk || js < 0 || js >= nj) {
            if (erode) std::memset(o, 0, static_cast<std::size_t>(ni));
            continue;
          }
          const std::uint8_t* __restrict s = src + ks * plane + js * ni;
          if (erode)
            for (index_t i = 0; i < ni; ++i) o[i] &= s[i];
          else
            for (index_t i = 0; i < ni; ++i) o[i] |= s[i];
        }
      }
    }
  }
}

}  // namespace medkern
