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

int device_count();
int runtime_version();

}  // namespace medkern::cuda
