// Host-side launchers of clahe.cu. Pointers are device pointers (from CuPy arrays); every
// launcher runs on the given stream and returns the launch error, if any, as a string.
#pragma once
#include <cstdint>
#include <string>

#include "launch_common.hpp"

namespace medkern::cuda {

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

}  // namespace medkern::cuda
