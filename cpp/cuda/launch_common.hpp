// What every launcher header shares. Plain C++ (no CUDA headers), so the binding files that
// include it compile with the host compiler.
#pragma once
#include <cstdint>

namespace medkern::cuda {

using stream_t = std::uintptr_t;  // a cudaStream_t, passed as CuPy's stream.ptr

// Device queries of the module itself (defined in intensity.cu).
int device_count();
int runtime_version();

}  // namespace medkern::cuda
