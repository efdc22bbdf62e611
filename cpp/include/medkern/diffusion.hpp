// Anisotropic diffusion: gradient (Perona & Malik 1990) and curvature (Whitaker & Xue 2001)
// conductance, discretised as ITK's GradientNDAnisotropicDiffusionFunction and
// CurvatureNDAnisotropicDiffusionFunction (explicit Euler steps, zero-flux boundaries, the
// conductance scaled every iteration by the mean squared gradient magnitude).
#pragma once
#include <vector>

#include "medkern/filters.hpp"

namespace medkern {

enum class Diffusion : int { gradient = 0, curvature = 1 };

namespace detail {

// The 3x3 rows around (k, j) (clamped), each padded by one nearest sample on both sides, so every
// neighbour the stencils use is rows[(dk + 1) * 3 + dj + 1][i + 1 + di].
struct Stencil3 {
  const float* p[3][3];
  float at(int dk, int dj, index_t i) const { return p[dk + 1][dj + 1][i]; }
};

// Mean over the image of sum_a (central difference along a / spacing_a)^2, zero-flux boundary.
// Sums per row in double, then rows in order, so the value does not depend on the thread count.
inline double mean_gradient_sq(const float* x, const Shape3& s, const double* inv_sp,
                               int n_threads) {
  std::vector<double> part(static_cast<std::size_t>(s.n0 * s.n1));
#pragma omp parallel for schedule(static) num_threads(clamp_threads(n_threads))
  for (index_t row = 0; row < s.n0 * s.n1; ++row) {
    const index_t k = row / s.n1, j = row % s.n1;
    const float* c = x + row * s.n2;
    const float* kp = x + (std::min(k + 1, s.n0 - 1) * s.n1 + j) * s.n2;
    const float* km = x + (std::max(k - 1, index_t(0)) * s.n1 + j) * s.n2;
    const float* jp = x + (k * s.n1 + std::min(j + 1, s.n1 - 1)) * s.n2;
    const float* jm = x + (k * s.n1 + std::max(j - 1, index_t(0))) * s.n2;
    double acc = 0;
    for (index_t i = 0; i < s.n2; ++i) {
      const double g0 = 0.5 * (double(kp[i]) - km[i]) * inv_sp[0];
      const double g1 = 0.5 * (double(jp[i]) - jm[i]) * inv_sp[1];
      const double g2 = 0.5 * (double(c[std::min(i + 1, s.n2 - 1)]) - c[std::max(i - 1, index_t(0))]) * inv_sp[2];
      acc += g0 * g0 + g1 * g1 + g2 * g2;
    }
    part[static_cast<std::size_t>(row)] = acc;
  }
  double total = 0;
  for (double v : part) total += v;
  return total / static_cast<double>(s.size());
}

// Update of one row (k, j) of the diffusion PDE into upd[i] for i < n2 (rounded up to 8 lanes;
// the stencil rows carry the slack). Axis 0 is skipped for 2D images. inv_k = 1 / K with
// K = -2 c^2 <|grad|^2>, so each conductance is exp(|grad|^2 * inv_k); inv_k == 0 switches the
// flux off as ITK does for K == 0.
MEDKERN_SIMD_CLONES
inline void diffusion_row(const Stencil3& st, index_t n2, const double* inv_sp, bool has_axis0,
                          float inv_k, Diffusion kind, float* upd) {
  const float sp[3] = {static_cast<float>(inv_sp[0]), static_cast<float>(inv_sp[1]),
                       static_cast<float>(inv_sp[2])};
  const float flux = inv_k != 0.0f ? 1.0f : 0.0f;
  const int first = has_axis0 ? 0 : 1;
  for (index_t i = 1; i <= n2; i += 8) {
    auto at = [&](int dk, int dj, index_t di) { return load8(st.p[dk + 1][dj + 1] + i + di); };
    const vf8 x0 = at(0, 0, 0);
    vf8 fwd[3], bwd[3], cen[3];
    for (int a = first; a < 3; ++a) {
      const int ak = a == 0, aj = a == 1, ai = a == 2;
      const vf8 xp = at(ak, aj, ai), xm = at(-ak, -aj, -ai);
      fwd[a] = (xp - x0) * sp[a];
      bwd[a] = (x0 - xm) * sp[a];
      cen[a] = 0.5f * (xp - xm) * sp[a];
    }
    vf8 speed = vf8{};
    for (int a = first; a < 3; ++a) {
      const int ak = a == 0, aj = a == 1, ai = a == 2;
      vf8 gf = fwd[a] * fwd[a], gb = bwd[a] * bwd[a];
      for (int b = first; b < 3; ++b) {
        if (b == a) continue;
        // Central difference along b, one voxel forward / backward along a.
        const int bk = b == 0, bj = b == 1, bi = b == 2;
        const vf8 aug = 0.5f * sp[b] * (at(ak + bk, aj + bj, ai + bi) - at(ak - bk, aj - bj, ai - bi));
        const vf8 dim = 0.5f * sp[b] * (at(-ak + bk, -aj + bj, -ai + bi) - at(-ak - bk, -aj - bj, -ai - bi));
        gf += 0.25f * (cen[b] + aug) * (cen[b] + aug);
        gb += 0.25f * (cen[b] + dim) * (cen[b] + dim);
      }
      const vf8 cf = exp_neg8(gf * inv_k) * flux, cb = exp_neg8(gb * inv_k) * flux;
      if (kind == Diffusion::gradient) {
        speed += fwd[a] * cf - bwd[a] * cb;
      } else {
        vf8 nf, nb;
        for (int l = 0; l < 8; ++l) {
          nf[l] = std::sqrt(1e-10f + gf[l]);
          nb[l] = std::sqrt(1e-10f + gb[l]);
        }
        speed += fwd[a] / nf * cf - bwd[a] / nb * cb;
      }
    }
    if (kind == Diffusion::curvature) {
      // Upwind gradient magnitude (Osher & Sethian 1988) multiplying the curvature speed.
      const vi8 pos = speed > 0.0f;
      vf8 g = vf8{};
      for (int a = first; a < 3; ++a) {
        const vi8 b_neg = bwd[a] < 0.0f, f_neg = fwd[a] < 0.0f;
        // speed > 0: min(bwd, 0) and max(fwd, 0); otherwise max(bwd, 0) and min(fwd, 0).
        const vf8 b_ = select8(pos == b_neg, bwd[a], vf8{});
        const vf8 f_ = select8(pos != f_neg, fwd[a], vf8{});
        g += b_ * b_ + f_ * f_;
      }
      for (int l = 0; l < 8; ++l) speed[l] *= std::sqrt(g[l]);
    }
    store8(upd + i - 1, speed);
  }
}

}  // namespace detail

// `iterations` explicit steps x += time_step * update on the float volume x (in place), spacing in
// mm per array axis. is_3d = false treats the (1, ny, nx) volume as a 2D image.
inline void anisotropic_diffusion(float* x, const Shape3& s, const double* spacing, bool is_3d,
                                  int iterations, double time_step, double conductance,
                                  Diffusion kind, int n_threads) {
  const double inv_sp[3] = {1.0 / spacing[0], 1.0 / spacing[1], 1.0 / spacing[2]};
  std::vector<float> next(static_cast<std::size_t>(s.size()));
  for (int it = 0; it < iterations; ++it) {
    const double mean_sq = detail::mean_gradient_sq(x, s, inv_sp, n_threads);
    const double k = mean_sq * conductance * conductance * -2.0;
    const float inv_k = k == 0.0 ? 0.0f : static_cast<float>(1.0 / k);
#pragma omp parallel num_threads(clamp_threads(n_threads))
    {
      const index_t stride = s.n2 + 2 + 8;  // one padding sample each side, 8 lanes of slack
      std::vector<float> rows(static_cast<std::size_t>(9 * stride), 0.0f);
      std::vector<float> upd(static_cast<std::size_t>(s.n2 + 8));
#pragma omp for schedule(static)
      for (index_t row = 0; row < s.n0 * s.n1; ++row) {
        const index_t k0 = row / s.n1, j0 = row % s.n1;
        detail::Stencil3 st;
        for (int dk = -1; dk <= 1; ++dk)
          for (int dj = -1; dj <= 1; ++dj) {
            float* dst = rows.data() + ((dk + 1) * 3 + dj + 1) * stride;
            padded_row(x, s, k0 + dk, j0 + dj, 1, Boundary::nearest, 0.0f, dst);
            st.p[dk + 1][dj + 1] = dst;
          }
        detail::diffusion_row(st, s.n2, inv_sp, is_3d, inv_k, kind, upd.data());
        const float* xr = x + row * s.n2;
        float* o = next.data() + row * s.n2;
        const float dt = static_cast<float>(time_step);
        for (index_t i = 0; i < s.n2; ++i) o[i] = xr[i] + dt * upd[i];
      }
    }
    std::copy(next.begin(), next.end(), x);
  }
}

}  // namespace medkern
