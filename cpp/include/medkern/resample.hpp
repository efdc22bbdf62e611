// Resampling kernels: separable axis-aligned passes, per-voxel affine/displacement warps, and
// sampling at arbitrary continuous indices. No Python in here.
//
// Conventions shared by every kernel (and by the Numba, CUDA and CuPy peers):
// * Images are C-ordered 3D arrays [n0][n1][n2]; a 2D image is passed with n0 == 1.
// * A continuous index c is inside the image when -0.5 <= c < n - 0.5 on every axis (ITK's
//   ImageFunction::IsInsideBuffer); outside points get `fill`.
// * Inside, nearest rounds half up (floor(c + 0.5), as ITK and scipy), linear extends the edge
//   voxel over the last half voxel (ITK, scipy mode="nearest"), cubic B-spline coefficients are
//   mirrored (scipy mode="mirror", ITK BSplineInterpolateImageFunction).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "medkern/common.hpp"
#include "medkern/trilinear.hpp"

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#endif

// The point samplers and their helpers also compile as CUDA device code (cpp/cuda/resample.cu),
// so CPU and GPU evaluate the same arithmetic. (MEDKERN_HD, common.hpp)

namespace medkern {

// Linear and cubic results are float32 unless the input is float64.
template <class T>
using interp_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

enum class Interpolation : int { nearest = 0, linear = 1, cubic = 2, label = 3 };

// Whole-sample symmetric extension with period 2(n-1) (scipy "mirror": d c b | a b c d | c b a).
MEDKERN_HD inline index_t mirror_index(index_t i, index_t n) {
  if (n == 1) return 0;
  const index_t period = 2 * (n - 1);
  i = i < 0 ? -i : i;
  i %= period;
  return i < n ? i : period - i;
}

// Cubic B-spline weights for the taps floor(c)-1 .. floor(c)+2 at fraction t (Unser 1999, eq. 4).
MEDKERN_HD inline void cubic_bspline_weights(double t, double w[4]) {
  const double t2 = t * t, t3 = t2 * t, u = 1.0 - t;
  w[0] = u * u * u / 6.0;
  w[1] = (3.0 * t3 - 6.0 * t2 + 4.0) / 6.0;
  w[2] = (-3.0 * t3 + 3.0 * t2 + 3.0 * t + 1.0) / 6.0;
  w[3] = t3 / 6.0;
}

// ------------------------------------------------------------------ cubic B-spline prefilter
// In-place conversion of samples to cubic B-spline coefficients along one axis, for `width`
// interleaved lines at once: element (i, b) sits at base[i * stride + b], so the recursion runs
// over i while the inner loop over b is contiguous and vectorises. Mirror boundary with the exact
// causal initialisation (Unser 1999; the same sums as scipy.ndimage.spline_filter1d), evaluated
// in double; the sum stops once z^k < 1e-20, below double resolution of any term.
template <class A>
MEDKERN_HD void bspline_prefilter_lines(A* base, index_t n, index_t stride, index_t width,
                                        double* init) {
  if (n < 2) return;
  const double z = sqrt(3.0) - 2.0;
  const A gain = static_cast<A>((1.0 - z) * (1.0 - 1.0 / z));
  const double z_n1 = pow(z, static_cast<double>(n - 1));
  A* first = base;
  A* last = base + (n - 1) * stride;
  for (index_t b = 0; b < width; ++b) init[b] = static_cast<double>(first[b]) + z_n1 * last[b];
  double zi = z;
  for (index_t i = 1; i < n - 1 && fabs(zi) > 1e-20; ++i) {
    const A* ci = base + i * stride;
    const A* cm = base + (n - 1 - i) * stride;
    for (index_t b = 0; b < width; ++b) init[b] += zi * (ci[b] + z_n1 * static_cast<double>(cm[b]));
    zi *= z;
  }
  const double denom = 1.0 - z_n1 * z_n1;
  for (index_t b = 0; b < width; ++b) first[b] = static_cast<A>(gain * (init[b] / denom));
  for (index_t i = 1; i < n; ++i) {
    A* ci = base + i * stride;
    const A* cp = ci - stride;
    const A zz = static_cast<A>(z);
    for (index_t b = 0; b < width; ++b) ci[b] = gain * ci[b] + zz * cp[b];
  }
  const A* prev = base + (n - 2) * stride;
  const A anti = static_cast<A>(z / (z * z - 1.0));
  for (index_t b = 0; b < width; ++b) last[b] = anti * (static_cast<A>(z) * prev[b] + last[b]);
  for (index_t i = n - 2; i >= 0; --i) {
    A* ci = base + i * stride;
    const A* cn = ci + stride;
    const A zz = static_cast<A>(z);
    for (index_t b = 0; b < width; ++b) ci[b] = zz * (cn[b] - ci[b]);
  }
}

// Lines along the contiguous last axis are processed kLineGroup at a time, transposed into a
// [n][kLineGroup] block so that recursions and taps run across lines, in vector registers,
// instead of along one line with a dependency chain or a gather per sample.
constexpr index_t kLineGroup = 16;

// block[i][r] = line r of src (rows of length n), r < g; lanes r >= g are zero.
template <class T, class A>
void load_line_group(const T* src, index_t n, index_t g, A* block) {
  for (index_t r = 0; r < g; ++r)
    for (index_t i = 0; i < n; ++i) block[i * kLineGroup + r] = static_cast<A>(src[r * n + i]);
  for (index_t r = g; r < kLineGroup; ++r)
    for (index_t i = 0; i < n; ++i) block[i * kLineGroup + r] = 0;
}

template <class T, class A>
void resample_axis_pass(const T* in, A* out, index_t outer, index_t n_in, index_t inner,
                        index_t n_out, const index_t* idx, const A* w, int taps, bool prefilter,
                        int n_threads);

// In-place B-spline prefilter of every line along the middle axis of a [outer][n][inner] array.
// Lines along a strided axis are filtered side by side in blocks of contiguous lanes; lines along
// the contiguous axis go through resample_axis_pass with identity taps (each group of lines is
// loaded before it is written back, so in place is safe).
template <class A>
void bspline_prefilter_axis(A* data, index_t outer, index_t n, index_t inner, int n_threads) {
  if (inner == 1) {
    std::vector<index_t> idx(static_cast<std::size_t>(n));
    for (index_t i = 0; i < n; ++i) idx[i] = i;
    const std::vector<A> w(static_cast<std::size_t>(n), A(1));
    resample_axis_pass(static_cast<const A*>(data), data, outer, n, 1, n, idx.data(), w.data(), 1,
                       true, n_threads);
    return;
  }
  constexpr index_t kBlock = 1024;
  const index_t n_blocks = (inner + kBlock - 1) / kBlock;
#pragma omp parallel num_threads(clamp_threads(n_threads))
  {
    std::vector<double> init(static_cast<std::size_t>(std::min(kBlock, inner)));
#pragma omp for schedule(static)
    for (index_t item = 0; item < outer * n_blocks; ++item) {
      const index_t o = item / n_blocks, b0 = (item % n_blocks) * kBlock;
      bspline_prefilter_lines(data + o * n * inner + b0, n, inner, std::min(kBlock, inner - b0),
                              init.data());
    }
  }
}

// dst[b] = sum_t w[t] * rows[idx[t] * stride + b] for b < width, taps summed in order t = 0, 1, ...
// (the first one multiplied, the others added) through an accumulator block that stays in L1
// while the rows stream in. Every pass along a strided axis sums its taps here, so the fused
// slice path and the whole-volume pass give the same bits.
template <class S, class A>
void blend_rows(const S* rows, const index_t* idx, index_t stride, const A* w, int taps,
                index_t width, A* dst) {
  constexpr index_t kBlock = 512;
  A acc[kBlock];
  for (index_t b0 = 0; b0 < width; b0 += kBlock) {
    const index_t n = std::min(kBlock, width - b0);
    {
      const A w0 = w[0];
      const S* s = rows + idx[0] * stride + b0;
      for (index_t b = 0; b < n; ++b) acc[b] = w0 * static_cast<A>(s[b]);
    }
    for (int t = 1; t < taps; ++t) {
      const A wt = w[t];
      const S* s = rows + idx[t] * stride + b0;
      for (index_t b = 0; b < n; ++b) acc[b] += wt * static_cast<A>(s[b]);
    }
    for (index_t b = 0; b < n; ++b) dst[b0 + b] = acc[b];
  }
}

// Lines along the contiguous axis with at most this many taps (linear, cubic without
// anti-aliasing) read their taps straight from the line instead of going through the transposed
// line groups, whose transposes cost more than the few taps they serve.
constexpr int kDirectTaps = 4;

// out[o][m] = sum_t w[m][t] * in[o][idx[m][t]], taps summed in the order of blend_rows. The tap
// table is split into one contiguous 32-bit column per tap so the loop over m vectorises with
// gathers.
template <class T, class A>
void resample_lines_direct(const T* in, A* out, index_t outer, index_t n_in, index_t n_out,
                           const index_t* idx, const A* w, int taps, int n_threads) {
  std::vector<std::int32_t> col(static_cast<std::size_t>(taps * n_out));
  std::vector<A> wc(static_cast<std::size_t>(taps * n_out));
  for (index_t m = 0; m < n_out; ++m)
    for (int t = 0; t < taps; ++t) {
      col[t * n_out + m] = static_cast<std::int32_t>(idx[m * taps + t]);
      wc[t * n_out + m] = w[m * taps + t];
    }
  const std::int32_t* __restrict c = col.data();
  const A* __restrict wt = wc.data();
#pragma omp parallel for schedule(static) num_threads(clamp_threads(n_threads))
  for (index_t o = 0; o < outer; ++o) {
    const T* __restrict line = in + o * n_in;
    A* __restrict dst = out + o * n_out;
    for (index_t m = 0; m < n_out; ++m) dst[m] = wt[m] * static_cast<A>(line[c[m]]);
    for (int t = 1; t < taps; ++t) {
      const std::int32_t* __restrict ct = c + t * n_out;
      const A* __restrict wtt = wt + t * n_out;
      for (index_t m = 0; m < n_out; ++m) dst[m] += wtt[m] * static_cast<A>(line[ct[m]]);
    }
  }
}

// ------------------------------------------------------------------ separable axis pass
// One 1D resampling pass along the middle axis of a [outer][n_in][inner] array:
//   out[o][m][:] = sum_t w[m][t] * line(in[o][idx[m][t]][:]),
// where `line` is the input, or its B-spline coefficients when `prefilter` is set. The tap table
// carries the interpolation weights, boundary extension and any anti-aliasing kernel already
// composed (built once per axis by the caller), so every interpolation order shares this loop.
// Output rows are written whole and in order, so the stores stream.
template <class T, class A>
void resample_axis_pass(const T* in, A* out, index_t outer, index_t n_in, index_t inner,
                        index_t n_out, const index_t* idx, const A* w, int taps, bool prefilter,
                        int n_threads) {
  if (inner == 1 && !prefilter && taps <= kDirectTaps) {
    resample_lines_direct(in, out, outer, n_in, n_out, idx, w, taps, n_threads);
    return;
  }
  if (inner == 1) {
    const index_t n_groups = (outer + kLineGroup - 1) / kLineGroup;
#pragma omp parallel num_threads(clamp_threads(n_threads))
    {
      std::vector<A> block(static_cast<std::size_t>(n_in * kLineGroup));
      std::vector<double> init(kLineGroup);
#pragma omp for schedule(static)
      for (index_t grp = 0; grp < n_groups; ++grp) {
        const index_t g = std::min(kLineGroup, outer - grp * kLineGroup);
        load_line_group(in + grp * kLineGroup * n_in, n_in, g, block.data());
        if (prefilter)
          bspline_prefilter_lines(block.data(), n_in, kLineGroup, kLineGroup, init.data());
        A* dst = out + grp * kLineGroup * n_out;
        for (index_t m = 0; m < n_out; ++m) {
          A acc[kLineGroup] = {};
          for (int t = 0; t < taps; ++t) {
            const A wt = w[m * taps + t];
            const A* s = block.data() + idx[m * taps + t] * kLineGroup;
            for (index_t r = 0; r < kLineGroup; ++r) acc[r] += wt * s[r];
          }
          for (index_t r = 0; r < g; ++r) dst[r * n_out + m] = acc[r];
        }
      }
    }
    return;
  }
  if (prefilter) {
    // Coefficients of the lines along this (strided) axis first, then plain taps from them.
    const index_t n = outer * n_in * inner;
    std::unique_ptr<A[]> coef(new A[static_cast<std::size_t>(n)]);
#pragma omp parallel for schedule(static) num_threads(clamp_threads(n_threads))
    for (index_t v = 0; v < n; ++v) coef[v] = static_cast<A>(in[v]);
    bspline_prefilter_axis(coef.get(), outer, n_in, inner, n_threads);
    resample_axis_pass(static_cast<const A*>(coef.get()), out, outer, n_in, inner, n_out, idx, w,
                       taps, false, n_threads);
    return;
  }
#pragma omp parallel for collapse(2) schedule(static) num_threads(clamp_threads(n_threads))
  for (index_t o = 0; o < outer; ++o)
    for (index_t m = 0; m < n_out; ++m)
      blend_rows(in + o * n_in * inner, idx + m * taps, inner, w + m * taps, taps, inner,
                 out + (o * n_out + m) * inner);
}

// One tap table per axis for resample_separable.
template <class A>
struct AxisTaps {
  index_t n_out;
  int taps;
  const index_t* idx;         // n_out * taps input indices, boundary already resolved
  const A* w;                 // n_out * taps weights
  const std::uint8_t* valid;  // n_out flags: 0 where the output coordinate is outside the input
};

// In-plane passes (axes 1 and/or 2, in the given order; n_passes of them) of one slice `src` of
// shape sh[2] into `dst`; `mid` holds the intermediate of two passes. The passes run inside the
// calling thread: the slice is the unit of parallel work.
template <class S, class A>
void plane_passes(const S* src, A* dst, const index_t sh_in[2], const int* plane_order,
                  int n_passes, const AxisTaps<A> axes[3], bool prefilter, std::vector<A>& mid) {
  index_t sh[2] = {sh_in[0], sh_in[1]};
  auto run = [&](const auto* from, A* to, int a) {
    const AxisTaps<A>& ax = axes[a];
    if (a == 1)
      resample_axis_pass(from, to, 1, sh[0], sh[1], ax.n_out, ax.idx, ax.w, ax.taps, prefilter, 1);
    else
      resample_axis_pass(from, to, sh[0], sh[1], 1, ax.n_out, ax.idx, ax.w, ax.taps, prefilter, 1);
    sh[a - 1] = ax.n_out;
  };
  if (n_passes == 1) {
    run(src, dst, plane_order[0]);
    return;
  }
  const int a0 = plane_order[0];
  mid.resize(static_cast<std::size_t>(a0 == 1 ? axes[1].n_out * sh[1] : sh[0] * axes[2].n_out));
  run(src, mid.data(), a0);
  run(static_cast<const A*>(mid.data()), dst, plane_order[1]);
}

// The plane shape after the in-plane passes plane_order[0 .. n_passes).
template <class A>
void plane_shape_after(index_t plane[2], const int* plane_order, int n_passes,
                       const AxisTaps<A> axes[3]) {
  for (int q = 0; q < n_passes; ++q) plane[plane_order[q] - 1] = axes[plane_order[q]].n_out;
}

// In-plane passes applied slice by slice, so a slice and its intermediate stay in cache instead
// of making a round trip through memory per pass.
template <class S, class A>
void resample_plane_passes(const S* src, A* dst, const index_t shape[3], const int* plane_order,
                           int n_passes, const AxisTaps<A> axes[3], bool prefilter, int n_threads) {
  index_t out_plane[2] = {shape[1], shape[2]};
  plane_shape_after(out_plane, plane_order, n_passes, axes);
  const index_t in_size = shape[1] * shape[2], out_size = out_plane[0] * out_plane[1];
#pragma omp parallel num_threads(clamp_threads(n_threads))
  {
    std::vector<A> mid;
#pragma omp for schedule(static)
    for (index_t k = 0; k < shape[0]; ++k)
      plane_passes(src + k * in_size, dst + k * out_size, shape + 1, plane_order, n_passes, axes,
                   prefilter, mid);
  }
}

// All passes fused per output slice (no B-spline prefilter: it needs whole lines along axis 0).
// order[split] == 0; the in-plane passes before it ("pre") and after it ("post") run per slice:
//   out[k] = post(sum_t w0[k][t] * pre(in[idx0[k][t]])).
// Each thread walks a contiguous range of output slices and keeps the pre-passed input slices it
// last used in a small cache (taps + 1 slots, least recently used out), so each is computed about
// once and no volume-sized intermediate is written. The sums are those of the whole-volume passes
// (plane_passes, blend_rows), in the same order, so the bits are the same. Output slices outside
// the input along axis 0 are left to the caller's fill.
template <class T, class A>
void resample_slices_fused(const T* in, const index_t shape[3], A* out, const AxisTaps<A> axes[3],
                           const int* order, int n_passes, int split, int n_threads) {
  const AxisTaps<A>& ax = axes[0];
  const int n_pre = split, n_post = n_passes - split - 1;
  index_t pre_plane[2] = {shape[1], shape[2]};
  plane_shape_after(pre_plane, order, n_pre, axes);
  index_t out_plane[2] = {pre_plane[0], pre_plane[1]};
  plane_shape_after(out_plane, order + split + 1, n_post, axes);
  const index_t in_size = shape[1] * shape[2], pre_size = pre_plane[0] * pre_plane[1];
  const index_t out_size = out_plane[0] * out_plane[1];
  const int slots = ax.taps + 1;  // the taps of one output slice never evict each other
#pragma omp parallel num_threads(clamp_threads(n_threads))
  {
    std::vector<A> cache(n_pre ? static_cast<std::size_t>(slots * pre_size) : 0);
    std::vector<index_t> tag(static_cast<std::size_t>(slots), -1), used(tag), slot(tag);
    std::vector<A> blended(n_post ? static_cast<std::size_t>(pre_size) : 0), mid;
#pragma omp for schedule(static)
    for (index_t k = 0; k < ax.n_out; ++k) {
      if (!ax.valid[k]) continue;
      const index_t* taps = ax.idx + k * ax.taps;
      A* dst = out + k * out_size;
      A* sum = n_post ? blended.data() : dst;
      if (n_pre == 0) {
        blend_rows(in, taps, in_size, ax.w + k * ax.taps, ax.taps, pre_size, sum);
      } else {
        for (int t = 0; t < ax.taps; ++t) {
          int s = 0;
          while (s < slots && tag[s] != taps[t]) ++s;
          if (s == slots) {  // not cached: replace the least recently used slot
            s = static_cast<int>(std::min_element(used.begin(), used.end()) - used.begin());
            tag[s] = taps[t];
            plane_passes(in + taps[t] * in_size, cache.data() + s * pre_size, shape + 1, order,
                         n_pre, axes, false, mid);
          }
          used[s] = k;
          slot[t] = s;
        }
        blend_rows(static_cast<const A*>(cache.data()), slot.data(), pre_size, ax.w + k * ax.taps,
                   ax.taps, pre_size, sum);
      }
      if (n_post)
        plane_passes(static_cast<const A*>(blended.data()), dst, pre_plane, order + split + 1,
                     n_post, axes, false, mid);
    }
  }
}

// Exact fill (not a weighted sum of fills) wherever any axis was outside the input.
template <class A>
void fill_outside(A* out, const index_t shape[3], const AxisTaps<A> axes[3], A fill,
                  int n_threads) {
  bool any_invalid = false;
  for (int a = 0; a < 3; ++a)
    for (index_t v = 0; v < axes[a].n_out; ++v) any_invalid = any_invalid || !axes[a].valid[v];
  if (!any_invalid) return;
  const index_t n1 = shape[1], n2 = shape[2];
#pragma omp parallel for schedule(static) num_threads(clamp_threads(n_threads))
  for (index_t k = 0; k < shape[0]; ++k) {
    A* plane = out + k * n1 * n2;
    if (!axes[0].valid[k]) {
      for (index_t v = 0; v < n1 * n2; ++v) plane[v] = fill;
      continue;
    }
    for (index_t j = 0; j < n1; ++j) {
      A* row = plane + j * n2;
      if (!axes[1].valid[j]) {
        for (index_t i = 0; i < n2; ++i) row[i] = fill;
        continue;
      }
      for (index_t i = 0; i < n2; ++i)
        if (!axes[2].valid[i]) row[i] = fill;
    }
  }
}

// Separable resampling of a 3D array whose output->input index map is axis-aligned: one pass per
// axis listed in `order` (n_passes of them; the other axes keep their size and values), shrinking
// axes first to keep the intermediates small. Without the B-spline prefilter, a pass along axis 0
// and the in-plane passes around it run fused per output slice (resample_slices_fused); otherwise
// consecutive in-plane passes run slice by slice and the axis-0 pass over the whole volume.
// Then `fill` goes on the output slabs whose coordinate fell outside the input on any axis.
template <class T, class A>
void resample_separable(const T* in, const index_t shape_in[3], A* out, const AxisTaps<A> axes[3],
                        const int* order, int n_passes, bool prefilter, A fill, int n_threads) {
  index_t shape[3] = {shape_in[0], shape_in[1], shape_in[2]};
  const int split = static_cast<int>(std::find(order, order + n_passes, 0) - order);
  if (!prefilter && split < n_passes) {
    resample_slices_fused(in, shape_in, out, axes, order, n_passes, split, n_threads);
    for (int q = 0; q < n_passes; ++q) shape[order[q]] = axes[order[q]].n_out;
    fill_outside(out, shape, axes, fill, n_threads);
    return;
  }
  std::unique_ptr<A[]> buf[2];  // uninitialised: every element is written by the next pass
  const A* inter = nullptr;     // current intermediate, null while reading the input
  int n_groups = 0;
  for (int p = 0; p < n_passes;) {
    int end = p + 1;
    if (order[p] != 0)
      while (end < n_passes && order[end] != 0) ++end;
    index_t next[3] = {shape[0], shape[1], shape[2]};
    for (int q = p; q < end; ++q) next[order[q]] = axes[order[q]].n_out;
    A* dst = out;
    if (end < n_passes) {
      auto& b = buf[n_groups % 2];
      b.reset(new A[static_cast<std::size_t>(next[0] * next[1] * next[2])]);
      dst = b.get();
    }
    auto group = [&](const auto* src) {
      if (order[p] == 0) {
        const AxisTaps<A>& ax = axes[0];
        resample_axis_pass(src, dst, 1, shape[0], shape[1] * shape[2], ax.n_out, ax.idx, ax.w,
                           ax.taps, prefilter, n_threads);
      } else {
        resample_plane_passes(src, dst, shape, order + p, end - p, axes, prefilter, n_threads);
      }
    };
    if (inter)
      group(inter);
    else
      group(in);
    for (int d = 0; d < 3; ++d) shape[d] = next[d];
    inter = dst;
    ++n_groups;
    p = end;
  }
  fill_outside(out, shape, axes, fill, n_threads);
}

// Maximal runs of equal consecutive entries of an index table, as [start, end) pairs.
inline std::vector<index_t> index_runs(const index_t* idx, index_t n) {
  std::vector<index_t> runs;
  for (index_t v = 0; v < n;) {
    index_t e = v + 1;
    while (e < n && idx[e] == idx[v]) ++e;
    runs.push_back(v);
    runs.push_back(e);
    v = e;
  }
  return runs;
}

// dst[i] = row[idx[i]] for lo <= i < hi, every index in [0, n). With AVX-512, each run of 32
// two-byte or 16 four-byte outputs whose inputs lie within a window of two registers is a
// masked load of that window and one two-register permute (vpermt2w / vpermt2d) instead of 32 or
// 16 scalar loads: the in-plane step of an axis-aligned resampling is regular, so the plan of
// windows is built once and serves every row. Runs with a wider spread (downsampling by more
// than 2x) and the tail are copied element by element. The masks keep the loads inside the row.
template <class T>
class RowGather {
 public:
  RowGather(const index_t* idx, index_t lo, index_t hi, index_t n) : idx_(idx), lo_(lo), hi_(hi) {
#if defined(__AVX512F__) && defined(__AVX512BW__)
    if constexpr (kLanes > 0) {
      for (index_t i0 = lo; i0 + kLanes <= hi; i0 += kLanes) {
        const auto [mn, mx] = std::minmax_element(idx + i0, idx + i0 + kLanes);
        const index_t base = *mn, avail = n - base;  // row elements from the window's start
        window_.push_back(*mx - base < 2 * kLanes ? base : -1);
        mask_.push_back(first_lanes(avail));
        mask_.push_back(first_lanes(avail - kLanes));
        for (int l = 0; l < kLanes; ++l) lane_.push_back(static_cast<Lane>(idx[i0 + l] - base));
      }
    }
#else
    (void)n;
#endif
  }

  void operator()(const T* row, T* dst) const {
    index_t i = lo_;
#if defined(__AVX512F__) && defined(__AVX512BW__)
    if constexpr (kLanes > 0) {
      for (std::size_t c = 0; c < window_.size(); ++c, i += kLanes) {
        if (window_[c] < 0) {
          for (index_t v = i; v < i + kLanes; ++v) dst[v] = row[idx_[v]];
          continue;
        }
        const T* w = row + window_[c];
        const __m512i lanes = _mm512_loadu_si512(lane_.data() + c * kLanes);
        if constexpr (sizeof(T) == 2) {
          const __m512i a = _mm512_maskz_loadu_epi16(static_cast<__mmask32>(mask_[2 * c]), w);
          const __m512i b =
              _mm512_maskz_loadu_epi16(static_cast<__mmask32>(mask_[2 * c + 1]), w + kLanes);
          _mm512_storeu_si512(dst + i, _mm512_permutex2var_epi16(a, lanes, b));
        } else {
          const __m512i a = _mm512_maskz_loadu_epi32(static_cast<__mmask16>(mask_[2 * c]), w);
          const __m512i b =
              _mm512_maskz_loadu_epi32(static_cast<__mmask16>(mask_[2 * c + 1]), w + kLanes);
          _mm512_storeu_si512(dst + i, _mm512_permutex2var_epi32(a, lanes, b));
        }
      }
    }
#endif
    for (; i < hi_; ++i) dst[i] = row[idx_[i]];
  }

 private:
  static constexpr int kLanes = sizeof(T) == 2 ? 32 : sizeof(T) == 4 ? 16 : 0;
  using Lane = std::conditional_t<sizeof(T) == 2, std::uint16_t, std::uint32_t>;
  // Bit mask of the first min(max(count, 0), kLanes) lanes.
  static std::uint64_t first_lanes(index_t count) {
    if (count <= 0) return 0;
    return count >= kLanes ? (std::uint64_t{1} << kLanes) - 1 : (std::uint64_t{1} << count) - 1;
  }
  const index_t* idx_;
  index_t lo_, hi_;
  std::vector<index_t> window_;      // per run: first input element of its window, -1 if too wide
  std::vector<std::uint64_t> mask_;  // per run: load masks of the window's two registers
  std::vector<Lane> lane_;           // per run: kLanes permute indices into the window
};

// Axis-aligned nearest neighbour: out[k][j][i] = in[idx0[k]][idx1[j]][idx2[i]], fill where any
// index is -1. Values are copied bit for bit, so T only needs the element size.
// Upsampling along k repeats whole planes: each block of rows is gathered once into the first
// plane of its k run and then copied, while still in cache, as one contiguous span to the other
// planes of the run, so the input is read once and the repeated planes cost only their stores.
// The inner gather runs over the valid span of idx2 without per-voxel tests when the -1 entries
// lie only at its two ends (any monotone map).
template <class T>
void gather_nearest(const T* in, const index_t shape_in[3], T* out, const index_t shape_out[3],
                    const index_t* idx0, const index_t* idx1, const index_t* idx2, T fill,
                    int n_threads) {
  const index_t m1 = shape_out[1], m2 = shape_out[2];
  std::vector<index_t> run_start;  // first k of each run of equal idx0
  for (index_t k = 0; k < shape_out[0]; ++k)
    if (k == 0 || idx0[k] != idx0[k - 1]) run_start.push_back(k);
  run_start.push_back(shape_out[0]);
  const index_t n_runs = static_cast<index_t>(run_start.size()) - 1;
  // Rows per block: about 32 KiB of output, so a block stays in L1/L2 between gather and copies.
  const index_t block =
      std::max<index_t>(1, static_cast<index_t>(32768 / (sizeof(T) * std::max<index_t>(m2, 1))));
  const index_t n_blocks = (m1 + block - 1) / block;
  index_t lo = 0, hi = m2;
  while (lo < hi && idx2[lo] < 0) ++lo;
  while (hi > lo && idx2[hi - 1] < 0) --hi;
  bool contiguous_valid = true;
  for (index_t i = lo; i < hi; ++i) contiguous_valid = contiguous_valid && idx2[i] >= 0;
  const RowGather<T> gather(idx2, contiguous_valid ? lo : 0, contiguous_valid ? hi : 0,
                            shape_in[2]);
#pragma omp parallel for collapse(2) schedule(static) num_threads(clamp_threads(n_threads))
  for (index_t r = 0; r < n_runs; ++r) {
    for (index_t b = 0; b < n_blocks; ++b) {
      const index_t k0 = run_start[r], k1 = run_start[r + 1];
      const index_t j0 = b * block, j1 = std::min(m1, j0 + block);
      T* first = out + (k0 * m1 + j0) * m2;
      for (index_t j = j0; j < j1; ++j) {
        T* dst = out + (k0 * m1 + j) * m2;
        if (idx0[k0] < 0 || idx1[j] < 0) {
          for (index_t i = 0; i < m2; ++i) dst[i] = fill;
          continue;
        }
        const T* row = in + (idx0[k0] * shape_in[1] + idx1[j]) * shape_in[2];
        if (contiguous_valid) {
          for (index_t i = 0; i < lo; ++i) dst[i] = fill;
          gather(row, dst);
          for (index_t i = hi; i < m2; ++i) dst[i] = fill;
        } else {
          for (index_t i = 0; i < m2; ++i) dst[i] = idx2[i] < 0 ? fill : row[idx2[i]];
        }
      }
      const std::size_t bytes = static_cast<std::size_t>((j1 - j0) * m2) * sizeof(T);
      for (index_t k = k0 + 1; k < k1; ++k) std::memcpy(out + (k * m1 + j0) * m2, first, bytes);
    }
  }
}

// Whole-volume B-spline coefficients (the prefilter of every axis), for the per-voxel cubic path.
template <class T, class A>
void bspline_coefficients(const T* in, const index_t shape[3], A* out, int n_threads) {
  const index_t n = shape[0] * shape[1] * shape[2];
#pragma omp parallel for schedule(static) num_threads(clamp_threads(n_threads))
  for (index_t v = 0; v < n; ++v) out[v] = static_cast<A>(in[v]);
  bspline_prefilter_axis(out, 1, shape[0], shape[1] * shape[2], n_threads);
  bspline_prefilter_axis(out, shape[0], shape[1], shape[2], n_threads);
  bspline_prefilter_axis(out, shape[0] * shape[1], shape[2], 1, n_threads);
}

// ------------------------------------------------------------------ point samplers
constexpr index_t kWarpBlock = 64;  // points per interior_block call

// 0 <= c < n - 1 on every axis: floor(c) and floor(c) + 1 (or the rounded index) are inside.
// A length-1 slice axis (a 2D image, c0 == 0 exactly) is stepped over with stride 0.
inline void unit_step_box(const index_t n[3], double lo[3], double hi[3]) {
  for (int a = 0; a < 3; ++a) {
    lo[a] = 0.0;
    hi[a] = static_cast<double>(n[a] - 1);
  }
  if (n[0] == 1) hi[0] = 0.25;
}

// Requests part `part` of `parts` equal parts of the `count` input planes from axis-0 index
// `first` (clamped into the image) into the cache, in address order: warp() streams the planes
// the next output slice will read while it computes this one.
template <class E>
inline void prefetch_planes(const E* data, const index_t n[3], index_t first, index_t count,
                            index_t part, index_t parts) {
#if defined(__GNUC__)
  constexpr index_t kLine = 64;
  const index_t bytes = n[1] * n[2] * static_cast<index_t>(sizeof(E));
  const index_t begin = bytes * part / parts / kLine * kLine, end = bytes * (part + 1) / parts;
  const index_t lo = clamp_index(first, n[0]), hi = clamp_index(first + count - 1, n[0]);
  for (index_t p = lo; p <= hi; ++p) {
    const char* plane = reinterpret_cast<const char*>(data + p * n[1] * n[2]);
    for (index_t b = begin; b < end; b += kLine) __builtin_prefetch(plane + b, 0, 2);
  }
#else
  (void)data, (void)n, (void)first, (void)count, (void)part, (void)parts;
#endif
}

// The column index i as double through int32, which x86 converts four at a time (from int64
// only AVX-512 does, and the coordinate loops would stay scalar). Exact for i < 2^31, which
// the warp binding guarantees for every output row.
inline double column_index(index_t i) { return static_cast<double>(static_cast<std::int32_t>(i)); }

// interior() point by point, for samplers without a blocked version.
template <class S, class V>
void interior_points(const S& sampler, const double* c0, const double* c1, const double* c2,
                     index_t count, V* out) {
  for (index_t v = 0; v < count; ++v) out[v] = sampler.interior(c0[v], c1[v], c2[v]);
}

// Each sampler evaluates one continuous index (c0, c1, c2) of a C-ordered [n0][n1][n2] array.

template <class T>
struct NearestSampler {
  using value_type = T;
  const T* data;
  index_t n[3];
  T fill;
  MEDKERN_HD T operator()(double c0, double c1, double c2) const {
    if (!inside(c0, n[0]) || !inside(c1, n[1]) || !inside(c2, n[2])) return fill;
    const index_t i0 = clamp_index(floor_index(c0 + 0.5), n[0]);
    const index_t i1 = clamp_index(floor_index(c1 + 0.5), n[1]);
    const index_t i2 = clamp_index(floor_index(c2 + 0.5), n[2]);
    return data[(i0 * n[1] + i1) * n[2] + i2];
  }
  // Where rounding cannot leave the image, so no clamping is needed.
  void interior_box(double lo[3], double hi[3]) const { unit_step_box(n, lo, hi); }
  T interior(double c0, double c1, double c2) const {
    const index_t i0 = static_cast<index_t>(c0 + 0.5), i1 = static_cast<index_t>(c1 + 0.5),
                  i2 = static_cast<index_t>(c2 + 0.5);  // non-negative: truncation is floor
    return data[(i0 * n[1] + i1) * n[2] + i2];
  }
  void interior_block(const double* c0, const double* c1, const double* c2, index_t count,
                      T* out) const {
    interior_points(*this, c0, c1, c2, count, out);
  }
  void prefetch_slice(double c0, index_t part, index_t parts) const {
    prefetch_planes(data, n, floor_clamped(c0 + 0.5, n[0]), 1, part, parts);
  }
};

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
constexpr bool kLittleEndian = true;
#else
constexpr bool kLittleEndian = false;  // (x, x + 1) pairs are then loaded one element at a time
#endif

template <class T, class A>
struct LinearSampler {
  // T from the bit pattern of one element (the low half of a little-endian pair load).
  template <class W>
  static T from_bits(W w) {
    static_assert(sizeof(W) == sizeof(T), "one element's bits");
    T t;
    std::memcpy(&t, &w, sizeof t);
    return t;
  }
  using value_type = A;
  const T* data;
  index_t n[3];
  A fill;
  MEDKERN_HD A operator()(double c0, double c1, double c2) const {
    if (!inside(c0, n[0]) || !inside(c1, n[1]) || !inside(c2, n[2])) return fill;
    return trilinear<A>(data, n, LinearTaps(n, c0, c1, c2));
  }
  // Where all 8 neighbours exist, so no clamping is needed (same arithmetic as operator()).
  void interior_box(double lo[3], double hi[3]) const { unit_step_box(n, lo, hi); }
  A interior(double c0, double c1, double c2) const {
    const index_t s1 = n[2], s0 = n[1] * n[2];
    const index_t f0 = static_cast<index_t>(c0), f1 = static_cast<index_t>(c1),
                  f2 = static_cast<index_t>(c2);  // non-negative: truncation is floor
    const A t0 = static_cast<A>(c0 - static_cast<double>(f0));
    const A t1 = static_cast<A>(c1 - static_cast<double>(f1));
    const A t2 = static_cast<A>(c2 - static_cast<double>(f2));
    const T* p = data + f0 * s0 + f1 * s1 + f2;
    const index_t d0 = n[0] > 1 ? s0 : 0;  // a length-1 slice axis steps by 0
    return blend(p, p + s1, p + d0, p + d0 + s1, 1, t0, t1, t2);
  }
  // interior() for `count` points at once, in loops the compiler vectorises (coordinates to
  // offsets and fractions; the neighbour loads; the blends). Needs 32-bit offsets.
  void interior_block(const double* c0, const double* c1, const double* c2, index_t count,
                      A* out) const {
    if (!block_fits(count)) {
      for (index_t v = 0; v < count; ++v) out[v] = interior(c0[v], c1[v], c2[v]);
      return;
    }
    const double* c[3] = {c0, c1, c2};
    sample_block<false>([&](index_t q, int a) { return c[a][q]; }, 0.0, count, out);
  }
  // The interior points b + d * (i0 + q), q < count, of one output row of a warp: the same
  // values as interior_block on those coordinates, without storing them in between.
  void interior_row(const double b[3], const double d[3], index_t i0, index_t count, A* out) const {
    auto column = [&](index_t q) { return column_index(i0 + q); };
    if (!block_fits(count)) {
      for (index_t q = 0; q < count; ++q)
        out[q] =
            interior(b[0] + d[0] * column(q), b[1] + d[1] * column(q), b[2] + d[2] * column(q));
      return;
    }
    if (d[0] == 0.0) {  // the row stays on one axis-0 index: its offset and fraction once
      sample_block<true>([&](index_t q, int a) { return b[a] + d[a] * column(q); }, b[0], count,
                         out);
    } else {
      sample_block<false>([&](index_t q, int a) { return b[a] + d[a] * column(q); }, 0.0, count,
                          out);
    }
  }

 private:
  bool block_fits(index_t count) const {
    return n[0] * n[1] * n[2] < (index_t{1} << 31) && count <= kWarpBlock;
  }
  // The block of points whose continuous index on axis a is coord(q, a); with kFixedAxis0 every
  // point's axis-0 index is c0_fixed, and coord is asked for axes 1 and 2 only.
  template <bool kFixedAxis0, class Coord>
  void sample_block(Coord coord, double c0_fixed, index_t n_points, A* out) const {
    constexpr index_t kMax = kWarpBlock;
    // int counters: with 64-bit ones GCC vectorises these loops over int32 offsets poorly, and
    // a 256^3 rotation takes a third longer.
    const int count = static_cast<int>(n_points);
    const index_t s1 = n[2], s0 = n[1] * n[2];
    const std::int32_t is0 = static_cast<std::int32_t>(s0), is1 = static_cast<std::int32_t>(s1);
    const std::int32_t d0 = n[0] > 1 ? is0 : 0;
    alignas(32) std::int32_t off[kMax];
    alignas(32) A t0[kMax], t1[kMax], t2[kMax], v[4][kMax];
    const std::int32_t f0_fixed = static_cast<std::int32_t>(c0_fixed);
    const A t0_fixed = static_cast<A>(c0_fixed - f0_fixed);
    // Offsets within the axis-0 plane `plane` starts at (per point where the plane varies).
    const T* plane = data + (kFixedAxis0 ? f0_fixed * is0 : 0);
    for (int q = 0; q < count; ++q) {
      const double c1 = coord(q, 1), c2 = coord(q, 2);
      const std::int32_t f1 = static_cast<std::int32_t>(c1), f2 = static_cast<std::int32_t>(c2);
      t1[q] = static_cast<A>(c1 - f1);
      t2[q] = static_cast<A>(c2 - f2);
      off[q] = f1 * is1 + f2;
      if constexpr (!kFixedAxis0) {
        const double c0 = coord(q, 0);
        const std::int32_t f0 = static_cast<std::int32_t>(c0);
        t0[q] = static_cast<A>(c0 - f0);
        off[q] += f0 * is0;
      }
    }
    // In-plane maps (a rotation about axis 0, any 2D image) put every point of a block on one
    // axis-0 plane: the second plane has weight 0 and is not read. (The full blend would add
    // 0 * (a1 - a0); only a non-finite value on the unread plane, which would turn that into
    // NaN, or the sign of a zero result can differ.)
    // Interior fractions are +0 or positive, so all are zero exactly when no bit is set (an
    // integer OR the compiler vectorises, where a chain of float compares it does not).
    bool planar = t0_fixed == A(0);
    if constexpr (!kFixedAxis0) {
      using Bits = std::conditional_t<sizeof(A) == 4, std::uint32_t, std::uint64_t>;
      Bits any_bit = 0;
      for (int q = 0; q < count; ++q) {
        Bits b;
        std::memcpy(&b, &t0[q], sizeof b);
        any_bit |= b;
      }
      planar = any_bit == 0;
#if defined(__GNUC__)
      // Points whose axis-0 index varies (an oblique map, a displacement field) enter a new
      // input row every few voxels, a pattern the hardware prefetcher does not follow: request
      // the block's far rows together so their misses overlap (a displacement warp runs about
      // twice as fast).
      for (int q = 0; q < count; ++q) {
        __builtin_prefetch(data + off[q] + is1);
        if (!planar) __builtin_prefetch(data + off[q] + d0 + is1);
      }
#endif
    }
    // Per axis-0 plane (offset 0 or d0): the four neighbours of each point, blended in-plane.
    // Each (x, x + 1) pair is one load of twice T's width where such an integer exists, which
    // halves the scalar loads of this loop, the hot one of a rotation (perf); the pair is then
    // split lane-wise, so the values, and the blend's bits, are those of four separate loads.
    auto in_plane = [&](std::int32_t base, A* blended) {
      const T* origin = plane + base;
      if constexpr (kLittleEndian && (sizeof(T) == 4 || sizeof(T) == 2)) {
        using Pair = std::conditional_t<sizeof(T) == 4, std::uint64_t, std::uint32_t>;
        alignas(32) Pair near_row[kMax], far_row[kMax];
        for (int q = 0; q < count; ++q) {
          const T* p = origin + off[q];
          std::memcpy(&near_row[q], p, sizeof(Pair));
          std::memcpy(&far_row[q], p + is1, sizeof(Pair));
        }
        constexpr int kBits = 8 * static_cast<int>(sizeof(T));
        using Word = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint16_t>;
        auto first = [](Pair w) { return from_bits(static_cast<Word>(w)); };
        auto second = [](Pair w) { return from_bits(static_cast<Word>(w >> kBits)); };
        for (int q = 0; q < count; ++q) {
          v[0][q] = static_cast<A>(first(near_row[q]));
          v[1][q] = static_cast<A>(second(near_row[q]));
          v[2][q] = static_cast<A>(first(far_row[q]));
          v[3][q] = static_cast<A>(second(far_row[q]));
        }
      } else {
        for (int q = 0; q < count; ++q) {
          const T* p = origin + off[q];
          v[0][q] = static_cast<A>(p[0]);
          v[1][q] = static_cast<A>(p[1]);
          v[2][q] = static_cast<A>(p[is1]);
          v[3][q] = static_cast<A>(p[is1 + 1]);
        }
      }
      for (int q = 0; q < count; ++q) {
        const A v00 = v[0][q] + t2[q] * (v[1][q] - v[0][q]),
                v01 = v[2][q] + t2[q] * (v[3][q] - v[2][q]);
        blended[q] = v00 + t1[q] * (v01 - v00);
      }
    };
    if (planar) {
      in_plane(0, out);
      return;
    }
    alignas(32) A a0[kMax], a1[kMax];
    in_plane(0, a0);
    in_plane(d0, a1);
    if constexpr (kFixedAxis0) {
      for (int q = 0; q < count; ++q) out[q] = a0[q] + t0_fixed * (a1[q] - a0[q]);
    } else {
      for (int q = 0; q < count; ++q) out[q] = a0[q] + t0[q] * (a1[q] - a0[q]);
    }
  }

 public:
  // The second plane only where it has weight: sample_block does not read it otherwise.
  void prefetch_slice(double c0, index_t part, index_t parts) const {
    const index_t f = floor_clamped(c0, n[0]);
    prefetch_planes(data, n, f, c0 == static_cast<double>(f) ? 1 : 2, part, parts);
  }
  // trilinear_blend of the four rows' (x, x + d2) pairs.
  MEDKERN_HD static A blend(const T* r00, const T* r01, const T* r10, const T* r11, index_t d2,
                            A t0, A t1, A t2) {
    const A v[8] = {static_cast<A>(r00[0]),  static_cast<A>(r00[d2]), static_cast<A>(r01[0]),
                    static_cast<A>(r01[d2]), static_cast<A>(r10[0]),  static_cast<A>(r10[d2]),
                    static_cast<A>(r11[0]),  static_cast<A>(r11[d2])};
    return trilinear_blend(v, t0, t1, t2);
  }
};

// Cubic B-spline evaluation on precomputed coefficients (bspline_coefficients), mirrored taps.
// A length-1 axis (the slice axis of a 2D image) uses its single coefficient with weight 1.
template <class A>
struct CubicSampler {
  using value_type = A;
  const A* coef;
  index_t n[3];
  A fill;
  MEDKERN_HD A operator()(double c0, double c1, double c2) const {
    if (!inside(c0, n[0]) || !inside(c1, n[1]) || !inside(c2, n[2])) return fill;
    const double c[3] = {c0, c1, c2};
    index_t idx[3][4];
    A w[3][4];
    int count[3];
    for (int a = 0; a < 3; ++a) {
      if (n[a] == 1) {
        count[a] = 1;
        idx[a][0] = 0;
        w[a][0] = 1;
        continue;
      }
      count[a] = 4;
      const index_t f = floor_index(c[a]);
      double wd[4];
      cubic_bspline_weights(c[a] - static_cast<double>(f), wd);
      for (int k = 0; k < 4; ++k) {
        const index_t i = f - 1 + k;
        idx[a][k] = i >= 0 && i < n[a] ? i : mirror_index(i, n[a]);  // modulo only at the edges
        w[a][k] = static_cast<A>(wd[k]);
      }
    }
    A acc0 = 0;
    for (int k0 = 0; k0 < count[0]; ++k0) {
      A acc1 = 0;
      for (int k1 = 0; k1 < count[1]; ++k1) {
        const A* row = coef + (idx[0][k0] * n[1] + idx[1][k1]) * n[2];
        A acc2 = 0;
        for (int k2 = 0; k2 < count[2]; ++k2) acc2 += w[2][k2] * row[idx[2][k2]];
        acc1 += w[1][k1] * acc2;
      }
      acc0 += w[0][k0] * acc1;
    }
    return acc0;
  }
  // Where every tap lies inside the image, so no mirroring is needed; evaluation is the same.
  void interior_box(double lo[3], double hi[3]) const {
    for (int a = 0; a < 3; ++a) {
      lo[a] = n[a] == 1 ? 0.0 : 1.0;
      hi[a] = n[a] == 1 ? 0.25 : static_cast<double>(n[a] - 2);
    }
  }
  A interior(double c0, double c1, double c2) const { return (*this)(c0, c1, c2); }
  void interior_block(const double* c0, const double* c1, const double* c2, index_t count,
                      A* out) const {
    interior_points(*this, c0, c1, c2, count, out);
  }
  void prefetch_slice(double c0, index_t part, index_t parts) const {
    prefetch_planes(coef, n, floor_clamped(c0, n[0]) - 1, 4, part, parts);
  }
};

// Segmentation resampling: the label whose summed trilinear weight over the 8 neighbours is
// largest. Corners are visited nearest first (axis 0 fastest, axis 2 slowest), and only a
// strictly larger sum replaces the current winner, so ties go to the nearest voxel's label
// (then to the first in visiting order). A label's sum is formed per axis-2 tap: the (axis 0,
// axis 1) weights of its corners in that column, added in visiting order, times the axis-2
// weight. Those column sums depend only on which of the 4 corners hold the label, so they are
// tabulated per output row (16 subsets). Labels are compared for equality only, so T only needs
// the element size.
template <class T>
struct LabelSampler {
  using value_type = T;
  const T* data;
  index_t n[3];
  T fill;
  // Axis 2's two taps at one continuous index: nearest first, with their weights.
  struct RowTaps {
    index_t first, second;
    double w_first, w_second;
  };
  // The four rows of the (axis 0, axis 1) neighbours in visiting order, and for each subset of
  // them (bit c: row c) the sum of their weights in visiting order.
  struct Rows {
    const T* row[4];
    double subset[16];
  };
  MEDKERN_HD T operator()(double c0, double c1, double c2) const {
    if (!inside(c0, n[0]) || !inside(c1, n[1]) || !inside(c2, n[2])) return fill;
    const LinearTaps p(n, c0, c1, c2);
    return along_row(neighbour_rows(p), row_taps(c2));
  }
  MEDKERN_HD Rows neighbour_rows(const LinearTaps& p) const {
    const index_t s1 = n[2], s0 = n[1] * n[2];
    Rows r;
    double w[4];
    for (int c = 0; c < 4; ++c) {
      const bool hi0 = ((c & 1) != 0) != (p.t[0] >= 0.5), hi1 = ((c & 2) != 0) != (p.t[1] >= 0.5);
      r.row[c] = data + (hi0 ? p.hi[0] : p.lo[0]) * s0 + (hi1 ? p.hi[1] : p.lo[1]) * s1;
      w[c] = (hi0 ? p.t[0] : 1.0 - p.t[0]) * (hi1 ? p.t[1] : 1.0 - p.t[1]);
    }
    for (int m = 0; m < 16; ++m) {
      double sum = 0.0;
      for (int c = 0; c < 4; ++c)
        sum += (m >> c) & 1 ? w[c] : 0.0;  // zeros leave the bits as they are
      r.subset[m] = sum;
    }
    return r;
  }
  MEDKERN_HD RowTaps row_taps(double c) const {
    const index_t f = floor_index(c);
    const double t = c - static_cast<double>(f);
    const bool near_hi = t >= 0.5;
    const index_t lo = clamp_index(f, n[2]), hi = clamp_index(f + 1, n[2]);
    return {near_hi ? hi : lo, near_hi ? lo : hi, near_hi ? t : 1.0 - t, near_hi ? 1.0 - t : t};
  }
  MEDKERN_HD static T along_row(const Rows& r, const RowTaps& q) {
    T v[8];
    for (int c = 0; c < 4; ++c) {
      v[c] = r.row[c][q.first];
      v[c + 4] = r.row[c][q.second];
    }
    unsigned same = 0;
    for (int c = 0; c < 8; ++c) same |= static_cast<unsigned>(v[c] == v[0]) << c;
    // Inside a structure all 8 neighbours agree: most of any label map, decided without weights.
    if (same == 0xFFu) return v[0];
    // Two labels meet at most boundaries: decided without data-dependent branches.
    T other = v[0];
    for (int c = 7; c > 0; --c) other = v[c] != v[0] ? v[c] : other;  // first label after v[0]
    unsigned mask = 0;
    for (int c = 0; c < 8; ++c) mask |= static_cast<unsigned>(v[c] == other) << c;
    if ((same | mask) == 0xFFu) {
      const double vote_first = q.w_first * r.subset[same & 15u] + q.w_second * r.subset[same >> 4];
      const double vote_other = q.w_first * r.subset[mask & 15u] + q.w_second * r.subset[mask >> 4];
      return vote_other > vote_first ? other : v[0];
    }
    T best = v[0];
    double best_vote = q.w_first * r.subset[same & 15u] + q.w_second * r.subset[same >> 4];
    unsigned seen = same;
    for (int c = 1; c < 8; ++c) {
      if ((seen >> c) & 1u) continue;
      unsigned mask = 0;
      for (int d = c; d < 8; ++d) mask |= static_cast<unsigned>(v[d] == v[c]) << d;
      seen |= mask;
      const double vote = q.w_first * r.subset[mask & 15u] + q.w_second * r.subset[mask >> 4];
      if (vote > best_vote) {
        best = v[c];
        best_vote = vote;
      }
    }
    return best;
  }
  void interior_box(double lo[3], double hi[3]) const {
    for (int a = 0; a < 3; ++a) {
      lo[a] = -0.5;
      hi[a] = static_cast<double>(n[a]) - 0.5;
    }
  }
  T interior(double c0, double c1, double c2) const { return (*this)(c0, c1, c2); }
  void prefetch_slice(double c0, index_t part, index_t parts) const {
    prefetch_planes(data, n, floor_clamped(c0, n[0]), 2, part, parts);
  }
  // Axis-aligned maps (resampling to another spacing) keep c0 and c1 fixed along a row: the
  // neighbour rows and their subset sums are then found once for the whole block.
  void interior_block(const double* c0, const double* c1, const double* c2, index_t count,
                      T* out) const {
    bool fixed = true;
    for (index_t v = 1; v < count; ++v) fixed &= c0[v] == c0[0] && c1[v] == c1[0];
    if (!fixed || count < 2) {
      interior_points(*this, c0, c1, c2, count, out);
      return;
    }
    const Rows r = neighbour_rows(LinearTaps(n, c0[0], c1[0], c2[0]));
    for (index_t v = 0; v < count; ++v) out[v] = along_row(r, row_taps(c2[v]));
  }
  // Axis-aligned map without displacement (m diagonal: resampling to another spacing): axis 2's
  // taps are found once per column and the neighbour rows once per output row. The index
  // arithmetic is the per-voxel warp's, so both give the same bits.
  void aligned_rows(T* out, const index_t shape_out[3], const double m[12], int n_threads) const {
    const index_t m1 = shape_out[1], m2 = shape_out[2];
    std::vector<RowTaps> taps(static_cast<std::size_t>(m2));
    std::vector<unsigned char> valid(static_cast<std::size_t>(m2));
    for (index_t i = 0; i < m2; ++i) {
      const double c = m[11] + m[10] * static_cast<double>(i);
      valid[static_cast<std::size_t>(i)] = inside(c, n[2]);
      // Taps only for points inside: floor_index of a far or non-finite c would be undefined.
      taps[static_cast<std::size_t>(i)] =
          valid[static_cast<std::size_t>(i)] ? row_taps(c) : RowTaps{0, 0, 1.0, 0.0};
    }
    // Input rows holding one label only (background, mostly, around a segmentation): an output
    // row whose four neighbour rows are uniform with the same label is that label wherever it is
    // inside, which is what every vote there gives, so those rows cost one pass of stores.
    const index_t n_rows = n[0] * n[1];
    std::vector<unsigned char> uniform(static_cast<std::size_t>(n_rows));
#pragma omp parallel for schedule(static) num_threads(clamp_threads(n_threads))
    for (index_t r = 0; r < n_rows; ++r) {
      const T* row = data + r * n[2];
      bool same = true;
      for (index_t x = 1; x < n[2]; ++x) same &= row[x] == row[0];
      uniform[static_cast<std::size_t>(r)] = same;
    }
#pragma omp parallel num_threads(clamp_threads(n_threads))
    {
      // Input columns where the four neighbour rows agree: an output voxel between two such
      // columns of the same label is decided by one comparison (one vectorised pass per row).
      std::vector<unsigned char> agree(static_cast<std::size_t>(n[2]));
      // The output row of a one-label stretch (that label where inside, fill elsewhere).
      std::vector<T> one_row(static_cast<std::size_t>(m2));
      T row_label{};
      bool have_row = false;
#pragma omp for schedule(static)
      for (index_t r = 0; r < shape_out[0] * m1; ++r) {
        const double c0 = m[0] * static_cast<double>(r / m1) + m[3];
        const double c1 = m[5] * static_cast<double>(r % m1) + m[7];
        T* dst = out + r * m2;
        if (!inside(c0, n[0]) || !inside(c1, n[1])) {
          std::fill(dst, dst + m2, fill);
          continue;
        }
        const LinearTaps p(n, c0, c1, 0.0);
        const index_t r0[2] = {p.lo[0], p.hi[0]}, r1[2] = {p.lo[1], p.hi[1]};
        const T label = data[(r0[0] * n[1] + r1[0]) * n[2]];
        bool one_label = true;
        for (index_t u : r0)
          for (index_t v : r1)
            one_label &= uniform[static_cast<std::size_t>(u * n[1] + v)] &&
                         data[(u * n[1] + v) * n[2]] == label;
        if (one_label) {
          if (!have_row || row_label != label) {  // rebuilt when the label changes, rarely
            for (index_t i = 0; i < m2; ++i)
              one_row[static_cast<std::size_t>(i)] =
                  valid[static_cast<std::size_t>(i)] ? label : fill;
            row_label = label;
            have_row = true;
          }
          std::memcpy(dst, one_row.data(), static_cast<std::size_t>(m2) * sizeof(T));
          continue;
        }
        const Rows rows = neighbour_rows(p);
        const T *a = rows.row[0], *b = rows.row[1], *c = rows.row[2], *d = rows.row[3];
        for (index_t x = 0; x < n[2]; ++x)
          agree[static_cast<std::size_t>(x)] = (a[x] == b[x]) & (a[x] == c[x]) & (a[x] == d[x]);
        for (index_t i = 0; i < m2; ++i) {
          const auto& q = taps[static_cast<std::size_t>(i)];
          const auto f = static_cast<std::size_t>(q.first), g = static_cast<std::size_t>(q.second);
          if (!valid[static_cast<std::size_t>(i)])
            dst[i] = fill;
          else if (agree[f] & agree[g] & (a[f] == a[g]))
            dst[i] = a[f];
          else
            dst[i] = along_row(rows, q);
        }
      }
    }
  }
};

// Samplers with an `aligned_rows` member take over axis-aligned warps without displacement.
template <class S, class = void>
struct has_aligned_rows : std::false_type {};
template <class S>
struct has_aligned_rows<S, std::void_t<decltype(&S::aligned_rows)>> : std::true_type {};
// Samplers with an `interior_row` member take the interior points of an affine warp's row
// directly from the row's start and step.
template <class S, class = void>
struct has_interior_row : std::false_type {};
template <class S>
struct has_interior_row<S, std::void_t<decltype(&S::interior_row)>> : std::true_type {};

// ------------------------------------------------------------------ per-voxel warps
// General output->input map for every output voxel (k, j, i):
//   c = M @ (k, j, i, 1) + R @ d[k][j][i],
// with M the 3x4 index map (output index -> world -> transform -> input index) and d an optional
// displacement field on the output grid (n_comp world-mm components per voxel, R the 3 x n_comp
// map from world vectors to input index steps). Rows of the output are independent, so any
// thread count gives the same bits.
// Output index range [first, last) of one row c(i) = b + d * i that stays inside the box
// lo <= c < hi on every axis. The range is solved per axis, then its ends are checked with the
// exact row arithmetic, so the interior samplers only ever see interior points.
inline void row_interior(const double b[3], const double d[3], const double lo[3],
                         const double hi[3], index_t n, index_t& first, index_t& last) {
  double f = 0.0, l = static_cast<double>(n);
  for (int a = 0; a < 3; ++a) {
    if (d[a] == 0.0) {
      if (!(b[a] >= lo[a] && b[a] < hi[a])) l = 0.0;
      continue;
    }
    const double t_lo = (lo[a] - b[a]) / d[a], t_hi = (hi[a] - b[a]) / d[a];
    f = std::max(f, std::ceil(std::min(t_lo, t_hi)));
    l = std::min(l, std::floor(std::max(t_lo, t_hi)) + 1.0);
  }
  f = std::min(f, static_cast<double>(n));  // clamp before converting: the solve can overshoot
  first = static_cast<index_t>(f);
  last = std::max(first, static_cast<index_t>(std::max(l, 0.0)));
  auto in_box = [&](index_t i) {
    const double ii = static_cast<double>(i);
    for (int a = 0; a < 3; ++a) {
      const double c = b[a] + d[a] * ii;
      if (!(c >= lo[a] && c < hi[a])) return false;
    }
    return true;
  };
  while (first < last && !in_box(first)) ++first;
  while (last > first && !in_box(last - 1)) --last;
  // Rounding can leave the solved range one short; each coordinate is monotone in i (b + d * i
  // rounds monotonically), so growing it while the next point is inside makes it exact.
  if (first < last) {
    while (first > 0 && in_box(first - 1)) --first;
    while (last < n && in_box(last)) ++last;
  }
}

// General output->input map for every output voxel (k, j, i):
//   c = M @ (k, j, i, 1) + R @ d[k][j][i],
// with M the 3x4 index map (output index -> world -> transform -> input index) and d an optional
// displacement field on the output grid (n_comp world-mm components per voxel, R the 3 x n_comp
// map from world vectors to input index steps). Rows of the output are independent, so any
// thread count gives the same bits. Interior points take the sampler's check-free path, which
// computes the same value.
template <class S>
void warp(const S& sampler, typename S::value_type* out, const index_t shape_out[3],
          const double m[12], const float* disp, int n_comp, const double* r, int n_threads) {
  if constexpr (has_aligned_rows<S>::value) {
    if (!disp && m[1] == 0.0 && m[2] == 0.0 && m[4] == 0.0 && m[6] == 0.0 && m[8] == 0.0 &&
        m[9] == 0.0) {
      sampler.aligned_rows(out, shape_out, m, n_threads);
      return;
    }
  }
  const index_t m1 = shape_out[1], m2 = shape_out[2];
  double lo[3], hi[3];
  sampler.interior_box(lo, hi);
  const double d[3] = {m[2], m[6], m[10]};
  // Output tiles of kTileRows rows x kWarpBlock columns: an oblique map reads a compact input
  // footprint per tile that stays in L1, where whole rows would sweep a long band through L2.
  constexpr index_t kTileRows = 8;
  const index_t n_tiles = (m1 + kTileRows - 1) / kTileRows;
  auto row_base = [&](index_t k, index_t j, double b[3]) {
    const double kk = static_cast<double>(k), jj = static_cast<double>(j);
    b[0] = m[0] * kk + m[1] * jj + m[3];
    b[1] = m[4] * kk + m[5] * jj + m[7];
    b[2] = m[8] * kk + m[9] * jj + m[11];
  };
  // The box of continuous indices inside the image (-0.5 <= c < n - 0.5, as `inside`): a row's
  // points outside it are `fill`, which the checked path would return for them one by one.
  const double image_lo[3] = {-0.5, -0.5, -0.5};
  const double image_hi[3] = {static_cast<double>(sampler.n[0]) - 0.5,
                              static_cast<double>(sampler.n[1]) - 0.5,
                              static_cast<double>(sampler.n[2]) - 0.5};
  // A row's ranges of columns inside the sampler's interior box ([first, last)) and inside the
  // image ([in_first, in_last), which holds the other).
  struct RowRanges {
    index_t first, last, in_first, in_last;
  };
  auto row_ranges = [&](const double b[3]) {
    RowRanges r;
    row_interior(b, d, lo, hi, m2, r.first, r.last);
    row_interior(b, d, image_lo, image_hi, m2, r.in_first, r.in_last);
    return r;
  };
  // Columns [i_begin, i_end) of the output row with input-index start b, without displacement:
  // fill outside the image, the sampler's checked path between the image and its interior box,
  // the interior in blocks.
  auto affine_row = [&](const double b[3], const RowRanges& r, index_t i_begin, index_t i_end,
                        typename S::value_type* dst) {
    auto at = [&](index_t i, int a) { return b[a] + d[a] * column_index(i); };
    const index_t first = r.first, last = r.last, in_first = r.in_first, in_last = r.in_last;
    const index_t g = std::min(std::max(in_first, i_begin), i_end);
    const index_t h = std::max(g, std::min(in_last, i_end));
    const index_t a = std::min(std::max(first, g), h);
    const index_t e = std::max(a, std::min(last, h));
    std::fill(dst + i_begin, dst + g, sampler.fill);
    for (index_t i = g; i < a; ++i) dst[i] = sampler(at(i, 0), at(i, 1), at(i, 2));
    for (index_t i = a; i < e; i += kWarpBlock) {
      const index_t count = std::min(kWarpBlock, e - i);
      if constexpr (has_interior_row<S>::value) {
        sampler.interior_row(b, d, i, count, dst + i);
      } else {
        double c0[kWarpBlock], c1[kWarpBlock], c2[kWarpBlock];
        for (index_t v = 0; v < count; ++v) {
          c0[v] = at(i + v, 0);
          c1[v] = at(i + v, 1);
          c2[v] = at(i + v, 2);
        }
        sampler.interior_block(c0, c1, c2, count, dst + i);
      }
    }
    for (index_t i = e; i < h; ++i) dst[i] = sampler(at(i, 0), at(i, 1), at(i, 2));
    std::fill(dst + h, dst + i_end, sampler.fill);
  };
  // A map within axis-0 planes (a rotation about axis 0, a 2D image) reads one input plane (two
  // where the slice falls between planes) per output slice, whole rows at a time. Its rows enter
  // a new input row every few voxels, in an order the hardware prefetcher does not follow, and
  // each miss would stall the row: so each output row also streams its share of the planes of
  // the next output slice into the cache, in address order. A 256^3 rotation about axis 0 runs
  // about twice as fast.
  if (!disp && m[1] == 0.0 && m[2] == 0.0) {
#pragma omp parallel for collapse(2) schedule(static) num_threads(clamp_threads(n_threads))
    for (index_t k = 0; k < shape_out[0]; ++k) {
      for (index_t j = 0; j < m1; ++j) {
        if (k + 1 < shape_out[0])
          sampler.prefetch_slice(m[0] * static_cast<double>(k + 1) + m[3], j, m1);
        double b[3];
        row_base(k, j, b);
        affine_row(b, row_ranges(b), 0, m2, out + (k * m1 + j) * m2);
      }
    }
    return;
  }
#pragma omp parallel for collapse(2) schedule(static) num_threads(clamp_threads(n_threads))
  for (index_t k = 0; k < shape_out[0]; ++k) {
    for (index_t tile = 0; tile < n_tiles; ++tile) {
      const index_t j0 = tile * kTileRows, rows = std::min(kTileRows, m1 - j0);
      double base[kTileRows][3];
      RowRanges ranges[kTileRows];
      for (index_t q = 0; q < rows; ++q) {
        row_base(k, j0 + q, base[q]);
        if (!disp) ranges[q] = row_ranges(base[q]);
      }
      double c0[kWarpBlock], c1[kWarpBlock], c2[kWarpBlock];
      for (index_t i0 = 0; i0 < m2; i0 += kWarpBlock) {
        const index_t i1 = std::min(m2, i0 + kWarpBlock);
        for (index_t q = 0; q < rows; ++q) {
          const double* b = base[q];
          auto* dst = out + (k * m1 + j0 + q) * m2;
          if (!disp) {
            affine_row(b, ranges[q], i0, i1, dst);
            continue;
          }
          auto at = [&](index_t i, int a) { return b[a] + d[a] * column_index(i); };
          const float* u = disp + ((k * m1 + j0 + q) * m2 + i0) * n_comp;
          bool all_interior = true;
          for (index_t i = i0; i < i1; ++i, u += n_comp) {
            double c[3] = {at(i, 0), at(i, 1), at(i, 2)};
            for (int a = 0; a < 3; ++a)
              for (int p = 0; p < n_comp; ++p) c[a] += r[a * n_comp + p] * u[p];
            c0[i - i0] = c[0];
            c1[i - i0] = c[1];
            c2[i - i0] = c[2];
            all_interior = all_interior && c[0] >= lo[0] && c[0] < hi[0] && c[1] >= lo[1] &&
                           c[1] < hi[1] && c[2] >= lo[2] && c[2] < hi[2];
          }
          if (all_interior) {
            sampler.interior_block(c0, c1, c2, i1 - i0, dst + i0);
          } else {
            for (index_t i = i0; i < i1; ++i) dst[i] = sampler(c0[i - i0], c1[i - i0], c2[i - i0]);
          }
        }
      }
    }
  }
}

// Samples at n_points continuous indices given as coords[a * n_points + p] for the `ndim`
// trailing axes (scipy.ndimage.map_coordinates layout); a 2D image has n0 == 1 and ndim == 2.
template <class S>
void sample_points(const S& sampler, typename S::value_type* out, const double* coords,
                   index_t n_points, int ndim, int n_threads) {
#pragma omp parallel for schedule(static) num_threads(clamp_threads(n_threads))
  for (index_t p = 0; p < n_points; ++p) {
    const double c0 = ndim == 3 ? coords[p] : 0.0;
    const double* c = coords + (ndim == 3 ? n_points : 0);
    out[p] = sampler(c0, c[p], c[n_points + p]);
  }
}

}  // namespace medkern
