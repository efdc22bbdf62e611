// Boundary rules of the neighbourhood filters, shared by the C++ kernels and the CUDA kernels.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define MEDKERN_HOST_DEVICE __host__ __device__
#else
#define MEDKERN_HOST_DEVICE
#endif

namespace medkern {

// Out-of-image samples, named as scipy.ndimage names them:
//   reflect  (d c b a | a b c d | d c b a)  half-sample symmetric, scipy's default
//   nearest  (a a a a | a b c d | d d d d)  ITK's ZeroFluxNeumann
//   mirror   (d c b | a b c d | c b a)      whole-sample symmetric
//   wrap     (a b c d | a b c d | a b c d)  periodic
//   constant (k k k k | a b c d | k k k k)
enum class Boundary : int { reflect = 0, nearest = 1, mirror = 2, wrap = 3, constant = 4 };

// Index of the sample that stands for position i on an axis of n samples; -1 means "the constant".
MEDKERN_HOST_DEVICE inline std::int64_t boundary_index(std::int64_t i, std::int64_t n, Boundary b) {
  if (i >= 0 && i < n) return i;
  switch (b) {
    case Boundary::nearest:
      return i < 0 ? 0 : n - 1;
    case Boundary::reflect: {
      const std::int64_t period = 2 * n;
      std::int64_t m = i % period;
      if (m < 0) m += period;
      return m < n ? m : period - 1 - m;
    }
    case Boundary::mirror: {
      if (n == 1) return 0;
      const std::int64_t period = 2 * n - 2;
      std::int64_t m = i % period;
      if (m < 0) m += period;
      return m < n ? m : period - m;
    }
    case Boundary::wrap: {
      std::int64_t m = i % n;
      return m < 0 ? m + n : m;
    }
    case Boundary::constant:
      return -1;
  }
  return -1;
}

}  // namespace medkern
