// Bilateral filter (Tomasi & Manduchi 1998) with the weights of ITK's BilateralImageFilter.
#pragma once
#include <vector>

#include "medkern/filters.hpp"

namespace medkern {

// Range kernel as ITK tabulates it: the Gaussian sampled at `samples` steps of
// range_cutoff / samples, looked up by rounding the intensity distance down; zero at distances
// >= range_cutoff (ITK uses range_cutoff = 4 sigma_range and 100 samples).
struct RangeKernel {
  float sigma, cutoff, to_bin, bin_width, neg_half_inv_var;
  int samples;
  RangeKernel(double sigma_range, double cutoff_sigmas, int n_samples)
      : sigma(static_cast<float>(sigma_range)),
        cutoff(static_cast<float>(cutoff_sigmas * sigma_range)),
        to_bin(static_cast<float>(n_samples / (cutoff_sigmas * sigma_range))),
        bin_width(static_cast<float>(cutoff_sigmas * sigma_range / n_samples)),
        neg_half_inv_var(static_cast<float>(-0.5 / (sigma_range * sigma_range))),
        samples(n_samples) {}
};

namespace detail {

constexpr index_t kBilateralLanes = 32;

// One chunk of kBilateralLanes voxels: centre values c, neighbour rows elem[q] shifted to the
// chunk, domain weights wd[q]. The table lookup is replaced by evaluating the Gaussian at the
// bin's left edge (the tabulated value), so the loop runs on SIMD lanes without gathers.
MEDKERN_SIMD_CLONES
inline void bilateral_chunk(const float* const* elem, const float* wd, index_t n, index_t i0,
                            const float* c, const RangeKernel& rk, float* out) {
  constexpr int G = kBilateralLanes / 8;
  vf8 num[G], den[G], cen[G];
  for (int g = 0; g < G; ++g) {
    num[g] = den[g] = vf8{};
    cen[g] = load8(c + 8 * g);
  }
  for (index_t q = 0; q < n; ++q) {
    const float* v = elem[q] + i0;
    const float w_domain = wd[q];
    for (int g = 0; g < G; ++g) {
      const vf8 x = load8(v + 8 * g);
      const vf8 d = abs8(x - cen[g]);
      // Bins past the table only occur where d >= cutoff, whose weight is masked to 0 below;
      // they are clamped to the table size first, since converting a bin position beyond int
      // range (a huge intensity difference) to an integer is undefined.
      const vf8 pos = d * rk.to_bin, last = vf8{} + static_cast<float>(rk.samples);
      const vf8 at = __builtin_convertvector(
                         __builtin_convertvector(select8(pos < last, pos, last), vi8), vf8) *
                     rk.bin_width;
      const vf8 w =
          select8(d < rk.cutoff, exp_neg8(at * at * rk.neg_half_inv_var) * w_domain, vf8{});
      num[g] += w * x;
      den[g] += w;
    }
  }
  for (int g = 0; g < G; ++g) store8(out + 8 * g, num[g] / den[g]);
}

}  // namespace detail

// out = sum_q wd(q) wr(|x_q - x_p|) x_q / sum_q wd(q) wr(|x_q - x_p|) over the box of radius r
// (voxels) around p; wd is the Gaussian of the physical offset (spacing, sigma_mm per axis),
// wr the tabulated range Gaussian; out-of-image neighbours by nearest-sample (ITK ZeroFluxNeumann).
template <class T>
void bilateral_filter(const T* in, float* out, const Shape3& s, const double* spacing,
                      const double* sigma_mm, const index_t* r, const RangeKernel& rk,
                      int n_threads) {
  // Domain weights, normalised as ITK normalises its Gaussian image (only rounding depends on it).
  std::vector<float> wd;
  {
    std::vector<double> w;
    double sum = 0;
    for (index_t dk = -r[0]; dk <= r[0]; ++dk)
      for (index_t dj = -r[1]; dj <= r[1]; ++dj)
        for (index_t di = -r[2]; di <= r[2]; ++di) {
          const double a = dk * spacing[0] / sigma_mm[0], b = dj * spacing[1] / sigma_mm[1],
                       c = di * spacing[2] / sigma_mm[2];
          w.push_back(std::exp(-0.5 * (a * a + b * b + c * c)));
          sum += w.back();
        }
    for (double v : w) wd.push_back(static_cast<float>(v / sum));
  }
  const index_t n = static_cast<index_t>(wd.size());
  const index_t nrows = (2 * r[0] + 1) * (2 * r[1] + 1);
  constexpr index_t L = detail::kBilateralLanes;
  const index_t padded = s.n2 + 2 * r[2] + L;
  ParallelError error;
#pragma omp parallel num_threads(clamp_threads(n_threads))
  {
    std::vector<float> rows;
    std::vector<const float*> elem;
    error.capture([&] {
      rows.resize(static_cast<std::size_t>(nrows * padded));
      elem.resize(static_cast<std::size_t>(n));
    });
    float centre[L], tail[L];
#pragma omp for schedule(static)
    for (index_t row = 0; row < s.n0 * s.n1; ++row) {
      if (error.failed()) continue;
      const index_t k = row / s.n1, j = row % s.n1;
      neighbour_rows(in, s, k, j, r, Boundary::nearest, 0.0f, padded, rows.data(), elem.data());
      const float* mid = rows.data() + (nrows / 2) * padded + r[2];
      float* o = out + row * s.n2;
      for (index_t i0 = 0; i0 < s.n2; i0 += L) {
        for (index_t l = 0; l < L; ++l) centre[l] = mid[i0 + l];
        const bool full = i0 + L <= s.n2;
        detail::bilateral_chunk(elem.data(), wd.data(), n, i0, centre, rk, full ? o + i0 : tail);
        if (!full)
          for (index_t i = i0; i < s.n2; ++i) o[i] = tail[i - i0];
      }
    }
  }
  error.rethrow();
}

}  // namespace medkern
