// Dense network outputs, channels first with `n` voxels per channel: activations in place and
// label maps. Voxels are processed in blocks, channel by channel inside a block, so every read
// is contiguous and the loops vectorise; numpy would sweep the whole volume once per operation.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "medkern/common.hpp"

namespace medkern {

constexpr index_t kVoxelBlock = 4096;

// exp(x) for x <= 0 (Cephes expf: x = k ln2 + r, |r| <= ln2 / 2, a degree-6 polynomial in r,
// then 2^k from the exponent bits), within 2 ulp of the exact value, 0 below the normal range,
// NaN for NaN. Branch-free and without library calls, so a loop over it vectorises.
inline float exp_nonpositive(float x) {
  // Clamped so the conversion below is defined for -inf and NaN (their results come from x).
  const float scaled = x * 1.44269504088896341f + 0.5f;
  const float t = scaled > -130.0f ? scaled : -130.0f;
  const auto whole = static_cast<std::int32_t>(t);  // truncation; floor for negative t below
  const float k = static_cast<float>(whole) - (static_cast<float>(whole) > t ? 1.0f : 0.0f);
  const float r = (x - k * 0.693359375f) + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const std::int32_t bits = (std::max(static_cast<std::int32_t>(k), -126) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return x < -87.33654f ? 0.0f : p * scale;
}

// Softmax over the channels, in place: exp(x - max) / sum, the max subtracted for range.
inline void softmax_channels(float* x, index_t channels, index_t n, int n_threads) {
  const index_t n_blocks = (n + kVoxelBlock - 1) / kVoxelBlock;
#pragma omp parallel for schedule(static) num_threads(clamp_threads(n_threads)) if (n > (1 << 16))
  for (index_t b = 0; b < n_blocks; ++b) {
    const index_t v0 = b * kVoxelBlock, len = std::min(kVoxelBlock, n - v0);
    float top[kVoxelBlock], sum[kVoxelBlock];
    std::copy(x + v0, x + v0 + len, top);
    for (index_t c = 1; c < channels; ++c) {
      const float* xc = x + c * n + v0;
      for (index_t v = 0; v < len; ++v) top[v] = xc[v] > top[v] ? xc[v] : top[v];
    }
    std::fill(sum, sum + len, 0.0f);
    for (index_t c = 0; c < channels; ++c) {
      float* xc = x + c * n + v0;
      for (index_t v = 0; v < len; ++v) {
        xc[v] = exp_nonpositive(xc[v] - top[v]);
        sum[v] += xc[v];
      }
    }
    for (index_t c = 0; c < channels; ++c) {
      float* xc = x + c * n + v0;
      for (index_t v = 0; v < len; ++v) xc[v] /= sum[v];
    }
  }
}

// Logistic sigmoid in place, from exp(-|x|) so that neither tail overflows.
inline void sigmoid(float* x, index_t n, int n_threads) {
#pragma omp parallel for schedule(static) num_threads(clamp_threads(n_threads)) if (n > (1 << 16))
  for (index_t v = 0; v < n; ++v) {
    const float e = exp_nonpositive(-std::fabs(x[v]));
    x[v] = (x[v] >= 0.0f ? 1.0f : e) / (1.0f + e);
  }
}

// The first channel holding the largest value (numpy.argmax along the channel axis, except
// that NaN never wins); with `threshold` set, the channel among those >= threshold, numbered
// from 1, and 0 where no channel reaches it (multi-label sigmoid outputs).
inline void channel_argmax(const float* x, index_t channels, index_t n, bool use_threshold,
                           float threshold, std::uint8_t* labels, int n_threads) {
  const std::uint8_t offset = use_threshold ? 1 : 0;
  constexpr index_t block = kVoxelBlock;
  const index_t n_blocks = (n + block - 1) / block;
#pragma omp parallel for schedule(static) num_threads(clamp_threads(n_threads)) if (n > (1 << 16))
  for (index_t b = 0; b < n_blocks; ++b) {
    const index_t v0 = b * block, v1 = v0 + block < n ? v0 + block : n;
    float best[block];
    // Channel by channel over a block keeps every read contiguous and the loop vectorisable.
    for (index_t v = v0; v < v1; ++v) {
      const float p = x[v];
      const bool ok = use_threshold ? p >= threshold : p == p;
      best[v - v0] = ok ? p : -INFINITY;
      labels[v] = ok ? offset : 0;
    }
    for (index_t c = 1; c < channels; ++c) {
      const float* xc = x + c * n;
      const auto id = static_cast<std::uint8_t>(c + offset);
      for (index_t v = v0; v < v1; ++v) {
        const float p = xc[v];
        const bool wins = p > best[v - v0] && (!use_threshold || p >= threshold);
        best[v - v0] = wins ? p : best[v - v0];
        labels[v] = wins ? id : labels[v];
      }
    }
  }
}

// A prediction's vector image, channels last, written in one pass: out[v][c] = planes[c - first][v]
// for c >= first, where first = 1 with `complement` and 0 without; with `complement`, channel 0
// is 1 minus the other channels summed in channel order (after softmax the channels sum to one,
// and so do they after a linear resampling, whose weights sum to one: the first one needs no
// resampling of its own).
inline void interleave_channels(const float* const* planes, index_t channels, bool complement,
                                index_t n, float* out, int n_threads) {
  const index_t first = complement ? 1 : 0;
  const index_t n_blocks = (n + kVoxelBlock - 1) / kVoxelBlock;
#pragma omp parallel for schedule(static) num_threads(clamp_threads(n_threads)) if (n > (1 << 16))
  for (index_t b = 0; b < n_blocks; ++b) {
    const index_t v0 = b * kVoxelBlock, v1 = std::min(n, v0 + kVoxelBlock);
    if (complement && channels == 2) {  // the common case, in a loop the compiler vectorises
      const float* p = planes[0];
      for (index_t v = v0; v < v1; ++v) {
        out[2 * v] = 1.0f - p[v];
        out[2 * v + 1] = p[v];
      }
      continue;
    }
    for (index_t v = v0; v < v1; ++v) {
      float* o = out + v * channels;
      float others = 0.0f;
      for (index_t c = first; c < channels; ++c) {
        const float p = planes[c - first][v];
        o[c] = p;
        others = c == first ? p : others + p;
      }
      if (complement) o[0] = 1.0f - others;
    }
  }
}

// Per component c in 1..n of `components` (over a box of a label map; 0 is background): its voxel
// count and the sum over its voxels, in raster order and in double (numpy.bincount's weighted
// sums), of each voxel's probability in its own label's channel, clamp(label - first_channel, 0,
// channels - 1). `prob` points at the box's first voxel of a channels-last array with element
// strides `stride` (k, j, i, channel). One pass and no temporaries: post-processing runs right
// after the network, where every fresh temporary costs its page faults.
template <class L>
void component_probability_sums(const std::int32_t* components, const L* labels,
                                const index_t shape[3], const float* prob, const index_t stride[4],
                                index_t channels, index_t first_channel, index_t n,
                                std::int64_t* counts, double* sums) {
  index_t v = 0;
  for (index_t k = 0; k < shape[0]; ++k)
    for (index_t j = 0; j < shape[1]; ++j)
      for (index_t i = 0; i < shape[2]; ++i, ++v) {
        const std::int32_t c = components[v];
        if (c <= 0 || c > n) continue;
        const index_t channel =
            std::clamp(static_cast<index_t>(labels[v]) - first_channel, index_t{0}, channels - 1);
        ++counts[c];
        sums[c] += prob[k * stride[0] + j * stride[1] + i * stride[2] + channel * stride[3]];
      }
}

}  // namespace medkern
