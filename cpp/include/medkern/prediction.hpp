// Label maps from dense network outputs: channels first, `n` voxels per channel.
//
// One pass over the channels per voxel replaces numpy's argmax along the slowest axis, which
// walks the voxels once per channel with a large stride.
#pragma once
#include <cstdint>

#include "medkern/common.hpp"

namespace medkern {

// The first channel holding the largest value (numpy.argmax along the channel axis, except
// that NaN never wins); with `threshold` set, the channel among those >= threshold, numbered
// from 1, and 0 where no channel reaches it (multi-label sigmoid outputs).
inline void channel_argmax(const float* x, index_t channels, index_t n, bool use_threshold,
                           float threshold, std::uint8_t* labels, int n_threads) {
  const std::uint8_t offset = use_threshold ? 1 : 0;
  constexpr index_t block = 4096;
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

}  // namespace medkern
