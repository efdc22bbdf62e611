// CLAHE, scikit-image definition, on the GPU: the same arithmetic as
// cpp/include/medkern/clahe.hpp, with explicitly rounded operations (__dmul_rn, __fadd_rn, ...)
// so that nvcc's multiply-add contraction cannot change a bit.
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda_common.cuh"
#include "launch_contrast.hpp"

namespace medkern::cuda {
namespace {

constexpr int kGrayLevels = 1 << 14;  // scikit-image's NR_OF_GRAY

// 16-bit level scikit-image's img_as_uint gives a float in [0, 1] (in the input's precision).
template <class T>
__device__ double prequantise(T v, bool unit_float) {
  return static_cast<double>(v);
}
template <>
__device__ double prequantise<float>(float v, bool unit_float) {
  return unit_float ? static_cast<double>(rintf(__fmul_rn(v, 65535.0f))) : static_cast<double>(v);
}
template <>
__device__ double prequantise<double>(double v, bool unit_float) {
  return unit_float ? rint(__dmul_rn(v, 65535.0)) : v;
}

template <class T>
__global__ void bin_image_kernel(const T* __restrict__ x, std::uint16_t* __restrict__ bins,
                                 std::int64_t n, double lo, double hi, bool unit_float,
                                 int bin_size) {
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n;
       i += std::int64_t(gridDim.x) * blockDim.x) {
    int level = 0;
    if (hi > lo) {
      const double u = prequantise(x[i], unit_float);
      const double t = __ddiv_rn(__dsub_rn(u, lo), __dsub_rn(hi, lo));
      // Clamped to the grey range before the conversion (NaN, values outside [lo, hi]): the
      // level indexes the histograms (clahe.hpp ClaheLevels::clamp_level).
      const double y = __dmul_rn(t, double(kGrayLevels - 1));
      level = static_cast<int>(rint(y >= 0.0 ? fmin(y, double(kGrayLevels - 1)) : 0.0));
    }
    bins[i] = static_cast<std::uint16_t>(level / bin_size);
  }
}

// numpy.pad(mode='reflect') seen from the padded side.
__device__ std::int64_t reflect_index(std::int64_t p, std::int64_t s) {
  if (s == 1) return 0;
  const std::int64_t period = 2 * (s - 1);
  p %= period;
  return p < s ? p : period - p;
}

// One block per contextual region: shared-nothing histogram by atomics in the region's slice of
// `hist`, then one thread clips it (scikit-image clip_histogram, step for step) and maps it.
__global__ void tile_maps_kernel(const std::uint16_t* __restrict__ bins, ClaheShape g,
                                 std::int64_t nbins, std::int64_t clip_limit,
                                 unsigned int* __restrict__ hist_all, double* __restrict__ maps) {
  const std::int64_t t = blockIdx.x;
  const std::int64_t t0 = t / (g.tiles[1] * g.tiles[2]), t1 = (t / g.tiles[2]) % g.tiles[1],
                     t2 = t % g.tiles[2];
  unsigned int* hist = hist_all + t * nbins;
  const std::int64_t voxels = g.kernel[0] * g.kernel[1] * g.kernel[2];
  for (std::int64_t v = threadIdx.x; v < voxels; v += blockDim.x) {
    const std::int64_t a = v / (g.kernel[1] * g.kernel[2]), b = (v / g.kernel[2]) % g.kernel[1],
                       c = v % g.kernel[2];
    const std::int64_t k = reflect_index(t0 * g.kernel[0] + a, g.shape[0]);
    const std::int64_t j = reflect_index(t1 * g.kernel[1] + b, g.shape[1]);
    const std::int64_t i = reflect_index(t2 * g.kernel[2] + c, g.shape[2]);
    atomicAdd(&hist[bins[(k * g.shape[1] + j) * g.shape[2] + i]], 1u);
  }
  __syncthreads();
  if (threadIdx.x != 0) return;
  std::int64_t n_excess = 0;
  for (std::int64_t b = 0; b < nbins; ++b)
    if (hist[b] > clip_limit) {
      n_excess += hist[b] - clip_limit;
      hist[b] = static_cast<unsigned int>(clip_limit);
    }
  const std::int64_t bin_incr = n_excess / nbins;
  const std::int64_t upper = clip_limit - bin_incr;
  for (std::int64_t b = 0; b < nbins; ++b)
    if (std::int64_t(hist[b]) < upper) {
      hist[b] += static_cast<unsigned int>(bin_incr);
      n_excess -= bin_incr;
    }
  for (std::int64_t b = 0; b < nbins; ++b)
    if (std::int64_t(hist[b]) >= upper && std::int64_t(hist[b]) < clip_limit) {
      n_excess += std::int64_t(hist[b]) - clip_limit;
      hist[b] = static_cast<unsigned int>(clip_limit);
    }
  while (n_excess > 0) {
    const std::int64_t before = n_excess;
    for (std::int64_t start = 0; start < nbins; ++start) {
      std::int64_t under = 0;
      for (std::int64_t b = 0; b < nbins; ++b) under += std::int64_t(hist[b]) < clip_limit;
      std::int64_t step = under / n_excess;
      if (step < 1) step = 1;
      for (std::int64_t b = start; b < nbins; b += step)
        if (std::int64_t(hist[b]) < clip_limit) {
          ++hist[b];
          --n_excess;
        }
      if (n_excess <= 0) break;
    }
    if (before == n_excess) break;
  }
  const double scale = __ddiv_rn(double(kGrayLevels - 1), double(voxels));
  std::int64_t cum = 0;
  for (std::int64_t b = 0; b < nbins; ++b) {
    cum += hist[b];
    const double v = fmin(__dmul_rn(double(cum), scale), double(kGrayLevels - 1));
    maps[t * nbins + b] = static_cast<double>(static_cast<std::int64_t>(v));
  }
}

struct AxisWeights {
  std::int64_t tile[2];
  double weight[2];
};

__device__ AxisWeights axis_weights(std::int64_t x, std::int64_t kernel, std::int64_t tiles) {
  const std::int64_t p = x + kernel / 2, block = p / kernel;
  const double c = __ddiv_rn(double(p % kernel), double(kernel));
  AxisWeights w;
  w.tile[0] = min(max(block - 1, std::int64_t(0)), tiles - 1);
  w.tile[1] = min(block, tiles - 1);
  w.weight[0] = __dsub_rn(1.0, c);
  w.weight[1] = c;
  return w;
}

// Result level of each voxel, written over its bin: corner terms (map * weight) in double,
// weight = (w_axis2 * w_axis1) * w_axis0, rounded to float and summed in float in corner order.
__global__ void interpolate_kernel(std::uint16_t* __restrict__ bins, ClaheShape g,
                                   std::int64_t nbins, const double* __restrict__ maps,
                                   std::int64_t n) {
  for (std::int64_t idx = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; idx < n;
       idx += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t k = idx / (g.shape[1] * g.shape[2]), j = (idx / g.shape[2]) % g.shape[1],
                       i = idx % g.shape[2];
    const AxisWeights w0 = axis_weights(k, g.kernel[0], g.tiles[0]);
    const AxisWeights w1 = axis_weights(j, g.kernel[1], g.tiles[1]);
    const AxisWeights w2 = axis_weights(i, g.kernel[2], g.tiles[2]);
    const std::int64_t level = bins[idx];
    float acc = 0.0f;
    for (int e0 = 0; e0 < 2; ++e0) {
      if (w0.weight[e0] == 0.0) continue;
      for (int e1 = 0; e1 < 2; ++e1) {
        if (w1.weight[e1] == 0.0) continue;
        const std::int64_t row = (w0.tile[e0] * g.tiles[1] + w1.tile[e1]) * g.tiles[2];
        for (int e2 = 0; e2 < 2; ++e2) {
          const double w = __dmul_rn(__dmul_rn(w2.weight[e2], w1.weight[e1]), w0.weight[e0]);
          const double m = maps[(row + w2.tile[e2]) * nbins + level];
          acc = __fadd_rn(acc, __double2float_rn(__dmul_rn(m, w)));
        }
      }
    }
    bins[idx] = static_cast<std::uint16_t>(static_cast<int>(acc));
  }
}

}  // namespace

template <class T>
std::string clahe_bin_image(const T* x, std::uint16_t* bins, std::int64_t n, double lo, double hi,
                            bool unit_float, int bin_size, stream_t stream) {
  if (n == 0) return {};
  bin_image_kernel<T><<<grid_for(n, 256), 256, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
      x, bins, n, lo, hi, unit_float, bin_size);
  return launch_error();
}

std::string clahe_tile_maps(const std::uint16_t* bins, const ClaheShape& g, std::int64_t nbins,
                            std::int64_t clip_limit, unsigned int* hist, double* maps,
                            stream_t stream) {
  const std::int64_t n_tiles = g.tiles[0] * g.tiles[1] * g.tiles[2];
  auto s = reinterpret_cast<cudaStream_t>(stream);
  cudaMemsetAsync(hist, 0, static_cast<std::size_t>(n_tiles * nbins) * sizeof(unsigned int), s);
  tile_maps_kernel<<<static_cast<unsigned int>(n_tiles), 256, 0, s>>>(bins, g, nbins, clip_limit,
                                                                      hist, maps);
  return launch_error();
}

std::string clahe_interpolate(std::uint16_t* bins, const ClaheShape& g, std::int64_t nbins,
                              const double* maps, stream_t stream) {
  const std::int64_t n = g.shape[0] * g.shape[1] * g.shape[2];
  if (n == 0) return {};
  interpolate_kernel<<<grid_for(n, 256), 256, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
      bins, g, nbins, maps, n);
  return launch_error();
}

#define MEDKERN_INSTANTIATE(T)                                                                    \
  template std::string clahe_bin_image<T>(const T*, std::uint16_t*, std::int64_t, double, double, \
                                          bool, int, stream_t);
MEDKERN_INSTANTIATE(std::uint8_t)
MEDKERN_INSTANTIATE(std::int16_t)
MEDKERN_INSTANTIATE(std::uint16_t)
MEDKERN_INSTANTIATE(std::int32_t)
MEDKERN_INSTANTIATE(float)
MEDKERN_INSTANTIATE(double)
#undef MEDKERN_INSTANTIATE

}  // namespace medkern::cuda
