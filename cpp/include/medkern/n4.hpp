// N4 bias-field correction (Tustison et al., IEEE TMI 29(6) 2010), the algorithm of ITK's
// N4BiasFieldCorrectionImageFilter:
//   log bias field = cubic B-spline on a control-point lattice over the image domain;
//   each iteration sharpens the histogram of the current log-corrected image by Wiener
//   deconvolution of a Gaussian (Sled et al., IEEE TMI 17(1) 1998, the N3 step), fits the
//   residual (log image - sharpened) with one level of B-spline approximation (Lee, Wolberg and
//   Shin, IEEE TVCG 3(3) 1997) and adds the fitted control points to the lattice;
//   iterations stop at a coefficient of variation of exp(old field - new field) below the
//   threshold; each further fitting level doubles the lattice resolution (B-spline subdivision).
//
// Volumes are 3D (2D images are one slice whose axis gets a constant basis). The data points sit
// on a grid, so the B-spline fit and the field evaluation are separable tensor contractions:
// 4 multiply-adds per voxel and axis instead of 4^3 per voxel.
#pragma once
#include <array>
#include <complex>
#include <cstdint>
#include <vector>

#include "medkern/common.hpp"
#include "medkern/histogram.hpp"

namespace medkern {

// Uniform cubic B-spline basis on [0, 1): weights of control points first .. first + 3.
inline void cubic_bspline_weights(double t, double* w) {
  const double t2 = t * t, t3 = t2 * t, s = 1.0 - t;
  w[0] = s * s * s / 6.0;
  w[1] = (3.0 * t3 - 6.0 * t2 + 4.0) / 6.0;
  w[2] = (-3.0 * t3 + 3.0 * t2 + 3.0 * t + 1.0) / 6.0;
  w[3] = t3 / 6.0;
}

// Basis of one axis: samples at normalised positions u in [0, 1] on a lattice of `mesh` spans
// (mesh + 3 control points). u = 1 uses the last span at t = 1, the same value as the spline's
// limit there.
struct BsplineAxis {
  index_t n_control = 0;
  std::vector<index_t> first;
  std::vector<double> w;  // 4 per sample

  BsplineAxis(const double* u, index_t n, index_t mesh) : n_control(mesh + 3) {
    first.resize(static_cast<std::size_t>(n));
    w.resize(static_cast<std::size_t>(4 * n));
    for (index_t m = 0; m < n; ++m) {
      // u outside [0, 1] (or NaN) is clamped before the conversion, which indexes the lattice.
      const double p_raw = u[m] * static_cast<double>(mesh);
      const double p = p_raw >= 0.0 ? std::min(p_raw, static_cast<double>(mesh)) : 0.0;
      index_t idx = static_cast<index_t>(std::floor(p));
      idx = std::min(std::max<index_t>(idx, 0), mesh - 1);
      first[static_cast<std::size_t>(m)] = idx;
      cubic_bspline_weights(p - static_cast<double>(idx), &w[static_cast<std::size_t>(4 * m)]);
    }
  }
  index_t size() const { return static_cast<index_t>(first.size()); }
  BsplineAxis powered(int power) const {
    BsplineAxis out = *this;
    for (double& v : out.w) v = power == 2 ? v * v : v * v * v;
    return out;
  }
  double sum_of_squares(index_t m) const {
    const double* q = &w[static_cast<std::size_t>(4 * m)];
    return q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3];
  }
};

using BsplineAxes = std::array<const BsplineAxis*, 3>;

// Scatter: L[c0,c1,c2] = sum_{k,j,i} B0(k,c0) B1(j,c1) B2(i,c2) g[k,j,i], axis by axis. Every
// output element is summed in a fixed order, so the result does not depend on the threads.
inline std::vector<double> bspline_scatter(const double* g, const BsplineAxes& ax, int n_threads) {
  const BsplineAxis &a0 = *ax[0], &a1 = *ax[1], &a2 = *ax[2];
  const index_t K = a0.size(), J = a1.size(), I = a2.size();
  const index_t n0 = a0.n_control, n1 = a1.n_control, n2 = a2.n_control;
  std::vector<double> t2(static_cast<std::size_t>(K * n1 * n2), 0.0);
#pragma omp parallel num_threads(clamp_threads(n_threads))
  {
    std::vector<double> t1(static_cast<std::size_t>(n2));
#pragma omp for schedule(static)
    for (index_t k = 0; k < K; ++k) {
      double* plane = &t2[static_cast<std::size_t>(k * n1 * n2)];
      for (index_t j = 0; j < J; ++j) {
        std::fill(t1.begin(), t1.end(), 0.0);
        const double* row = g + (k * J + j) * I;
        for (index_t i = 0; i < I; ++i) {
          const double v = row[i];
          if (v == 0.0) continue;
          const double* w = &a2.w[static_cast<std::size_t>(4 * i)];
          double* d = &t1[static_cast<std::size_t>(a2.first[static_cast<std::size_t>(i)])];
          d[0] += w[0] * v;
          d[1] += w[1] * v;
          d[2] += w[2] * v;
          d[3] += w[3] * v;
        }
        const double* w = &a1.w[static_cast<std::size_t>(4 * j)];
        for (int a = 0; a < 4; ++a) {
          double* d = plane + (a1.first[static_cast<std::size_t>(j)] + a) * n2;
          for (index_t c = 0; c < n2; ++c) d[c] += w[a] * t1[static_cast<std::size_t>(c)];
        }
      }
    }
  }
  const index_t n12 = n1 * n2;
  std::vector<double> lattice(static_cast<std::size_t>(n0 * n12), 0.0);
#pragma omp parallel for schedule(static) num_threads(clamp_threads(n_threads))
  for (index_t c = 0; c < n12; ++c)
    for (index_t k = 0; k < K; ++k) {
      const double v = t2[static_cast<std::size_t>(k * n12 + c)];
      const double* w = &a0.w[static_cast<std::size_t>(4 * k)];
      for (int a = 0; a < 4; ++a)
        lattice[static_cast<std::size_t>((a0.first[static_cast<std::size_t>(k)] + a) * n12 + c)] +=
            w[a] * v;
    }
  return lattice;
}

// Gather: f[k,j,i] = sum_c phi[c0,c1,c2] B0(k,c0) B1(j,c1) B2(i,c2); store(index, value) is
// called once per voxel.
template <class Store>
void bspline_evaluate(const double* phi, const BsplineAxes& ax, Store&& store, int n_threads) {
  const BsplineAxis &a0 = *ax[0], &a1 = *ax[1], &a2 = *ax[2];
  const index_t K = a0.size(), J = a1.size(), I = a2.size();
  const index_t n1 = a1.n_control, n2 = a2.n_control;
#pragma omp parallel num_threads(clamp_threads(n_threads))
  {
    std::vector<double> e1(static_cast<std::size_t>(n1 * n2)), e2(static_cast<std::size_t>(n2));
#pragma omp for schedule(static)
    for (index_t k = 0; k < K; ++k) {
      const double* w0 = &a0.w[static_cast<std::size_t>(4 * k)];
      const double* p0 = phi + a0.first[static_cast<std::size_t>(k)] * n1 * n2;
      for (index_t c = 0; c < n1 * n2; ++c)
        e1[static_cast<std::size_t>(c)] = w0[0] * p0[c] + w0[1] * p0[c + n1 * n2] +
                                          w0[2] * p0[c + 2 * n1 * n2] + w0[3] * p0[c + 3 * n1 * n2];
      for (index_t j = 0; j < J; ++j) {
        const double* w1 = &a1.w[static_cast<std::size_t>(4 * j)];
        const double* p1 =
            &e1[static_cast<std::size_t>(a1.first[static_cast<std::size_t>(j)] * n2)];
        for (index_t c = 0; c < n2; ++c)
          e2[static_cast<std::size_t>(c)] =
              w1[0] * p1[c] + w1[1] * p1[c + n2] + w1[2] * p1[c + 2 * n2] + w1[3] * p1[c + 3 * n2];
        const index_t base = (k * J + j) * I;
        for (index_t i = 0; i < I; ++i) {
          const double* w2 = &a2.w[static_cast<std::size_t>(4 * i)];
          const double* p2 = &e2[static_cast<std::size_t>(a2.first[static_cast<std::size_t>(i)])];
          store(base + i, w2[0] * p2[0] + w2[1] * p2[1] + w2[2] * p2[2] + w2[3] * p2[3]);
        }
      }
    }
  }
}

// Cubic B-spline subdivision along one axis (mesh -> 2 mesh spans, same function): a control
// point centred at c - 1 splits into the fine ones at 2(c - 1) + m with weights (1,4,6,4,1)/8.
inline std::vector<double> bspline_refine_axis(const std::vector<double>& phi,
                                               const std::array<index_t, 3>& n, int axis) {
  std::array<index_t, 3> out_n = n;
  out_n[axis] = 2 * (n[axis] - 3) + 3;
  static const double kSplit[5] = {1.0 / 8, 4.0 / 8, 6.0 / 8, 4.0 / 8, 1.0 / 8};
  std::vector<double> out(static_cast<std::size_t>(out_n[0] * out_n[1] * out_n[2]), 0.0);
  const index_t stride_out = axis == 0 ? out_n[1] * out_n[2] : axis == 1 ? out_n[2] : 1;
  for (index_t a = 0; a < n[0]; ++a)
    for (index_t b = 0; b < n[1]; ++b)
      for (index_t c = 0; c < n[2]; ++c) {
        const index_t idx[3] = {a, b, c};
        const index_t src = (a * n[1] + b) * n[2] + c;
        const index_t coarse = idx[axis];
        index_t base_out = 0;
        for (int d = 0; d < 3; ++d) {
          if (d == axis) continue;
          const index_t stride = d == 0 ? out_n[1] * out_n[2] : d == 1 ? out_n[2] : 1;
          base_out += idx[d] * stride;
        }
        for (int m = -2; m <= 2; ++m) {
          const index_t fine = 2 * coarse - 1 + m;
          if (fine < 0 || fine >= out_n[axis]) continue;
          out[static_cast<std::size_t>(base_out + fine * stride_out)] +=
              kSplit[m + 2] * phi[static_cast<std::size_t>(src)];
        }
      }
  return out;
}

// Radix-2 complex FFT in place (n a power of two), unnormalised in both directions like vnl_fft.
inline void fft_radix2(std::vector<std::complex<double>>& a, bool inverse) {
  const std::size_t n = a.size();
  for (std::size_t i = 1, j = 0; i < n; ++i) {
    std::size_t bit = n >> 1;
    for (; j & bit; bit >>= 1) j ^= bit;
    j ^= bit;
    if (i < j) std::swap(a[i], a[j]);
  }
  const double pi = 3.14159265358979323846;
  for (std::size_t len = 2; len <= n; len <<= 1) {
    const double ang = 2.0 * pi / static_cast<double>(len) * (inverse ? 1.0 : -1.0);
    for (std::size_t i = 0; i < n; i += len)
      for (std::size_t k = 0; k < len / 2; ++k) {
        const std::complex<double> w(std::cos(ang * double(k)), std::sin(ang * double(k)));
        const std::complex<double> u = a[i + k], v = a[i + k + len / 2] * w;
        a[i + k] = u + v;
        a[i + k + len / 2] = u - v;
      }
  }
}

struct N4Settings {
  std::array<index_t, 3> control_points{4, 4, 4};  // initial lattice, per axis (>= 4)
  std::array<bool, 3> refine{true, true, true};    // false on a one-voxel axis
  std::vector<int> iterations{50, 50, 50, 50};     // per fitting level
  int histogram_bins = 200;
  double fwhm = 0.15;
  double wiener_noise = 0.01;
  double convergence = 0.001;
};

struct N4Result {
  std::vector<double> lattice;
  std::array<index_t, 3> lattice_shape{};
  std::vector<int> iterations;      // run at each level
  std::vector<double> convergence;  // last measurement at each level
};

// Fixed-size blocks for floating-point reductions: same partial sums for any thread count.
constexpr index_t kN4Block = 1 << 14;

// Histogram sharpening (N3/N4): the expected true log intensity E[u | v] of each masked value v,
// written to `sharpened`; unmasked entries are left alone.
inline void n4_sharpen(const double* v, const std::uint8_t* mask, index_t n, const N4Settings& s,
                       double* sharpened, int n_threads) {
  const index_t n_blocks = (n + kN4Block - 1) / kN4Block;
  double lo = INFINITY, hi = -INFINITY;
#pragma omp parallel for schedule(static) reduction(min : lo) reduction(max : hi) \
    num_threads(clamp_threads(n_threads))
  for (index_t i = 0; i < n; ++i)
    if (mask[i]) {
      lo = std::min(lo, v[i]);
      hi = std::max(hi, v[i]);
    }
  const int nb = s.histogram_bins;
  const double slope = (hi - lo) / static_cast<double>(nb - 1);
  if (!(slope > 0.0)) {
    for (index_t i = 0; i < n; ++i)
      if (mask[i]) sharpened[i] = v[i];
    return;
  }
  // Triangular Parzen window (ITK: a value on a bin centre counts once, others split linearly).
  std::vector<double> partial(static_cast<std::size_t>(n_blocks * nb), 0.0);
#pragma omp parallel for schedule(static) num_threads(clamp_threads(n_threads))
  for (index_t b = 0; b < n_blocks; ++b) {
    double* h = &partial[static_cast<std::size_t>(b * nb)];
    for (index_t i = b * kN4Block; i < std::min(n, (b + 1) * kN4Block); ++i) {
      if (!mask[i]) continue;
      const double c = (v[i] - lo) / slope;
      // Only bin positions inside the histogram are converted and counted: a non-finite log
      // intensity (or range) gives NaN or +-inf here, whose conversion would index anywhere.
      if (!(c >= 0.0 && c < static_cast<double>(nb))) continue;
      const auto idx = static_cast<index_t>(std::floor(c));
      const double off = c - static_cast<double>(idx);
      if (off == 0.0) {
        h[idx] += 1.0;
      } else if (idx < nb - 1) {
        h[idx] += 1.0 - off;
        h[idx + 1] += off;
      }
    }
  }
  std::vector<double> hist(static_cast<std::size_t>(nb), 0.0);
  for (index_t b = 0; b < n_blocks; ++b)
    for (int i = 0; i < nb; ++i)
      hist[static_cast<std::size_t>(i)] += partial[static_cast<std::size_t>(b * nb + i)];

  // Zero-padded to a power of two at least twice the bin count, histogram centred.
  const int padded = 1 << (static_cast<int>(std::ceil(std::log2(static_cast<double>(nb)))) + 1);
  const int offset = (padded - nb) / 2;
  using cplx = std::complex<double>;
  std::vector<cplx> V(static_cast<std::size_t>(padded), cplx(0.0, 0.0));
  for (int i = 0; i < nb; ++i)
    V[static_cast<std::size_t>(i + offset)] = hist[static_cast<std::size_t>(i)];
  fft_radix2(V, false);

  // Gaussian of the bias field's log-intensity blur, FWHM in bins (wrapped around zero).
  const double fwhm_bins = s.fwhm / slope;
  const double exp_factor = 4.0 * std::log(2.0) / (fwhm_bins * fwhm_bins);
  const double scale = 2.0 * std::sqrt(std::log(2.0) / 3.14159265358979323846) / fwhm_bins;
  std::vector<cplx> F(static_cast<std::size_t>(padded), cplx(0.0, 0.0));
  F[0] = scale;
  for (int i = 1; i <= padded / 2; ++i)
    F[static_cast<std::size_t>(i)] = F[static_cast<std::size_t>(padded - i)] =
        scale * std::exp(-double(i) * double(i) * exp_factor);
  fft_radix2(F, false);

  // Wiener deconvolution of the histogram by the Gaussian.
  std::vector<cplx> U(static_cast<std::size_t>(padded));
  for (int i = 0; i < padded; ++i) {
    const cplx c = std::conj(F[static_cast<std::size_t>(i)]);
    const cplx g = c / (c * F[static_cast<std::size_t>(i)] + s.wiener_noise);
    U[static_cast<std::size_t>(i)] = V[static_cast<std::size_t>(i)] * g.real();
  }
  fft_radix2(U, true);
  for (cplx& u : U) u = std::max(u.real(), 0.0);

  // E[u | v] = (G * (u U)) / (G * U), both convolutions through the same transforms.
  std::vector<cplx> num(static_cast<std::size_t>(padded)), den(U);
  for (int i = 0; i < padded; ++i)
    num[static_cast<std::size_t>(i)] =
        (lo + (double(i) - offset) * slope) * U[static_cast<std::size_t>(i)].real();
  fft_radix2(num, false);
  fft_radix2(den, false);
  for (int i = 0; i < padded; ++i) {
    num[static_cast<std::size_t>(i)] *= F[static_cast<std::size_t>(i)];
    den[static_cast<std::size_t>(i)] *= F[static_cast<std::size_t>(i)];
  }
  fft_radix2(num, true);
  fft_radix2(den, true);
  std::vector<double> E(static_cast<std::size_t>(nb));
  for (int i = 0; i < nb; ++i) {
    const double d = den[static_cast<std::size_t>(i + offset)].real();
    E[static_cast<std::size_t>(i)] =
        d != 0.0 ? num[static_cast<std::size_t>(i + offset)].real() / d : 0.0;
  }
#pragma omp parallel for schedule(static) num_threads(clamp_threads(n_threads))
  for (index_t i = 0; i < n; ++i) {
    if (!mask[i]) continue;
    const double c_raw = (v[i] - lo) / slope;
    const double c = c_raw >= 0.0 ? std::min(c_raw, static_cast<double>(nb - 1)) : 0.0;  // NaN -> 0
    const auto idx = static_cast<index_t>(std::floor(c));
    sharpened[i] = idx < nb - 1
                       ? E[static_cast<std::size_t>(idx)] + (E[static_cast<std::size_t>(idx + 1)] -
                                                             E[static_cast<std::size_t>(idx)]) *
                                                                (c - double(idx))
                       : E[static_cast<std::size_t>(nb - 1)];
  }
}

// Coefficient of variation of exp(a - b) over the mask (ITK's convergence measurement, with the
// sample standard deviation), by blocked two-pass sums.
inline double n4_convergence(const double* a, const double* b, const std::uint8_t* mask, index_t n,
                             int n_threads) {
  const index_t n_blocks = (n + kN4Block - 1) / kN4Block;
  std::vector<double> sum(static_cast<std::size_t>(n_blocks)),
      cnt(static_cast<std::size_t>(n_blocks)), dev(static_cast<std::size_t>(n_blocks));
#pragma omp parallel for schedule(static) num_threads(clamp_threads(n_threads))
  for (index_t blk = 0; blk < n_blocks; ++blk) {
    double s = 0, c = 0;
    for (index_t i = blk * kN4Block; i < std::min(n, (blk + 1) * kN4Block); ++i)
      if (mask[i]) {
        s += std::exp(a[i] - b[i]);
        c += 1;
      }
    sum[static_cast<std::size_t>(blk)] = s;
    cnt[static_cast<std::size_t>(blk)] = c;
  }
  double total = 0, count = 0;
  for (index_t blk = 0; blk < n_blocks; ++blk) {
    total += sum[static_cast<std::size_t>(blk)];
    count += cnt[static_cast<std::size_t>(blk)];
  }
  if (count < 2) return 0.0;
  const double mean = total / count;
#pragma omp parallel for schedule(static) num_threads(clamp_threads(n_threads))
  for (index_t blk = 0; blk < n_blocks; ++blk) {
    double d = 0;
    for (index_t i = blk * kN4Block; i < std::min(n, (blk + 1) * kN4Block); ++i)
      if (mask[i]) {
        const double e = std::exp(a[i] - b[i]) - mean;
        d += e * e;
      }
    dev[static_cast<std::size_t>(blk)] = d;
  }
  double ss = 0;
  for (double d : dev) ss += d;
  return std::sqrt(ss / (count - 1)) / mean;
}

// The N4 iterations on log intensities `log_image` (shape, C order) with a mask; u[a] are the
// normalised positions (0..1) of the samples along axis a.
inline N4Result n4_fit(const double* log_image, const std::uint8_t* mask, const index_t* shape,
                       const std::array<const double*, 3>& u, const N4Settings& s, int n_threads) {
  const index_t n = shape[0] * shape[1] * shape[2];
  // Each iteration is a dozen light passes over the (shrunk) grid.
  n_threads = threads_for(n, n_threads);
  std::vector<double> field(static_cast<std::size_t>(n), 0.0), next(static_cast<std::size_t>(n)),
      uncorrected(static_cast<std::size_t>(n)), sharpened(static_cast<std::size_t>(n)),
      g(static_cast<std::size_t>(n));
  std::array<index_t, 3> mesh{};
  for (int a = 0; a < 3; ++a) mesh[a] = s.control_points[a] - 3;
  N4Result res;
  std::vector<double> mask_d(static_cast<std::size_t>(n));
  for (index_t i = 0; i < n; ++i) mask_d[static_cast<std::size_t>(i)] = mask[i] ? 1.0 : 0.0;
  res.lattice.assign(static_cast<std::size_t>((mesh[0] + 3) * (mesh[1] + 3) * (mesh[2] + 3)), 0.0);

  for (std::size_t level = 0; level < s.iterations.size(); ++level) {
    const BsplineAxis b0(u[0], shape[0], mesh[0]), b1(u[1], shape[1], mesh[1]),
        b2(u[2], shape[2], mesh[2]);
    const BsplineAxis sq0 = b0.powered(2), sq1 = b1.powered(2), sq2 = b2.powered(2);
    const BsplineAxis cu0 = b0.powered(3), cu1 = b1.powered(3), cu2 = b2.powered(3);
    const BsplineAxes basis{&b0, &b1, &b2}, squares{&sq0, &sq1, &sq2}, cubes{&cu0, &cu1, &cu2};
    // Lee et al. 1997: phi_c = sum_p w_pc^2 phi_pc / sum_p w_pc^2 with phi_pc = w_pc v_p / sum_c
    // w_pc^2, i.e. sum_p w_pc^3 (v_p / sum_c w_pc^2) over sum_p w_pc^2; the denominator is fixed
    // per level.
    const std::vector<double> omega = bspline_scatter(mask_d.data(), squares, n_threads);
    const index_t J = shape[1], I = shape[2];
    int it = 0;
    double cv = INFINITY;
    while (it < s.iterations[level] && cv > s.convergence) {
      ++it;
#pragma omp parallel for schedule(static) num_threads(clamp_threads(n_threads))
      for (index_t i = 0; i < n; ++i)
        uncorrected[static_cast<std::size_t>(i)] =
            log_image[i] - field[static_cast<std::size_t>(i)];
      n4_sharpen(uncorrected.data(), mask, n, s, sharpened.data(), n_threads);
#pragma omp parallel for schedule(static) num_threads(clamp_threads(n_threads))
      for (index_t i = 0; i < n; ++i) {
        const index_t k = i / (J * I), j = (i / I) % J, c = i % I;
        g[static_cast<std::size_t>(i)] =
            mask[i] ? (uncorrected[static_cast<std::size_t>(i)] -
                       sharpened[static_cast<std::size_t>(i)]) /
                          (b0.sum_of_squares(k) * b1.sum_of_squares(j) * b2.sum_of_squares(c))
                    : 0.0;
      }
      const std::vector<double> delta = bspline_scatter(g.data(), cubes, n_threads);
      for (std::size_t c = 0; c < res.lattice.size(); ++c)
        if (omega[c] != 0.0) res.lattice[c] += delta[c] / omega[c];
      double* nx = next.data();
      bspline_evaluate(
          res.lattice.data(), basis, [nx](index_t i, double v) { nx[i] = v; }, n_threads);
      cv = n4_convergence(field.data(), next.data(), mask, n, n_threads);
      field.swap(next);
    }
    res.iterations.push_back(it);
    res.convergence.push_back(cv);
    if (level + 1 < s.iterations.size()) {
      std::array<index_t, 3> n_cp{mesh[0] + 3, mesh[1] + 3, mesh[2] + 3};
      for (int a = 0; a < 3; ++a) {
        if (!s.refine[a]) continue;
        res.lattice = bspline_refine_axis(res.lattice, n_cp, a);
        mesh[a] *= 2;
        n_cp[a] = mesh[a] + 3;
      }
    }
  }
  res.lattice_shape = {mesh[0] + 3, mesh[1] + 3, mesh[2] + 3};
  return res;
}

// N4's working grid: the centre voxel of every block of `factor` voxels per axis (the block's
// first voxel plus (length - 1) / 2, as SimpleITK users subsample with Shrink before N4), its log
// intensity, and whether it is a positive voxel inside the mask.
template <class T>
void n4_shrink(const T* x, const std::uint8_t* mask, const index_t* shape, const index_t* factor,
               double* log_image, std::uint8_t* shrunk_mask, int n_threads) {
  index_t out[3];
  for (int a = 0; a < 3; ++a) out[a] = (shape[a] + factor[a] - 1) / factor[a];
  auto centre = [&](index_t m, int a) {
    const index_t start = m * factor[a];
    return start + (std::min(factor[a], shape[a] - start) - 1) / 2;
  };
#pragma omp parallel for schedule(static) num_threads(clamp_threads(n_threads))
  for (index_t k = 0; k < out[0]; ++k)
    for (index_t j = 0; j < out[1]; ++j)
      for (index_t i = 0; i < out[2]; ++i) {
        const index_t src = (centre(k, 0) * shape[1] + centre(j, 1)) * shape[2] + centre(i, 2);
        const index_t o = (k * out[1] + j) * out[2] + i;
        const double v = static_cast<double>(x[src]);
        const bool use = (!mask || mask[src]) && v > 0.0;
        shrunk_mask[o] = use;
        log_image[o] = use ? std::log(v) : 0.0;
      }
}

// Full-resolution output: the multiplicative bias field exp(log field) from the lattice at
// normalised positions u (written when bias_field is not null), and x divided by it.
template <class T>
void n4_apply(const T* x, const double* lattice, const std::array<index_t, 3>& lattice_shape,
              const index_t* shape, const std::array<const double*, 3>& u, float* corrected,
              float* bias_field, int n_threads) {
  const BsplineAxis b0(u[0], shape[0], lattice_shape[0] - 3),
      b1(u[1], shape[1], lattice_shape[1] - 3), b2(u[2], shape[2], lattice_shape[2] - 3);
  const BsplineAxes basis{&b0, &b1, &b2};
  bspline_evaluate(
      lattice, basis,
      [&](index_t i, double f) {
        const double bias = std::exp(f);
        corrected[i] = static_cast<float>(static_cast<double>(x[i]) / bias);
        if (bias_field) bias_field[i] = static_cast<float>(bias);
      },
      n_threads);
}

}  // namespace medkern
