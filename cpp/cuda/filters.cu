// CUDA peers of the neighbourhood filters in cpp/include/medkern/{filters,median,bilateral}.hpp:
// same boundary rules (boundary.hpp), same kernels and range-weight definition, one thread per
// output voxel.
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda_common.cuh"
#include "launch_filters.hpp"
#include "medkern/boundary.hpp"

namespace medkern::cuda {
namespace {

using i64 = std::int64_t;

struct Dims {
  i64 n0, n1, n2;
};

__device__ inline bool voxel_of(i64 v, const Dims& d, i64& k, i64& j, i64& i) {
  if (v >= d.n0 * d.n1 * d.n2) return false;
  i = v % d.n2;
  j = (v / d.n2) % d.n1;
  k = v / (d.n1 * d.n2);
  return true;
}

// out = sum_t w[t] * in[position + (t - r) along axis], out-of-image samples by the boundary rule.
template <class T>
__global__ void correlate_axis_kernel(const T* __restrict__ in, float* __restrict__ out, Dims d,
                                      int axis, const float* __restrict__ w, int taps, int mode,
                                      float cval) {
  i64 k, j, i;
  const i64 v = blockIdx.x * i64(blockDim.x) + threadIdx.x;
  if (!voxel_of(v, d, k, j, i)) return;
  const i64 n[3] = {d.n0, d.n1, d.n2};
  const i64 stride[3] = {d.n1 * d.n2, d.n2, 1};
  const i64 pos[3] = {k, j, i};
  const i64 base = v - pos[axis] * stride[axis];
  const int r = taps / 2;
  float acc = 0.0f;
  for (int t = 0; t < taps; ++t) {
    const i64 q = boundary_index(pos[axis] + t - r, n[axis], static_cast<Boundary>(mode));
    acc += w[t] * (q < 0 ? cval : static_cast<float>(in[base + q * stride[axis]]));
  }
  out[v] = acc;
}

// Median of the box by partial selection sort in a per-thread buffer (n <= kMaxMedianWindow).
template <class T>
__global__ void median_kernel(const T* __restrict__ in, T* __restrict__ out, Dims d, int r0, int r1,
                              int r2, int mode) {
  i64 k, j, i;
  const i64 v = blockIdx.x * i64(blockDim.x) + threadIdx.x;
  if (!voxel_of(v, d, k, j, i)) return;
  T buf[kMaxMedianWindow];
  int n = 0;
  const Boundary b = static_cast<Boundary>(mode);
  for (int dk = -r0; dk <= r0; ++dk) {
    const i64 kk = boundary_index(k + dk, d.n0, b);
    for (int dj = -r1; dj <= r1; ++dj) {
      const i64 jj = boundary_index(j + dj, d.n1, b);
      for (int di = -r2; di <= r2; ++di) {
        const i64 ii = boundary_index(i + di, d.n2, b);
        buf[n++] = (kk < 0 || jj < 0 || ii < 0) ? T(0) : in[(kk * d.n1 + jj) * d.n2 + ii];
      }
    }
  }
  const int half = n / 2;
  for (int a = 0; a <= half; ++a) {
    int m = a;
    for (int c = a + 1; c < n; ++c)
      if (buf[c] < buf[m]) m = c;
    const T tmp = buf[a];
    buf[a] = buf[m];
    buf[m] = tmp;
  }
  out[v] = buf[half];
}

// Bilateral filter with ITK's weights (domain weights wd precomputed and normalised on the host,
// range Gaussian evaluated at the left edge of its 100-sample table bin, zero beyond the cutoff),
// nearest-sample boundary.
template <class T>
__global__ void bilateral_kernel(const T* __restrict__ in, float* __restrict__ out, Dims d,
                                 const float* __restrict__ wd, int r0, int r1, int r2, float cutoff,
                                 float to_bin, float bin_width, float nhiv) {
  i64 k, j, i;
  const i64 v = blockIdx.x * i64(blockDim.x) + threadIdx.x;
  if (!voxel_of(v, d, k, j, i)) return;
  const float c = static_cast<float>(in[v]);
  float num = 0.0f, den = 0.0f;
  int q = 0;
  for (int dk = -r0; dk <= r0; ++dk) {
    const i64 kk = boundary_index(k + dk, d.n0, Boundary::nearest);
    for (int dj = -r1; dj <= r1; ++dj) {
      const i64 jj = boundary_index(j + dj, d.n1, Boundary::nearest);
      for (int di = -r2; di <= r2; ++di, ++q) {
        const i64 ii = boundary_index(i + di, d.n2, Boundary::nearest);
        const float x = static_cast<float>(in[(kk * d.n1 + jj) * d.n2 + ii]);
        const float dist = fabsf(x - c);
        if (dist < cutoff) {
          const float at = floorf(dist * to_bin) * bin_width;
          const float w = wd[q] * expf(nhiv * at * at);
          num += w * x;
          den += w;
        }
      }
    }
  }
  out[v] = num / den;
}

Dims dims_of(const std::int64_t* shape) { return {shape[0], shape[1], shape[2]}; }

int grid_for(const Dims& d, int block) {
  return static_cast<int>((d.n0 * d.n1 * d.n2 + block - 1) / block);
}

}  // namespace

template <class T>
std::string correlate_axis(const T* in, float* out, const std::int64_t* shape, int axis,
                           const float* w, int taps, int mode, float cval, stream_t stream) {
  const Dims d = dims_of(shape);
  if (d.n0 * d.n1 * d.n2 == 0) return {};
  correlate_axis_kernel<T><<<grid_for(d, 256), 256, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
      in, out, d, axis, w, taps, mode, cval);
  return launch_error();
}

template <class T>
std::string median_filter(const T* in, T* out, const std::int64_t* shape, const int* radius,
                          int mode, stream_t stream) {
  const Dims d = dims_of(shape);
  if ((2 * radius[0] + 1) * (2 * radius[1] + 1) * (2 * radius[2] + 1) > kMaxMedianWindow)
    return "median window larger than " + std::to_string(kMaxMedianWindow) + " voxels";
  if (d.n0 * d.n1 * d.n2 == 0) return {};
  median_kernel<T><<<grid_for(d, 128), 128, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
      in, out, d, radius[0], radius[1], radius[2], mode);
  return launch_error();
}

template <class T>
std::string bilateral_filter(const T* in, float* out, const std::int64_t* shape, const float* wd,
                             const int* radius, float cutoff, float to_bin, float bin_width,
                             float nhiv, stream_t stream) {
  const Dims d = dims_of(shape);
  if (d.n0 * d.n1 * d.n2 == 0) return {};
  bilateral_kernel<T><<<grid_for(d, 128), 128, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
      in, out, d, wd, radius[0], radius[1], radius[2], cutoff, to_bin, bin_width, nhiv);
  return launch_error();
}

#define MEDKERN_INSTANTIATE(T)                                                                     \
  template std::string correlate_axis<T>(const T*, float*, const std::int64_t*, int, const float*, \
                                         int, int, float, stream_t);                               \
  template std::string median_filter<T>(const T*, T*, const std::int64_t*, const int*, int,        \
                                        stream_t);                                                 \
  template std::string bilateral_filter<T>(const T*, float*, const std::int64_t*, const float*,    \
                                           const int*, float, float, float, float, stream_t);
MEDKERN_FOR_EACH_DTYPE(MEDKERN_INSTANTIATE)
#undef MEDKERN_INSTANTIATE

}  // namespace medkern::cuda
