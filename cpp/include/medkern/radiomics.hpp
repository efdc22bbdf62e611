// Radiomics kernels outside the texture matrices (IBSI reference manual, chapter 3).
#pragma once
#include <algorithm>
#include <array>
#include <cstdint>
#include <unordered_set>
#include <vector>

#include "medkern/texture.hpp"

namespace medkern::radiomics {

// Local intensity (IBSI §3.2): for each centre voxel, the mean of the image voxels at the given
// index offsets (the voxels whose centres lie in a 1 cm³ sphere), skipping offsets off the grid.
// Centres are flat indices; each one is independent, so any thread count gives the same bits.
template <class T>
void offset_means(const T* image, texture::Grid g, const std::int64_t* centres, index_t n_centres,
                  const std::int64_t* offsets, index_t n_offsets, double* out, int n_threads) {
#pragma omp parallel for schedule(static) num_threads(clamp_threads(n_threads))
  for (index_t c = 0; c < n_centres; ++c) {
    const index_t i = centres[c];
    const index_t z = i / (g.ny * g.nx), y = (i / g.nx) % g.ny, x = i % g.nx;
    double sum = 0.0;
    index_t count = 0;
    for (index_t o = 0; o < n_offsets; ++o) {
      const index_t zz = z + offsets[3 * o], yy = y + offsets[3 * o + 1],
                    xx = x + offsets[3 * o + 2];
      if (!g.inside(zz, yy, xx)) continue;
      sum += static_cast<double>(image[g.at(zz, yy, xx)]);
      ++count;
    }
    out[c] = sum / static_cast<double>(count);
  }
}

// Convex hull of integer points (IBSI §3.1.21-22 "convex hull" densities), by incremental
// insertion with exact 64-bit orientation tests, so degenerate input (the many coplanar vertices
// of a voxel mesh, on the half-voxel lattice) needs no tolerance: a point on a face's plane is
// not outside it. Returns outward-wound triangles as point-index triples; empty when all points
// are coplanar. Coordinates must stay below 2^20 in magnitude so the products cannot overflow.
inline std::vector<std::array<index_t, 3>> convex_hull(const std::int64_t* pts, index_t n) {
  using V = std::array<std::int64_t, 3>;
  auto at = [&](index_t i) { return V{pts[3 * i], pts[3 * i + 1], pts[3 * i + 2]}; };
  auto sub = [](const V& a, const V& b) { return V{a[0] - b[0], a[1] - b[1], a[2] - b[2]}; };
  auto cross = [](const V& a, const V& b) {
    return V{a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]};
  };
  auto dot = [](const V& a, const V& b) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; };
  // > 0 when p lies on the side of triangle (a, b, c) its normal (b - a) x (c - a) points to.
  auto orient = [&](index_t a, index_t b, index_t c, const V& p) {
    return dot(cross(sub(at(b), at(a)), sub(at(c), at(a))), sub(p, at(a)));
  };
  std::vector<std::array<index_t, 3>> faces;
  if (n < 4) return faces;
  // Initial tetrahedron: two distinct points, a third off their line, a fourth off their plane.
  index_t i1 = -1, i2 = -1, i3 = -1;
  for (index_t i = 1; i < n && i1 < 0; ++i)
    if (at(i) != at(0)) i1 = i;
  if (i1 < 0) return faces;
  const V e1 = sub(at(i1), at(0));
  for (index_t i = 1; i < n && i2 < 0; ++i) {
    const V c = cross(e1, sub(at(i), at(0)));
    if (c[0] || c[1] || c[2]) i2 = i;
  }
  if (i2 < 0) return faces;
  for (index_t i = 1; i < n && i3 < 0; ++i)
    if (orient(0, i1, i2, at(i)) != 0) i3 = i;
  if (i3 < 0) return faces;
  if (orient(0, i1, i2, at(i3)) > 0) std::swap(i1, i2);  // the fourth point behind face 0
  faces = {{0, i1, i2}, {0, i3, i1}, {0, i2, i3}, {i1, i3, i2}};
  std::vector<char> alive(4, 1);
  std::unordered_set<std::int64_t> edges;
  std::vector<std::array<index_t, 2>> horizon;
  for (index_t p = 1; p < n; ++p) {
    if (p == i1 || p == i2 || p == i3) continue;
    const V pt = at(p);
    edges.clear();
    for (std::size_t f = 0; f < faces.size(); ++f) {
      if (!alive[f] || orient(faces[f][0], faces[f][1], faces[f][2], pt) <= 0) continue;
      alive[f] = 0;
      for (int e = 0; e < 3; ++e) edges.insert(faces[f][e] * n + faces[f][(e + 1) % 3]);
    }
    if (edges.empty()) continue;  // inside or on the hull
    // The horizon: edges of the visible region whose twin belongs to a face that stays.
    horizon.clear();
    for (std::int64_t key : edges) {
      const index_t u = key / n, v = key % n;
      if (!edges.count(v * n + u)) horizon.push_back({u, v});
    }
    for (const auto& h : horizon) {
      faces.push_back({h[0], h[1], p});
      alive.push_back(1);
    }
    if (faces.size() > 64 &&
        2 * static_cast<std::size_t>(std::count(alive.begin(), alive.end(), 1)) < faces.size()) {
      std::vector<std::array<index_t, 3>> kept;
      for (std::size_t f = 0; f < faces.size(); ++f)
        if (alive[f]) kept.push_back(faces[f]);
      faces.swap(kept);
      alive.assign(faces.size(), 1);
    }
  }
  std::vector<std::array<index_t, 3>> out;
  for (std::size_t f = 0; f < faces.size(); ++f)
    if (alive[f]) out.push_back(faces[f]);
  return out;
}

}  // namespace medkern::radiomics
