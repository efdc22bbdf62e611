// Median filter over a (2r+1)-box, any radius, 2D and 3D, exact for every dtype.
#pragma once
#include <cstring>
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

// The widest vector of T this build has registers for: 64 bytes with AVX-512 (BW for 8- and
// 16-bit lanes), 32 with AVX2, 16 otherwise.
template <class T>
constexpr int kVectorBytes =
#if defined(__AVX512F__) && defined(__AVX512BW__)
    64;
#elif defined(__AVX512F__)
    sizeof(T) >= 4 ? 64 : 32;
#elif defined(__AVX2__)
    32;
#else
    16;
#endif

// forgetful_median for a window size known at compile time, one register of lanes at a time:
// the loops have constant bounds and unroll completely, so the (N + 3) / 2 candidates stay in
// registers instead of going through memory at every compare-exchange. Same selection, same
// values. V is a GCC vector of T, whose ?: on a comparison is a lane-wise select.
template <class T, index_t N>
MEDKERN_ALWAYS_INLINE void forgetful_median_registers(const T* const* elem, index_t i0, T* out) {
  typedef T V __attribute__((vector_size(kVectorBytes<T>)));
  constexpr int W = kVectorBytes<T> / static_cast<int>(sizeof(T));
  constexpr int C = static_cast<int>((N + 3) / 2);
  static_assert(kMedianLanes % W == 0, "lanes per chunk must be whole vectors");
  for (index_t l0 = 0; l0 < kMedianLanes; l0 += W) {
    V w[C];
#pragma GCC unroll 32
    for (int q = 0; q < C; ++q) std::memcpy(&w[q], elem[q] + i0 + l0, sizeof(V));
#pragma GCC unroll 32
    for (int step = 0; step <= static_cast<int>(N) - C; ++step) {
      const int cur = C - step, next = C + step;
      // Minimum to w[0], then maximum to w[cur - 1], over the cur candidates.
#pragma GCC unroll 32
      for (int q = 1; q < cur; ++q) {
        const V a = w[0], b = w[q];
        w[0] = b < a ? b : a;  // lane_min, lane_max: std::min/std::max on every lane
        w[q] = a < b ? b : a;
      }
#pragma GCC unroll 32
      for (int q = 1; q < cur - 1; ++q) {
        const V a = w[q], b = w[cur - 1];
        w[q] = b < a ? b : a;
        w[cur - 1] = a < b ? b : a;
      }
      if (next == N) break;
      std::memcpy(&w[0], elem[next] + i0 + l0, sizeof(V));
    }
    std::memcpy(out + l0, &w[1], sizeof(V));
  }
}

template <class T, class Count>
MEDKERN_ALWAYS_INLINE void median_chunk(const T* const* elem, index_t i0, Count count, T* work,
                                        T* out) {
  if constexpr (std::is_same_v<Count, index_t>)
    forgetful_median(elem, i0, count, work, out);
  else
    forgetful_median_registers<T, Count::value>(elem, i0, out);
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
        median_chunk(elem.data(), i0, count, work.data(), o + i0);
      if (i0 < s.n2) {
        median_chunk(elem.data(), i0, count, work.data(), tail);
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
