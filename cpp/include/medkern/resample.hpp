// Resampling kernels: separable axis-aligned passes, per-voxel affine/displacement warps, and
// sampling at arbitrary continuous indices. No Python in here.
//
// Conventions shared by every kernel (and by the Numba, CUDA and CuPy peers):
// * Images are C-ordered 3D arrays [n0][n1][n2]; a 2D image is passed with n0 == 1.
// * A continuous index c is inside the image when -0.5 <= c < n - 0.5 on every axis (ITK's
//   ImageFunction::IsInsideBuffer); outside points get `fill`.
// * Inside, nearest rounds half up (floor(c + 0.5), as ITK and scipy), linear extends the edge
//   voxel over the last half voxel (ITK, scipy mode="nearest"), cubic B-spline coefficients are
//   mirrored (scipy mode="mirror", ITK BSplineInterpolateImageFunction).
#pragma once
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "medkern/common.hpp"

namespace medkern {

// Linear and cubic results are float32 unless the input is float64.
template <class T>
using interp_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

enum class Interpolation : int { nearest = 0, linear = 1, cubic = 2, label = 3 };

// Whole-sample symmetric extension with period 2(n-1) (scipy "mirror": d c b | a b c d | c b a).
inline index_t mirror_index(index_t i, index_t n) {
  if (n == 1) return 0;
  const index_t period = 2 * (n - 1);
  i = i < 0 ? -i : i;
  i %= period;
  return i < n ? i : period - i;
}

inline index_t clamp_index(index_t i, index_t n) { return i < 0 ? 0 : (i >= n ? n - 1 : i); }

inline bool inside(double c, index_t n) { return c >= -0.5 && c < static_cast<double>(n) - 0.5; }

// Cubic B-spline weights for the taps floor(c)-1 .. floor(c)+2 at fraction t (Unser 1999, eq. 4).
inline void cubic_bspline_weights(double t, double w[4]) {
  const double t2 = t * t, t3 = t2 * t, u = 1.0 - t;
  w[0] = u * u * u / 6.0;
  w[1] = (3.0 * t3 - 6.0 * t2 + 4.0) / 6.0;
  w[2] = (-3.0 * t3 + 3.0 * t2 + 3.0 * t + 1.0) / 6.0;
  w[3] = t3 / 6.0;
}

// ------------------------------------------------------------------ cubic B-spline prefilter
// In-place conversion of samples to cubic B-spline coefficients along one axis, for `width`
// interleaved lines at once: element (i, b) sits at base[i * stride + b], so the recursion runs
// over i while the inner loop over b is contiguous and vectorises. Mirror boundary with the exact
// causal initialisation (Unser 1999; the same sums as scipy.ndimage.spline_filter1d), evaluated
// in double; the sum stops once z^k < 1e-20, below double resolution of any term.
template <class A>
void bspline_prefilter_lines(A* base, index_t n, index_t stride, index_t width, double* init) {
  if (n < 2) return;
  const double z = std::sqrt(3.0) - 2.0;
  const A gain = static_cast<A>((1.0 - z) * (1.0 - 1.0 / z));
  const double z_n1 = std::pow(z, static_cast<double>(n - 1));
  A* first = base;
  A* last = base + (n - 1) * stride;
  for (index_t b = 0; b < width; ++b) init[b] = static_cast<double>(first[b]) + z_n1 * last[b];
  double zi = z;
  for (index_t i = 1; i < n - 1 && std::fabs(zi) > 1e-20; ++i) {
    const A* ci = base + i * stride;
    const A* cm = base + (n - 1 - i) * stride;
    for (index_t b = 0; b < width; ++b) init[b] += zi * (ci[b] + z_n1 * static_cast<double>(cm[b]));
    zi *= z;
  }
  const double denom = 1.0 - z_n1 * z_n1;
  for (index_t b = 0; b < width; ++b) first[b] = static_cast<A>(gain * (init[b] / denom));
  for (index_t i = 1; i < n; ++i) {
    A* ci = base + i * stride;
    const A* cp = ci - stride;
    const A zz = static_cast<A>(z);
    for (index_t b = 0; b < width; ++b) ci[b] = gain * ci[b] + zz * cp[b];
  }
  const A* prev = base + (n - 2) * stride;
  const A anti = static_cast<A>(z / (z * z - 1.0));
  for (index_t b = 0; b < width; ++b) last[b] = anti * (static_cast<A>(z) * prev[b] + last[b]);
  for (index_t i = n - 2; i >= 0; --i) {
    A* ci = base + i * stride;
    const A* cn = ci + stride;
    const A zz = static_cast<A>(z);
    for (index_t b = 0; b < width; ++b) ci[b] = zz * (cn[b] - ci[b]);
  }
}

// ------------------------------------------------------------------ separable axis pass
// One 1D resampling pass along the middle axis of a [outer][n_in][inner] array:
//   out[o][m][:] = sum_t w[m][t] * line(in[o][idx[m][t]][:]),
// where `line` is the input, or its B-spline coefficients when `prefilter` is set. The tap table
// carries the interpolation weights, boundary extension and any anti-aliasing kernel already
// composed (built once per axis by the caller), so every interpolation order shares this loop.
template <class T, class A>
void resample_axis_pass(const T* in, A* out, index_t outer, index_t n_in, index_t inner,
                        index_t n_out, const index_t* idx, const A* w, int taps, bool prefilter,
                        int n_threads) {
  constexpr index_t kBlock = 256;  // inner lanes per work item: a slab of n_in x 256 stays in L2
  if (inner == 1) {
#pragma omp parallel num_threads(clamp_threads(n_threads))
    {
      std::vector<A> line(static_cast<std::size_t>(n_in));
      double init = 0;
#pragma omp for schedule(static)
      for (index_t o = 0; o < outer; ++o) {
        const T* src = in + o * n_in;
        for (index_t i = 0; i < n_in; ++i) line[i] = static_cast<A>(src[i]);
        if (prefilter) bspline_prefilter_lines(line.data(), n_in, 1, 1, &init);
        A* dst = out + o * n_out;
        for (index_t m = 0; m < n_out; ++m) {
          A acc = 0;
          for (int t = 0; t < taps; ++t) acc += w[m * taps + t] * line[idx[m * taps + t]];
          dst[m] = acc;
        }
      }
    }
    return;
  }
  const index_t n_blocks = (inner + kBlock - 1) / kBlock;
#pragma omp parallel num_threads(clamp_threads(n_threads))
  {
    std::vector<A> slab(prefilter ? static_cast<std::size_t>(n_in * kBlock) : 0);
    std::vector<double> init(kBlock);
    A acc[kBlock];
#pragma omp for schedule(static)
    for (index_t item = 0; item < outer * n_blocks; ++item) {
      const index_t o = item / n_blocks;
      const index_t b0 = (item % n_blocks) * kBlock;
      const index_t width = std::min(kBlock, inner - b0);
      const T* src = in + o * n_in * inner + b0;
      A* dst = out + o * n_out * inner + b0;
      if (prefilter) {
        for (index_t i = 0; i < n_in; ++i)
          for (index_t b = 0; b < width; ++b) slab[i * kBlock + b] = static_cast<A>(src[i * inner + b]);
        bspline_prefilter_lines(slab.data(), n_in, kBlock, width, init.data());
      }
      for (index_t m = 0; m < n_out; ++m) {
        for (index_t b = 0; b < width; ++b) acc[b] = 0;
        for (int t = 0; t < taps; ++t) {
          const A wt = w[m * taps + t];
          const index_t i = idx[m * taps + t];
          if (prefilter) {
            const A* s = slab.data() + i * kBlock;
            for (index_t b = 0; b < width; ++b) acc[b] += wt * s[b];
          } else {
            const T* s = src + i * inner;
            for (index_t b = 0; b < width; ++b) acc[b] += wt * static_cast<A>(s[b]);
          }
        }
        for (index_t b = 0; b < width; ++b) dst[m * inner + b] = acc[b];
      }
    }
  }
}

// One tap table per axis for resample_separable.
template <class A>
struct AxisTaps {
  index_t n_out;
  int taps;
  const index_t* idx;    // n_out * taps input indices, boundary already resolved
  const A* w;            // n_out * taps weights
  const std::uint8_t* valid;  // n_out flags: 0 where the output coordinate is outside the input
};

// Separable resampling of a 3D array whose output->input index map is axis-aligned: one pass per
// axis listed in `order` (n_passes of them; the other axes keep their size and values), shrinking
// axes first to keep the intermediates small, then `fill` on the output slabs whose coordinate
// fell outside the input on any axis.
template <class T, class A>
void resample_separable(const T* in, const index_t shape_in[3], A* out, const AxisTaps<A> axes[3],
                        const int* order, int n_passes, bool prefilter, A fill, int n_threads) {
  index_t shape[3] = {shape_in[0], shape_in[1], shape_in[2]};
  std::vector<A> buf[2];
  const void* src = in;
  bool src_is_input = true;
  for (int p = 0; p < n_passes; ++p) {
    const int a = order[p];
    const AxisTaps<A>& ax = axes[a];
    index_t outer = 1, inner = 1;
    for (int d = 0; d < a; ++d) outer *= shape[d];
    for (int d = a + 1; d < 3; ++d) inner *= shape[d];
    A* dst;
    if (p == n_passes - 1) {
      dst = out;
    } else {
      buf[p % 2].resize(static_cast<std::size_t>(outer * ax.n_out * inner));
      dst = buf[p % 2].data();
    }
    if (src_is_input)
      resample_axis_pass(static_cast<const T*>(src), dst, outer, shape[a], inner, ax.n_out, ax.idx,
                         ax.w, ax.taps, prefilter, n_threads);
    else
      resample_axis_pass(static_cast<const A*>(src), dst, outer, shape[a], inner, ax.n_out, ax.idx,
                         ax.w, ax.taps, prefilter, n_threads);
    shape[a] = ax.n_out;
    src = dst;
    src_is_input = false;
  }
  // Exact fill (not a weighted sum of fills) wherever any axis was outside the input.
  const index_t n1 = shape[1], n2 = shape[2];
#pragma omp parallel for schedule(static) num_threads(clamp_threads(n_threads))
  for (index_t k = 0; k < shape[0]; ++k) {
    A* plane = out + k * n1 * n2;
    if (!axes[0].valid[k]) {
      for (index_t v = 0; v < n1 * n2; ++v) plane[v] = fill;
      continue;
    }
    for (index_t j = 0; j < n1; ++j) {
      A* row = plane + j * n2;
      if (!axes[1].valid[j]) {
        for (index_t i = 0; i < n2; ++i) row[i] = fill;
        continue;
      }
      for (index_t i = 0; i < n2; ++i)
        if (!axes[2].valid[i]) row[i] = fill;
    }
  }
}

// Axis-aligned nearest neighbour: out[k][j][i] = in[idx0[k]][idx1[j]][idx2[i]], fill where any
// index is -1. Values are copied bit for bit, so T only needs the element size.
template <class T>
void gather_nearest(const T* in, const index_t shape_in[3], T* out, const index_t shape_out[3],
                    const index_t* idx0, const index_t* idx1, const index_t* idx2, T fill,
                    int n_threads) {
  const index_t m1 = shape_out[1], m2 = shape_out[2];
#pragma omp parallel for collapse(2) schedule(static) num_threads(clamp_threads(n_threads))
  for (index_t k = 0; k < shape_out[0]; ++k) {
    for (index_t j = 0; j < m1; ++j) {
      T* dst = out + (k * m1 + j) * m2;
      if (idx0[k] < 0 || idx1[j] < 0) {
        for (index_t i = 0; i < m2; ++i) dst[i] = fill;
        continue;
      }
      const T* row = in + (idx0[k] * shape_in[1] + idx1[j]) * shape_in[2];
      for (index_t i = 0; i < m2; ++i) dst[i] = idx2[i] < 0 ? fill : row[idx2[i]];
    }
  }
}

// Whole-volume B-spline coefficients (the prefilter of every axis), for the per-voxel cubic path.
template <class T, class A>
void bspline_coefficients(const T* in, const index_t shape[3], A* out, int n_threads) {
  constexpr index_t kBlock = 256;
  const index_t n = shape[0] * shape[1] * shape[2];
#pragma omp parallel for schedule(static) num_threads(clamp_threads(n_threads))
  for (index_t v = 0; v < n; ++v) out[v] = static_cast<A>(in[v]);
  for (int a = 0; a < 3; ++a) {
    index_t outer = 1, inner = 1;
    for (int d = 0; d < a; ++d) outer *= shape[d];
    for (int d = a + 1; d < 3; ++d) inner *= shape[d];
    const index_t n_blocks = (inner + kBlock - 1) / kBlock;
#pragma omp parallel num_threads(clamp_threads(n_threads))
    {
      std::vector<double> init(kBlock);
#pragma omp for schedule(static)
      for (index_t item = 0; item < outer * n_blocks; ++item) {
        const index_t o = item / n_blocks, b0 = (item % n_blocks) * kBlock;
        bspline_prefilter_lines(out + o * shape[a] * inner + b0, shape[a], inner,
                                std::min(kBlock, inner - b0), init.data());
      }
    }
  }
}

// ------------------------------------------------------------------ point samplers
// Each sampler evaluates one continuous index (c0, c1, c2) of a C-ordered [n0][n1][n2] array.

template <class T>
struct NearestSampler {
  using value_type = T;
  const T* data;
  index_t n[3];
  T fill;
  T operator()(double c0, double c1, double c2) const {
    if (!inside(c0, n[0]) || !inside(c1, n[1]) || !inside(c2, n[2])) return fill;
    const index_t i0 = clamp_index(static_cast<index_t>(std::floor(c0 + 0.5)), n[0]);
    const index_t i1 = clamp_index(static_cast<index_t>(std::floor(c1 + 0.5)), n[1]);
    const index_t i2 = clamp_index(static_cast<index_t>(std::floor(c2 + 0.5)), n[2]);
    return data[(i0 * n[1] + i1) * n[2] + i2];
  }
};

// Two linear taps per axis, edge-extended (the neighbour past the edge is the edge voxel).
struct LinearTaps {
  index_t lo[3], hi[3];
  double t[3];
  LinearTaps(const index_t n[3], double c0, double c1, double c2) {
    const double c[3] = {c0, c1, c2};
    for (int a = 0; a < 3; ++a) {
      const double f = std::floor(c[a]);
      t[a] = c[a] - f;
      lo[a] = clamp_index(static_cast<index_t>(f), n[a]);
      hi[a] = clamp_index(static_cast<index_t>(f) + 1, n[a]);
    }
  }
};

template <class T, class A>
struct LinearSampler {
  using value_type = A;
  const T* data;
  index_t n[3];
  A fill;
  A operator()(double c0, double c1, double c2) const {
    if (!inside(c0, n[0]) || !inside(c1, n[1]) || !inside(c2, n[2])) return fill;
    const LinearTaps p(n, c0, c1, c2);
    const A t0 = static_cast<A>(p.t[0]), t1 = static_cast<A>(p.t[1]), t2 = static_cast<A>(p.t[2]);
    const T* r00 = data + (p.lo[0] * n[1] + p.lo[1]) * n[2];
    const T* r01 = data + (p.lo[0] * n[1] + p.hi[1]) * n[2];
    const T* r10 = data + (p.hi[0] * n[1] + p.lo[1]) * n[2];
    const T* r11 = data + (p.hi[0] * n[1] + p.hi[1]) * n[2];
    auto lerp = [t2, &p](const T* r) {
      const A a = static_cast<A>(r[p.lo[2]]);
      return a + t2 * (static_cast<A>(r[p.hi[2]]) - a);
    };
    const A v00 = lerp(r00), v01 = lerp(r01), v10 = lerp(r10), v11 = lerp(r11);
    const A v0 = v00 + t1 * (v01 - v00), v1 = v10 + t1 * (v11 - v10);
    return v0 + t0 * (v1 - v0);
  }
};

// Cubic B-spline evaluation on precomputed coefficients (bspline_coefficients), mirrored taps.
// A length-1 axis (the slice axis of a 2D image) uses its single coefficient with weight 1.
template <class A>
struct CubicSampler {
  using value_type = A;
  const A* coef;
  index_t n[3];
  A fill;
  A operator()(double c0, double c1, double c2) const {
    if (!inside(c0, n[0]) || !inside(c1, n[1]) || !inside(c2, n[2])) return fill;
    const double c[3] = {c0, c1, c2};
    index_t idx[3][4];
    A w[3][4];
    int count[3];
    for (int a = 0; a < 3; ++a) {
      if (n[a] == 1) {
        count[a] = 1;
        idx[a][0] = 0;
        w[a][0] = 1;
        continue;
      }
      count[a] = 4;
      const double f = std::floor(c[a]);
      double wd[4];
      cubic_bspline_weights(c[a] - f, wd);
      for (int k = 0; k < 4; ++k) {
        idx[a][k] = mirror_index(static_cast<index_t>(f) - 1 + k, n[a]);
        w[a][k] = static_cast<A>(wd[k]);
      }
    }
    A acc0 = 0;
    for (int k0 = 0; k0 < count[0]; ++k0) {
      A acc1 = 0;
      for (int k1 = 0; k1 < count[1]; ++k1) {
        const A* row = coef + (idx[0][k0] * n[1] + idx[1][k1]) * n[2];
        A acc2 = 0;
        for (int k2 = 0; k2 < count[2]; ++k2) acc2 += w[2][k2] * row[idx[2][k2]];
        acc1 += w[1][k1] * acc2;
      }
      acc0 += w[0][k0] * acc1;
    }
    return acc0;
  }
};

// Segmentation resampling: the label whose summed trilinear weight over the 8 neighbours is
// largest. Neighbours are visited nearest first, and only a strictly larger sum replaces the
// current winner, so ties go to the nearest voxel's label (then to the first in visiting order).
// Labels are compared for equality only, so T only needs the element size.
template <class T>
struct LabelSampler {
  using value_type = T;
  const T* data;
  index_t n[3];
  T fill;
  T operator()(double c0, double c1, double c2) const {
    if (!inside(c0, n[0]) || !inside(c1, n[1]) || !inside(c2, n[2])) return fill;
    const LinearTaps p(n, c0, c1, c2);
    T labels[8];
    double votes[8];
    int n_labels = 0;
    for (int corner = 0; corner < 8; ++corner) {
      index_t i[3];
      double w = 1.0;
      for (int a = 0; a < 3; ++a) {
        const bool near_hi = p.t[a] >= 0.5;
        const bool use_hi = (((corner >> a) & 1) != 0) != near_hi;
        i[a] = use_hi ? p.hi[a] : p.lo[a];
        w *= use_hi ? p.t[a] : 1.0 - p.t[a];
      }
      const T v = data[(i[0] * n[1] + i[1]) * n[2] + i[2]];
      int s = 0;
      while (s < n_labels && labels[s] != v) ++s;
      if (s == n_labels) {
        labels[n_labels] = v;
        votes[n_labels++] = 0.0;
      }
      votes[s] += w;
    }
    int best = 0;
    for (int s = 1; s < n_labels; ++s)
      if (votes[s] > votes[best]) best = s;
    return labels[best];
  }
};

// ------------------------------------------------------------------ per-voxel warps
// General output->input map for every output voxel (k, j, i):
//   c = M @ (k, j, i, 1) + R @ d[k][j][i],
// with M the 3x4 index map (output index -> world -> transform -> input index) and d an optional
// displacement field on the output grid (n_comp world-mm components per voxel, R the 3 x n_comp
// map from world vectors to input index steps). Rows of the output are independent, so any
// thread count gives the same bits.
template <class S>
void warp(const S& sampler, typename S::value_type* out, const index_t shape_out[3], const double m[12],
          const float* disp, int n_comp, const double* r, int n_threads) {
  const index_t m1 = shape_out[1], m2 = shape_out[2];
#pragma omp parallel for collapse(2) schedule(static) num_threads(clamp_threads(n_threads))
  for (index_t k = 0; k < shape_out[0]; ++k) {
    for (index_t j = 0; j < m1; ++j) {
      const double kk = static_cast<double>(k), jj = static_cast<double>(j);
      const double b0 = m[0] * kk + m[1] * jj + m[3];
      const double b1 = m[4] * kk + m[5] * jj + m[7];
      const double b2 = m[8] * kk + m[9] * jj + m[11];
      auto* dst = out + (k * m1 + j) * m2;
      const float* d = disp ? disp + (k * m1 + j) * m2 * n_comp : nullptr;
      for (index_t i = 0; i < m2; ++i) {
        const double ii = static_cast<double>(i);
        double c0 = b0 + m[2] * ii, c1 = b1 + m[6] * ii, c2 = b2 + m[10] * ii;
        if (d) {
          const float* u = d + i * n_comp;
          for (int q = 0; q < n_comp; ++q) {
            c0 += r[q] * u[q];
            c1 += r[n_comp + q] * u[q];
            c2 += r[2 * n_comp + q] * u[q];
          }
        }
        dst[i] = sampler(c0, c1, c2);
      }
    }
  }
}

// Samples at n_points continuous indices given as coords[a * n_points + p] for the `ndim`
// trailing axes (scipy.ndimage.map_coordinates layout); a 2D image has n0 == 1 and ndim == 2.
template <class S>
void sample_points(const S& sampler, typename S::value_type* out, const double* coords,
                   index_t n_points, int ndim, int n_threads) {
#pragma omp parallel for schedule(static) num_threads(clamp_threads(n_threads))
  for (index_t p = 0; p < n_points; ++p) {
    const double c0 = ndim == 3 ? coords[p] : 0.0;
    const double* c = coords + (ndim == 3 ? n_points : 0);
    out[p] = sampler(c0, c[p], c[n_points + p]);
  }
}

}  // namespace medkern
