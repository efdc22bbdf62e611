// Host-side launchers of the CUDA kernels. Pointers are device pointers (from CuPy arrays);
// every launcher runs on the given stream and returns the launch error, if any, as a string.
#pragma once
#include <cstdint>
#include <string>

// Expands X(T) for every dtype medkern::bind::visit_dtype dispatches to (explicit instantiations).
#define MEDKERN_FOR_EACH_DTYPE(X) \
  X(std::uint8_t) X(std::int16_t) X(std::uint16_t) X(std::int32_t) X(float) X(double)

namespace medkern::cuda {

using stream_t = std::uintptr_t;  // a cudaStream_t, passed as CuPy's stream.ptr

template <class T>
std::string affine_intensity(const T* x, float* out, std::int64_t n, double scale, double offset,
                             double lo, double hi, stream_t stream);

// Neighbourhood filters (filters.cu). shape is the (n0, n1, n2) array shape, 2D as (1, ny, nx);
// mode is a medkern::Boundary code.
constexpr int kMaxMedianWindow = 343;  // 7x7x7: the per-thread selection buffer

template <class T>
std::string correlate_axis(const T* in, float* out, const std::int64_t* shape, int axis,
                           const float* w, int taps, int mode, float cval, stream_t stream);
template <class T>
std::string median_filter(const T* in, T* out, const std::int64_t* shape, const int* radius,
                          int mode, stream_t stream);
template <class T>
std::string bilateral_filter(const T* in, float* out, const std::int64_t* shape, const float* wd,
                             const int* radius, float cutoff, float to_bin, float bin_width,
                             float nhiv, stream_t stream);

int device_count();
int runtime_version();

}  // namespace medkern::cuda
