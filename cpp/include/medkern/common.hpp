// Shared building blocks for the header-only kernels: no Python in here.
#pragma once
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

// Functions marked MEDKERN_HD also compile as CUDA device code (cpp/cuda/*.cu), so the CPU and
// GPU backends evaluate the very same arithmetic.
#ifdef __CUDACC__
#define MEDKERN_HD __host__ __device__
#else
#define MEDKERN_HD
#endif

namespace medkern {

using index_t = std::ptrdiff_t;

// Fixed-size blocks make reductions independent of the thread count: each block is summed
// serially, then the block sums are added in block order, so 1 and N threads give the same bits.
constexpr index_t kReductionBlock = 1 << 16;

inline int clamp_threads(int n_threads) { return n_threads < 1 ? 1 : n_threads; }

// An exception leaving an OpenMP region calls std::terminate. Work that can throw inside one
// (a per-thread buffer's allocation, a growing vector) runs through capture(); the first
// exception is kept, the remaining iterations are skipped (every thread still reaches each
// worksharing construct and barrier), and rethrow() raises it after the region.
class ParallelError {
 public:
  template <class F>
  void capture(F&& f) noexcept {
    try {
      f();
    } catch (...) {
#pragma omp critical(medkern_parallel_error)
      if (!error_) error_ = std::current_exception();
      failed_.store(true, std::memory_order_relaxed);
    }
  }
  bool failed() const noexcept { return failed_.load(std::memory_order_relaxed); }
  void rethrow() const {
    if (error_) std::rethrow_exception(error_);
  }

 private:
  std::exception_ptr error_;
  std::atomic<bool> failed_{false};
};

// Sum and sum of squares over the voxels where mask != 0 (mask may be null), in double.
// NaN voxels are skipped and counted separately so callers can refuse them explicitly.
struct Moments {
  double count = 0, sum = 0, sum_sq = 0, min = INFINITY, max = -INFINITY;
  index_t nan_count = 0;
};

template <class T>
Moments masked_moments(const T* x, const std::uint8_t* mask, index_t n, int n_threads) {
  const index_t n_blocks = (n + kReductionBlock - 1) / kReductionBlock;
  std::vector<Moments> partial(static_cast<std::size_t>(n_blocks));
#pragma omp parallel for schedule(static) num_threads(clamp_threads(n_threads))
  for (index_t b = 0; b < n_blocks; ++b) {
    Moments m;
    const index_t end = std::min(n, (b + 1) * kReductionBlock);
    for (index_t i = b * kReductionBlock; i < end; ++i) {
      if (mask && !mask[i]) continue;
      const double v = static_cast<double>(x[i]);
      if (std::isnan(v)) {
        ++m.nan_count;
        continue;
      }
      m.count += 1;
      m.sum += v;
      m.sum_sq += v * v;
      m.min = std::min(m.min, v);
      m.max = std::max(m.max, v);
    }
    partial[static_cast<std::size_t>(b)] = m;
  }
  Moments total;
  for (const Moments& m : partial) {
    total.count += m.count;
    total.sum += m.sum;
    total.sum_sq += m.sum_sq;
    total.min = std::min(total.min, m.min);
    total.max = std::max(total.max, m.max);
    total.nan_count += m.nan_count;
  }
  return total;
}

}  // namespace medkern
