// Sliding-window inference: patch gathering, weighted accumulation and normalisation.
//
// The arithmetic follows MONAI's sliding_window_inference (monai/inferers/utils.py) so results
// agree to float32 rounding: every product prediction * weight is rounded to float32 and added to
// the output in patch-scan order, the weight sum of a voxel is added in the same order, and the
// output is divided by it at the end. Unlike MONAI, the weight sum is never stored as a full-size
// map: each voxel's sum is rebuilt from the (sorted) patch starts in the final pass, which keeps
// memory near input + output. Spatial data are 3D; 2D callers pass a leading axis of size 1.
#pragma once
#include <array>
#include <cmath>
#include <cstdint>
#include <vector>

#include "medkern/common.hpp"

namespace medkern {

using shape3 = std::array<index_t, 3>;

// Below this many voxels a kernel runs on the calling thread: waking a team costs more.
constexpr index_t kParallelMin = 1 << 15;

// MONAI compute_importance_map: a separable Gaussian with sigma = patch_size * sigma_scale,
// centred between the middle voxels, built as float32 outer products in axis order, then clamped
// from below at max(min(map), 1e-3) so far corners still carry weight; "constant" mode is all ones.
inline void importance_map(const shape3& roi, const std::array<double, 3>& sigma_scale,
                           bool gaussian, float* out) {
  const index_t n = roi[0] * roi[1] * roi[2];
  if (!gaussian) {
    std::fill(out, out + n, 1.0f);
    return;
  }
  std::array<std::vector<float>, 3> g;
  for (int a = 0; a < 3; ++a) {
    g[a].resize(static_cast<std::size_t>(roi[a]));
    // MONAI forms -2 sigma^2 in double (Python floats) and divides the float32 squares by it.
    const double sigma = static_cast<double>(roi[a]) * sigma_scale[a];
    const auto denom = static_cast<float>(-2.0 * sigma * sigma);
    const float first = -static_cast<float>(roi[a] - 1) / 2.0f;
    for (index_t i = 0; i < roi[a]; ++i) {
      const float x = first + static_cast<float>(i);
      g[a][static_cast<std::size_t>(i)] = denom == 0.0f ? 1.0f : std::exp(x * x / denom);
    }
  }
  float lowest = INFINITY;
  for (index_t k = 0; k < roi[0]; ++k)
    for (index_t j = 0; j < roi[1]; ++j) {
      const float gkj = g[0][static_cast<std::size_t>(k)] * g[1][static_cast<std::size_t>(j)];
      float* row = out + (k * roi[1] + j) * roi[2];
      for (index_t i = 0; i < roi[2]; ++i) {
        row[i] = gkj * g[2][static_cast<std::size_t>(i)];
        lowest = std::min(lowest, row[i]);
      }
    }
  const float floor_value = std::max(lowest, 1e-3f);
  for (index_t i = 0; i < n; ++i) out[i] = std::max(out[i], floor_value);
}

// Copies `n_patches` windows of size roi from src (n_batch, channels, shape) into dst
// (n_patches, channels, roi) as float32; patch p reads batch item batch[p] at start[3p..3p+2].
template <class T>
void gather_patches(const T* src, const shape3& shape, index_t channels, const std::int64_t* batch,
                    const std::int64_t* start, index_t n_patches, const shape3& roi, float* dst,
                    int n_threads) {
  const index_t spatial = shape[0] * shape[1] * shape[2];
  const index_t rows = n_patches * channels * roi[0] * roi[1];
#pragma omp parallel for schedule(static) \
    num_threads(clamp_threads(n_threads)) if (rows * roi[2] > kParallelMin)
  for (index_t r = 0; r < rows; ++r) {
    const index_t j = r % roi[1];
    const index_t k = (r / roi[1]) % roi[0];
    const index_t c = (r / (roi[1] * roi[0])) % channels;
    const index_t p = r / (roi[1] * roi[0] * channels);
    const std::int64_t* s = start + 3 * p;
    const T* in = src + (batch[p] * channels + c) * spatial +
                  ((s[0] + k) * shape[1] + (s[1] + j)) * shape[2] + s[2];
    float* o = dst + r * roi[2];
    for (index_t i = 0; i < roi[2]; ++i) o[i] = static_cast<float>(in[i]);
  }
}

// out (n_batch, channels, shape) += pred * weight for each patch, patches in the given order.
// Threads own distinct output rows (z, y) and visit the patches in order, so each voxel's sum is
// formed in patch order whatever the thread count, with one parallel region per batch.
inline void accumulate_patches(float* out, const shape3& shape, index_t channels, const float* pred,
                               const float* weight, const std::int64_t* batch,
                               const std::int64_t* start, index_t n_patches, const shape3& roi,
                               int n_threads) {
  if (n_patches == 0) return;
  const index_t spatial = shape[0] * shape[1] * shape[2];
  index_t z0 = shape[0], z1 = 0, y0 = shape[1], y1 = 0;
  for (index_t p = 0; p < n_patches; ++p) {
    z0 = std::min<index_t>(z0, start[3 * p]);
    z1 = std::max<index_t>(z1, start[3 * p] + roi[0]);
    y0 = std::min<index_t>(y0, start[3 * p + 1]);
    y1 = std::max<index_t>(y1, start[3 * p + 1] + roi[1]);
  }
  const index_t height = y1 - y0, rows = (z1 - z0) * height;
  const index_t work = n_patches * channels * roi[0] * roi[1] * roi[2];
#pragma omp parallel for schedule(static) \
    num_threads(clamp_threads(n_threads)) if (work > kParallelMin)
  for (index_t r = 0; r < rows; ++r) {
    const index_t z = z0 + r / height, y = y0 + r % height;
    for (index_t p = 0; p < n_patches; ++p) {
      const std::int64_t* s = start + 3 * p;
      const index_t k = z - s[0], j = y - s[1];
      if (k < 0 || k >= roi[0] || j < 0 || j >= roi[1]) continue;
      const float* w = weight + (k * roi[1] + j) * roi[2];
      for (index_t c = 0; c < channels; ++c) {
        float* o = out + (batch[p] * channels + c) * spatial + (z * shape[1] + y) * shape[2] + s[2];
        const float* q = pred + (((p * channels + c) * roi[0] + k) * roi[1] + j) * roi[2];
        for (index_t i = 0; i < roi[2]; ++i) {
          const float weighted = q[i] * w[i];
          o[i] += weighted;
        }
      }
    }
  }
}

// For one axis: the patches (index range into the sorted starts) that cover each voxel.
struct Cover {
  std::vector<index_t> first, last;  // half-open [first[v], last[v])
};

inline Cover covering_patches(const std::int64_t* starts, index_t n_starts, index_t size,
                              index_t roi) {
  Cover c;
  c.first.assign(static_cast<std::size_t>(size), 0);
  c.last.assign(static_cast<std::size_t>(size), 0);
  index_t lo = 0, hi = 0;
  for (index_t v = 0; v < size; ++v) {
    while (hi < n_starts && starts[hi] <= v) ++hi;
    while (lo < hi && starts[lo] + roi <= v) ++lo;
    c.first[static_cast<std::size_t>(v)] = lo;
    c.last[static_cast<std::size_t>(v)] = hi;
  }
  return c;
}

// Divides out (n_images, shape) by each voxel's weight sum over the patch grid given by the
// per-axis sorted starts (the grid is their Cartesian product, scanned with the last axis
// fastest, as MONAI's dense_patch_slices). Per output row, the covering patches' weight rows are
// added in that scan order, so every voxel's sum has MONAI's order of additions.
inline void normalize_by_weight_sum(float* out, index_t n_images, const shape3& shape,
                                    const std::array<const std::int64_t*, 3>& starts,
                                    const shape3& n_starts, const float* weight, const shape3& roi,
                                    int n_threads) {
  std::array<Cover, 3> cover;
  for (int a = 0; a < 2; ++a) cover[a] = covering_patches(starts[a], n_starts[a], shape[a], roi[a]);
  const index_t spatial = shape[0] * shape[1] * shape[2];
  const index_t rows = shape[0] * shape[1];
#pragma omp parallel num_threads(clamp_threads(n_threads)) if (spatial > kParallelMin)
  {
    std::vector<float> sum(static_cast<std::size_t>(shape[2]));
#pragma omp for schedule(static)
    for (index_t r = 0; r < rows; ++r) {
      const index_t k = r / shape[1], j = r % shape[1];
      const auto ks = static_cast<std::size_t>(k), js = static_cast<std::size_t>(j);
      std::fill(sum.begin(), sum.end(), 0.0f);
      for (index_t a = cover[0].first[ks]; a < cover[0].last[ks]; ++a)
        for (index_t b = cover[1].first[js]; b < cover[1].last[js]; ++b) {
          const float* w = weight + ((k - starts[0][a]) * roi[1] + (j - starts[1][b])) * roi[2];
          for (index_t c = 0; c < n_starts[2]; ++c) {
            float* s = sum.data() + starts[2][c];
            for (index_t i = 0; i < roi[2]; ++i) s[i] += w[i];
          }
        }
      for (index_t n = 0; n < n_images; ++n) {
        float* o = out + n * spatial + r * shape[2];
        for (index_t i = 0; i < shape[2]; ++i) o[i] /= sum[static_cast<std::size_t>(i)];
      }
    }
  }
}

}  // namespace medkern
