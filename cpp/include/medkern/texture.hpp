// IBSI texture matrices (Zwanenburg et al., Radiology 2020; IBSI reference manual §3.6-3.11).
//
// Every kernel reads a discretised grey-level volume `levels` (int32, shape nz x ny x nx) in which
// 0 marks voxels outside the ROI intensity mask and 1..n_levels the grey levels inside it. A 2D
// image is a volume with nz = 1. "By slice" (IBSI 2D / 2.5D) means neighbourhoods restricted to
// the plane of array axis 0; otherwise they are volumetric (3D).
//
// Each kernel writes one matrix per independent task (slice and/or direction) into a caller-owned
// buffer; the caller merges or averages them as the IBSI aggregation method asks. No task writes
// where another one does, so the result does not depend on the thread count.
#pragma once
#include <array>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "medkern/common.hpp"

namespace medkern::texture {

struct Offset {
  index_t dz, dy, dx;
};

// The 13 unique directions of the 26-neighbourhood (one of each opposite pair), or the 4 in-plane
// ones when by_slice, scaled to Chebyshev distance `distance` (IBSI §3.6.1, Fig. 3.10).
inline std::vector<Offset> directions(bool by_slice, index_t distance) {
  std::vector<Offset> out;
  for (index_t dz = 0; dz <= (by_slice ? 0 : 1); ++dz)
    for (index_t dy = -1; dy <= 1; ++dy)
      for (index_t dx = -1; dx <= 1; ++dx) {
        // Keep the lexicographically positive half so each axis of symmetry appears once.
        const bool positive = dz > 0 || (dz == 0 && (dy > 0 || (dy == 0 && dx > 0)));
        if (positive) out.push_back({dz * distance, dy * distance, dx * distance});
      }
  return out;
}

struct Grid {
  index_t nz, ny, nx;
  index_t size() const { return nz * ny * nx; }
  bool inside(index_t z, index_t y, index_t x) const {
    return z >= 0 && z < nz && y >= 0 && y < ny && x >= 0 && x < nx;
  }
  index_t at(index_t z, index_t y, index_t x) const { return (z * ny + y) * nx + x; }
};

// Runs f(matrix, offset, z, y, x) for every ROI voxel of every (group, direction) task in
// parallel, where a group is one slice when by_slice and the whole volume otherwise, and matrix
// is the task's own block of `mat` doubles in out (so no two threads share a counter).
template <class F>
inline void for_each_directional_task(const std::int32_t* levels, Grid g, bool by_slice,
                                      index_t distance, index_t mat, double* out, int n_threads,
                                      F&& f) {
  const auto dirs = directions(by_slice, distance);
  const index_t n_dirs = static_cast<index_t>(dirs.size());
  const index_t n_groups = by_slice ? g.nz : 1;
#pragma omp parallel for schedule(dynamic) num_threads(clamp_threads(n_threads))
  for (index_t task = 0; task < n_groups * n_dirs; ++task) {
    const index_t group = task / n_dirs;
    const Offset d = dirs[static_cast<std::size_t>(task % n_dirs)];
    double* m = out + task * mat;
    const index_t z0 = by_slice ? group : 0, z1 = by_slice ? group + 1 : g.nz;
    for (index_t z = z0; z < z1; ++z)
      for (index_t y = 0; y < g.ny; ++y)
        for (index_t x = 0; x < g.nx; ++x)
          if (levels[g.at(z, y, x)] > 0) f(m, d, z, y, x);
  }
}

// Grey level co-occurrence matrices (IBSI §3.6), symmetric: each voxel pair at offset d counts
// once as (i, j) and once as (j, i). out has shape [n_groups, n_dirs, n_levels, n_levels] where a
// group is one slice when by_slice (n_groups = nz) and the whole volume otherwise (n_groups = 1).
inline void glcm(const std::int32_t* levels, Grid g, int n_levels, bool by_slice, index_t distance,
                 double* out, int n_threads) {
  const index_t nl = n_levels;
  for_each_directional_task(levels, g, by_slice, distance, nl * nl, out, n_threads,
                            [&](double* m, const Offset& d, index_t z, index_t y, index_t x) {
                              if (!g.inside(z + d.dz, y + d.dy, x + d.dx)) return;
                              const std::int32_t a = levels[g.at(z, y, x)];
                              const std::int32_t b = levels[g.at(z + d.dz, y + d.dy, x + d.dx)];
                              if (b <= 0) return;
                              m[(a - 1) * nl + (b - 1)] += 1.0;
                              m[(b - 1) * nl + (a - 1)] += 1.0;
                            });
}

// Grey level run length matrices (IBSI §3.7): out[group, dir, level - 1, run_length - 1], with
// max_run >= the longest possible run (the largest grid extent). A run is a maximal line of
// equal-level ROI voxels along the direction; voxels outside the ROI break runs.
inline void glrlm(const std::int32_t* levels, Grid g, int n_levels, bool by_slice, index_t max_run,
                  double* out, int n_threads) {
  for_each_directional_task(
      levels, g, by_slice, 1, static_cast<index_t>(n_levels) * max_run, out, n_threads,
      [&](double* m, const Offset& d, index_t z, index_t y, index_t x) {
        const std::int32_t a = levels[g.at(z, y, x)];
        // Only the first voxel of a run starts a walk, so every voxel is visited twice at most.
        if (g.inside(z - d.dz, y - d.dy, x - d.dx) &&
            levels[g.at(z - d.dz, y - d.dy, x - d.dx)] == a)
          return;
        index_t run = 1;
        while (g.inside(z + run * d.dz, y + run * d.dy, x + run * d.dx) &&
               levels[g.at(z + run * d.dz, y + run * d.dy, x + run * d.dx)] == a)
          ++run;
        m[(a - 1) * max_run + (run - 1)] += 1.0;
      });
}

// City-block distance of each voxel of `mask` to the nearest voxel outside it (outside the grid
// counts as outside), 1 on the border: the GLDZM distance map (IBSI §3.9, 4-connected in-plane
// when by_slice, 6-connected otherwise). Two raster passes give the exact L1 distance.
inline void border_distance(const std::uint8_t* mask, Grid g, bool by_slice, std::int32_t* dist) {
  const std::int32_t far = static_cast<std::int32_t>(g.nz + g.ny + g.nx + 1);
  for (index_t i = 0; i < g.size(); ++i) dist[i] = mask[i] ? far : 0;
  auto relax = [&](index_t z, index_t y, index_t x, index_t dz, index_t dy, index_t dx) {
    const index_t i = g.at(z, y, x);
    if (!dist[i]) return;
    const std::int32_t nb =
        g.inside(z + dz, y + dy, x + dx) ? dist[g.at(z + dz, y + dy, x + dx)] : 0;
    if (nb + 1 < dist[i]) dist[i] = nb + 1;
  };
  const index_t zstep = by_slice ? 0 : 1;
  for (index_t z = 0; z < g.nz; ++z)
    for (index_t y = 0; y < g.ny; ++y)
      for (index_t x = 0; x < g.nx; ++x) {
        if (zstep) relax(z, y, x, -1, 0, 0);
        relax(z, y, x, 0, -1, 0);
        relax(z, y, x, 0, 0, -1);
      }
  for (index_t z = g.nz - 1; z >= 0; --z)
    for (index_t y = g.ny - 1; y >= 0; --y)
      for (index_t x = g.nx - 1; x >= 0; --x) {
        if (zstep) relax(z, y, x, 1, 0, 0);
        relax(z, y, x, 0, 1, 0);
        relax(z, y, x, 0, 0, 1);
      }
}

// One zone of equal grey level: the unit of the GLSZM (size) and GLDZM (distance) matrices.
struct Zone {
  std::int32_t group, level;
  std::int64_t size;
  std::int32_t distance;  // smallest border distance of its voxels
};

// Zones (IBSI §3.8-3.9): 8-connected in-plane components when by_slice, 26-connected otherwise,
// of voxels sharing a grey level. `dist` (may be null) gives each zone its minimum distance.
// Tasks are (group, grey level) pairs; their zones are concatenated in task order, each task's
// in raster order of its first voxel, so the list is the same for every thread count.
inline std::vector<Zone> zones(const std::int32_t* levels, Grid g, int n_levels, bool by_slice,
                               const std::int32_t* dist, int n_threads) {
  const index_t n_groups = by_slice ? g.nz : 1;
  const index_t per_group = by_slice ? g.ny * g.nx : g.size();
  const index_t nl = n_levels;
  // Counting sort of ROI voxels by (group, level): each task then walks only its own voxels.
  std::vector<index_t> start(static_cast<std::size_t>(n_groups * nl + 1), 0);
  for (index_t i = 0; i < g.size(); ++i)
    if (levels[i] > 0) ++start[static_cast<std::size_t>((i / per_group) * nl + levels[i])];
  for (std::size_t t = 1; t < start.size(); ++t) start[t] += start[t - 1];
  std::vector<index_t> order(static_cast<std::size_t>(start.back()));
  {
    std::vector<index_t> fill(start.begin(), start.end() - 1);
    for (index_t i = 0; i < g.size(); ++i)
      if (levels[i] > 0)
        order[static_cast<std::size_t>(
            fill[static_cast<std::size_t>((i / per_group) * nl + levels[i] - 1)]++)] = i;
  }
  std::vector<std::uint8_t> visited(static_cast<std::size_t>(g.size()), 0);
  std::vector<std::vector<Zone>> found(static_cast<std::size_t>(n_groups * nl));
  const index_t zr = by_slice ? 0 : 1;
  ParallelError error;
#pragma omp parallel for schedule(dynamic) num_threads(clamp_threads(n_threads))
  for (index_t task = 0; task < n_groups * nl; ++task) {
    if (error.failed()) continue;
    error.capture([&] {
      // Tasks own disjoint voxel sets (different level or slice), so `visited` bytes never clash.
      std::vector<index_t> stack;
      auto& out = found[static_cast<std::size_t>(task)];
      const std::int32_t level = static_cast<std::int32_t>(task % nl + 1);
      for (index_t s = start[static_cast<std::size_t>(task)];
           s < start[static_cast<std::size_t>(task + 1)]; ++s) {
        const index_t seed = order[static_cast<std::size_t>(s)];
        if (visited[static_cast<std::size_t>(seed)]) continue;
        visited[static_cast<std::size_t>(seed)] = 1;
        stack.assign(1, seed);
        Zone zone{static_cast<std::int32_t>(task / nl), level, 0, dist ? dist[seed] : 0};
        while (!stack.empty()) {
          const index_t i = stack.back();
          stack.pop_back();
          ++zone.size;
          if (dist && dist[i] < zone.distance) zone.distance = dist[i];
          const index_t z = i / (g.ny * g.nx), y = (i / g.nx) % g.ny, x = i % g.nx;
          for (index_t dz = -zr; dz <= zr; ++dz)
            for (index_t dy = -1; dy <= 1; ++dy)
              for (index_t dx = -1; dx <= 1; ++dx) {
                if (!g.inside(z + dz, y + dy, x + dx)) continue;
                const index_t j = g.at(z + dz, y + dy, x + dx);
                if (levels[j] != level || visited[static_cast<std::size_t>(j)]) continue;
                visited[static_cast<std::size_t>(j)] = 1;
                stack.push_back(j);
              }
        }
        out.push_back(zone);
      }
    });
  }
  error.rethrow();
  std::vector<Zone> all;
  for (const auto& f : found) all.insert(all.end(), f.begin(), f.end());
  return all;
}

// Visits the ROI voxels in the Chebyshev neighbourhood of (z, y, x), centre excluded: in-plane
// when by_slice (IBSI §3.10-3.11, distance delta).
template <class F>
inline void for_neighbours(const std::int32_t* levels, Grid g, index_t z, index_t y, index_t x,
                           bool by_slice, index_t delta, F&& f) {
  const index_t zr = by_slice ? 0 : delta;
  for (index_t dz = -zr; dz <= zr; ++dz)
    for (index_t dy = -delta; dy <= delta; ++dy)
      for (index_t dx = -delta; dx <= delta; ++dx) {
        if ((dz | dy | dx) == 0 || !g.inside(z + dz, y + dy, x + dx)) continue;
        const std::int32_t b = levels[g.at(z + dz, y + dy, x + dx)];
        if (b > 0) f(b);
      }
}

// Neighbourhood grey tone difference matrix (IBSI §3.10), one row per slice of array axis 0:
// s[z, i] = sum of |i - mean neighbour level| and n[z, i] = number of level-i voxels, over the
// voxels of slice z that have at least one ROI neighbour. Volumetric matrices are the sum of the
// rows; slice-wise ones use each row on its own.
inline void ngtdm(const std::int32_t* levels, Grid g, int n_levels, bool by_slice, index_t delta,
                  double* s, double* n, int n_threads) {
#pragma omp parallel for schedule(dynamic) num_threads(clamp_threads(n_threads))
  for (index_t z = 0; z < g.nz; ++z) {
    double* sz = s + z * n_levels;
    double* nz = n + z * n_levels;
    for (index_t y = 0; y < g.ny; ++y)
      for (index_t x = 0; x < g.nx; ++x) {
        const std::int32_t a = levels[g.at(z, y, x)];
        if (a <= 0) continue;
        double sum = 0.0;
        index_t count = 0;
        for_neighbours(levels, g, z, y, x, by_slice, delta, [&](std::int32_t b) {
          sum += b;
          ++count;
        });
        if (count == 0) continue;
        sz[a - 1] += std::abs(a - sum / static_cast<double>(count));
        nz[a - 1] += 1.0;
      }
  }
}

// Neighbouring grey level dependence matrix (IBSI §3.11), one per slice of array axis 0:
// out[z, i - 1, k - 1] counts level-i voxels with k - 1 neighbours whose level differs by at most
// alpha (k includes the voxel itself, so 1 <= k <= max_dependence = (2 delta + 1)^d).
inline void ngldm(const std::int32_t* levels, Grid g, int n_levels, bool by_slice, index_t delta,
                  int alpha, index_t max_dependence, double* out, int n_threads) {
#pragma omp parallel for schedule(dynamic) num_threads(clamp_threads(n_threads))
  for (index_t z = 0; z < g.nz; ++z) {
    double* m = out + z * static_cast<index_t>(n_levels) * max_dependence;
    for (index_t y = 0; y < g.ny; ++y)
      for (index_t x = 0; x < g.nx; ++x) {
        const std::int32_t a = levels[g.at(z, y, x)];
        if (a <= 0) continue;
        index_t k = 1;
        for_neighbours(levels, g, z, y, x, by_slice, delta, [&](std::int32_t b) {
          if (std::abs(b - a) <= alpha) ++k;
        });
        m[(a - 1) * max_dependence + (k - 1)] += 1.0;
      }
  }
}

}  // namespace medkern::texture
