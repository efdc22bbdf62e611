// Bilateral filter (Tomasi & Manduchi 1998) with the weights of ITK's BilateralImageFilter.
#pragma once
#include <algorithm>
#include <vector>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

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

// The range weights of bins b .. b + 7 (bin b: the Gaussian at the bin's left edge b * bin_width,
// the value ITK tabulates), computed with the same lane arithmetic the chunk used before it
// looked them up, so a table entry has the bits the evaluation at that bin gave.
MEDKERN_ALWAYS_INLINE vf8 range_weights8(vi8 bin, const RangeKernel& rk) {
  const vf8 at = __builtin_convertvector(bin, vf8) * rk.bin_width;
  return exp_neg8(at * at * rk.neg_half_inv_var);
}

// table[b] for the eight lanes' bins (all in [0, samples]).
MEDKERN_ALWAYS_INLINE vf8 lookup8(const float* table, vi8 bin) {
#if defined(__AVX2__)
  return reinterpret_cast<vf8>(_mm256_i32gather_ps(table, reinterpret_cast<__m256i>(bin), 4));
#else
  return vf8{table[bin[0]], table[bin[1]], table[bin[2]], table[bin[3]],
             table[bin[4]], table[bin[5]], table[bin[6]], table[bin[7]]};
#endif
}

// One chunk of kBilateralLanes voxels: centre values c, neighbour rows elem[q] shifted to the
// chunk, domain weights wd[q]. The range weight of each lane is looked up by bin in `table`
// (range_weights8 of bins 0 .. samples) or, where table is null, evaluated at the bin's left
// edge; both give the same bits, and the loop runs on SIMD lanes either way.
MEDKERN_SIMD_CLONES
inline void bilateral_chunk(const float* const* elem, const float* wd, index_t n, index_t i0,
                            const float* c, const RangeKernel& rk, const float* table, float* out) {
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
      const vi8 bin = __builtin_convertvector(select8(pos < last, pos, last), vi8);
      const vf8 wr = table ? lookup8(table, bin) : range_weights8(bin, rk);
      const vf8 w = select8(d < rk.cutoff, wr * w_domain, vf8{});
      num[g] += w * x;
      den[g] += w;
    }
  }
  for (int g = 0; g < G; ++g) store8(out + 8 * g, num[g] / den[g]);
}

#if defined(__AVX512F__)
// The same chunk on 16-float registers (the AVX-512 build), the range weights looked up in
// registers: a table of at most 128 entries (ITK's 100 samples: 101) is held in eight; each
// two-source permute selects one of 32 entries by the bin's low 5 bits, blends by bits 5 and 6
// pick among the four. Lane by lane the arithmetic is bilateral_chunk's (no FMA), so the output
// has the same bits; on the 2-core AMD EPYC of benchmarks/RESULTS.md one gather of 8 lanes costs
// more than the seven permute/blend instructions of 16.
constexpr int kRegisterTable = 128;

MEDKERN_ALWAYS_INLINE __m512 lookup16(const __m512* t, __m512i bin) {
  const __mmask16 bit5 = _mm512_test_epi32_mask(bin, _mm512_set1_epi32(32));
  const __mmask16 bit6 = _mm512_test_epi32_mask(bin, _mm512_set1_epi32(64));
  const __m512 e0 = _mm512_mask_blend_ps(bit5, _mm512_permutex2var_ps(t[0], bin, t[1]),
                                         _mm512_permutex2var_ps(t[2], bin, t[3]));
  const __m512 e1 = _mm512_mask_blend_ps(bit5, _mm512_permutex2var_ps(t[4], bin, t[5]),
                                         _mm512_permutex2var_ps(t[6], bin, t[7]));
  return _mm512_mask_blend_ps(bit6, e0, e1);
}

inline void bilateral_chunk16(const float* const* elem, const float* wd, index_t n, index_t i0,
                              const float* c, const RangeKernel& rk, const float* table,
                              float* out) {
  constexpr int G = kBilateralLanes / 16;
  __m512 t[8];
  for (int m = 0; m < 8; ++m) t[m] = _mm512_loadu_ps(table + 16 * m);
  const __m512 to_bin = _mm512_set1_ps(rk.to_bin), last = _mm512_set1_ps(rk.samples),
               cutoff = _mm512_set1_ps(rk.cutoff);
  __m512 num[G], den[G], cen[G];
  for (int g = 0; g < G; ++g) {
    num[g] = den[g] = _mm512_setzero_ps();
    cen[g] = _mm512_loadu_ps(c + 16 * g);
  }
  for (index_t q = 0; q < n; ++q) {
    const float* v = elem[q] + i0;
    const __m512 w_domain = _mm512_set1_ps(wd[q]);
    for (int g = 0; g < G; ++g) {
      const __m512 x = _mm512_loadu_ps(v + 16 * g);
      const __m512 d = _mm512_abs_ps(_mm512_sub_ps(x, cen[g]));
      const __m512 pos = _mm512_mul_ps(d, to_bin);
      const __m512i bin = _mm512_cvttps_epi32(_mm512_min_ps(pos, last));
      const __m512 wr = lookup16(t, bin);
      const __m512 w = _mm512_maskz_mul_ps(_mm512_cmp_ps_mask(d, cutoff, _CMP_LT_OQ), wr, w_domain);
      num[g] = _mm512_add_ps(num[g], _mm512_mul_ps(w, x));
      den[g] = _mm512_add_ps(den[g], w);
    }
  }
  for (int g = 0; g < G; ++g) _mm512_storeu_ps(out + 16 * g, _mm512_div_ps(num[g], den[g]));
}
#endif

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
  // The range weights per bin, for the lookup (the usual 100 samples: 101 entries).
  std::vector<float> table;
  if (rk.samples >= 0 && rk.samples <= (1 << 16)) {
    // (zero-padded to the register table's 128 entries, which only the AVX-512 chunk reads)
    table.resize(static_cast<std::size_t>(std::max(rk.samples + 8, 128)));
    for (int b = 0; b <= rk.samples; b += 8) {
      const vf8 w = detail::range_weights8(vi8{0, 1, 2, 3, 4, 5, 6, 7} + b, rk);
      std::memcpy(table.data() + b, &w, sizeof w);
    }
  }
  const float* lut = table.empty() ? nullptr : table.data();
  auto chunk = detail::bilateral_chunk;
#if defined(__AVX512F__)
  if (lut && rk.samples < detail::kRegisterTable) chunk = detail::bilateral_chunk16;
#endif
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
        chunk(elem.data(), wd.data(), n, i0, centre, rk, lut, full ? o + i0 : tail);
        if (!full)
          for (index_t i = i0; i < s.n2; ++i) o[i] = tail[i - i0];
      }
    }
  }
  error.rethrow();
}

}  // namespace medkern
