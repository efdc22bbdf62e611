// Point-wise intensity mappings (windowing, normalisation). Memory-bound: one read, one write.
#pragma once
#include "medkern/common.hpp"

namespace medkern {

// out = clamp(scale * x + offset, lo, hi), computed in double and stored as float.
// Every linear intensity map (window/level, z-score, min-max, percentile) is this one kernel with
// different coefficients, so they share one vectorisable loop. NaN stays NaN (clamp via min/max
// with the comparison written so NaN falls through).
template <class T>
void affine_intensity(const T* x, float* out, index_t n, double scale, double offset, double lo,
                      double hi, int n_threads) {
#pragma omp parallel for schedule(static) num_threads(clamp_threads(n_threads))
  for (index_t i = 0; i < n; ++i) {
    double v = scale * static_cast<double>(x[i]) + offset;
    v = v < lo ? lo : v;
    v = v > hi ? hi : v;
    out[i] = static_cast<float>(v);
  }
}

}  // namespace medkern
