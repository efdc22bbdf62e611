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
    auto sq = [&](index_t i, double d2) {
      const double g0 = 0.5 * (double(kp[i]) - km[i]) * inv_sp[0];
      const double g1 = 0.5 * (double(jp[i]) - jm[i]) * inv_sp[1];
      const double g2 = 0.5 * d2 * inv_sp[2];
      return g0 * g0 + g1 * g1 + g2 * g2;
    };
    const index_t last = s.n2 - 1;
    // The ends clamp along i; the interior runs as one SIMD loop (a fixed order per row, so the
    // sum still does not depend on the thread count).
    double acc = sq(0, double(c[std::min(index_t(1), last)]) - c[0]);
    if (last > 0) acc += sq(last, double(c[last]) - c[last - 1]);
#pragma omp simd reduction(+ : acc)
    for (index_t i = 1; i < last; ++i) acc += sq(i, double(c[i + 1]) - c[i - 1]);
    part[static_cast<std::size_t>(row)] = acc;
  }
  double total = 0;
  for (double v : part) total += v;
  return total / static_cast<double>(s.size());
}

// Flux through one face: the difference across it times the conductance exp(|grad|^2 / K), divided
// by |grad| for the curvature variant (ITK's ComputeUpdate). g is |grad|^2 on the face; inv_k == 0
// switches the flux off as ITK does for K == 0.
MEDKERN_ALWAYS_INLINE vf8 face_flux(vf8 diff, vf8 g, float inv_k, float flux, Diffusion kind) {
  const vf8 c = exp_neg8(g * inv_k) * flux;
  return kind == Diffusion::gradient ? diff * c : diff / sqrt8(g + 1e-10f) * c;
}

// Rows of the three planes around plane k (nearest-sample padded by one voxel on each side of i,
// 8 lanes of slack), so every neighbour the stencils use is row(dk, dj)[t + di] with t = i + 1.
struct PlaneRows {
  const float* plane[3];
  index_t n1, stride;
  const float* row(int dk, index_t j) const {
    return plane[dk + 1] + std::min(std::max(j, index_t(0)), n1 - 1) * stride;
  }
};

// Central difference along an in-plane axis (1: j, 2: i) at padded position t of row j of `p`.
MEDKERN_ALWAYS_INLINE vf8 central_j(const PlaneRows& p, int dk, index_t j, index_t t, float sp) {
  return 0.5f * sp * (load8(p.row(dk, j + 1) + t) - load8(p.row(dk, j - 1) + t));
}
MEDKERN_ALWAYS_INLINE vf8 central_i(const float* row, index_t t, float sp) {
  return 0.5f * sp * (load8(row + t + 1) - load8(row + t - 1));
}

// Flux through the forward face along axis 0 (between plane k and k + 1) of row j, positions
// i = 0..n2-1 (rounded up to 8 lanes) into f0.
MEDKERN_SIMD_CLONES
inline void faces_axis0(const PlaneRows& p, index_t j, index_t n2, const float* sp, float inv_k,
                        float flux, Diffusion kind, float* f0) {
  const float* c = p.row(0, j);
  const float* u = p.row(1, j);
  for (index_t t = 1; t <= n2; t += 8) {
    const vf8 fwd = (load8(u + t) - load8(c + t)) * sp[0];
    const vf8 b1 = central_j(p, 0, j, t, sp[1]) + central_j(p, 1, j, t, sp[1]);
    const vf8 b2 = central_i(c, t, sp[2]) + central_i(u, t, sp[2]);
    const vf8 g = fwd * fwd + 0.25f * b1 * b1 + 0.25f * b2 * b2;
    store8(f0 + t - 1, face_flux(fwd, g, inv_k, flux, kind));
  }
}

// Update of row j of plane k from the face fluxes: f0_fwd / f0_bwd along axis 0 (this plane's
// and the previous plane's), f1_bwd along axis 1 (row j - 1's forward faces, zero at j = 0); the
// forward faces along axis 1 are written to f1_fwd and those along axis 2 computed here, so each
// face's conductance is evaluated once per iteration rather than by both voxels it separates.
MEDKERN_SIMD_CLONES
inline void diffusion_row(const PlaneRows& p, index_t j, index_t n2, const float* sp, float inv_k,
                          float flux, Diffusion kind, const float* f0_fwd, const float* f0_bwd,
                          const float* f1_bwd, float* f1_fwd, float* f2, float* upd) {
  const float* c = p.row(0, j);
  const float* jn = p.row(0, j + 1);
  // f2[t] is the flux between padded positions t and t + 1, t = 0..n2 (zero at both ends).
  for (index_t t = 0; t <= n2; t += 8) {
    const vf8 fwd = (load8(c + t + 1) - load8(c + t)) * sp[2];
    const vf8 b0 = 0.5f * sp[0] * (load8(p.row(1, j) + t) - load8(p.row(-1, j) + t)) +
                   0.5f * sp[0] * (load8(p.row(1, j) + t + 1) - load8(p.row(-1, j) + t + 1));
    const vf8 b1 = central_j(p, 0, j, t, sp[1]) + central_j(p, 0, j, t + 1, sp[1]);
    const vf8 g = fwd * fwd + 0.25f * b0 * b0 + 0.25f * b1 * b1;
    store8(f2 + t, face_flux(fwd, g, inv_k, flux, kind));
  }
  for (index_t t = 1; t <= n2; t += 8) {
    const vf8 fwd = (load8(jn + t) - load8(c + t)) * sp[1];
    const vf8 b0 = 0.5f * sp[0] * (load8(p.row(1, j) + t) - load8(p.row(-1, j) + t)) +
                   0.5f * sp[0] * (load8(p.row(1, j + 1) + t) - load8(p.row(-1, j + 1) + t));
    const vf8 b2 = central_i(c, t, sp[2]) + central_i(jn, t, sp[2]);
    const vf8 g = fwd * fwd + 0.25f * b0 * b0 + 0.25f * b2 * b2;
    const vf8 f1 = face_flux(fwd, g, inv_k, flux, kind);
    store8(f1_fwd + t - 1, f1);
    vf8 speed = load8(f0_fwd + t - 1) - load8(f0_bwd + t - 1);
    speed += f1 - load8(f1_bwd + t - 1);
    speed += load8(f2 + t) - load8(f2 + t - 1);
    if (kind == Diffusion::curvature) {
      // Upwind gradient magnitude (Osher & Sethian 1988) multiplying the curvature speed.
      const vf8 x0 = load8(c + t);
      const vf8 fw[3] = {(load8(p.row(1, j) + t) - x0) * sp[0], fwd,
                         (load8(c + t + 1) - x0) * sp[2]};
      const vf8 bw[3] = {(x0 - load8(p.row(-1, j) + t)) * sp[0],
                         (x0 - load8(p.row(0, j - 1) + t)) * sp[1],
                         (x0 - load8(c + t - 1)) * sp[2]};
      const vi8 pos = speed > 0.0f;
      vf8 gm = vf8{};
      for (int a = 0; a < 3; ++a) {
        // speed > 0: min(bwd, 0) and max(fwd, 0); otherwise max(bwd, 0) and min(fwd, 0).
        const vf8 b_ = select8(pos == (bw[a] < 0.0f), bw[a], vf8{});
        const vf8 f_ = select8(pos != (fw[a] < 0.0f), fw[a], vf8{});
        gm += b_ * b_ + f_ * f_;
      }
      speed *= sqrt8(gm);
    }
    store8(upd + t - 1, speed);
  }
}

}  // namespace detail

// `iterations` explicit steps x += time_step * update on the float volume x (in place), spacing in
// mm per array axis. is_3d = false treats the (1, ny, nx) volume as a 2D image (axis-0 neighbours
// are the plane itself, so every axis-0 difference is zero).
inline void anisotropic_diffusion(float* x, const Shape3& s, const double* spacing, bool is_3d,
                                  int iterations, double time_step, double conductance,
                                  Diffusion kind, int n_threads) {
  const double inv_sp[3] = {1.0 / spacing[0], 1.0 / spacing[1], 1.0 / spacing[2]};
  const float sp[3] = {static_cast<float>(inv_sp[0]), static_cast<float>(inv_sp[1]),
                       static_cast<float>(inv_sp[2])};
  const float dt = static_cast<float>(time_step);
  std::vector<float> other(static_cast<std::size_t>(s.size()));
  // Ping-pong between the caller's buffer and `other`; one copy at the end if needed.
  float* cur = x;
  float* next = other.data();
  const index_t stride = s.n2 + 2 + 16;  // one padding sample each side, lanes of slack
  const index_t plane_sz = s.n1 * stride, fstride = s.n2 + 16;
  for (int it = 0; it < iterations; ++it) {
    const double mean_sq = detail::mean_gradient_sq(cur, s, inv_sp, n_threads);
    const double kc = mean_sq * conductance * conductance * -2.0;
    const float inv_k = kc == 0.0 ? 0.0f : static_cast<float>(1.0 / kc);
    const float flux = inv_k != 0.0f ? 1.0f : 0.0f;
#pragma omp parallel num_threads(clamp_threads(n_threads))
    {
      // Each thread walks its planes in order, keeping four padded planes (k - 1 .. k + 2 as
      // needed) and the previous plane's axis-0 face fluxes.
      constexpr int kSlots = 4;
      std::vector<float> planes(static_cast<std::size_t>(kSlots * plane_sz), 0.0f);
      index_t tag[kSlots] = {-1, -1, -1, -1};
      auto plane = [&](index_t kk) -> const float* {
        kk = is_3d ? std::min(std::max(kk, index_t(0)), s.n0 - 1) : index_t(0);
        int victim = 0;
        for (int q = 0; q < kSlots; ++q) {
          if (tag[q] == kk) return planes.data() + q * plane_sz;
          if (tag[q] < tag[victim]) victim = q;
        }
        float* dst = planes.data() + victim * plane_sz;
        for (index_t j = 0; j < s.n1; ++j) {
          float* d = dst + j * stride;
          padded_row(cur, s, kk, j, 1, Boundary::nearest, 0.0f, d);
          std::fill(d + s.n2 + 2, d + stride, d[s.n2]);
        }
        tag[victim] = kk;
        return dst;
      };
      std::vector<float> f0a(static_cast<std::size_t>(s.n1 * fstride), 0.0f), f0b(f0a.size(), 0.0f);
      std::vector<float> f1a(static_cast<std::size_t>(fstride), 0.0f), f1b(f1a.size(), 0.0f);
      std::vector<float> f2(static_cast<std::size_t>(fstride + 8), 0.0f), upd(f1a.size());
      auto axis0_faces = [&](index_t kk, float* dst) {
        detail::PlaneRows p{{plane(kk - 1), plane(kk), plane(kk + 1)}, s.n1, stride};
        for (index_t j = 0; j < s.n1; ++j)
          detail::faces_axis0(p, j, s.n2, sp, inv_k, flux, kind, dst + j * fstride);
      };
      index_t last = -2;
#pragma omp for schedule(static)
      for (index_t k = 0; k < s.n0; ++k) {
        float* f0_bwd = f0b.data();
        float* f0_fwd = f0a.data();
        if (k != last + 1) {
          // First plane of this thread's block: the faces below it (zero flux below plane 0).
          if (k > 0 && is_3d)
            axis0_faces(k - 1, f0_bwd);
          else
            std::fill(f0b.begin(), f0b.end(), 0.0f);
        }
        last = k;
        if (is_3d && k + 1 < s.n0)
          axis0_faces(k, f0_fwd);
        else
          std::fill(f0a.begin(), f0a.end(), 0.0f);
        detail::PlaneRows p{{plane(k - 1), plane(k), plane(k + 1)}, s.n1, stride};
        std::fill(f1b.begin(), f1b.end(), 0.0f);
        for (index_t j = 0; j < s.n1; ++j) {
          detail::diffusion_row(p, j, s.n2, sp, inv_k, flux, kind, f0_fwd + j * fstride,
                                f0_bwd + j * fstride, f1b.data(), f1a.data(), f2.data(),
                                upd.data());
          const float* xr = cur + (k * s.n1 + j) * s.n2;
          float* o = next + (k * s.n1 + j) * s.n2;
          for (index_t i = 0; i < s.n2; ++i) o[i] = xr[i] + dt * upd[i];
          std::swap(f1a, f1b);
        }
        std::swap(f0a, f0b);
      }
    }
    std::swap(cur, next);
  }
  if (cur != x) std::copy(cur, cur + s.size(), x);
}

}  // namespace medkern
