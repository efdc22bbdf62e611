// Bilateral grid (Chen, Paris & Durand 2007; Paris & Durand 2009): a fast approximation of the
// bilateral filter. Voxels are splatted (multilinear weights) into a grid downsampled in space
// and in intensity, the grid is blurred with a separable kernel, and each voxel reads the result
// back by multilinear interpolation at its own (position, intensity), normalised by the blurred
// weight. The grid is streamed plane by plane along axis 0, so only a few grid planes are held
// at once (memory independent of the number of slices), and every stage runs over disjoint
// outputs in a fixed order: 1 and N threads give identical results.
#pragma once
#include <algorithm>
#include <cstring>
#include <vector>

#include "medkern/common.hpp"

namespace medkern {

// Everything the grid needs, per array axis (axis 0 of a 2D image: one voxel, sampling 1,
// kernel {1}). Kernels have odd length and are applied with zero outside the grid, which is
// exact: a cell beyond the grid holds no voxel.
struct BilateralGridPlan {
  index_t n[3];                  // image shape
  double sampling[3];            // voxels per grid cell along each axis (>= 1)
  float lo;                      // intensity at range cell 0
  float range_sampling;          // intensity units per range cell
  index_t range_cells;           // number of range cells (>= 2)
  std::vector<float> kernel[3];  // spatial blur, in grid cells
  std::vector<float> range_kernel;
};

namespace detail {

// Grid cell below a voxel and the linear weight of the cell above, along one axis.
struct GridAxis {
  std::vector<index_t> cell;
  std::vector<float> frac;
  index_t cells = 0;
  GridAxis(index_t n, double sampling) : cell(n), frac(n) {
    for (index_t i = 0; i < n; ++i) {
      const double u = static_cast<double>(i) / sampling;
      cell[i] = static_cast<index_t>(u);
      frac[i] = static_cast<float>(u - static_cast<double>(cell[i]));
    }
    cells = cell[n - 1] + 2;
  }
};

// Range cell below intensity v and the weight of the cell above; intensities outside
// [lo, lo + (cells - 1) * sampling] are clamped to the grid (only a caller passing a range that
// does not hold the image gets there).
inline void range_cell(float v, float lo, float inv_sampling, index_t cells, index_t& r0,
                       float& f) {
  float r = (v - lo) * inv_sampling;
  const float top = static_cast<float>(cells - 1);
  r = r > 0.0f ? r : 0.0f;  // also NaN
  r = r < top ? r : top;
  r0 = std::min(static_cast<index_t>(r), cells - 2);
  f = r - static_cast<float>(r0);  // 1 at the top cell
}

// (value, weight) of two neighbouring range cells, 4 lanes.
typedef float GridCells __attribute__((vector_size(16)));
inline GridCells load_cells(const float* p) {
  GridCells v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store_cells(float* p, GridCells v) { std::memcpy(p, &v, sizeof v); }

// out[i][c] = sum_t k[t] in[i + t - R][c] over rows 0 <= i + t - R < n (zero beyond), for an
// [n][m] block with row strides ld_in / ld_out. Taps are added in order, so the result does not
// depend on how the caller splits the work.
inline void grid_correlate(const float* in, index_t ld_in, float* out, index_t ld_out, index_t n,
                           index_t m, const std::vector<float>& k) {
  const index_t R = static_cast<index_t>(k.size() / 2);
  if (ld_in == m && ld_out == m) {  // contiguous block: one long loop per tap
    std::fill(out, out + n * m, 0.0f);
    for (index_t t = 0; t <= 2 * R; ++t) {
      const index_t d = t - R, end = std::min(n, n - d) * m;
      const float w = k[static_cast<std::size_t>(t)];
      const float* s = in + d * m;
      for (index_t c = std::max<index_t>(0, -d) * m; c < end; ++c) out[c] += w * s[c];
    }
    return;
  }
  for (index_t i = 0; i < n; ++i) std::fill(out + i * ld_out, out + i * ld_out + m, 0.0f);
  for (index_t t = 0; t <= 2 * R; ++t) {
    const index_t d = t - R;
    const float w = k[static_cast<std::size_t>(t)];
    for (index_t i = std::max<index_t>(0, -d); i < std::min(n, n - d); ++i) {
      const float* s = in + (i + d) * ld_in;
      float* o = out + i * ld_out;
      for (index_t c = 0; c < m; ++c) o[c] += w * s[c];
    }
  }
}

}  // namespace detail

// The filter splits axis 0 into slabs of voxel planes, one per task; a task computes the grid
// planes its slab reads (and the few beyond its edges that the blur needs) on its own, so tasks
// never wait for each other, and a plane comes out the same in every task that computes it.
struct BilateralGridLayout {
  index_t g[3], gr, row_len, plane_len, radius0, slabs;
  // Floats a task holds: 2 planes being splatted, 2 R0 + 1 blurred along axes 1-2 and range for
  // the blur along axis 0, the 2 planes voxels read from, and a row of scratch.
  index_t task_floats() const { return (2 * radius0 + 5) * plane_len + row_len; }
};

inline BilateralGridLayout bilateral_grid_layout(const BilateralGridPlan& p, int n_threads,
                                                 double max_bytes) {
  BilateralGridLayout l;
  for (int a = 0; a < 3; ++a)
    l.g[a] = static_cast<index_t>(static_cast<double>(p.n[a] - 1) / p.sampling[a]) + 2;
  l.gr = p.range_cells;
  l.row_len = l.g[2] * l.gr * 2;  // (value, weight) per cell
  l.plane_len = l.g[1] * l.row_len;
  l.radius0 = static_cast<index_t>(p.kernel[0].size() / 2);
  // Slabs of at least 2 (2 R0 + 2) grid planes keep the work recomputed at their edges small.
  const index_t by_halo = std::max<index_t>(1, l.g[0] / (4 * l.radius0 + 4));
  const double per_task = static_cast<double>(l.task_floats()) * sizeof(float);
  const index_t by_memory = std::max<index_t>(1, static_cast<index_t>(max_bytes / per_task));
  l.slabs = std::min<index_t>({clamp_threads(n_threads), by_halo, by_memory, p.n[0]});
  return l;
}

namespace detail {

// Grid planes [first, ...) and voxel planes [k_begin, k_end) of one slab.
template <class T>
void bilateral_grid_slab(const T* in, float* out, const BilateralGridPlan& p,
                         const BilateralGridLayout& l, const GridAxis& ax0, const GridAxis& ax1,
                         const GridAxis& ax2, index_t k_begin, index_t k_end, float* mem) {
  const index_t n0 = p.n[0], n1 = p.n[1], n2 = p.n[2];
  const index_t g0 = l.g[0], g1 = l.g[1], gr = l.gr, row_len = l.row_len, plane_len = l.plane_len,
                R0 = l.radius0, ring = 2 * R0 + 1;
  const float lo = p.lo, inv_rs = 1.0f / p.range_sampling;
  float* const splat = mem;                    // 2 planes, by grid plane parity
  float* const blurred = mem + 2 * plane_len;  // ring of planes blurred along axes 1, 2, range
  float* const sliced = blurred + ring * plane_len;  // 2 planes blurred along every axis
  float* const scratch = sliced + 2 * plane_len;
  auto S = [&](index_t g) { return splat + (g % 2) * plane_len; };
  auto P = [&](index_t g) { return blurred + (g % ring) * plane_len; };
  auto B = [&](index_t g) { return sliced + (g % 2) * plane_len; };

  const index_t first = std::max<index_t>(0, ax0.cell[k_begin] - R0);
  index_t k = std::lower_bound(ax0.cell.begin(), ax0.cell.end(), first - 1) - ax0.cell.begin();
  index_t opened = first - 1, p_ready = first - 1, b_ready = ax0.cell[k_begin] - 1;
  for (index_t k_out = k_begin; k_out < k_end; ++k_out) {
    while (b_ready < ax0.cell[k_out] + 1) {
      const index_t gb = b_ready + 1;
      while (p_ready < std::min(gb + R0, g0 - 1)) {
        const index_t gp = p_ready + 1;
        // Splat the voxel planes whose lower grid plane is <= gp: plane gp is then complete.
        for (; k < n0 && ax0.cell[k] <= gp; ++k) {
          const index_t gz = ax0.cell[k];
          for (; opened < gz + 1; ++opened)
            std::fill(S(opened + 1), S(opened + 1) + plane_len, 0.0f);
          const float wz[2] = {gz >= first ? 1.0f - ax0.frac[k] : 0.0f, ax0.frac[k]};
          for (index_t j = 0; j < n1; ++j) {
            const index_t gy = ax1.cell[j];
            const float wy[2] = {1.0f - ax1.frac[j], ax1.frac[j]};
            float* rows[4];
            float w[4];
            int n_rows = 0;
            for (int a = 0; a < 2; ++a)
              for (int b = 0; b < 2; ++b)
                if (wz[a] * wy[b] != 0.0f) {
                  rows[n_rows] = S(gz + a) + (gy + b) * row_len;
                  w[n_rows++] = wz[a] * wy[b];
                }
            const T* src = in + (k * n1 + j) * n2;
            for (index_t i = 0; i < n2; ++i) {
              const float v = static_cast<float>(src[i]);
              index_t r0;
              float f;
              range_cell(v, lo, inv_rs, gr, r0, f);
              const float a = 1.0f - f, vv = v - lo;
              const GridCells q = {a * vv, a, f * vv, f};
              const float fx = ax2.frac[i];
              const index_t at = (ax2.cell[i] * gr + r0) * 2;
              for (int t = 0; t < n_rows; ++t) {
                float* c = rows[t] + at;
                store_cells(c, load_cells(c) + (w[t] * (1.0f - fx)) * q);
                store_cells(c + gr * 2, load_cells(c + gr * 2) + (w[t] * fx) * q);
              }
            }
          }
        }
        for (; opened < gp + 1; ++opened)  // planes no voxel reaches (none when sampling >= 1)
          std::fill(S(opened + 1), S(opened + 1) + plane_len, 0.0f);
        // Blur plane gp along the range axis and axis 2 in place, then along axis 1 into P.
        float* pl = S(gp);
        for (index_t gy = 0; gy < g1; ++gy) {
          float* row = pl + gy * row_len;
          for (index_t gx = 0; gx < l.g[2]; ++gx)
            grid_correlate(row + gx * gr * 2, 2, scratch + gx * gr * 2, 2, gr, 2, p.range_kernel);
          grid_correlate(scratch, gr * 2, row, gr * 2, l.g[2], gr * 2, p.kernel[2]);
        }
        grid_correlate(pl, row_len, P(gp), row_len, g1, row_len, p.kernel[1]);
        p_ready = gp;
      }
      // Blur along axis 0: plane gb from planes gb - R0 .. gb + R0.
      float* dst = B(gb);
      std::fill(dst, dst + plane_len, 0.0f);
      for (index_t t = 0; t <= 2 * R0; ++t) {
        const index_t g = gb + t - R0;
        if (g < 0 || g >= g0) continue;
        const float w = p.kernel[0][static_cast<std::size_t>(t)];
        const float* src = P(g);
        for (index_t c = 0; c < plane_len; ++c) dst[c] += w * src[c];
      }
      b_ready = gb;
    }
    // Slice voxel plane k_out from blurred planes gz and gz + 1.
    const index_t gz = ax0.cell[k_out];
    const float fz = ax0.frac[k_out];
    for (index_t j = 0; j < n1; ++j) {
      const index_t gy = ax1.cell[j];
      const float fy = ax1.frac[j];
      const float* rows[4] = {B(gz) + gy * row_len, B(gz) + (gy + 1) * row_len,
                              B(gz + 1) + gy * row_len, B(gz + 1) + (gy + 1) * row_len};
      const float wr[4] = {(1.0f - fz) * (1.0f - fy), (1.0f - fz) * fy, fz * (1.0f - fy), fz * fy};
      const T* src = in + (k_out * n1 + j) * n2;
      float* o = out + (k_out * n1 + j) * n2;
      for (index_t i = 0; i < n2; ++i) {
        const float v = static_cast<float>(src[i]);
        index_t r0;
        float f;
        range_cell(v, lo, inv_rs, gr, r0, f);
        const index_t at = (ax2.cell[i] * gr + r0) * 2;
        const float fx = ax2.frac[i];
        GridCells acc = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int q = 0; q < 4; ++q) {
          const float* c = rows[q] + at;
          acc += (wr[q] * (1.0f - fx)) * load_cells(c) + (wr[q] * fx) * load_cells(c + gr * 2);
        }
        const float num = (1.0f - f) * acc[0] + f * acc[2];
        const float den = (1.0f - f) * acc[1] + f * acc[3];
        // The voxel's own splat keeps den > 0; the guard only keeps underflow from a NaN.
        o[i] = den > 0.0f ? lo + num / den : v;
      }
    }
  }
}

}  // namespace detail

// out[p] = lo + sum_q w(p, q) (x_q - lo) / sum_q w(p, q), w the grid's splat-blur-slice weight.
// Holds layout.slabs * task_floats() floats of grid at once (bilateral_grid_layout).
template <class T>
void bilateral_grid(const T* in, float* out, const BilateralGridPlan& p,
                    const BilateralGridLayout& l, int n_threads) {
  const detail::GridAxis ax0(p.n[0], p.sampling[0]), ax1(p.n[1], p.sampling[1]),
      ax2(p.n[2], p.sampling[2]);
  const index_t per_task = l.task_floats();
  std::vector<float> mem(static_cast<std::size_t>(l.slabs * per_task));
#pragma omp parallel for schedule(static, 1) num_threads(clamp_threads(n_threads))
  for (index_t s = 0; s < l.slabs; ++s) {
    const index_t k_begin = p.n[0] * s / l.slabs, k_end = p.n[0] * (s + 1) / l.slabs;
    detail::bilateral_grid_slab(in, out, p, l, ax0, ax1, ax2, k_begin, k_end,
                                mem.data() + s * per_task);
  }
}

}  // namespace medkern
