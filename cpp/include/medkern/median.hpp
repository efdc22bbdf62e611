// Median filter over a (2r+1)-box, any radius, 2D and 3D, exact for every dtype.
#pragma once
#include <type_traits>
#include <vector>

#include "medkern/filters.hpp"

namespace medkern {

namespace detail {

constexpr index_t kMedianLanes = 64;

// Lane min/max written per type the way GCC turns into SIMD min/max: std::min/max for floats
// (minps semantics), a plain select for integers.
template <class T>
MEDKERN_ALWAYS_INLINE T lane_min(T a, T b) {
  if constexpr (std::is_floating_point_v<T>)
    return std::min(a, b);
  else
    return a < b ? a : b;
}
template <class T>
MEDKERN_ALWAYS_INLINE T lane_max(T a, T b) {
  if constexpr (std::is_floating_point_v<T>)
    return std::max(a, b);
  else
    return a < b ? b : a;
}

// Median of n (odd, >= 3) values per lane by forgetful selection (Paeth 1990; Devillard's
// "Fast median search"): keep (n+3)/2 candidates, move their min and max to the ends with
// compare-exchanges, drop both and take in one new value; neither extreme can be the median of
// what is left. Branch-free min/max on whole lanes, so it vectorises across output voxels.
// `Count` is std::integral_constant for the common sizes (the network unrolls) or index_t.
template <class T, class Count>
MEDKERN_SIMD_CLONES void forgetful_median(const T* const* elem, index_t i0, Count n_count, T* work,
                                          T* out) {
  constexpr index_t L = kMedianLanes;
  const index_t n = n_count;
  index_t cur = (n + 3) / 2;
  auto row = [&](index_t q) { return work + q * L; };
  for (index_t q = 0; q < cur; ++q)
    for (index_t l = 0; l < L; ++l) row(q)[l] = elem[q][i0 + l];
  index_t next = cur;
  // The running extremes live in local arrays (registers), apart from the candidate rows.
  T lo[L], hi[L];
  for (;;) {
    for (index_t l = 0; l < L; ++l) lo[l] = row(0)[l];
    for (index_t q = 1; q < cur; ++q) {
      T* w = row(q);
#pragma omp simd
      for (index_t l = 0; l < L; ++l) {
        const T a = lo[l], b = w[l];
        lo[l] = lane_min(a, b);
        w[l] = lane_max(a, b);
      }
    }
    for (index_t l = 0; l < L; ++l) hi[l] = row(cur - 1)[l];
    for (index_t q = 1; q < cur - 1; ++q) {
      T* w = row(q);
#pragma omp simd
      for (index_t l = 0; l < L; ++l) {
        const T a = w[l], b = hi[l];
        w[l] = lane_min(a, b);
        hi[l] = lane_max(a, b);
      }
    }
    if (next == n) break;
    // The minimum (lo) and maximum (hi) are dropped; row 0 takes the next value.
    for (index_t l = 0; l < L; ++l) row(0)[l] = elem[next][i0 + l];
    ++next;
    --cur;
  }
  for (index_t l = 0; l < L; ++l) out[l] = row(1)[l];
}

template <class T, class Count>
void median_rows(const T* in, T* out, const Shape3& s, const index_t* r, Boundary b, Count count,
                 int n_threads) {
  const index_t n = count;
  const index_t nrows = (2 * r[0] + 1) * (2 * r[1] + 1);
  const index_t padded = s.n2 + 2 * r[2] + kMedianLanes;  // lanes of slack for the last chunk
  ParallelError error;
#pragma omp parallel num_threads(clamp_threads(n_threads))
  {
    std::vector<T> rows, work;
    std::vector<const T*> elem;
    error.capture([&] {
      rows.resize(static_cast<std::size_t>(nrows * padded));
      elem.resize(static_cast<std::size_t>(n));
      work.resize(static_cast<std::size_t>(((n + 3) / 2) * kMedianLanes));
    });
    T tail[kMedianLanes];
#pragma omp for schedule(static)
    for (index_t row = 0; row < s.n0 * s.n1; ++row) {
      if (error.failed()) continue;
      const index_t k = row / s.n1, j = row % s.n1;
      neighbour_rows(in, s, k, j, r, b, T(0), padded, rows.data(), elem.data());
      T* o = out + row * s.n2;
      index_t i0 = 0;
      for (; i0 + kMedianLanes <= s.n2; i0 += kMedianLanes)
        forgetful_median(elem.data(), i0, count, work.data(), o + i0);
      if (i0 < s.n2) {
        forgetful_median(elem.data(), i0, count, work.data(), tail);
        for (index_t i = i0; i < s.n2; ++i) o[i] = tail[i - i0];
      }
    }
  }
  error.rethrow();
}

}  // namespace detail

// out = median of the (2 r0 + 1) x (2 r1 + 1) x (2 r2 + 1) box around each voxel, out-of-image
// samples taken by the boundary rule (Boundary::constant uses 0). Values are selected, never
// averaged, so out has the input's dtype and exact values. NaN-free input is the caller's duty.
template <class T>
void median_filter(const T* in, T* out, const Shape3& s, const index_t* r, Boundary b,
                   int n_threads) {
  const index_t n = (2 * r[0] + 1) * (2 * r[1] + 1) * (2 * r[2] + 1);
  if (n == 1) {
    std::copy(in, in + s.size(), out);
    return;
  }
  // Common windows get a compile-time size so the selection network is fully unrolled.
  if (n == 27)
    return detail::median_rows(in, out, s, r, b, std::integral_constant<index_t, 27>{}, n_threads);
  if (n == 9)
    return detail::median_rows(in, out, s, r, b, std::integral_constant<index_t, 9>{}, n_threads);
  if (n == 25)
    return detail::median_rows(in, out, s, r, b, std::integral_constant<index_t, 25>{}, n_threads);
  detail::median_rows(in, out, s, r, b, n, n_threads);
}

}  // namespace medkern
