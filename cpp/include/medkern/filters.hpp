// Linear smoothing filters: separable FIR correlation (Gaussian, box, derivative-of-Gaussian
// kernels) and the recursive Gaussian of Deriche (1993), plus the boundary rules and the
// vectorisable helpers the non-linear filters (median.hpp, bilateral.hpp, diffusion.hpp) share.
#pragma once
#include <cstring>
#include <vector>

#include "medkern/boundary.hpp"
#include "medkern/common.hpp"

// Hot inner loops are compiled twice, for baseline x86-64 and for AVX2, and the loader picks one
// at run time: a distributed wheel stays portable while AVX2 machines get 8 float lanes. No FMA is
// enabled, so both clones round identically. Not needed where the whole family is built per
// instruction set (MEDKERN_MULTI_ISA, CMakeLists.txt) or already targets AVX2.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__CUDACC__) && !defined(__clang__) && \
    !defined(MEDKERN_MULTI_ISA) && !defined(__AVX2__)
#define MEDKERN_SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define MEDKERN_SIMD_CLONES
#endif
// Small helpers called from the cloned loops must be inlined into each clone to vectorise there.
#if defined(__GNUC__)
#define MEDKERN_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define MEDKERN_ALWAYS_INLINE inline
#endif

namespace medkern {

// A 3D shape in array order; 2D images are (1, ny, nx).
struct Shape3 {
  index_t n0, n1, n2;
  index_t size() const { return n0 * n1 * n2; }
};

// Copies row (k, j) of `in` into dst[0 .. n2 + 2 r), padded by r samples on each side with the
// boundary rule, converted to U. A row outside the image under Boundary::constant is all cval.
template <class T, class U>
void padded_row(const T* in, const Shape3& s, index_t k, index_t j, index_t r, Boundary b, U cval,
                U* dst) {
  const index_t kk = boundary_index(k, s.n0, b), jj = boundary_index(j, s.n1, b);
  if (kk < 0 || jj < 0) {
    std::fill(dst, dst + s.n2 + 2 * r, cval);
    return;
  }
  const T* row = in + (kk * s.n1 + jj) * s.n2;
  for (index_t i = 0; i < s.n2; ++i) dst[r + i] = static_cast<U>(row[i]);
  for (index_t i = 0; i < r; ++i) {
    const index_t lo = boundary_index(i - r, s.n2, b), hi = boundary_index(s.n2 + i, s.n2, b);
    dst[i] = lo < 0 ? cval : static_cast<U>(row[lo]);
    dst[r + s.n2 + i] = hi < 0 ? cval : static_cast<U>(row[hi]);
  }
}

// The padded rows (k + dk, j + dj) for |dk| <= r[0], |dj| <= r[1] (each padded by r[2], then
// `slack` zeros so a last partial group of lanes can be loaded whole), one every `stride`
// elements of `rows`; elem[q] points at neighbour q (dk, dj, di in row-major order) for column 0.
template <class T, class U>
void neighbour_rows(const T* in, const Shape3& s, index_t k, index_t j, const index_t* r,
                    Boundary b, U cval, index_t stride, U* rows, const U** elem) {
  index_t q = 0, e = 0;
  for (index_t dk = -r[0]; dk <= r[0]; ++dk)
    for (index_t dj = -r[1]; dj <= r[1]; ++dj, ++q) {
      U* dst = rows + q * stride;
      padded_row(in, s, k + dk, j + dj, r[2], b, cval, dst);
      std::fill(dst + s.n2 + 2 * r[2], dst + stride, U(0));
      for (index_t di = 0; di <= 2 * r[2]; ++di) elem[e++] = dst + di;
    }
}

// Eight float lanes as a GCC/Clang vector: explicit SIMD that needs no auto-vectoriser luck and
// lowers to two SSE registers on baseline x86-64, one AVX register in the AVX2 clone.
typedef float vf8 __attribute__((vector_size(32)));
#if defined(__GNUC__) && !defined(__clang__)
// The 8-lane helpers are always inlined, so the baseline clone never passes them by value.
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
typedef std::int32_t vi8 __attribute__((vector_size(32)));

MEDKERN_ALWAYS_INLINE vf8 load8(const float* p) {
  vf8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
MEDKERN_ALWAYS_INLINE void store8(float* p, vf8 v) { std::memcpy(p, &v, sizeof v); }
MEDKERN_ALWAYS_INLINE vf8 select8(vi8 mask, vf8 a, vf8 b) {  // mask ? a : b, lane-wise
  return reinterpret_cast<vf8>((reinterpret_cast<vi8>(a) & mask) |
                               (reinterpret_cast<vi8>(b) & ~mask));
}
MEDKERN_ALWAYS_INLINE vf8 abs8(vf8 x) {
  return reinterpret_cast<vf8>(reinterpret_cast<vi8>(x) & 0x7fffffff);
}

// Lane-wise sqrt through a loop the compiler turns into one SIMD sqrt (no errno: -fno-math-errno).
MEDKERN_ALWAYS_INLINE vf8 sqrt8(vf8 x) {
  float a[8];
  store8(a, x);
#pragma omp simd
  for (int l = 0; l < 8; ++l) a[l] = std::sqrt(a[l]);
  return load8(a);
}

// exp(x) for x <= 0 in float on eight lanes: Cody-Waite range reduction x = n ln2 + r and the
// Cephes expf minimax polynomial, relative error < 2 ulp; x below -87 gives exp(-87). NaN is
// taken as -87 and x > 0 as 0 before n is converted to an integer (undefined for them otherwise).
MEDKERN_ALWAYS_INLINE vf8 exp_neg8(vf8 x) {
  x = select8(x >= -87.0f, x, vf8{} - 87.0f);
  x = select8(x <= 0.0f, x, vf8{});
  // n = round(x / ln2): truncation toward zero of x / ln2 - 0.5 rounds to nearest as x <= 0.
  const vi8 n = __builtin_convertvector(x * 1.44269504088896341f - 0.5f, vi8);
  const vf8 nf = __builtin_convertvector(n, vf8);
  const vf8 r = (x - nf * 0.693359375f) + nf * 2.12194440e-4f;
  vf8 p = vf8{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * reinterpret_cast<vf8>((n + 127) << 23);
}

namespace detail {

// out[i] = sum_t w[t] * src[t][i] (+ w[t] * cval where src[t] is null), i < n. A chunk of 32
// outputs stays in registers over all taps; a symmetric kernel (every Gaussian, box and
// second-derivative kernel) adds the mirrored rows first and multiplies once per tap pair.
MEDKERN_SIMD_CLONES
inline void weighted_rows(const float* const* src, const float* w, int taps, float cval, float* out,
                          index_t n) {
  float const_part = 0.0f;
  bool has_const = false, symmetric = true;
  for (int t = 0; t < taps; ++t) {
    if (!src[t]) {
      const_part += w[t] * cval;
      has_const = true;
    }
    symmetric = symmetric && w[t] == w[taps - 1 - t];
  }
  const int half = taps / 2;
  const bool fold = symmetric && !has_const;
  constexpr int G = 4;  // 4 x 8 lanes
  index_t i0 = 0;
  for (; i0 + 8 * G <= n; i0 += 8 * G) {
    vf8 acc[G];
    for (int g = 0; g < G; ++g) acc[g] = vf8{} + const_part;
    if (fold) {
      for (int t = 0; t < half; ++t) {
        const float* lo = src[t] + i0;
        const float* hi = src[taps - 1 - t] + i0;
        for (int g = 0; g < G; ++g) acc[g] += (load8(lo + 8 * g) + load8(hi + 8 * g)) * w[t];
      }
      for (int g = 0; g < G; ++g) acc[g] += load8(src[half] + i0 + 8 * g) * w[half];
    } else {
      for (int t = 0; t < taps; ++t) {
        if (!src[t]) continue;
        for (int g = 0; g < G; ++g) acc[g] += load8(src[t] + i0 + 8 * g) * w[t];
      }
    }
    for (int g = 0; g < G; ++g) store8(out + i0 + 8 * g, acc[g]);
  }
  for (index_t i = i0; i < n; ++i) {
    float acc = const_part;
    if (fold) {
      for (int t = 0; t < half; ++t) acc += (src[t][i] + src[taps - 1 - t][i]) * w[t];
      acc += src[half][i] * w[half];
    } else {
      for (int t = 0; t < taps; ++t)
        if (src[t]) acc += w[t] * src[t][i];
    }
    out[i] = acc;
  }
}

// Slice k filtered along axes 2 and 1 (each where its kernel is non-empty) into dst (one plane);
// `row`, `slice` and `src` are the caller's scratch.
template <class T>
void filter_slice(const T* in, const Shape3& s, index_t k, const std::vector<float>* w, Boundary b,
                  float cval, float* dst, std::vector<float>& row, std::vector<float>& slice,
                  std::vector<const float*>& src) {
  const index_t r1 = w[1].empty() ? 0 : static_cast<index_t>(w[1].size() / 2);
  const index_t r2 = w[2].empty() ? 0 : static_cast<index_t>(w[2].size() / 2);
  const index_t plane = s.n1 * s.n2;
  float* axis2_out = w[1].empty() ? dst : slice.data();
  for (index_t j = 0; j < s.n1; ++j) {
    float* o = axis2_out + j * s.n2;
    if (w[2].empty()) {
      const T* x = in + k * plane + j * s.n2;
      for (index_t i = 0; i < s.n2; ++i) o[i] = static_cast<float>(x[i]);
      continue;
    }
    padded_row(in, s, k, j, r2, b, cval, row.data());
    for (index_t t = 0; t <= 2 * r2; ++t) src[static_cast<std::size_t>(t)] = row.data() + t;
    weighted_rows(src.data(), w[2].data(), static_cast<int>(2 * r2 + 1), cval, o, s.n2);
  }
  if (w[1].empty()) return;
  for (index_t j = 0; j < s.n1; ++j) {
    for (index_t t = 0; t <= 2 * r1; ++t) {
      const index_t jj = boundary_index(j + t - r1, s.n1, b);
      src[static_cast<std::size_t>(t)] = jj < 0 ? nullptr : slice.data() + jj * s.n2;
    }
    weighted_rows(src.data(), w[1].data(), static_cast<int>(2 * r1 + 1), cval, dst + j * s.n2,
                  s.n2);
  }
}

}  // namespace detail

// Separable correlation out = w0 (x) w1 (x) w2 applied to `in` along axes 0, 1, 2, each kernel
// of odd length 2r+1 centred on the output sample (scipy.ndimage.correlate1d with origin 0). An
// empty kernel leaves that axis untouched. Computed in float, slice by slice: each thread walks
// its own run of output slices and keeps the 2 r0 + 1 slices filtered along axes 2 and 1 that
// the axis-0 taps read in a ring of planes, so nothing the size of the volume is written in
// between (one pass over memory instead of three) and every slice but those at the runs' ends
// is filtered once. Every output sample sees the same sums in the same order as a pass per axis.
template <class T>
void separable_correlate(const T* in, float* out, const Shape3& s, const std::vector<float>* w,
                         Boundary b, float cval, int n_threads) {
  const index_t plane = s.n1 * s.n2;
  const index_t r0 = w[0].empty() ? 0 : static_cast<index_t>(w[0].size() / 2);
  const index_t taps0 = w[0].empty() ? 0 : 2 * r0 + 1;
  // A tap reads one of at most min(taps0, n0) distinct slices: that many ring planes suffice.
  const index_t slots = std::min(taps0, s.n0);
  const index_t r2 = w[2].empty() ? 0 : static_cast<index_t>(w[2].size() / 2);
  ParallelError error;
#pragma omp parallel num_threads(clamp_threads(n_threads))
  {
    std::vector<float> row, slice, ring;
    std::vector<const float*> src, planes, rows;
    std::vector<index_t> needed, held;  // per tap its source slice; per ring plane the slice in it
    error.capture([&] {
      row.resize(static_cast<std::size_t>(s.n2 + 2 * r2));
      slice.resize(static_cast<std::size_t>(w[1].empty() ? 0 : plane));
      src.resize(std::max(w[1].size(), w[2].size()) + 1);
      ring.resize(static_cast<std::size_t>(slots * plane));
      planes.resize(static_cast<std::size_t>(taps0));
      rows.resize(static_cast<std::size_t>(taps0));
      needed.resize(static_cast<std::size_t>(taps0));
      held.assign(static_cast<std::size_t>(slots), -1);
    });
#pragma omp for schedule(static)
    for (index_t k = 0; k < s.n0; ++k) {
      if (error.failed()) continue;
      if (taps0 == 0) {
        detail::filter_slice(in, s, k, w, b, cval, out + k * plane, row, slice, src);
        continue;
      }
      // The slices output slice k reads (-1: outside the image under Boundary::constant), each
      // from a ring plane: the one holding it already, else one that no tap of k reads (there
      // are as many planes as k can read distinct slices, so there always is one), filtered anew.
      for (index_t t = 0; t < taps0; ++t) needed[t] = boundary_index(k + t - r0, s.n0, b);
      for (index_t t = 0; t < taps0; ++t) {
        const index_t kk = needed[t];
        if (kk < 0) {
          planes[t] = nullptr;
          continue;
        }
        auto slot = std::find(held.begin(), held.end(), kk);
        if (slot == held.end()) {
          slot = std::find_if(held.begin(), held.end(), [&](index_t h) {
            return h < 0 || std::find(needed.begin(), needed.end(), h) == needed.end();
          });
          *slot = kk;
          detail::filter_slice(in, s, kk, w, b, cval, ring.data() + (slot - held.begin()) * plane,
                               row, slice, src);
        }
        planes[t] = ring.data() + (slot - held.begin()) * plane;
      }
      for (index_t j = 0; j < s.n1; ++j) {
        for (index_t t = 0; t < taps0; ++t) rows[t] = planes[t] ? planes[t] + j * s.n2 : nullptr;
        detail::weighted_rows(rows.data(), w[0].data(), static_cast<int>(taps0), cval,
                              out + k * plane + j * s.n2, s.n2);
      }
    }
  }
  error.rethrow();
}

// ---------------------------------------------------------------- recursive Gaussian (Deriche)

// Fourth-order recursive approximation of the Gaussian (Deriche, "Recursively implementing the
// Gaussian and its derivatives", INRIA RR-1893, 1993), normalised to unit DC gain and with the
// boundary terms that extend each line by its end values, the coefficients ITK's
// RecursiveGaussianImageFilter uses (so SmoothingRecursiveGaussian is reproduced).
struct DericheGaussian {
  double n[4], m[4], d[4], bn[4], bm[4];

  explicit DericheGaussian(double sigma_vox) {
    // Deriche's fitted constants of the zero-order kernel a0 cos + b0 sin pair (his table 1).
    const double a0 = 1.3530, b0 = 1.8151, w0 = 0.6681, l0 = -1.3932;
    const double a1 = -0.3531, b1 = 0.0902, w1 = 2.0787, l1 = -1.3732;
    const double c0 = std::cos(w0 / sigma_vox), s0 = std::sin(w0 / sigma_vox);
    const double c1 = std::cos(w1 / sigma_vox), s1 = std::sin(w1 / sigma_vox);
    const double e0 = std::exp(l0 / sigma_vox), e1 = std::exp(l1 / sigma_vox);

    d[3] = e0 * e0 * e1 * e1;
    d[2] = -2 * c0 * e0 * e1 * e1 - 2 * c1 * e1 * e0 * e0;
    d[1] = 4 * c1 * c0 * e0 * e1 + e0 * e0 + e1 * e1;
    d[0] = -2 * (e1 * c1 + e0 * c0);

    n[0] = a0 + a1;
    n[1] = e1 * (b1 * s1 - (a1 + 2 * a0) * c1) + e0 * (b0 * s0 - (a0 + 2 * a1) * c0);
    n[2] = 2 * e0 * e1 * ((a0 + a1) * c1 * c0 - b0 * c1 * s0 - b1 * c0 * s1) + a1 * e0 * e0 +
           a0 * e1 * e1;
    n[3] = e1 * e0 * e0 * (b1 * s1 - a1 * c1) + e0 * e1 * e1 * (b0 * s0 - a0 * c0);

    const double sum_d = 1.0 + d[0] + d[1] + d[2] + d[3];
    const double sum_n = n[0] + n[1] + n[2] + n[3];
    const double gain = 2 * sum_n / sum_d - n[0];  // causal + anticausal DC gain
    for (double& v : n) v /= gain;
    // Symmetric kernel: the anticausal numerator mirrors the causal one.
    for (int t = 0; t < 3; ++t) m[t] = n[t + 1] - d[t] * n[0];
    m[3] = -d[3] * n[0];
    const double sn = n[0] + n[1] + n[2] + n[3], sm = m[0] + m[1] + m[2] + m[3];
    for (int t = 0; t < 4; ++t) {
      bn[t] = d[t] * sn / sum_d;
      bm[t] = d[t] * sm / sum_d;
    }
  }
};

namespace detail {

// Filters L interleaved lines x[t * L + l] (t < ln, ln >= 4) into y (same layout); `anti` is
// scratch of the same size. The lines are processed together so the recursion vectorises across l.
MEDKERN_SIMD_CLONES
inline void deriche_lines(const double* x, double* y, double* anti, index_t ln, index_t L,
                          const DericheGaussian& c) {
  auto X = [&](index_t t, index_t l) { return x[t * L + l]; };
  // Causal pass; samples before the line equal its first sample.
  for (index_t t = 0; t < 4; ++t)
    for (index_t l = 0; l < L; ++l) {
      const double x0 = X(0, l);
      double acc = 0;
      for (index_t q = 0; q < 4; ++q) acc += (t - q >= 1 ? X(t - q, l) : x0) * c.n[q];
      for (index_t q = 0; q < 4; ++q)
        acc -= (t - 1 - q >= 0 ? y[(t - 1 - q) * L + l] * c.d[q] : x0 * c.bn[q]);
      y[t * L + l] = acc;
    }
  for (index_t t = 4; t < ln; ++t) {
    const double* x0 = x + t * L;
    double* yt = y + t * L;
    for (index_t l = 0; l < L; ++l)
      yt[l] = x0[l] * c.n[0] + x0[l - L] * c.n[1] + x0[l - 2 * L] * c.n[2] +
              x0[l - 3 * L] * c.n[3] -
              (yt[l - L] * c.d[0] + yt[l - 2 * L] * c.d[1] + yt[l - 3 * L] * c.d[2] +
               yt[l - 4 * L] * c.d[3]);
  }
  // Anticausal pass; samples after the line equal its last sample.
  const index_t e = ln - 1;
  for (index_t u = 0; u < 4; ++u) {
    const index_t t = e - u;
    for (index_t l = 0; l < L; ++l) {
      const double xe = X(e, l);
      double acc = 0;
      for (index_t q = 0; q < 4; ++q) acc += (t + 1 + q <= e ? X(t + 1 + q, l) : xe) * c.m[q];
      for (index_t q = 0; q < 4; ++q)
        acc -= (t + 1 + q <= e ? anti[(t + 1 + q) * L + l] * c.d[q] : xe * c.bm[q]);
      anti[t * L + l] = acc;
    }
  }
  for (index_t t = e - 4; t >= 0; --t) {
    double* at = anti + t * L;
    const double* xt = x + t * L;
    for (index_t l = 0; l < L; ++l)
      at[l] = xt[l + L] * c.m[0] + xt[l + 2 * L] * c.m[1] + xt[l + 3 * L] * c.m[2] +
              xt[l + 4 * L] * c.m[3] -
              (at[l + L] * c.d[0] + at[l + 2 * L] * c.d[1] + at[l + 3 * L] * c.d[2] +
               at[l + 4 * L] * c.d[3]);
  }
  for (index_t t = 0; t < ln * L; ++t) y[t] += anti[t];
}

// One recursive pass along `axis` of the float volume `v`, in place. Lines are gathered in groups
// (consecutive columns for axes 0 and 1, consecutive rows for axis 2) into double buffers.
inline void deriche_axis(float* v, const Shape3& s, int axis, double sigma_vox, int n_threads) {
  const DericheGaussian c(sigma_vox);
  const index_t n[3] = {s.n0, s.n1, s.n2};
  const index_t stride[3] = {s.n1 * s.n2, s.n2, 1};
  const index_t ln = n[axis];
  // Group layout: `lanes` lines starting at `base`, `line_stride` apart, element stride
  // stride[axis].
  const index_t group_len = axis == 2 ? 16 : 64;
  const index_t across = axis == 2 ? s.n1 : s.n2;  // dimension the groups run across
  const index_t line_stride = axis == 2 ? s.n2 : 1;
  const index_t n_chunks = (across + group_len - 1) / group_len;
  const index_t outer = axis == 0 ? s.n1 : s.n0;  // remaining dimension
  const index_t outer_stride = axis == 0 ? s.n2 : s.n1 * s.n2;
  ParallelError error;
#pragma omp parallel num_threads(clamp_threads(n_threads))
  {
    std::vector<double> buf;
    error.capture([&] { buf.resize(static_cast<std::size_t>(3 * ln * group_len)); });
#pragma omp for schedule(static)
    for (index_t g = 0; g < outer * n_chunks; ++g) {
      if (error.failed()) continue;
      const index_t o = g / n_chunks, c0 = (g % n_chunks) * group_len;
      const index_t lanes = std::min(group_len, across - c0);
      float* base = v + o * outer_stride + c0 * line_stride;
      double* x = buf.data();
      double* y = x + ln * lanes;
      double* a = y + ln * lanes;
      for (index_t t = 0; t < ln; ++t)
        for (index_t l = 0; l < lanes; ++l)
          x[t * lanes + l] = base[t * stride[axis] + l * line_stride];
      deriche_lines(x, y, a, ln, lanes, c);
      for (index_t t = 0; t < ln; ++t)
        for (index_t l = 0; l < lanes; ++l)
          base[t * stride[axis] + l * line_stride] = static_cast<float>(y[t * lanes + l]);
    }
  }
  error.rethrow();
}

}  // namespace detail

// Recursive Gaussian smoothing with per-axis sigma in voxels (0 = leave the axis alone); every
// filtered axis needs at least 4 samples. Axes are filtered in ITK's order for SimpleITK's
// SmoothingRecursiveGaussian (its last image dimension first, then x, y, ...), with float storage
// between passes as there, so the results agree to float rounding.
template <class T>
void recursive_gaussian(const T* in, float* out, const Shape3& s, const double* sigma_vox,
                        bool is_3d, int n_threads) {
  const index_t n = s.size();
#pragma omp parallel for schedule(static) num_threads(clamp_threads(n_threads))
  for (index_t i = 0; i < n; ++i) out[i] = static_cast<float>(in[i]);
  // Array axis 0 is ITK's last dimension; then x (axis 2), then y (axis 1).
  const int order3[3] = {0, 2, 1};
  const int order2[2] = {1, 2};
  const int* order = is_3d ? order3 : order2;
  for (int q = 0; q < (is_3d ? 3 : 2); ++q) {
    const int axis = order[q];
    if (sigma_vox[axis] > 0) detail::deriche_axis(out, s, axis, sigma_vox[axis], n_threads);
  }
}

}  // namespace medkern
