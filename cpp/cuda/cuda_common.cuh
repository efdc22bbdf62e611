// Launch helpers shared by the .cu files: one launch-status convention and one grid rule.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "launch_common.hpp"

// Expands X(T) for every dtype medkern::bind::visit_dtype dispatches to (explicit instantiations).
#define MEDKERN_FOR_EACH_DTYPE(X) \
  X(std::uint8_t) X(std::int16_t) X(std::uint16_t) X(std::int32_t) X(float) X(double)

namespace medkern::cuda {

// What every launcher returns: "" after a good launch, else CUDA's message for the bindings to
// raise.
inline std::string launch_error() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? std::string() : std::string(cudaGetErrorString(err));
}

// Blocks for a grid-stride loop over n items; capped so the grid stays within every
// architecture's limit (the kernels loop over what the grid does not cover).
inline int grid_for(std::int64_t n, int block) {
  const std::int64_t want = (n + block - 1) / block;
  constexpr std::int64_t kMaxBlocks = 65535 * 8;
  return static_cast<int>(want < 1 ? 1 : (want < kMaxBlocks ? want : kMaxBlocks));
}

inline cudaStream_t as_stream(stream_t s) { return reinterpret_cast<cudaStream_t>(s); }

}  // namespace medkern::cuda
