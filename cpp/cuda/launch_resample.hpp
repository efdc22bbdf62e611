// Host-side launchers of resample.cu; conventions of cpp/include/medkern/resample.hpp. Pointers
// are device pointers (from CuPy arrays); every launcher runs on the given stream and returns the
// launch error, if any, as a string. Shapes are 3D (a 2D image has shape[0] == 1). Nearest and
// label take the elements as unsigned integers of their size and fill_bits as the fill's bit
// pattern; linear and cubic write interp_t<T> and use fill.
#pragma once
#include <cstdint>
#include <string>

#include "launch_common.hpp"

namespace medkern::cuda {

template <class T>
std::string resample_warp(int interpolation, const T* x, const std::int64_t shape_in[3], void* out,
                          const std::int64_t shape_out[3], const double m[12], const float* disp,
                          int n_comp, const double* r, double fill, std::uint64_t fill_bits,
                          stream_t stream);
template <class T>
std::string resample_points(int interpolation, const T* x, const std::int64_t shape_in[3],
                            void* out, const double* coords, std::int64_t n_points, int ndim,
                            double fill, std::uint64_t fill_bits, stream_t stream);
// scratch: outer * n_in * inner elements of interp_t<T> when prefilter is set, else unused.
template <class T>
std::string resample_axis_pass(const T* in, void* out, std::int64_t outer, std::int64_t n_in,
                               std::int64_t inner, std::int64_t n_out, const std::int64_t* idx,
                               const void* w, int taps, bool prefilter, void* scratch,
                               stream_t stream);
template <class T>
std::string bspline_coefficients(const T* in, const std::int64_t shape[3], void* out,
                                 stream_t stream);
template <class U>
std::string gather_nearest(const U* in, const std::int64_t shape_in[3], U* out,
                           const std::int64_t shape_out[3], const std::int64_t* idx0,
                           const std::int64_t* idx1, const std::int64_t* idx2,
                           std::uint64_t fill_bits, stream_t stream);

}  // namespace medkern::cuda
