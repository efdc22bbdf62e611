// CUDA resampling kernels. The point samplers, boundary rules and B-spline prefilter are the
// host/device functions of cpp/include/medkern/resample.hpp, so GPU and CPU share the arithmetic;
// only the loops over voxels differ (one thread per output element, no textures).
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "cuda_common.cuh"
#include "launch_resample.hpp"
#include "medkern/resample.hpp"

namespace medkern::cuda {
namespace {

constexpr int kThreads = 256;

struct Mat34 {
  double m[12];
};
struct Mat3 {
  double r[9];
};

// Same map as medkern::warp: c = M (k, j, i, 1) + R u[k][j][i].
template <class S>
__global__ void warp_kernel(S sampler, typename S::value_type* out, std::int64_t m0,
                            std::int64_t m1, std::int64_t m2, Mat34 mat, const float* disp,
                            int n_comp, Mat3 rmat) {
  const std::int64_t total = m0 * m1 * m2;
  for (std::int64_t v = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; v < total;
       v += std::int64_t(gridDim.x) * blockDim.x) {
    const double i = static_cast<double>(v % m2), j = static_cast<double>((v / m2) % m1),
                 k = static_cast<double>(v / (m1 * m2));
    const double* m = mat.m;
    double c[3] = {m[0] * k + m[1] * j + m[3] + m[2] * i, m[4] * k + m[5] * j + m[7] + m[6] * i,
                   m[8] * k + m[9] * j + m[11] + m[10] * i};
    if (disp) {
      const float* u = disp + v * n_comp;
      for (int a = 0; a < 3; ++a)
        for (int q = 0; q < n_comp; ++q) c[a] += rmat.r[a * n_comp + q] * u[q];
    }
    out[v] = sampler(c[0], c[1], c[2]);
  }
}

template <class S>
__global__ void points_kernel(S sampler, typename S::value_type* out, const double* coords,
                              std::int64_t n_points, int ndim) {
  for (std::int64_t p = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; p < n_points;
       p += std::int64_t(gridDim.x) * blockDim.x) {
    const double c0 = ndim == 3 ? coords[p] : 0.0;
    const double* c = coords + (ndim == 3 ? n_points : 0);
    out[p] = sampler(c0, c[p], c[n_points + p]);
  }
}

template <class T, class A>
__global__ void convert_kernel(const T* in, A* out, std::int64_t n) {
  for (std::int64_t v = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; v < n;
       v += std::int64_t(gridDim.x) * blockDim.x)
    out[v] = static_cast<A>(in[v]);
}

// One thread per line along the middle axis of [outer][n][inner]: neighbouring threads take
// neighbouring lanes, so every step of the recursion is a coalesced access.
template <class A>
__global__ void prefilter_kernel(A* data, std::int64_t outer, std::int64_t n, std::int64_t inner) {
  const std::int64_t lines = outer * inner;
  for (std::int64_t l = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; l < lines;
       l += std::int64_t(gridDim.x) * blockDim.x) {
    double init = 0;
    medkern::bspline_prefilter_lines(data + (l / inner) * n * inner + l % inner, n, inner, 1,
                                     &init);
  }
}

// out[o][m][b] = sum_t w[m][t] in[o][idx[m][t]][b], as medkern::resample_axis_pass.
template <class S, class A>
__global__ void axis_pass_kernel(const S* in, A* out, std::int64_t outer, std::int64_t n_in,
                                 std::int64_t inner, std::int64_t n_out, const std::int64_t* idx,
                                 const A* w, int taps) {
  const std::int64_t total = outer * n_out * inner;
  for (std::int64_t v = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; v < total;
       v += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t b = v % inner, m = (v / inner) % n_out, o = v / (inner * n_out);
    const S* src = in + o * n_in * inner + b;
    A acc = 0;
    for (int t = 0; t < taps; ++t)
      acc += w[m * taps + t] * static_cast<A>(src[idx[m * taps + t] * inner]);
    out[v] = acc;
  }
}

template <class U>
__global__ void gather_kernel(const U* in, std::int64_t n1, std::int64_t n2, U* out,
                              std::int64_t m0, std::int64_t m1, std::int64_t m2,
                              const std::int64_t* idx0, const std::int64_t* idx1,
                              const std::int64_t* idx2, U fill) {
  const std::int64_t total = m0 * m1 * m2;
  for (std::int64_t v = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; v < total;
       v += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t i = idx2[v % m2], j = idx1[(v / m2) % m1], k = idx0[v / (m1 * m2)];
    out[v] = (i < 0 || j < 0 || k < 0) ? fill : in[(k * n1 + j) * n2 + i];
  }
}

// Runs body(sampler) with the sampler of `interpolation` over x (bits for nearest and label).
template <class T, class Body>
std::string with_sampler(int interpolation, const T* x, const std::int64_t n[3], double fill,
                         std::uint64_t fill_bits, Body&& body) {
  const index_t shape[3] = {n[0], n[1], n[2]};
  using A = medkern::interp_t<T>;
  switch (static_cast<Interpolation>(interpolation)) {
    case Interpolation::nearest:
    case Interpolation::label:
      if constexpr (std::is_unsigned_v<T>) {
        const T f = static_cast<T>(fill_bits);
        if (static_cast<Interpolation>(interpolation) == Interpolation::nearest)
          return body(NearestSampler<T>{x, {shape[0], shape[1], shape[2]}, f});
        return body(LabelSampler<T>{x, {shape[0], shape[1], shape[2]}, f});
      }
      return "nearest and label sampling take the elements as unsigned integers";
    case Interpolation::linear:
      return body(LinearSampler<T, A>{x, {shape[0], shape[1], shape[2]}, static_cast<A>(fill)});
    case Interpolation::cubic:
      if constexpr (std::is_floating_point_v<T>)
        return body(CubicSampler<T>{x, {shape[0], shape[1], shape[2]}, static_cast<T>(fill)});
      return "cubic sampling takes B-spline coefficients (float32 or float64)";
  }
  return "unknown interpolation";
}

}  // namespace

template <class T>
std::string resample_warp(int interpolation, const T* x, const std::int64_t shape_in[3], void* out,
                          const std::int64_t shape_out[3], const double m[12], const float* disp,
                          int n_comp, const double* r, double fill, std::uint64_t fill_bits,
                          stream_t stream) {
  Mat34 mat;
  for (int q = 0; q < 12; ++q) mat.m[q] = m[q];
  Mat3 rmat{};
  for (int q = 0; q < 3 * n_comp && disp; ++q) rmat.r[q] = r[q];
  const std::int64_t total = shape_out[0] * shape_out[1] * shape_out[2];
  return with_sampler(interpolation, x, shape_in, fill, fill_bits, [&](auto sampler) {
    using V = typename decltype(sampler)::value_type;
    warp_kernel<<<grid_for(total, kThreads), kThreads, 0, as_stream(stream)>>>(
        sampler, static_cast<V*>(out), shape_out[0], shape_out[1], shape_out[2], mat, disp, n_comp,
        rmat);
    return launch_error();
  });
}

template <class T>
std::string resample_points(int interpolation, const T* x, const std::int64_t shape_in[3],
                            void* out, const double* coords, std::int64_t n_points, int ndim,
                            double fill, std::uint64_t fill_bits, stream_t stream) {
  if (n_points == 0) return {};
  return with_sampler(interpolation, x, shape_in, fill, fill_bits, [&](auto sampler) {
    using V = typename decltype(sampler)::value_type;
    points_kernel<<<grid_for(n_points, kThreads), kThreads, 0, as_stream(stream)>>>(
        sampler, static_cast<V*>(out), coords, n_points, ndim);
    return launch_error();
  });
}

template <class T>
std::string resample_axis_pass(const T* in, void* out, std::int64_t outer, std::int64_t n_in,
                               std::int64_t inner, std::int64_t n_out, const std::int64_t* idx,
                               const void* w, int taps, bool prefilter, void* scratch,
                               stream_t stream) {
  using A = medkern::interp_t<T>;
  const cudaStream_t s = as_stream(stream);
  const A* wa = static_cast<const A*>(w);
  A* dst = static_cast<A*>(out);
  const std::int64_t total = outer * n_out * inner;
  if (prefilter) {
    A* coef = static_cast<A*>(scratch);
    const std::int64_t n = outer * n_in * inner;
    convert_kernel<<<grid_for(n, kThreads), kThreads, 0, s>>>(in, coef, n);
    prefilter_kernel<<<grid_for(outer * inner, kThreads), kThreads, 0, s>>>(coef, outer, n_in,
                                                                            inner);
    axis_pass_kernel<<<grid_for(total, kThreads), kThreads, 0, s>>>(
        static_cast<const A*>(coef), dst, outer, n_in, inner, n_out, idx, wa, taps);
  } else {
    axis_pass_kernel<<<grid_for(total, kThreads), kThreads, 0, s>>>(in, dst, outer, n_in, inner,
                                                                    n_out, idx, wa, taps);
  }
  return launch_error();
}

template <class T>
std::string bspline_coefficients(const T* in, const std::int64_t shape[3], void* out,
                                 stream_t stream) {
  using A = medkern::interp_t<T>;
  const cudaStream_t s = as_stream(stream);
  A* coef = static_cast<A*>(out);
  const std::int64_t n = shape[0] * shape[1] * shape[2];
  convert_kernel<<<grid_for(n, kThreads), kThreads, 0, s>>>(in, coef, n);
  prefilter_kernel<<<grid_for(shape[1] * shape[2], kThreads), kThreads, 0, s>>>(
      coef, 1, shape[0], shape[1] * shape[2]);
  prefilter_kernel<<<grid_for(shape[0] * shape[2], kThreads), kThreads, 0, s>>>(coef, shape[0],
                                                                                shape[1], shape[2]);
  prefilter_kernel<<<grid_for(shape[0] * shape[1], kThreads), kThreads, 0, s>>>(
      coef, shape[0] * shape[1], shape[2], 1);
  return launch_error();
}

template <class U>
std::string gather_nearest(const U* in, const std::int64_t shape_in[3], U* out,
                           const std::int64_t shape_out[3], const std::int64_t* idx0,
                           const std::int64_t* idx1, const std::int64_t* idx2,
                           std::uint64_t fill_bits, stream_t stream) {
  const std::int64_t total = shape_out[0] * shape_out[1] * shape_out[2];
  gather_kernel<<<grid_for(total, kThreads), kThreads, 0, as_stream(stream)>>>(
      in, shape_in[1], shape_in[2], out, shape_out[0], shape_out[1], shape_out[2], idx0, idx1, idx2,
      static_cast<U>(fill_bits));
  return launch_error();
}

#define MEDKERN_INSTANTIATE_SAMPLING(T)                                                            \
  template std::string resample_warp<T>(int, const T*, const std::int64_t*, void*,                 \
                                        const std::int64_t*, const double*, const float*, int,     \
                                        const double*, double, std::uint64_t, stream_t);           \
  template std::string resample_points<T>(int, const T*, const std::int64_t*, void*,               \
                                          const double*, std::int64_t, int, double, std::uint64_t, \
                                          stream_t);
#define MEDKERN_INSTANTIATE_INTERP(T)                                                         \
  template std::string resample_axis_pass<T>(const T*, void*, std::int64_t, std::int64_t,     \
                                             std::int64_t, std::int64_t, const std::int64_t*, \
                                             const void*, int, bool, void*, stream_t);        \
  template std::string bspline_coefficients<T>(const T*, const std::int64_t*, void*, stream_t);
MEDKERN_INSTANTIATE_SAMPLING(std::uint8_t)
MEDKERN_INSTANTIATE_SAMPLING(std::int16_t)
MEDKERN_INSTANTIATE_SAMPLING(std::uint16_t)
MEDKERN_INSTANTIATE_SAMPLING(std::int32_t)
MEDKERN_INSTANTIATE_SAMPLING(std::uint32_t)
MEDKERN_INSTANTIATE_SAMPLING(std::uint64_t)
MEDKERN_INSTANTIATE_SAMPLING(float)
MEDKERN_INSTANTIATE_SAMPLING(double)
MEDKERN_INSTANTIATE_INTERP(std::uint8_t)
MEDKERN_INSTANTIATE_INTERP(std::int16_t)
MEDKERN_INSTANTIATE_INTERP(std::uint16_t)
MEDKERN_INSTANTIATE_INTERP(std::int32_t)
MEDKERN_INSTANTIATE_INTERP(float)
MEDKERN_INSTANTIATE_INTERP(double)
#define MEDKERN_INSTANTIATE_GATHER(U)                                                            \
  template std::string gather_nearest<U>(const U*, const std::int64_t*, U*, const std::int64_t*, \
                                         const std::int64_t*, const std::int64_t*,               \
                                         const std::int64_t*, std::uint64_t, stream_t);
MEDKERN_INSTANTIATE_GATHER(std::uint8_t)
MEDKERN_INSTANTIATE_GATHER(std::uint16_t)
MEDKERN_INSTANTIATE_GATHER(std::uint32_t)
MEDKERN_INSTANTIATE_GATHER(std::uint64_t)
#undef MEDKERN_INSTANTIATE_SAMPLING
#undef MEDKERN_INSTANTIATE_INTERP
#undef MEDKERN_INSTANTIATE_GATHER

}  // namespace medkern::cuda
