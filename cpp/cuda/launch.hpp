// Host-side launchers of the CUDA kernels. Pointers are device pointers (from CuPy arrays);
// every launcher runs on the given stream and returns the launch error, if any, as a string.
#pragma once
#include <cstdint>
#include <string>

namespace medkern::cuda {

using stream_t = std::uintptr_t;  // a cudaStream_t, passed as CuPy's stream.ptr

template <class T>
std::string affine_intensity(const T* x, float* out, std::int64_t n, double scale, double offset,
                             double lo, double hi, stream_t stream);

int device_count();
int runtime_version();

}  // namespace medkern::cuda
