// Trilinear interpolation shared by resampling (resample.hpp) and registration
// (registration.hpp): the index helpers, the taps of a point and one blend with an optional
// gradient. Also compiled as CUDA device code, so CPU and GPU evaluate the same arithmetic.
// (MEDKERN_HD, common.hpp)
#pragma once
#include <cmath>

#include "medkern/common.hpp"

namespace medkern {

MEDKERN_HD inline index_t clamp_index(index_t i, index_t n) {
  return i < 0 ? 0 : (i >= n ? n - 1 : i);
}

// floor for coordinates already known to be inside an image: the baseline x86-64 target has no
// rounding instruction, and a libm floor call per coordinate dominates the per-voxel cost.
MEDKERN_HD inline index_t floor_index(double c) {
  const index_t i = static_cast<index_t>(c);
  return c < static_cast<double>(i) ? i - 1 : i;
}

// clamp_index(static_cast<index_t>(f)) for an integral f, clamped in double first: a NaN or
// far-out coordinate (a diverging field) would make the conversion undefined.
MEDKERN_HD inline index_t floor_clamped(double f, index_t n) {
  const double last = static_cast<double>(n - 1);
  return f >= 0.0 ? static_cast<index_t>(f <= last ? f : last) : 0;
}

MEDKERN_HD inline bool inside(double c, index_t n) {
  return c >= -0.5 && c < static_cast<double>(n) - 0.5;
}

// Two linear taps per axis and the fraction t between them.
struct LinearTaps {
  index_t lo[3], hi[3];
  double t[3];

  LinearTaps() = default;
  // Resampling, for points inside the image: edge-extended (the neighbour past the edge is the
  // edge voxel).
  MEDKERN_HD LinearTaps(const index_t n[3], double c0, double c1, double c2) {
    const double c[3] = {c0, c1, c2};
    for (int a = 0; a < 3; ++a) {
      const index_t f = floor_index(c[a]);
      t[a] = c[a] - static_cast<double>(f);
      lo[a] = clamp_index(f, n[a]);
      hi[a] = clamp_index(f + 1, n[a]);
    }
  }

  // Registration, for any point (also far outside or NaN): clamped to the image. Below voxel 0
  // the taps stay the first two voxels with t = 0, so the value is flat there while the
  // derivative along that axis is the first cell's slope.
  MEDKERN_HD static LinearTaps clamped(const index_t n[3], double c0, double c1, double c2) {
    LinearTaps p;
    const double c[3] = {c0, c1, c2};
    for (int a = 0; a < 3; ++a) {
      const double f = std::floor(c[a]);
      p.lo[a] = floor_clamped(f, n[a]);
      p.hi[a] = clamp_index(p.lo[a] + 1, n[a]);
      p.t[a] = f < 0 ? 0.0 : c[a] - f;
    }
    return p;
  }
};

// Trilinear blend of the corner values v[4 * a0 + 2 * a1 + a2] (a: 0 for the lower, 1 for the
// upper tap along each axis) at fractions t, as nested lerps along axis 2, then 1, then 0. With
// `grad`, also the blend's exact derivative with respect to t0, t1, t2.
template <class A>
MEDKERN_HD A trilinear_blend(const A v[8], A t0, A t1, A t2, A* grad = nullptr) {
  const A v00 = v[0] + t2 * (v[1] - v[0]), v01 = v[2] + t2 * (v[3] - v[2]);
  const A v10 = v[4] + t2 * (v[5] - v[4]), v11 = v[6] + t2 * (v[7] - v[6]);
  const A v0 = v00 + t1 * (v01 - v00), v1 = v10 + t1 * (v11 - v10);
  if (grad) {
    grad[0] = v1 - v0;
    grad[1] = (v01 - v00) + t0 * ((v11 - v10) - (v01 - v00));
    const A d0 = (v[1] - v[0]) + t1 * ((v[3] - v[2]) - (v[1] - v[0]));
    const A d1 = (v[5] - v[4]) + t1 * ((v[7] - v[6]) - (v[5] - v[4]));
    grad[2] = d0 + t0 * (d1 - d0);
  }
  return v0 + t0 * (v1 - v0);
}

// The trilinear value (in precision A) of a C-ordered [n0][n1][n2] array at taps p, with its
// derivative along each axis when `grad` is given.
template <class A, class T>
MEDKERN_HD A trilinear(const T* data, const index_t n[3], const LinearTaps& p, A* grad = nullptr) {
  const index_t s1 = n[2], s0 = n[1] * n[2];
  const T* r00 = data + p.lo[0] * s0 + p.lo[1] * s1;
  const T* r01 = data + p.lo[0] * s0 + p.hi[1] * s1;
  const T* r10 = data + p.hi[0] * s0 + p.lo[1] * s1;
  const T* r11 = data + p.hi[0] * s0 + p.hi[1] * s1;
  const A v[8] = {static_cast<A>(r00[p.lo[2]]), static_cast<A>(r00[p.hi[2]]),
                  static_cast<A>(r01[p.lo[2]]), static_cast<A>(r01[p.hi[2]]),
                  static_cast<A>(r10[p.lo[2]]), static_cast<A>(r10[p.hi[2]]),
                  static_cast<A>(r11[p.lo[2]]), static_cast<A>(r11[p.hi[2]])};
  return trilinear_blend(v, static_cast<A>(p.t[0]), static_cast<A>(p.t[1]), static_cast<A>(p.t[2]),
                         grad);
}

}  // namespace medkern
