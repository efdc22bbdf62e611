// DICOM stored pixel values -> modality values, one pass over the data: no Python in here.
#pragma once
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "medkern/common.hpp"

namespace medkern {

// Pixel-value pipeline of PS3.3 C.7.6.3 / C.11.1 for n_frames frames of frame_size stored values:
//  1. keep the low bits_stored bits (unsigned) or sign-extend them (signed): the bits above
//     BitsStored are not part of the value (PS3.5 8.1.1);
//  2. MONOCHROME1 (invert): v -> (2^bits_stored - 1) - v unsigned, -1 - v signed, as GDCM does;
//  3. the modality LUT: v * slope[f] + intercept[f] in double, rounded once to Out. With slope 1
//     and an integral intercept the sum is exact in integers and computed so.
// Integer outputs are chosen by the caller so that every result is representable. Stored integers
// are at most 32 bits wide (int32 holds them); each step runs over a cache-sized chunk with its
// branch outside the loop, so the loops vectorise.
template <class In, class Out>
void modality_lut(const In* stored, Out* out, index_t n_frames, index_t frame_size,
                  const double* slope, const double* intercept, int bits_stored, bool is_signed,
                  bool invert, int n_threads) {
  using Acc = std::conditional_t<std::is_integral_v<In>, std::int32_t, double>;
  constexpr index_t kChunk = 4096;
  constexpr int width = static_cast<int>(sizeof(Acc) * 8);
  const bool trim = std::is_integral_v<In> && bits_stored > 0 && bits_stored < width;
  const int shift = trim ? width - bits_stored : 0;
  const std::int64_t max_unsigned =
      (std::int64_t{1} << std::min(bits_stored > 0 ? bits_stored : 31, 31)) - 1;
  const index_t chunks_per_frame = (frame_size + kChunk - 1) / kChunk;
#pragma omp parallel num_threads(clamp_threads(n_threads))
  {
    Acc buf[kChunk];
#pragma omp for schedule(static)
    for (index_t c = 0; c < n_frames * chunks_per_frame; ++c) {
      const index_t f = c / chunks_per_frame;
      const index_t begin = (c % chunks_per_frame) * kChunk;
      const index_t n = std::min(kChunk, frame_size - begin);
      const In* src = stored + f * frame_size + begin;
      Out* dst = out + f * frame_size + begin;
      for (index_t i = 0; i < n; ++i) buf[i] = static_cast<Acc>(src[i]);
      if constexpr (std::is_integral_v<In>) {
        if (trim && is_signed) {
          for (index_t i = 0; i < n; ++i)
            buf[i] = static_cast<Acc>(static_cast<std::uint32_t>(buf[i]) << shift) >> shift;
        } else if (trim) {
          const Acc mask = static_cast<Acc>((std::int64_t{1} << bits_stored) - 1);
          for (index_t i = 0; i < n; ++i) buf[i] &= mask;
        }
        if (invert && is_signed) {
          for (index_t i = 0; i < n; ++i) buf[i] = -1 - buf[i];
        } else if (invert) {
          const Acc top = static_cast<Acc>(max_unsigned);
          for (index_t i = 0; i < n; ++i) buf[i] = top - buf[i];
        }
      }
      const double a = slope[f], b = intercept[f];
      if (std::is_integral_v<In> && std::is_integral_v<Out> && a == 1.0) {
        const Acc offset = static_cast<Acc>(b);
        for (index_t i = 0; i < n; ++i) dst[i] = static_cast<Out>(buf[i] + offset);
      } else {
        for (index_t i = 0; i < n; ++i)
          dst[i] = static_cast<Out>(static_cast<double>(buf[i]) * a + b);
      }
    }
  }
}

}  // namespace medkern
