// Host-side launcher of intensity.cu. Pointers are device pointers (from CuPy arrays); the
// launcher runs on the given stream and returns the launch error, if any, as a string.
#pragma once
#include <cstdint>
#include <string>

#include "launch_common.hpp"

namespace medkern::cuda {

template <class T>
std::string affine_intensity(const T* x, float* out, std::int64_t n, double scale, double offset,
                             double lo, double hi, stream_t stream);

}  // namespace medkern::cuda
