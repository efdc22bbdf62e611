// Exact Euclidean distance transform with anisotropic spacing. No Python in here.
//
// Separable algorithm of Felzenszwalb & Huttenlocher (2012) (equivalently Meijster et al. 2000):
// squared distances along the contiguous axis first (two sweeps), then along each other axis
// the lower envelope of the parabolas f(q) + (s (p - q))^2. The result is exact: the squared
// distance to the nearest site, sum over axes of (offset * spacing)^2. Envelope intersections
// are computed in double; squared distances are stored as float32 between passes (relative
// rounding 6e-8). Lines along a strided axis are gathered a whole row of lines at a time, so
// every cache line read is used in full.
#pragma once
#include <cstdint>
#include <vector>

#include "medkern/common.hpp"

namespace medkern {

namespace edt {

// Lower envelope of parabolas on one line: d[p] = min_q f[q] + (s (p - q))^2 over finite f[q].
// With border_sites, virtual sites with f = 0 sit just outside the line (q = -1 and q = n).
// v, h, z are scratch of size n + 3 (h[k] = f[v[k]] + (s v[k])^2, the parabola's offset, kept so
// each intersection costs one subtraction and one division). Returns false when no finite site
// exists (d left untouched).
template <class F>
bool envelope(const F* f, F* d, index_t n, double s, bool border_sites, index_t* v, double* h,
              double* z) {
  const double s2 = s * s;
  index_t k = -1;
  auto push = [&](index_t q, double fq) {
    const double hq = fq + s2 * double(q) * double(q);
    double x = -INFINITY;
    while (k >= 0) {
      x = (hq - h[k]) / (2.0 * s2 * double(q - v[k]));
      if (x > z[k]) break;
      --k;
      x = -INFINITY;
    }
    ++k;
    v[k] = q;
    h[k] = hq;
    z[k] = x;
  };
  if (border_sites) push(-1, 0.0);
  for (index_t q = 0; q < n; ++q)
    if (f[q] != F(INFINITY)) push(q, double(f[q]));
  if (border_sites) push(n, 0.0);
  if (k < 0) return false;
  index_t c = 0;
  for (index_t p = 0; p < n; ++p) {
    while (c < k && z[c + 1] < double(p)) ++c;
    const double dp = s * double(p - v[c]);
    // f[v] is read back rather than taken as h - (s v)^2, which would cancel digits.
    const double fv = (v[c] < 0 || v[c] >= n) ? 0.0 : double(f[v[c]]);
    d[p] = static_cast<F>(dp * dp + fv);
  }
  return true;
}

// Squared distance along each row (axis i) to the nearest site, in mm^2; inf without one.
template <class T>
void rows_pass(const T* in, float* out, index_t n_rows, index_t ni, double s, bool sites_nonzero,
               bool border_sites, int n_threads) {
#pragma omp parallel for schedule(static) num_threads(clamp_threads(n_threads))
  for (index_t r = 0; r < n_rows; ++r) {
    const T* a = in + r * ni;
    float* o = out + r * ni;
    // Forward sweep: distance (in voxels) to the last site at or before i.
    double last = border_sites ? -1.0 : -INFINITY;
    for (index_t i = 0; i < ni; ++i) {
      if ((a[i] != T(0)) == sites_nonzero) last = double(i);
      const double d = s * (double(i) - last);
      o[i] = static_cast<float>(d * d);
    }
    double next = border_sites ? double(ni) : INFINITY;
    for (index_t i = ni - 1; i >= 0; --i) {
      if ((a[i] != T(0)) == sites_nonzero) next = double(i);
      const double d = s * (next - double(i));
      o[i] = std::min(o[i], static_cast<float>(d * d));
    }
  }
}

// Envelope pass along a strided axis: for each of n_outer blocks (base outer * outer_stride), the
// ni lines of length n with stride line_stride, i contiguous. Each source row is read in full
// into a float tile whose line stride is odd, so the transposed writes do not all fall into the
// same cache sets (grid sizes are often powers of two). take_sqrt finishes the transform.
inline void lines_pass(float* data, index_t n_outer, index_t outer_stride, index_t n,
                       index_t line_stride, index_t ni, double s, bool border_sites, bool take_sqrt,
                       int n_threads) {
  const index_t ld = n | 1;
#pragma omp parallel num_threads(clamp_threads(n_threads))
  {
    std::vector<float> tile(static_cast<std::size_t>(ld * ni)),
        line_out(static_cast<std::size_t>(n));
    std::vector<index_t> v(static_cast<std::size_t>(n + 3));
    std::vector<double> h(static_cast<std::size_t>(n + 3)), z(static_cast<std::size_t>(n + 3));
#pragma omp for schedule(dynamic, 1)
    for (index_t o = 0; o < n_outer; ++o) {
      float* base = data + o * outer_stride;
      for (index_t p = 0; p < n; ++p) {
        const float* row = base + p * line_stride;
        for (index_t i = 0; i < ni; ++i) tile[static_cast<std::size_t>(i * ld + p)] = row[i];
      }
      for (index_t i = 0; i < ni; ++i) {
        float* f = tile.data() + i * ld;
        bool all_zero = true;
        for (index_t p = 0; p < n; ++p) all_zero &= f[p] == 0.0f;
        if (all_zero) continue;  // background line: already final
        if (envelope(f, line_out.data(), n, s, border_sites, v.data(), h.data(), z.data()))
          std::copy(line_out.begin(), line_out.end(), f);
      }
      for (index_t p = 0; p < n; ++p) {
        float* row = base + p * line_stride;
        if (take_sqrt)
          for (index_t i = 0; i < ni; ++i)
            row[i] = std::sqrt(tile[static_cast<std::size_t>(i * ld + p)]);
        else
          for (index_t i = 0; i < ni; ++i) row[i] = tile[static_cast<std::size_t>(i * ld + p)];
      }
    }
  }
}

}  // namespace edt

// Euclidean distance (mm) from every voxel to the nearest site into `out` (float32): sites are the
// voxels with in == 0 (scipy.ndimage.distance_transform_edt), or in != 0 with sites_nonzero.
// border_sites puts sites all around the grid (the image padded with sites). squared returns the
// squared distance. Voxels with no site anywhere get inf. spacing in array-axis order; a 2D
// image is one plane (nk = 1, three_d false: no border sites above or below it).
template <class T>
void distance_transform(const T* in, float* out, index_t nk, index_t nj, index_t ni,
                        const double spacing[3], bool sites_nonzero, bool border_sites,
                        bool squared, bool three_d, int n_threads) {
  if (nk * nj * ni == 0) return;
  edt::rows_pass(in, out, nk * nj, ni, spacing[2], sites_nonzero, border_sites, n_threads);
  const bool planes = nk > 1 || (three_d && border_sites);
  // Along j inside each plane, then along k across planes; the last pass takes the root.
  edt::lines_pass(out, nk, nj * ni, nj, ni, ni, spacing[1], border_sites, !squared && !planes,
                  n_threads);
  if (planes)
    edt::lines_pass(out, nj, ni, nk, nj * ni, ni, spacing[0], border_sites, !squared, n_threads);
}

}  // namespace medkern
