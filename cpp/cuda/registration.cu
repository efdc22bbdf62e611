// CUDA versions of the registration metrics (value + gradient with respect to the 3x4
// fixed-index -> moving-index matrix). The per-sample arithmetic (trilinear sampling, Parzen
// windows, gradient accumulation) and the final formulas are the ones of
// cpp/include/medkern/registration.hpp, shared through MEDKERN_HD; sums are accumulated in double
// with atomics, so values agree with the CPU to rounding (not bit for bit).
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "launch_registration.hpp"
#include "medkern/registration.hpp"

namespace medkern::cuda {
namespace {

struct Matrix34 {
  double m[12];
};

struct DeviceSamples {
  const float* fixed;
  const float* fixed_values;
  const std::int64_t* indices;
  std::int64_t count, nj, ni;
  const std::uint8_t* moving_mask;
  Matrix34 to_moving;
};

// One sample: false when it maps outside the moving image or its mask.
__device__ bool load_sample(const DeviceSamples& s, const LinearVolume& mov, std::int64_t n,
                            double& f, double& m, double g[3], double x[3]) {
  const std::int64_t lin = s.indices ? s.indices[n] : n;
  double c[3];
  map_sample(s.to_moving.m, lin, s.nj, s.ni, x, c);
  if (!mov.inside(c[0], c[1], c[2])) return false;
  if (s.moving_mask && !mov.nearest(s.moving_mask, c[0], c[1], c[2])) return false;
  m = mov.sample(c[0], c[1], c[2], g);
  f = static_cast<double>(s.fixed_values ? s.fixed_values[n] : s.fixed[lin]);
  return true;
}

// Warp-level sum of K per-thread partial sums, then one atomic per value and warp.
template <int K>
__device__ void flush(double (&acc)[K], double* out) {
  for (int c = 0; c < K; ++c) {
    double v = acc[c];
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
    if ((threadIdx.x & 31) == 0) atomicAdd(out + c, v);
  }
}

std::string error_string(cudaError_t err) {
  return err == cudaSuccess ? std::string() : std::string(cudaGetErrorString(err));
}

#define MEDKERN_CUDA_CHECK(expr)                        \
  do {                                                  \
    const cudaError_t err_ = (expr);                    \
    if (err_ != cudaSuccess) return error_string(err_); \
  } while (0)

// Per-sample sums of a metric (Sums: MeanSquaresSums or CorrelationSums, registration.hpp).
template <class Sums>
__global__ void sums_kernel(DeviceSamples s, LinearVolume mov, double* out) {
  double acc[Sums::kSize] = {};
  for (std::int64_t n = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; n < s.count;
       n += std::int64_t(gridDim.x) * blockDim.x) {
    double f, m, g[3], x[3];
    if (load_sample(s, mov, n, f, m, g, x)) Sums::add(acc, f, m, g, x);
  }
  flush(acc, out);
}

template <class Sums>
std::string run_sums(const DeviceSamples& s, const LinearVolume& mov, int grid, int block,
                     double* accumulator, cudaStream_t st, MetricResult& r) {
  std::vector<double> sums(Sums::kSize);
  MEDKERN_CUDA_CHECK(cudaMemsetAsync(accumulator, 0, Sums::kSize * sizeof(double), st));
  sums_kernel<Sums><<<grid, block, 0, st>>>(s, mov, accumulator);
  MEDKERN_CUDA_CHECK(cudaGetLastError());
  MEDKERN_CUDA_CHECK(cudaMemcpyAsync(sums.data(), accumulator, Sums::kSize * sizeof(double),
                                     cudaMemcpyDeviceToHost, st));
  MEDKERN_CUDA_CHECK(cudaStreamSynchronize(st));
  r = Sums::finish(sums.data());
  return {};
}

// Pass 1 of Mattes MI: joint histogram (atomics into `joint`) and the per-sample cache.
__global__ void mattes_histogram_kernel(DeviceSamples s, LinearVolume mov, MattesBins bins,
                                        double* joint, float* cache) {
  for (std::int64_t n = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; n < s.count;
       n += std::int64_t(gridDim.x) * blockDim.x) {
    float* c = cache + 5 * n;
    double f, m, g[3], x[3];
    if (!load_sample(s, mov, n, f, m, g, x)) {
      c[0] = NAN;
      continue;
    }
    int cell;
    const double frac = bins.parzen(f, m, cell);
    for (int q = 0; q < 4; ++q) atomicAdd(joint + cell + q, cubic_bspline(q - frac));
    c[0] = static_cast<float>(frac);
    c[1] = static_cast<float>(cell);
    c[2] = static_cast<float>(g[0]);
    c[3] = static_cast<float>(g[1]);
    c[4] = static_cast<float>(g[2]);
  }
}

// Pass 2: gradient from the cache and dMI/dp (log_ratio); out gets 12 gradient sums + count.
__global__ void mattes_gradient_kernel(DeviceSamples s, const double* log_ratio, const float* cache,
                                       double scale, double* out) {
  double acc[13] = {};
  for (std::int64_t n = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; n < s.count;
       n += std::int64_t(gridDim.x) * blockDim.x) {
    const float* c = cache + 5 * n;
    if (isnan(c[0])) continue;
    const double dv = mattes_sample_derivative(log_ratio, c[0], static_cast<index_t>(c[1]));
    const std::int64_t lin = s.indices ? s.indices[n] : n;
    double x[3], unused[3];
    map_sample(s.to_moving.m, lin, s.nj, s.ni, x, unused);
    const double g[3] = {c[2], c[3], c[4]};
    add_gradient(acc, dv * scale, g, x[0], x[1], x[2]);
    acc[12] += 1;
  }
  flush(acc, out);
}

}  // namespace

std::string registration_metric(int kind, const float* fixed, const float* fixed_values,
                                const std::int64_t* indices, std::int64_t count,
                                const std::int64_t fixed_shape[3], const float* moving,
                                const std::int64_t moving_shape[3], const std::uint8_t* moving_mask,
                                const double to_moving[12], int bins, const double ranges[4],
                                double* accumulator, float* cache, double result[14],
                                stream_t stream) {
  const auto st = reinterpret_cast<cudaStream_t>(stream);
  DeviceSamples s{fixed,          fixed_values,   indices,     count,
                  fixed_shape[1], fixed_shape[2], moving_mask, {}};
  for (int c = 0; c < 12; ++c) s.to_moving.m[c] = to_moving[c];
  const LinearVolume mov{moving, moving_shape[0], moving_shape[1], moving_shape[2]};
  const int block = 256;
  const int grid = static_cast<int>(std::min<std::int64_t>((count + block - 1) / block, 1024));
  MetricResult r;
  if (count == 0) {
    result[0] = 0;
    result[13] = 0;
    for (int c = 0; c < 12; ++c) result[1 + c] = 0;
    return {};
  }
  if (kind == 0 || kind == 1) {
    const std::string err =
        kind == 0 ? run_sums<MeanSquaresSums>(s, mov, grid, block, accumulator, st, r)
                  : run_sums<CorrelationSums>(s, mov, grid, block, accumulator, st, r);
    if (!err.empty()) return err;
  } else {
    const MattesBins b(bins, ranges[0], ranges[1], ranges[2], ranges[3]);
    const int nb2 = bins * bins;
    std::vector<double> joint(static_cast<std::size_t>(nb2));
    MEDKERN_CUDA_CHECK(cudaMemsetAsync(accumulator, 0, nb2 * sizeof(double), st));
    mattes_histogram_kernel<<<grid, block, 0, st>>>(s, mov, b, accumulator, cache);
    MEDKERN_CUDA_CHECK(cudaGetLastError());
    MEDKERN_CUDA_CHECK(cudaMemcpyAsync(joint.data(), accumulator, nb2 * sizeof(double),
                                       cudaMemcpyDeviceToHost, st));
    MEDKERN_CUDA_CHECK(cudaStreamSynchronize(st));
    double total = 0;
    const std::vector<double> log_ratio = mattes_log_ratio(joint, bins, r.value, total);
    if (total > 0) {
      // The accumulator holds log_ratio, then 13 gradient sums after it.
      double* d_log_ratio = accumulator;
      double* d_sums = accumulator + nb2;
      std::vector<double> sums(13);
      MEDKERN_CUDA_CHECK(cudaMemcpyAsync(d_log_ratio, log_ratio.data(), nb2 * sizeof(double),
                                         cudaMemcpyHostToDevice, st));
      MEDKERN_CUDA_CHECK(cudaMemsetAsync(d_sums, 0, 13 * sizeof(double), st));
      mattes_gradient_kernel<<<grid, block, 0, st>>>(s, d_log_ratio, cache,
                                                     1.0 / (total * b.moving_bin_size), d_sums);
      MEDKERN_CUDA_CHECK(cudaGetLastError());
      MEDKERN_CUDA_CHECK(
          cudaMemcpyAsync(sums.data(), d_sums, 13 * sizeof(double), cudaMemcpyDeviceToHost, st));
      MEDKERN_CUDA_CHECK(cudaStreamSynchronize(st));
      for (int c = 0; c < 12; ++c) r.gradient[c] = sums[c];
      r.count = sums[12];
    }
  }
  result[0] = r.value;
  for (int c = 0; c < 12; ++c) result[1 + c] = r.gradient[c];
  result[13] = r.count;
  return {};
}

}  // namespace medkern::cuda
