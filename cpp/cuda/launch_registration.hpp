// Host-side launcher of registration.cu. Pointers are device pointers (from CuPy arrays); the
// launcher runs on the given stream and returns the launch error, if any, as a string.
#pragma once
#include <cstdint>
#include <string>

#include "launch_common.hpp"

namespace medkern::cuda {

// Registration metric (kind 0: mean squares, 1: correlation, 2: Mattes MI) over `count` fixed
// samples; value, 12 gradient entries and the valid-sample count land in host `result`.
// `accumulator` is device scratch of bins * bins + 64 doubles, `cache` of 5 * count floats
// (used by MI only).
std::string registration_metric(int kind, const float* fixed, const float* fixed_values,
                                const std::int64_t* indices, std::int64_t count,
                                const std::int64_t fixed_shape[3], const float* moving,
                                const std::int64_t moving_shape[3], const std::uint8_t* moving_mask,
                                const double to_moving[12], int bins, const double ranges[4],
                                double* accumulator, float* cache, double result[14],
                                stream_t stream);

}  // namespace medkern::cuda
