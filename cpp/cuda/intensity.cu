#include <cuda_runtime.h>

#include <cstdint>

#include "cuda_common.cuh"
#include "launch_intensity.hpp"

namespace medkern::cuda {
namespace {

// Same arithmetic as medkern::affine_intensity (cpp/include/medkern/intensity.hpp): double
// coefficients, clamp written so NaN passes through, stored as float.
template <class T>
__global__ void affine_intensity_kernel(const T* __restrict__ x, float* __restrict__ out,
                                        std::int64_t n, double scale, double offset, double lo,
                                        double hi) {
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n;
       i += std::int64_t(gridDim.x) * blockDim.x) {
    double v = scale * static_cast<double>(x[i]) + offset;
    v = v < lo ? lo : v;
    v = v > hi ? hi : v;
    out[i] = static_cast<float>(v);
  }
}

}  // namespace

template <class T>
std::string affine_intensity(const T* x, float* out, std::int64_t n, double scale, double offset,
                             double lo, double hi, stream_t stream) {
  if (n == 0) return {};
  affine_intensity_kernel<T>
      <<<grid_for(n, 256), 256, 0, as_stream(stream)>>>(x, out, n, scale, offset, lo, hi);
  return launch_error();
}

#define MEDKERN_INSTANTIATE(T)                                                                     \
  template std::string affine_intensity<T>(const T*, float*, std::int64_t, double, double, double, \
                                           double, stream_t);
MEDKERN_FOR_EACH_DTYPE(MEDKERN_INSTANTIATE)
#undef MEDKERN_INSTANTIATE

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

int runtime_version() {
  int v = 0;
  cudaRuntimeGetVersion(&v);
  return v;
}

}  // namespace medkern::cuda
