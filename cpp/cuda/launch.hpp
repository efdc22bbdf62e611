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
// Contextual-region layout of a 3D image for CLAHE (tiles = ceil(shape / kernel)).
struct ClaheShape {
  std::int64_t shape[3], kernel[3], tiles[3];
};

template <class T>
std::string clahe_bin_image(const T* x, std::uint16_t* bins, std::int64_t n, double lo, double hi,
                            bool unit_float, int bin_size, stream_t stream);
// hist: n_tiles * nbins scratch counters; maps: n_tiles * nbins grey-level maps.
std::string clahe_tile_maps(const std::uint16_t* bins, const ClaheShape& g, std::int64_t nbins,
                            std::int64_t clip_limit, unsigned int* hist, double* maps,
                            stream_t stream);
// Overwrites each voxel's bin with its result level (0..16383).
std::string clahe_interpolate(std::uint16_t* bins, const ClaheShape& g, std::int64_t nbins,
                              const double* maps, stream_t stream);
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

// Resampling (resample.cu); conventions of cpp/include/medkern/resample.hpp. Shapes are 3D (a 2D
// image has shape[0] == 1). Nearest and label take the elements as unsigned integers of their
// size and fill_bits as the fill's bit pattern; linear and cubic write interp_t<T> and use fill.
template <class T>
std::string resample_warp(int interpolation, const T* x, const std::int64_t shape_in[3], void* out,
                          const std::int64_t shape_out[3], const double m[12], const float* disp,
                          int n_comp, const double* r, double fill, std::uint64_t fill_bits,
                          stream_t stream);
template <class T>
std::string resample_points(int interpolation, const T* x, const std::int64_t shape_in[3], void* out,
                            const double* coords, std::int64_t n_points, int ndim, double fill,
                            std::uint64_t fill_bits, stream_t stream);
// scratch: outer * n_in * inner elements of interp_t<T> when prefilter is set, else unused.
template <class T>
std::string resample_axis_pass(const T* in, void* out, std::int64_t outer, std::int64_t n_in,
                               std::int64_t inner, std::int64_t n_out, const std::int64_t* idx,
                               const void* w, int taps, bool prefilter, void* scratch, stream_t stream);
template <class T>
std::string bspline_coefficients(const T* in, const std::int64_t shape[3], void* out, stream_t stream);
template <class U>
std::string gather_nearest(const U* in, const std::int64_t shape_in[3], U* out,
                           const std::int64_t shape_out[3], const std::int64_t* idx0,
                           const std::int64_t* idx1, const std::int64_t* idx2, std::uint64_t fill_bits,
                           stream_t stream);

int device_count();
int runtime_version();

}  // namespace medkern::cuda
