// Image registration kernels: similarity metrics with analytic gradients, the smoothing pyramid
// and the dense-field operations of diffeomorphic registration. No Python in here.
//
// Geometry. The fixed image is sampled at voxel centres x = (k, j, i) (array order). A 3x4
// row-major matrix `to_moving` maps (k, j, i, 1) to the continuous moving index at which the
// moving image is read; Python builds it as world_to_index(moving) @ T @ index_to_world(fixed),
// T being the fixed -> moving world transform (ITK convention). Metric gradients are returned with
// respect to the 12 entries of `to_moving` (dV/dM[r][c] = sum coef * dm/dc_r * x_c); the caller
// chains them to any transform parameterisation, so one kernel serves rigid and affine models.
#pragma once
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "medkern/common.hpp"
#include "medkern/trilinear.hpp"

// The interpolation and Parzen-window helpers below also run inside the CUDA kernels
// (cpp/cuda/registration.cu), so both backends evaluate the very same arithmetic. (MEDKERN_HD,
// common.hpp)

namespace medkern {

// Threads worth starting for `work` items: a team costs a barrier per parallel region, which
// dominates on the small volumes of coarse pyramid levels. The results do not depend on it.
inline int threads_for(index_t work, int n_threads) {
  constexpr index_t kItemsPerThread = 32768;
  return static_cast<int>(
      std::max<index_t>(1, std::min<index_t>(clamp_threads(n_threads), work / kItemsPerThread)));
}

// Threads for a field pass over `work` voxels: a deformable registration runs a dozen passes per
// iteration, and on a busy machine every barrier can wait for a descheduled thread, so coarse
// levels (under 256k voxels a thread) run on one thread. The results do not depend on it.
inline int field_threads(index_t work, int n_threads) {
  constexpr index_t kVoxelsPerThread = 262144;
  return static_cast<int>(
      std::max<index_t>(1, std::min<index_t>(clamp_threads(n_threads), work / kVoxelsPerThread)));
}

// A float volume read with trilinear interpolation. Points are inside when every continuous
// index lies in [-0.5, n - 0.5) (ITK's InterpolateImageFunction::IsInsideBuffer); neighbours
// beyond the last voxel are clamped to it, so the border half-voxel is constant outward.
struct LinearVolume {
  const float* data;
  index_t nk, nj, ni;

  MEDKERN_HD bool inside(double ck, double cj, double ci) const {
    return medkern::inside(ck, nk) && medkern::inside(cj, nj) && medkern::inside(ci, ni);
  }

  // Value and its derivative along (k, j, i) of the trilinear interpolant (trilinear.hpp, with
  // the clamped taps of LinearTaps::clamped).
  MEDKERN_HD double sample(double ck, double cj, double ci, double grad[3]) const {
    const index_t n[3] = {nk, nj, ni};
    return trilinear<double>(data, n, LinearTaps::clamped(n, ck, cj, ci), grad);
  }

  // Trilinear values of `count` component planes (plane c at data + c * plane_size), as a
  // weighted sum of the 8 neighbours.
  void sample_components(double ck, double cj, double ci, int count, index_t plane_size,
                         double* out) const {
    const index_t n[3] = {nk, nj, ni};
    const LinearTaps tap = LinearTaps::clamped(n, ck, cj, ci);
    const index_t k0 = tap.lo[0], k1 = tap.hi[0], j0 = tap.lo[1], j1 = tap.hi[1];
    const index_t i0 = tap.lo[2], i1 = tap.hi[2];
    const double wk = tap.t[0], wj = tap.t[1], wi = tap.t[2];
    const index_t sj = ni, sk = nj * ni;
    const index_t off[8] = {k0 * sk + j0 * sj + i0, k0 * sk + j0 * sj + i1, k0 * sk + j1 * sj + i0,
                            k0 * sk + j1 * sj + i1, k1 * sk + j0 * sj + i0, k1 * sk + j0 * sj + i1,
                            k1 * sk + j1 * sj + i0, k1 * sk + j1 * sj + i1};
    const double w[8] = {(1 - wk) * (1 - wj) * (1 - wi),
                         (1 - wk) * (1 - wj) * wi,
                         (1 - wk) * wj * (1 - wi),
                         (1 - wk) * wj * wi,
                         wk * (1 - wj) * (1 - wi),
                         wk * (1 - wj) * wi,
                         wk * wj * (1 - wi),
                         wk * wj * wi};
    for (int c = 0; c < count; ++c) {
      const float* p = data + c * plane_size;
      double acc = 0;
      for (int q = 0; q < 8; ++q) acc += w[q] * p[off[q]];
      out[c] = acc;
    }
  }

  MEDKERN_HD std::uint8_t nearest(const std::uint8_t* mask, double ck, double cj, double ci) const {
    const index_t k = floor_clamped(std::floor(ck + 0.5), nk);
    const index_t j = floor_clamped(std::floor(cj + 0.5), nj);
    const index_t i = floor_clamped(std::floor(ci + 0.5), ni);
    return mask[(k * nj + j) * ni + i];
  }
};

// The fixed side of a metric: the image, which voxels are samples, and where they land.
struct MetricSamples {
  const float* fixed;
  const float* fixed_values;  // fixed[indices[n]] gathered once per level; null: read `fixed`
  index_t nk, nj, ni;
  const std::int64_t* indices;  // linear indices of the sample voxels; null: every voxel
  index_t count;
  const std::uint8_t* moving_mask;  // null: no moving mask
  std::array<double, 12> to_moving;
};

// Fixed voxel `lin` -> its index x = (k, j, i) and the continuous moving index c = M (x, 1).
MEDKERN_HD inline void map_sample(const double* M, index_t lin, index_t nj, index_t ni, double x[3],
                                  double c[3]) {
  const index_t kj = lin / ni;
  x[0] = static_cast<double>(kj / nj);
  x[1] = static_cast<double>(kj % nj);
  x[2] = static_cast<double>(lin % ni);
  for (int r = 0; r < 3; ++r)
    c[r] = M[4 * r] * x[0] + M[4 * r + 1] * x[1] + M[4 * r + 2] * x[2] + M[4 * r + 3];
}

// Calls visit(f, m, grad_m, k, j, i, n) for every sample whose mapped point lies inside the moving
// image (and its mask) among samples [begin, end).
template <class Visit>
void for_each_sample(const MetricSamples& s, const LinearVolume& mov, index_t begin, index_t end,
                     Visit&& visit) {
  for (index_t n = begin; n < end; ++n) {
    const index_t lin = s.indices ? static_cast<index_t>(s.indices[n]) : n;
    double x[3], c[3];
    map_sample(s.to_moving.data(), lin, s.nj, s.ni, x, c);
    if (!mov.inside(c[0], c[1], c[2])) continue;
    if (s.moving_mask && !mov.nearest(s.moving_mask, c[0], c[1], c[2])) continue;
    double g[3];
    const double m = mov.sample(c[0], c[1], c[2], g);
    visit(static_cast<double>(s.fixed_values ? s.fixed_values[n] : s.fixed[lin]), m, g, x[0], x[1],
          x[2], n);
  }
}

// dV/dM accumulated as coef * grad_m (outer) (k, j, i, 1).
MEDKERN_HD inline void add_gradient(double* H, double coef, const double g[3], double k, double j,
                                    double i) {
  for (int r = 0; r < 3; ++r) {
    const double c = coef * g[r];
    H[4 * r + 0] += c * k;
    H[4 * r + 1] += c * j;
    H[4 * r + 2] += c * i;
    H[4 * r + 3] += c;
  }
}

// Blocks depend on the sample count only, so partial sums (and their ordered total) are the
// same for any number of threads.
inline index_t metric_blocks(index_t n) {
  return std::max<index_t>(1, std::min<index_t>(128, (n + 2047) / 2048));
}

template <class Body>
void for_each_block(index_t n, int n_threads, Body&& body) {
  const index_t nb = metric_blocks(n);
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads_for(n, n_threads))
  for (index_t b = 0; b < nb; ++b) body(b, n * b / nb, n * (b + 1) / nb);
}

struct MetricResult {
  double value = 0;
  std::array<double, 12> gradient{};  // dV / d to_moving, row-major 3x4
  double count = 0;                   // samples that landed inside the moving image
};

// Mean squares (ITK MeanSquaresImageToImageMetricv4): V = mean over valid samples of (m - f)^2.
// Sums: d(sum (m - f)^2) as 12 values, sum (m - f)^2, count.
struct MeanSquaresSums {
  static constexpr int kSize = 14;
  MEDKERN_HD static void add(double* acc, double f, double m, const double g[3],
                             const double x[3]) {
    const double d = m - f;
    acc[12] += d * d;
    acc[13] += 1;
    add_gradient(acc, 2 * d, g, x[0], x[1], x[2]);
  }
  static MetricResult finish(const double* tot) {
    MetricResult r;
    r.count = tot[13];
    if (r.count == 0) return r;
    r.value = tot[12] / r.count;
    for (int c = 0; c < 12; ++c) r.gradient[c] = tot[c] / r.count;
    return r;
  }
};

// Global normalised cross-correlation as ITK's CorrelationImageToImageMetricv4:
// V = -sfm^2 / (sff * smm) with the sums centred on the means over the valid samples, so
// V = -1 for a perfect (positive or negative) linear relation and 0 for none.
// Sums: n, Sf, Sm, Sff, Smm, Sfm, then d(Sm), d(Sfm), d(Smm)/2 as 12-vectors.
struct CorrelationSums {
  static constexpr int kStats = 6, kSize = kStats + 36;
  MEDKERN_HD static void add(double* acc, double f, double m, const double g[3],
                             const double x[3]) {
    acc[0] += 1;
    acc[1] += f;
    acc[2] += m;
    acc[3] += f * f;
    acc[4] += m * m;
    acc[5] += f * m;
    add_gradient(acc + kStats, 1.0, g, x[0], x[1], x[2]);
    add_gradient(acc + kStats + 12, f, g, x[0], x[1], x[2]);
    add_gradient(acc + kStats + 24, m, g, x[0], x[1], x[2]);
  }
  static MetricResult finish(const double* t) {
    MetricResult r;
    r.count = t[0];
    if (r.count == 0) return r;
    const double n = t[0];
    const double sff = t[3] - t[1] * t[1] / n, smm = t[4] - t[2] * t[2] / n;
    const double sfm = t[5] - t[1] * t[2] / n;
    if (!(sff > 0 && smm > 0)) return r;
    r.value = -sfm * sfm / (sff * smm);
    for (int c = 0; c < 12; ++c) {
      const double d_sm = t[kStats + c], d_sfm = t[kStats + 12 + c] - t[1] / n * d_sm;
      const double d_smm = 2 * (t[kStats + 24 + c] - t[2] / n * d_sm);
      r.gradient[c] = -(2 * sfm * d_sfm * smm - sfm * sfm * d_smm) / (sff * smm * smm);
    }
    return r;
  }
};

// A metric that is a function of per-sample sums (Sums: MeanSquaresSums or CorrelationSums).
template <class Sums>
MetricResult sums_metric(const MetricSamples& s, const LinearVolume& mov, int n_threads) {
  const index_t nb = metric_blocks(s.count);
  std::vector<std::array<double, Sums::kSize>> part(static_cast<std::size_t>(nb));
  for_each_block(s.count, n_threads, [&](index_t b, index_t begin, index_t end) {
    std::array<double, Sums::kSize> acc{};
    for_each_sample(
        s, mov, begin, end,
        [&](double f, double m, const double* g, double k, double j, double i, index_t) {
          const double x[3] = {k, j, i};
          Sums::add(acc.data(), f, m, g, x);
        });
    part[static_cast<std::size_t>(b)] = acc;
  });
  std::array<double, Sums::kSize> tot{};
  for (const auto& p : part)
    for (int c = 0; c < Sums::kSize; ++c) tot[c] += p[c];
  return Sums::finish(tot.data());
}

// Mattes et al. 2003 mutual information with the binning of ITK's
// MattesMutualInformationImageToImageMetricv4: zero-order (box) Parzen window on the fixed
// intensity, cubic B-spline on the moving one, two padding bins at each end, intensities mapped
// from [min, max] of each image. V = -MI (smaller is better), like ITK.
struct MattesBins {
  int nbins;
  double fixed_bin_size, fixed_norm_min, moving_bin_size, moving_norm_min;

  MattesBins(int n, double fmin, double fmax, double mmin, double mmax) : nbins(n) {
    constexpr int kPadding = 2;
    fixed_bin_size = (fmax - fmin) / (n - 2 * kPadding);
    moving_bin_size = (mmax - mmin) / (n - 2 * kPadding);
    if (!(fixed_bin_size > 0)) fixed_bin_size = 1;
    if (!(moving_bin_size > 0)) moving_bin_size = 1;
    fixed_norm_min = fmin / fixed_bin_size - kPadding;
    moving_norm_min = mmin / moving_bin_size - kPadding;
  }
  // Clamped in double before the conversion (same bin for every finite term: truncation then
  // clamping to [2, nbins - 3]); a NaN or far-out term would make the conversion undefined and
  // the bin indexes the joint histogram.
  MEDKERN_HD int clamp_bin(double term) const {
    const double last = static_cast<double>(nbins - 3);
    return static_cast<int>(term >= 2.0 ? (term <= last ? term : last) : 2.0);
  }
  MEDKERN_HD int fixed_bin(double f) const {
    return clamp_bin(f / fixed_bin_size - fixed_norm_min);
  }
  MEDKERN_HD double moving_term(double m) const { return m / moving_bin_size - moving_norm_min; }
  // The sample's first joint-histogram cell (fixed bin row, first of the 4 moving bins its cubic
  // window touches) and its Parzen term minus that first moving bin.
  MEDKERN_HD double parzen(double f, double m, int& cell) const {
    const double term = moving_term(m);
    const int start = clamp_bin(term) - 1;
    cell = fixed_bin(f) * nbins + start;
    return term - start;
  }
};

MEDKERN_HD inline double cubic_bspline(double u) {
  u = std::fabs(u);
  if (u < 1) return (4 - 6 * u * u + 3 * u * u * u) / 6;
  if (u < 2) return (2 - u) * (2 - u) * (2 - u) / 6;
  return 0;
}

MEDKERN_HD inline double cubic_bspline_derivative(double u) {
  const double a = std::fabs(u), sign = u < 0 ? -1.0 : 1.0;
  if (a < 1) return -2 * u + 1.5 * u * a;
  if (a < 2) return -0.5 * sign * (2 - a) * (2 - a);
  return 0;
}

// From the joint histogram (unnormalised, nbins x nbins): V = -MI, the histogram total, and
// dMI/dp(a, c) = log(p / pm) (the log pf term sums to zero over c for each fixed bin), ITK's
// closeToZero guard included.
inline std::vector<double> mattes_log_ratio(std::vector<double> joint, int nbins, double& value,
                                            double& total) {
  total = 0;
  for (double v : joint) total += v;
  value = 0;
  std::vector<double> log_ratio(joint.size(), 0.0);
  if (!(total > 0)) return log_ratio;
  std::vector<double> pf(nbins, 0.0), pm(nbins, 0.0);
  for (int a = 0; a < nbins; ++a)
    for (int c = 0; c < nbins; ++c) {
      const double p = joint[a * nbins + c] / total;
      joint[a * nbins + c] = p;
      pf[a] += p;
      pm[c] += p;
    }
  constexpr double kTiny = 2.220446049250313e-16;  // ITK's closeToZero (double epsilon)
  double mi = 0;
  for (int a = 0; a < nbins; ++a)
    for (int c = 0; c < nbins; ++c) {
      const double p = joint[a * nbins + c];
      if (p > kTiny && pm[c] > kTiny) {
        log_ratio[a * nbins + c] = std::log(p / pm[c]);
        if (pf[a] > kTiny) mi += p * (log_ratio[a * nbins + c] - std::log(pf[a]));
      }
    }
  value = -mi;
  return log_ratio;
}

// Per-sample derivative of V with respect to the moving value, from the pass-1 cache entry
// (Parzen term minus the first bin, first joint-histogram cell): sum_c log_ratio beta3'(c - term)
// divided by the histogram total and the moving bin size by the caller.
MEDKERN_HD inline double mattes_sample_derivative(const double* log_ratio, double frac,
                                                  index_t cell) {
  const double* lr = log_ratio + cell;
  double dv = 0;
  for (int q = 0; q < 4; ++q) dv += lr[q] * cubic_bspline_derivative(q - frac);
  return dv;
}

inline MetricResult mattes_mutual_information(const MetricSamples& s, const LinearVolume& mov,
                                              const MattesBins& bins, int n_threads) {
  const int nb2 = bins.nbins * bins.nbins;
  const index_t nblocks = metric_blocks(s.count);
  // Pass 1: the joint histogram p(fixed bin, moving bin). The moving value and gradient of each
  // sample are kept for pass 2 (NaN marks samples outside the moving image).
  std::vector<double> part(static_cast<std::size_t>(nblocks) * nb2, 0.0);
  std::vector<float> cache(static_cast<std::size_t>(s.count) * 5);
  for_each_block(s.count, n_threads, [&](index_t b, index_t begin, index_t end) {
    double* h = part.data() + b * nb2;
    for (index_t n = begin; n < end; ++n) cache[5 * n] = NAN;
    for_each_sample(s, mov, begin, end,
                    [&](double f, double m, const double* g, double, double, double, index_t n) {
                      int cell;
                      const double frac = bins.parzen(f, m, cell);
                      for (int q = 0; q < 4; ++q) h[cell + q] += cubic_bspline(q - frac);
                      float* c = cache.data() + 5 * n;
                      c[0] = static_cast<float>(frac);
                      c[1] = static_cast<float>(cell);
                      c[2] = static_cast<float>(g[0]);
                      c[3] = static_cast<float>(g[1]);
                      c[4] = static_cast<float>(g[2]);
                    });
  });
  std::vector<double> joint(static_cast<std::size_t>(nb2), 0.0);
  for (index_t b = 0; b < nblocks; ++b)
    for (int c = 0; c < nb2; ++c) joint[c] += part[b * nb2 + c];
  MetricResult r;
  double total = 0;
  const std::vector<double> log_ratio = mattes_log_ratio(joint, bins.nbins, r.value, total);
  if (!(total > 0)) return r;
  // Pass 2: dV/dm per sample = sum_c log_ratio * beta3'(c - term) / (total * bin size).
  const double scale = 1.0 / (total * bins.moving_bin_size);
  std::vector<std::array<double, 13>> gpart(static_cast<std::size_t>(nblocks));
  for_each_block(s.count, n_threads, [&](index_t b, index_t begin, index_t end) {
    std::array<double, 13> acc{};
    for (index_t n = begin; n < end; ++n) {
      const float* c = cache.data() + 5 * n;
      if (std::isnan(c[0])) continue;
      const double dv =
          mattes_sample_derivative(log_ratio.data(), c[0], static_cast<index_t>(c[1]));
      const index_t lin = s.indices ? static_cast<index_t>(s.indices[n]) : n;
      const index_t i = lin % s.ni, kj = lin / s.ni;
      const double g[3] = {c[2], c[3], c[4]};
      add_gradient(acc.data(), dv * scale, g, static_cast<double>(kj / s.nj),
                   static_cast<double>(kj % s.nj), static_cast<double>(i));
      acc[12] += 1;
    }
    gpart[static_cast<std::size_t>(b)] = acc;
  });
  for (const auto& p : gpart) {
    for (int c = 0; c < 12; ++c) r.gradient[c] += p[c];
    r.count += p[12];
  }
  return r;
}

// ---------------------------------------------------------------- pyramid
// Separable Gaussian smoothing with decimation along one axis: output o is centred at input
// position o * shrink + (shrink - 1) / 2 (so the field of view keeps its centre), weights are a
// Gaussian of sigma_vox truncated at 3 sigma and renormalised, borders clamped. sigma_vox below
// 0.2 falls back to linear interpolation (no smoothing).
struct AxisTaps {
  std::vector<index_t> first;  // first input index of each output
  std::vector<int> count;
  std::vector<double> weights;  // count[o] weights for output o, packed at offset[o]
  std::vector<index_t> offset;

  AxisTaps(index_t n_out, int shrink, double sigma_vox) {
    first.resize(n_out);
    count.resize(n_out);
    offset.resize(n_out);
    const double radius = sigma_vox < 0.2 ? 1.0 : std::ceil(3 * sigma_vox);
    for (index_t o = 0; o < n_out; ++o) {
      const double centre = o * shrink + 0.5 * (shrink - 1);
      const auto lo = static_cast<index_t>(std::ceil(centre - radius - 1e-9));
      const auto hi = static_cast<index_t>(std::floor(centre + radius + 1e-9));
      first[o] = lo;
      count[o] = static_cast<int>(hi - lo + 1);
      offset[o] = static_cast<index_t>(weights.size());
      double sum = 0;
      for (index_t t = lo; t <= hi; ++t) {
        const double d = t - centre;
        const double w = sigma_vox < 0.2 ? std::max(0.0, 1 - std::fabs(d))
                                         : std::exp(-0.5 * d * d / (sigma_vox * sigma_vox));
        weights.push_back(w);
        sum += w;
      }
      for (index_t t = offset[o]; t < static_cast<index_t>(weights.size()); ++t) weights[t] /= sum;
    }
  }
};

// Runs body(a, b0, b1) over the lines of an (outer, len, inner) array: line a, columns
// [b0, b1) of the inner axis. Column blocks keep inner loops contiguous and give every pass,
// including the one along the slowest axis (outer == 1), enough parallel work.
template <class Body>
void for_each_line_block(index_t outer, index_t inner, int n_threads, Body&& body) {
  constexpr index_t kColumns = 512;
  const index_t nb = (inner + kColumns - 1) / kColumns;
  const index_t work = outer * inner;
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads_for(work, n_threads))
  for (index_t a = 0; a < outer; ++a)
    for (index_t blk = 0; blk < nb; ++blk)
      body(a, blk * kColumns, std::min(inner, (blk + 1) * kColumns));
}

// One smoothing pass along the middle axis of an (outer, n_in, inner) array -> (outer, n_out,
// inner).
template <class T>
void smooth_axis(const T* in, float* out, index_t outer, index_t n_in, index_t inner,
                 const AxisTaps& taps, int n_threads) {
  const index_t n_out = static_cast<index_t>(taps.first.size());
  if (inner == 1) {
    // Along the contiguous axis: one dot product per output, no clamping in the interior.
    const index_t work = outer * n_in;
#pragma omp parallel for schedule(static) num_threads(threads_for(work, n_threads))
    for (index_t a = 0; a < outer; ++a) {
      const T* src = in + a * n_in;
      float* dst = out + a * n_out;
      for (index_t o = 0; o < n_out; ++o) {
        const double* w = taps.weights.data() + taps.offset[o];
        const index_t first = taps.first[o];
        const int count = taps.count[o];
        double acc = 0;
        if (first >= 0 && first + count <= n_in) {
          for (int t = 0; t < count; ++t) acc += w[t] * static_cast<double>(src[first + t]);
        } else {
          for (int t = 0; t < count; ++t) {
            const index_t p = std::min(std::max<index_t>(first + t, 0), n_in - 1);
            acc += w[t] * static_cast<double>(src[p]);
          }
        }
        dst[o] = static_cast<float>(acc);
      }
    }
    return;
  }
  for_each_line_block(outer, inner, n_threads, [&](index_t a, index_t b0, index_t b1) {
    double acc[512];
    const index_t width = b1 - b0;
    for (index_t o = 0; o < n_out; ++o) {
      const double* w = taps.weights.data() + taps.offset[o];
      std::fill(acc, acc + width, 0.0);
      for (int t = 0; t < taps.count[o]; ++t) {
        const index_t p = std::min(std::max<index_t>(taps.first[o] + t, 0), n_in - 1);
        const T* row = in + (a * n_in + p) * inner + b0;
        const double wt = w[t];
        for (index_t b = 0; b < width; ++b) acc[b] += wt * static_cast<double>(row[b]);
      }
      float* dst = out + (a * n_out + o) * inner + b0;
      for (index_t b = 0; b < width; ++b) dst[b] = static_cast<float>(acc[b]);
    }
  });
}

// Smooth with per-axis sigma (voxels) and shrink by integer factors, 3D (k, j, i).
template <class T>
void smooth_shrink(const T* in, float* out, const index_t shape[3], const int shrink[3],
                   const double sigma_vox[3], int n_threads) {
  index_t n_out[3];
  for (int a = 0; a < 3; ++a) n_out[a] = std::max<index_t>(1, shape[a] / shrink[a]);
  // Along i first: the largest reduction comes first when the array is big.
  std::vector<float> t1(static_cast<std::size_t>(shape[0] * shape[1] * n_out[2]));
  std::vector<float> t2(static_cast<std::size_t>(shape[0] * n_out[1] * n_out[2]));
  smooth_axis(in, t1.data(), shape[0] * shape[1], shape[2], 1,
              AxisTaps(n_out[2], shrink[2], sigma_vox[2]), n_threads);
  smooth_axis(t1.data(), t2.data(), shape[0], shape[1], n_out[2],
              AxisTaps(n_out[1], shrink[1], sigma_vox[1]), n_threads);
  smooth_axis(t2.data(), out, 1, shape[0], n_out[1] * n_out[2],
              AxisTaps(n_out[0], shrink[0], sigma_vox[0]), n_threads);
}

// ---------------------------------------------------------------- dense fields
// A dense vector field on a grid is stored as three component planes (x, y, z in LPS mm), each of
// the grid's shape: component c of voxel n at field[c * n_voxels + n].

// Local normalised cross-correlation over (2r+1)^3 windows and its force (Avants et al. 2008,
// "Symmetric diffeomorphic image registration", eq. for the CC gradient): with local means and
// centred moments sff, smm, sfm at x, cc = sfm^2 / (sff smm) and
// d cc / d m(x) = 2 sfm / (sff smm) (f~ - sfm / smm m~), f~ = f - mean f, m~ = m - mean m.
// force = that derivative times grad m (the direction that increases cc). Returns mean cc over
// the voxels (mask != 0 when a mask is given).
//
// The window means of f, m, f^2, m^2 and f m are separable running sums (border voxels
// replicated) in three passes: along i straight from the images, along j in place slab by slab,
// and along k fused with the force, so the five statistics are written once and read twice.
inline double lncc_force(const float* fixed, const float* warped, const float* gradient,
                         const std::uint8_t* mask, const index_t shape[3], const int radius[3],
                         float* force, int n_threads) {
  constexpr int kStats = 5;
  const index_t nk = shape[0], nj = shape[1], ni = shape[2], sk = nj * ni, n = nk * sk;
  const index_t rk = radius[0], rj = radius[1], ri = radius[2];
  std::vector<float> stats(static_cast<std::size_t>(kStats * n));
  float* S = stats.data();
  const int nt = field_threads(n, n_threads);
  // Pass 1, along i: window sums of the five products of each row.
#pragma omp parallel num_threads(nt)
  {
    std::vector<double> prod(static_cast<std::size_t>(kStats * (ni + 2 * ri)));
#pragma omp for schedule(static)
    for (index_t row = 0; row < nk * nj; ++row) {
      const float* f = fixed + row * ni;
      const float* m = warped + row * ni;
      const index_t len = ni + 2 * ri;
      for (index_t t = 0; t < len; ++t) {
        const index_t p = clamp_index(t - ri, ni);
        const double a = f[p], b = m[p];
        double* q = prod.data() + kStats * t;
        q[0] = a;
        q[1] = b;
        q[2] = a * a;
        q[3] = b * b;
        q[4] = a * b;
      }
      double sum[kStats] = {0, 0, 0, 0, 0};
      for (index_t t = 0; t < 2 * ri + 1; ++t)
        for (int c = 0; c < kStats; ++c) sum[c] += prod[kStats * t + c];
      for (index_t i = 0; i < ni; ++i) {
        for (int c = 0; c < kStats; ++c) {
          S[c * n + row * ni + i] = static_cast<float>(sum[c]);
          if (i + 1 < ni) sum[c] += prod[kStats * (i + 2 * ri + 1) + c] - prod[kStats * i + c];
        }
      }
    }
  }
  // Pass 2, along j: each (statistic, k) slab from a copy of itself.
#pragma omp parallel num_threads(nt)
  {
    std::vector<float> slab(static_cast<std::size_t>(sk));
    std::vector<double> sum(static_cast<std::size_t>(ni));
#pragma omp for schedule(static)
    for (index_t job = 0; job < kStats * nk; ++job) {
      float* base = S + (job / nk) * n + (job % nk) * sk;
      std::copy(base, base + sk, slab.data());
      auto row = [&](index_t t) { return slab.data() + clamp_index(t, nj) * ni; };
      std::fill(sum.begin(), sum.end(), 0.0);
      for (index_t t = -rj; t <= rj; ++t) {
        const float* r = row(t);
        for (index_t i = 0; i < ni; ++i) sum[i] += r[i];
      }
      for (index_t j = 0; j < nj; ++j) {
        float* dst = base + j * ni;
        const float* add = row(j + rj + 1);
        const float* sub = row(j - rj);
        for (index_t i = 0; i < ni; ++i) {
          dst[i] = static_cast<float>(sum[i]);
          sum[i] += static_cast<double>(add[i]) - sub[i];
        }
      }
    }
  }
  // Pass 3, along k, fused with the force: column blocks of one j row, the cc sums per block
  // (fixed blocks, so any thread count adds them in the same order).
  constexpr index_t kColumns = 256;
  const index_t col_blocks = (ni + kColumns - 1) / kColumns, nb = nj * col_blocks;
  const double norm = 1.0 / (static_cast<double>(2 * rk + 1) * (2 * rj + 1) * (2 * ri + 1));
  constexpr double kEps = 1e-5;
  std::vector<double> part(static_cast<std::size_t>(2 * nb), 0.0);
#pragma omp parallel for schedule(static) num_threads(nt)
  for (index_t blk = 0; blk < nb; ++blk) {
    const index_t j = blk / col_blocks, i0 = (blk % col_blocks) * kColumns;
    const index_t w = std::min(kColumns, ni - i0);
    double sum[kStats][kColumns];
    auto at = [&](int c, index_t k) { return S + c * n + clamp_index(k, nk) * sk + j * ni + i0; };
    for (int c = 0; c < kStats; ++c) {
      std::fill(sum[c], sum[c] + w, 0.0);
      for (index_t t = -rk; t <= rk; ++t) {
        const float* r = at(c, t);
        for (index_t b = 0; b < w; ++b) sum[c][b] += r[b];
      }
    }
    double cc_sum = 0, count = 0;
    for (index_t k = 0; k < nk; ++k) {
      const index_t v0 = k * sk + j * ni + i0;
      for (index_t b = 0; b < w; ++b) {
        const index_t v = v0 + b;
        const double mf = sum[0][b] * norm, mm = sum[1][b] * norm;
        const double sff = sum[2][b] * norm - mf * mf, smm = sum[3][b] * norm - mm * mm;
        const double sfm = sum[4][b] * norm - mf * mm;
        double coef = 0;
        const bool use = !mask || mask[v];
        if (use && sff > kEps && smm > kEps) {
          cc_sum += sfm * sfm / (sff * smm);
          coef = 2 * sfm / (sff * smm) * ((fixed[v] - mf) - sfm / smm * (warped[v] - mm));
        }
        if (use) count += 1;
        for (int r = 0; r < 3; ++r)
          force[r * n + v] = static_cast<float>(coef * gradient[r * n + v]);
      }
      if (k + 1 < nk)
        for (int c = 0; c < kStats; ++c) {
          const float* add = at(c, k + rk + 1);
          const float* sub = at(c, k - rk);
          for (index_t b = 0; b < w; ++b) sum[c][b] += static_cast<double>(add[b]) - sub[b];
        }
    }
    part[2 * blk] = cc_sum;
    part[2 * blk + 1] = count;
  }
  double sum = 0, count = 0;
  for (index_t b = 0; b < nb; ++b) {
    sum += part[2 * b];
    count += part[2 * b + 1];
  }
  return count > 0 ? sum / count : 0.0;
}

// ---------------------------------------------------------------- fast field kernels (float32)

// The iteration of the deformable stage works on whole fields in float32: every voxel's taps
// come from its own index plus its displacement (no world coordinates per voxel), floors are
// integer conversions of non-negative values (the baseline x86-64 target has no rounding
// instruction), and each field pass is one parallel loop over all three components.

// Linear taps of a continuous index c on an axis of n voxels with LinearTaps::clamped's
// convention: below 0 (or NaN) the first two voxels at t = 0, at or beyond the last voxel that
// voxel twice (flat value, zero derivative).
struct FieldTap {
  index_t lo, hi;
  float t;
};

inline FieldTap field_tap(float c, index_t n) {
  if (!(c >= 0.0f)) return {0, n > 1 ? 1 : 0, 0.0f};
  const float last = static_cast<float>(n - 1);
  if (c >= last) return {n - 1, n - 1, 0.0f};
  const auto f = static_cast<index_t>(c);
  return {f, f + 1, c - static_cast<float>(f)};
}

// Trilinear values of the three component planes of `field` (plane size n) at taps (tk, tj, ti)
// of a grid with row strides sj, sk.
inline void sample_field3(const float* field, index_t n, index_t sk, index_t sj, const FieldTap& tk,
                          const FieldTap& tj, const FieldTap& ti, float out[3]) {
  const index_t o00 = tk.lo * sk + tj.lo * sj, o01 = tk.lo * sk + tj.hi * sj;
  const index_t o10 = tk.hi * sk + tj.lo * sj, o11 = tk.hi * sk + tj.hi * sj;
  for (int c = 0; c < 3; ++c) {
    const float* p = field + c * n;
    const float v[8] = {p[o00 + ti.lo], p[o00 + ti.hi], p[o01 + ti.lo], p[o01 + ti.hi],
                        p[o10 + ti.lo], p[o10 + ti.hi], p[o11 + ti.lo], p[o11 + ti.hi]};
    out[c] = trilinear_blend(v, tk.t, tj.t, ti.t);
  }
}

// out(x) = inner(x) + outer(x + inner(x)) on one grid, for fields of world displacements:
// `to_index` (3x3, row-major) maps a world displacement to an index displacement. Outer is read
// with clamped trilinear interpolation.
inline void compose_fields(const float* outer, const float* inner, const index_t shape[3],
                           const float to_index[9], float* out, int n_threads) {
  const index_t nk = shape[0], nj = shape[1], ni = shape[2], n = nk * nj * ni, sk = nj * ni;
#pragma omp parallel for collapse(2) schedule(static) num_threads(field_threads(n, n_threads))
  for (index_t k = 0; k < nk; ++k)
    for (index_t j = 0; j < nj; ++j) {
      const index_t row = k * sk + j * ni;
      for (index_t i = 0; i < ni; ++i) {
        const index_t v = row + i;
        const float d[3] = {inner[v], inner[n + v], inner[2 * n + v]};
        const float* M = to_index;
        const float ck = static_cast<float>(k) + M[0] * d[0] + M[1] * d[1] + M[2] * d[2];
        const float cj = static_cast<float>(j) + M[3] * d[0] + M[4] * d[1] + M[5] * d[2];
        const float ci = static_cast<float>(i) + M[6] * d[0] + M[7] * d[1] + M[8] * d[2];
        float o[3];
        sample_field3(outer, n, sk, ni, field_tap(ck, nk), field_tap(cj, nj), field_tap(ci, ni), o);
        for (int c = 0; c < 3; ++c) out[c * n + v] = d[c] + o[c];
      }
    }
}

// Largest vector length of a three-plane field (plane size n); the order of a max does not
// change it, so any thread count gives the same value.
inline double field_max_norm(const float* field, index_t n, int n_threads) {
  double best = 0;
#pragma omp parallel for schedule(static) reduction(max : best) \
    num_threads(field_threads(n, n_threads))
  for (index_t v = 0; v < n; ++v) {
    const double a = field[v], b = field[n + v], c = field[2 * n + v];
    const double s = a * a + b * b + c * c;
    if (s > best) best = s;
  }
  return std::sqrt(best);
}

// exp(v) by scaling and squaring (Arsigny et al. 2006): d = v / 2^n, then n times d <- d o d.
// `scratch` and `out` hold a field each; the result lands in `out`.
inline void field_exponential(const float* v, const index_t shape[3], const float to_index[9],
                              int n_squarings, float* out, float* scratch, int n_threads) {
  const index_t n = shape[0] * shape[1] * shape[2];
  // Ping-pong so that the last squaring writes `out`.
  float* a = (n_squarings % 2 == 0) ? out : scratch;
  float* b = (a == out) ? scratch : out;
  const float scale = std::ldexp(1.0f, -n_squarings);
#pragma omp parallel for schedule(static) num_threads(field_threads(3 * n, n_threads))
  for (index_t q = 0; q < 3 * n; ++q) a[q] = v[q] * scale;
  for (int s = 0; s < n_squarings; ++s) {
    compose_fields(a, a, shape, to_index, b, n_threads);
    std::swap(a, b);
  }
}

// Gaussian of sigma_vox (truncated at 3 sigma, weights renormalised, border voxels replicated:
// smooth_shrink's filter at shrink 1) along every axis of `count` planes, in place, in float.
inline std::vector<float> gaussian_weights(double sigma_vox, int& radius) {
  radius = static_cast<int>(std::ceil(3 * sigma_vox));
  std::vector<double> w(static_cast<std::size_t>(2 * radius + 1));
  double sum = 0;
  for (int t = -radius; t <= radius; ++t)
    sum += w[t + radius] = std::exp(-0.5 * t * t / (sigma_vox * sigma_vox));
  std::vector<float> out(w.size());
  for (std::size_t t = 0; t < w.size(); ++t) out[t] = static_cast<float>(w[t] / sum);
  return out;
}

inline void gaussian_planes(float* data, int count, const index_t shape[3], double sigma_vox,
                            int n_threads) {
  if (!(sigma_vox >= 0.2)) return;  // smooth_shrink's threshold: below it, no smoothing
  int r = 0;
  const std::vector<float> w = gaussian_weights(sigma_vox, r);
  const int taps = 2 * r + 1;
  const index_t nk = shape[0], nj = shape[1], ni = shape[2], sk = nj * ni, n = nk * sk;
  const int nt = field_threads(count * n, n_threads);
  // Along i: each row through a padded copy.
#pragma omp parallel num_threads(nt)
  {
    std::vector<float> buf(static_cast<std::size_t>(ni + 2 * r)), acc(static_cast<std::size_t>(ni));
#pragma omp for schedule(static)
    for (index_t row = 0; row < count * nk * nj; ++row) {
      float* line = data + row * ni;
      for (index_t t = 0; t < ni + 2 * r; ++t) buf[t] = line[clamp_index(t - r, ni)];
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int t = 0; t < taps; ++t) {
        const float wt = w[t];
        const float* src = buf.data() + t;
        for (index_t i = 0; i < ni; ++i) acc[i] += wt * src[i];
      }
      std::copy(acc.begin(), acc.end(), line);
    }
  }
  // Along j and k: whole rows of i at once, from a copy of the lines being filtered.
  auto strided = [&](index_t outer, index_t len, index_t stride, index_t width) {
#pragma omp parallel num_threads(nt)
    {
      std::vector<float> copy(static_cast<std::size_t>(len * width)),
          acc(static_cast<std::size_t>(width));
      const index_t blocks = (stride + width - 1) / width;
#pragma omp for schedule(static)
      for (index_t job = 0; job < outer * blocks; ++job) {
        const index_t a = job / blocks, b0 = (job % blocks) * width;
        const index_t wd = std::min(width, stride - b0);
        float* base = data + a * len * stride + b0;
        for (index_t t = 0; t < len; ++t)
          std::copy(base + t * stride, base + t * stride + wd, copy.data() + t * wd);
        for (index_t o = 0; o < len; ++o) {
          std::fill(acc.begin(), acc.begin() + wd, 0.0f);
          for (int t = 0; t < taps; ++t) {
            const float wt = w[t];
            const float* src = copy.data() + clamp_index(o + t - r, len) * wd;
            for (index_t b = 0; b < wd; ++b) acc[b] += wt * src[b];
          }
          std::copy(acc.begin(), acc.begin() + wd, base + o * stride);
        }
      }
    }
  };
  strided(count * nk, nj, ni, ni);  // along j: one k-slab of one plane per job
  strided(count, nk, sk, 1024);     // along k: column blocks of one plane per job
}

// One update of the velocity: the force u smoothed by sigma_u, scaled so that its largest
// vector is step (mm), added to v, and v smoothed by sigma_v; u is overwritten. Returns the
// largest force vector after smoothing (0: v is left unchanged).
inline double velocity_update(float* v, float* u, const index_t shape[3], double sigma_u,
                              double sigma_v, double step, int n_threads) {
  const index_t n = shape[0] * shape[1] * shape[2];
  gaussian_planes(u, 3, shape, sigma_u, n_threads);
  const double umax = field_max_norm(u, n, n_threads);
  if (!(umax > 0)) return 0.0;
  const float scale = static_cast<float>(step / umax);
#pragma omp parallel for schedule(static) num_threads(field_threads(3 * n, n_threads))
  for (index_t q = 0; q < 3 * n; ++q) v[q] += scale * u[q];
  gaussian_planes(v, 3, shape, sigma_v, n_threads);
  return umax;
}

// The moving image read at x + d(x) for every voxel x of the grid and the gradient of that value
// with respect to the displaced point in world coordinates (d's own derivative left out, as in
// demons forces; zero outside the moving image, whose border voxels extend outward), from
// `to_moving_index` (3x4: grid index -> moving index, affine folded in) and `disp_to_moving` (3x3:
// world displacement -> moving index displacement), in float.
//
// The displacement lives on the grid itself (`to_field` null) or on another grid of shape
// `dshape`, read with clamped trilinear interpolation at to_field (3x4: grid index -> field
// index), which spares a coarse velocity's exponential the trip through a full-size field.
inline void warp_field_gradient(const float* moving, const index_t mshape[3],
                                const index_t shape[3], const float to_moving_index[12],
                                const float disp_to_moving[9], const float* displacement,
                                const index_t dshape[3], const float* to_field, float* out,
                                float* gradient, int n_threads) {
  const index_t dsk = dshape[1] * dshape[2], dsj = dshape[2], dn = dshape[0] * dsk;
  const index_t nk = shape[0], nj = shape[1], ni = shape[2], n = nk * nj * ni;
  const index_t mk = mshape[0], mj = mshape[1], mi = mshape[2], msj = mi, msk = mj * mi;
  const float* P = to_moving_index;
  const float* Q = disp_to_moving;
#pragma omp parallel for collapse(2) schedule(static) num_threads(field_threads(n, n_threads))
  for (index_t k = 0; k < nk; ++k)
    for (index_t j = 0; j < nj; ++j) {
      const float fk = static_cast<float>(k), fj = static_cast<float>(j);
      float base[3];
      for (int r = 0; r < 3; ++r) base[r] = P[4 * r] * fk + P[4 * r + 1] * fj + P[4 * r + 3];
      for (index_t i = 0; i < ni; ++i) {
        const index_t v = (k * nj + j) * ni + i;
        const float fi = static_cast<float>(i);
        float d[3];
        if (!to_field) {
          for (int r = 0; r < 3; ++r) d[r] = displacement[r * n + v];
        } else {
          const float* F = to_field;
          sample_field3(displacement, dn, dsk, dsj,
                        field_tap(F[0] * fk + F[1] * fj + F[2] * fi + F[3], dshape[0]),
                        field_tap(F[4] * fk + F[5] * fj + F[6] * fi + F[7], dshape[1]),
                        field_tap(F[8] * fk + F[9] * fj + F[10] * fi + F[11], dshape[2]), d);
        }
        float c[3];
        for (int r = 0; r < 3; ++r)
          c[r] = base[r] + P[4 * r + 2] * fi + Q[3 * r] * d[0] + Q[3 * r + 1] * d[1] +
                 Q[3 * r + 2] * d[2];
        const FieldTap tk = field_tap(c[0], mk), tj = field_tap(c[1], mj), ti = field_tap(c[2], mi);
        const index_t o00 = tk.lo * msk + tj.lo * msj, o01 = tk.lo * msk + tj.hi * msj;
        const index_t o10 = tk.hi * msk + tj.lo * msj, o11 = tk.hi * msk + tj.hi * msj;
        const float s[8] = {moving[o00 + ti.lo], moving[o00 + ti.hi], moving[o01 + ti.lo],
                            moving[o01 + ti.hi], moving[o10 + ti.lo], moving[o10 + ti.hi],
                            moving[o11 + ti.lo], moving[o11 + ti.hi]};
        float g[3];
        out[v] = trilinear_blend(s, tk.t, tj.t, ti.t, g);
        const bool inside = c[0] >= -0.5f && c[0] < static_cast<float>(mk) - 0.5f &&
                            c[1] >= -0.5f && c[1] < static_cast<float>(mj) - 0.5f &&
                            c[2] >= -0.5f && c[2] < static_cast<float>(mi) - 0.5f;
        for (int r = 0; r < 3; ++r)
          gradient[r * n + v] = inside ? Q[r] * g[0] + Q[3 + r] * g[1] + Q[6 + r] * g[2] : 0.0f;
      }
    }
}

// A three-plane field read (clamped trilinear) at the voxels of another grid: `to_source`
// (3x4) maps a voxel index of the output grid to the continuous index of the source grid.
inline void resample_field(const float* field, const index_t src_shape[3], const index_t shape[3],
                           const float to_source[12], float* out, int n_threads) {
  const index_t sk = src_shape[1] * src_shape[2], sj = src_shape[2], sn = src_shape[0] * sk;
  const index_t nk = shape[0], nj = shape[1], ni = shape[2], n = nk * nj * ni;
  const float* P = to_source;
#pragma omp parallel for collapse(2) schedule(static) num_threads(field_threads(n, n_threads))
  for (index_t k = 0; k < nk; ++k)
    for (index_t j = 0; j < nj; ++j) {
      const float fk = static_cast<float>(k), fj = static_cast<float>(j);
      float base[3];
      for (int r = 0; r < 3; ++r) base[r] = P[4 * r] * fk + P[4 * r + 1] * fj + P[4 * r + 3];
      for (index_t i = 0; i < ni; ++i) {
        const index_t v = (k * nj + j) * ni + i;
        const float fi = static_cast<float>(i);
        float o[3];
        sample_field3(field, sn, sk, sj, field_tap(base[0] + P[2] * fi, src_shape[0]),
                      field_tap(base[1] + P[6] * fi, src_shape[1]),
                      field_tap(base[2] + P[10] * fi, src_shape[2]), o);
        for (int c = 0; c < 3; ++c) out[c * n + v] = o[c];
      }
    }
}

}  // namespace medkern
