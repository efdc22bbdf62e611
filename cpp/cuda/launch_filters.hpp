// Host-side launchers of the neighbourhood filters (filters.cu). Pointers are device pointers
// (from CuPy arrays); every launcher runs on the given stream and returns the launch error, if
// any, as a string. shape is the (n0, n1, n2) array shape, 2D as (1, ny, nx); mode is a
// medkern::Boundary code.
#pragma once
#include <cstdint>
#include <string>

#include "launch_common.hpp"

namespace medkern::cuda {

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

}  // namespace medkern::cuda
