// Marching-cubes surface of a binary mask, its area and enclosed volume (IBSI 2020 §3.1: the
// morphology features "volume (mesh)" and "surface area (mesh)" are defined on this mesh), and
// the maximum Feret diameter of a point set. No Python in here.
//
// Conventions. The grid is in array-axis order [k, j, i]; a voxel is inside when mask != 0 and
// the surface is the 0.5 iso-level of the {0, 1} field, so every vertex sits at the midpoint of a
// grid edge whose two voxels differ (no interpolation: the result is exact for masks). The mesh
// is closed when the outermost voxel layer of the grid is empty (callers pad by one voxel).
// Triangles wind counter-clockwise seen from outside: (b - a) x (c - a), with the cross product
// taken in (k, j, i) coordinates, points out of the object, so the signed-tetrahedron volume
// sum is positive.
//
// The triangulation of each of the 256 cube configurations is derived once from first
// principles instead of a transcribed table: on each cube face the surface crosses the edges
// whose end voxels differ; on a face with four crossings (the ambiguous face, Lorensen & Cline's
// weakness) the two inside corners are joined, the choice scikit-image's Lewiner implementation
// makes for binary input (where the asymptotic decider of Nielson & Hamann 1991 ties). Face
// segments are oriented by which side the inside lies on and chained into closed polygons, each
// fanned into triangles. Because the face rule only looks at the face's four voxels, two cubes
// sharing a face agree on it and the mesh is watertight. Where Lewiner et al. 2003 add a vertex
// inside the cell or open a tunnel (cases 6, 7 and the complement of 6, only with ambiguous
// faces, so chequered noise rather than anatomy) the area can differ from scikit-image's.
#pragma once
#include <array>
#include <cstdint>
#include <vector>

#include "medkern/common.hpp"

namespace medkern {

// Below these sizes a kernel runs on the calling thread: waking a team costs more than the work
// (regions() calls these per lesion and per slice).
constexpr index_t kParallelVoxels = 1 << 18;
constexpr index_t kParallelPoints = 2048;

namespace mc {

// Corner c of a cell sits at offset (c>>2 & 1, c>>1 & 1, c & 1) in (k, j, i).
inline std::array<int, 3> corner_offset(int c) { return {(c >> 2) & 1, (c >> 1) & 1, c & 1}; }

// Edge e joins corners edge_corners[e]; edges 0-3 run along i, 4-7 along j, 8-11 along k.
struct EdgeTable {
  std::array<std::array<int, 2>, 12> corners{};
  std::array<int, 12> axis{};  // array axis the edge runs along (0 = k, 1 = j, 2 = i)
  EdgeTable() {
    int e = 0;
    for (int bit : {1, 2, 4}) {
      for (int c = 0; c < 8; ++c) {
        if (c & bit) continue;
        corners[e] = {c, c | bit};
        axis[e] = bit == 1 ? 2 : bit == 2 ? 1 : 0;
        ++e;
      }
    }
  }
  int find(int a, int b) const {
    for (int e = 0; e < 12; ++e)
      if ((corners[e][0] == a && corners[e][1] == b) || (corners[e][0] == b && corners[e][1] == a))
        return e;
    return -1;
  }
  // Midpoint of edge e in cell units, (k, j, i).
  std::array<double, 3> midpoint(int e) const {
    auto a = corner_offset(corners[e][0]);
    auto b = corner_offset(corners[e][1]);
    return {0.5 * (a[0] + b[0]), 0.5 * (a[1] + b[1]), 0.5 * (a[2] + b[2])};
  }
};

inline std::array<double, 3> cross(const std::array<double, 3>& a, const std::array<double, 3>& b) {
  return {a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]};
}

inline double triangle_area(const EdgeTable& et, int a, int b, int c) {
  const auto A = et.midpoint(a), B = et.midpoint(b), C = et.midpoint(c);
  const auto n =
      cross({B[0] - A[0], B[1] - A[1], B[2] - A[2]}, {C[0] - A[0], C[1] - A[1], C[2] - A[2]});
  return 0.5 * std::sqrt(n[0] * n[0] + n[1] * n[1] + n[2] * n[2]);
}

// Triangles of one cube configuration, as triples of edge ids (at most 12 triangles).
struct CaseTable {
  std::array<std::array<std::int8_t, 36>, 256> tri{};
  std::array<std::uint8_t, 256> n_tri{};

  CaseTable() {
    const EdgeTable et;
    for (int config = 0; config < 256; ++config) build(et, config);
  }

 private:
  void build(const EdgeTable& et, int config) {
    auto inside = [config](int c) { return (config >> c) & 1; };
    std::array<int, 12> next;
    next.fill(-1);
    // Adds the face segment p -> q, oriented so that with the face's outward normal n,
    // n x (q - p) points away from the inside part of the face (that gives outward triangles).
    auto add_segment = [&](int p, int q, const std::array<double, 3>& normal, int cut_corner) {
      auto P = et.midpoint(p), Q = et.midpoint(q);
      std::array<double, 3> d = {Q[0] - P[0], Q[1] - P[1], Q[2] - P[2]};
      auto t = cross(normal, d);
      auto X = corner_offset(cut_corner);
      double side = 0;
      for (int a = 0; a < 3; ++a) side += t[a] * (X[a] - 0.5 * (P[a] + Q[a]));
      const bool toward_corner = side > 0;
      // The corner must end up on the outside side exactly when it is an outside corner.
      if (toward_corner == static_cast<bool>(inside(cut_corner))) std::swap(p, q);
      next[p] = q;
    };
    for (int bit : {1, 2, 4}) {
      const int u = bit == 1 ? 2 : 1, v = bit == 4 ? 2 : 4;
      for (int s = 0; s < 2; ++s) {
        const int base = s ? bit : 0;
        const std::array<int, 4> cyc = {base, base | u, base | u | v, base | v};
        std::array<double, 3> normal = {0, 0, 0};
        normal[bit == 1 ? 2 : bit == 2 ? 1 : 0] = s ? 1.0 : -1.0;
        std::array<int, 4> edge;
        int n_cross = 0;
        for (int r = 0; r < 4; ++r) {
          edge[r] = et.find(cyc[r], cyc[(r + 1) % 4]);
          n_cross += inside(cyc[r]) != inside(cyc[(r + 1) % 4]);
        }
        if (n_cross == 2) {
          int first = -1, second = -1;
          for (int r = 0; r < 4; ++r) {
            if (inside(cyc[r]) == inside(cyc[(r + 1) % 4])) continue;
            (first < 0 ? first : second) = r;
          }
          // The segment splits the face into an all-inside and an all-outside part, so any
          // corner tells the two sides apart.
          add_segment(edge[first], edge[second], normal, cyc[(first + 1) % 4]);
        } else if (n_cross == 4) {
          // Ambiguous face: cut around the two outside corners so the inside corners join.
          for (int r = 0; r < 4; ++r) {
            const int c = cyc[r];
            if (inside(c)) continue;
            add_segment(edge[(r + 3) % 4], edge[r], normal, c);
          }
        }
      }
    }
    std::array<bool, 12> used{};
    int n = 0;
    for (int start = 0; start < 12; ++start) {
      if (next[start] < 0 || used[start]) continue;
      std::vector<int> loop;
      for (int e = start; !used[e]; e = next[e]) {
        used[e] = true;
        loop.push_back(e);
      }
      // A polygon of more than three vertices is generally not planar, so its area depends on
      // the triangulation. The fan of largest area (over every choice of apex; ties keep the
      // first) reproduces the Lewiner tables on every configuration without an ambiguous face,
      // so smooth shapes and real contours get scikit-image's mesh area to rounding.
      const std::size_t len = loop.size();
      std::size_t apex = 0;
      double best_area = -INFINITY;
      for (std::size_t a = 0; a < len; ++a) {
        double area = 0;
        for (std::size_t t = 1; t + 1 < len; ++t)
          area += triangle_area(et, loop[a], loop[(a + t) % len], loop[(a + t + 1) % len]);
        if (area > best_area + 1e-12) {
          best_area = area;
          apex = a;
        }
      }
      for (std::size_t t = 1; t + 1 < len; ++t) {
        tri[config][3 * n] = static_cast<std::int8_t>(loop[apex]);
        tri[config][3 * n + 1] = static_cast<std::int8_t>(loop[(apex + t) % len]);
        tri[config][3 * n + 2] = static_cast<std::int8_t>(loop[(apex + t + 1) % len]);
        ++n;
      }
    }
    n_tri[config] = static_cast<std::uint8_t>(n);
  }
};

inline const CaseTable& case_table() {
  static const CaseTable table;  // built once, thread-safe initialisation (C++11 magic statics)
  return table;
}
inline const EdgeTable& edge_table() {
  static const EdgeTable table;
  return table;
}

// Configuration byte of cell (k, j, i): bit c set when corner c is inside.
inline int cell_config(const std::uint8_t* m, index_t nj, index_t ni, index_t k, index_t j,
                       index_t i) {
  const std::uint8_t* p = m + (k * nj + j) * ni + i;
  const index_t sj = ni, sk = nj * ni;
  return (p[0] != 0) | (p[1] != 0) << 1 | (p[sj] != 0) << 2 | (p[sj + 1] != 0) << 3 |
         (p[sk] != 0) << 4 | (p[sk + 1] != 0) << 5 | (p[sk + sj] != 0) << 6 |
         (p[sk + sj + 1] != 0) << 7;
}

}  // namespace mc

struct MeshMeasures {
  double area = 0, volume = 0;
  index_t n_triangles = 0;
};

// Surface area (sum of triangle areas) and enclosed volume (sum of signed tetrahedra with the
// grid centre as apex, IBSI 2020 §3.1.1) of the marching-cubes mesh, in the units of `spacing`.
// Summed per cell layer and the layers added in order: identical for any thread count.
inline MeshMeasures mesh_area_volume(const std::uint8_t* mask, index_t nk, index_t nj, index_t ni,
                                     const double spacing[3], int n_threads) {
  MeshMeasures total;
  if (nk < 2 || nj < 2 || ni < 2) return total;
  const auto& table = mc::case_table();
  const auto& et = mc::edge_table();
  // Edge midpoints of the unit cell in mm, relative to the cell corner.
  std::array<std::array<double, 3>, 12> mid;
  for (int e = 0; e < 12; ++e) {
    auto p = et.midpoint(e);
    for (int a = 0; a < 3; ++a) mid[e][a] = p[a] * spacing[a];
  }
  // A centred apex keeps the tetrahedron terms small, so their sum loses less to rounding.
  const double centre[3] = {0.5 * (nk - 1) * spacing[0], 0.5 * (nj - 1) * spacing[1],
                            0.5 * (ni - 1) * spacing[2]};
  std::vector<MeshMeasures> layer(static_cast<std::size_t>(nk - 1));
#pragma omp parallel for schedule(dynamic, 1) \
    num_threads(clamp_threads(n_threads)) if (nk * nj * ni > kParallelVoxels)
  for (index_t k = 0; k < nk - 1; ++k) {
    MeshMeasures acc;
    for (index_t j = 0; j < nj - 1; ++j) {
      for (index_t i = 0; i < ni - 1; ++i) {
        const int config = mc::cell_config(mask, nj, ni, k, j, i);
        const int nt = table.n_tri[config];
        if (nt == 0) continue;
        const double o[3] = {k * spacing[0] - centre[0], j * spacing[1] - centre[1],
                             i * spacing[2] - centre[2]};
        for (int t = 0; t < nt; ++t) {
          std::array<std::array<double, 3>, 3> v;
          for (int r = 0; r < 3; ++r) {
            const auto& m = mid[table.tri[config][3 * t + r]];
            v[r] = {o[0] + m[0], o[1] + m[1], o[2] + m[2]};
          }
          const std::array<double, 3> ab = {v[1][0] - v[0][0], v[1][1] - v[0][1],
                                            v[1][2] - v[0][2]};
          const std::array<double, 3> ac = {v[2][0] - v[0][0], v[2][1] - v[0][1],
                                            v[2][2] - v[0][2]};
          const auto n = mc::cross(ab, ac);
          acc.area += 0.5 * std::sqrt(n[0] * n[0] + n[1] * n[1] + n[2] * n[2]);
          const auto bc = mc::cross(v[1], v[2]);
          acc.volume += (v[0][0] * bc[0] + v[0][1] * bc[1] + v[0][2] * bc[2]) / 6.0;
        }
        acc.n_triangles += nt;
      }
    }
    layer[static_cast<std::size_t>(k)] = acc;
  }
  for (const auto& l : layer) {
    total.area += l.area;
    total.volume += l.volume;
    total.n_triangles += l.n_triangles;
  }
  return total;
}

// Vertices of the welded mesh are grouped by grid plane p: the crossed i-edges of plane p, then
// its crossed j-edges, then the crossed k-edges between planes p and p+1, each in C order. A
// vertex's id is its group's offset plus its rank in the group, so any thread can recompute the
// id of any edge from the plane alone.
namespace mc {

// Rank maps of the crossed edges of one group; -1 where the edge is not crossed.
struct PlaneIds {
  std::vector<std::int32_t> along_i, along_j, along_k;
  void build(const std::uint8_t* m, index_t nk, index_t nj, index_t ni, index_t p,
             std::int32_t offset) {
    const std::size_t n = static_cast<std::size_t>(nj * ni);
    along_i.assign(n, -1);
    along_j.assign(n, -1);
    along_k.assign(n, -1);
    const std::uint8_t* a = m + p * nj * ni;
    std::int32_t id = offset;
    for (index_t j = 0; j < nj; ++j)
      for (index_t i = 0; i + 1 < ni; ++i)
        if ((a[j * ni + i] != 0) != (a[j * ni + i + 1] != 0)) along_i[j * ni + i] = id++;
    for (index_t j = 0; j + 1 < nj; ++j)
      for (index_t i = 0; i < ni; ++i)
        if ((a[j * ni + i] != 0) != (a[(j + 1) * ni + i] != 0)) along_j[j * ni + i] = id++;
    if (p + 1 < nk) {
      const std::uint8_t* b = a + nj * ni;
      for (index_t q = 0; q < nj * ni; ++q)
        if ((a[q] != 0) != (b[q] != 0)) along_k[q] = id++;
    }
  }
};

inline index_t count_plane_vertices(const std::uint8_t* m, index_t nk, index_t nj, index_t ni,
                                    index_t p) {
  PlaneIds ids;
  ids.build(m, nk, nj, ni, p, 0);
  index_t n = 0;
  for (auto* v : {&ids.along_i, &ids.along_j, &ids.along_k})
    for (auto x : *v) n += x >= 0;
  return n;
}

}  // namespace mc

// The welded mesh: vertices (index units, half-integers, (k, j, i)) and triangles (vertex ids).
struct Mesh {
  std::vector<double> vertices;     // n_vertices x 3
  std::vector<std::int32_t> faces;  // n_faces x 3
};

inline Mesh surface_mesh(const std::uint8_t* mask, index_t nk, index_t nj, index_t ni,
                         int n_threads) {
  Mesh mesh;
  if (nk < 2 || nj < 2 || ni < 2) return mesh;
  const auto& table = mc::case_table();
  const auto& et = mc::edge_table();
  std::vector<index_t> vert_offset(static_cast<std::size_t>(nk + 1), 0);
  std::vector<index_t> tri_offset(static_cast<std::size_t>(nk), 0);
#pragma omp parallel for schedule(dynamic, 1) \
    num_threads(clamp_threads(n_threads)) if (nk * nj * ni > kParallelVoxels)
  for (index_t p = 0; p < nk; ++p) {
    vert_offset[static_cast<std::size_t>(p + 1)] = mc::count_plane_vertices(mask, nk, nj, ni, p);
    if (p + 1 < nk) {
      index_t nt = 0;
      for (index_t j = 0; j + 1 < nj; ++j)
        for (index_t i = 0; i + 1 < ni; ++i)
          nt += table.n_tri[mc::cell_config(mask, nj, ni, p, j, i)];
      tri_offset[static_cast<std::size_t>(p + 1)] = nt;
    }
  }
  for (index_t p = 0; p < nk; ++p) vert_offset[p + 1] += vert_offset[p];
  for (index_t p = 1; p < nk; ++p) tri_offset[p] += tri_offset[p - 1];
  const index_t n_vertices = vert_offset[static_cast<std::size_t>(nk)];
  mesh.vertices.resize(static_cast<std::size_t>(3 * n_vertices));
  mesh.faces.resize(static_cast<std::size_t>(3 * tri_offset[static_cast<std::size_t>(nk - 1)]));
  double* verts = mesh.vertices.data();
  std::int32_t* faces = mesh.faces.data();
#pragma omp parallel num_threads(clamp_threads(n_threads)) if (nk * nj * ni > kParallelVoxels)
  {
    mc::PlaneIds lower, upper;
#pragma omp for schedule(dynamic, 1)
    for (index_t p = 0; p < nk; ++p) {
      lower.build(mask, nk, nj, ni, p, static_cast<std::int32_t>(vert_offset[p]));
      for (index_t q = 0; q < nj * ni; ++q) {
        const double j = static_cast<double>(q / ni), i = static_cast<double>(q % ni);
        const double kk = static_cast<double>(p);
        auto put = [&](std::int32_t id, double a, double b, double c) {
          if (id < 0) return;
          verts[3 * id] = a;
          verts[3 * id + 1] = b;
          verts[3 * id + 2] = c;
        };
        put(lower.along_i[q], kk, j, i + 0.5);
        put(lower.along_j[q], kk, j + 0.5, i);
        put(lower.along_k[q], kk + 0.5, j, i);
      }
      if (p + 1 == nk) continue;
      upper.build(mask, nk, nj, ni, p + 1, static_cast<std::int32_t>(vert_offset[p + 1]));
      index_t t_out = tri_offset[static_cast<std::size_t>(p)];
      for (index_t j = 0; j + 1 < nj; ++j) {
        for (index_t i = 0; i + 1 < ni; ++i) {
          const int config = mc::cell_config(mask, nj, ni, p, j, i);
          const int nt = table.n_tri[config];
          if (nt == 0) continue;
          // Vertex id of each of the 12 cell edges (only the crossed ones are looked up).
          std::array<std::int32_t, 12> id;
          for (int e = 0; e < 12; ++e) {
            const auto c = mc::corner_offset(et.corners[e][0]);
            const mc::PlaneIds& plane = c[0] ? upper : lower;
            const index_t q = (j + c[1]) * ni + (i + c[2]);
            id[e] = et.axis[e] == 2   ? plane.along_i[q]
                    : et.axis[e] == 1 ? plane.along_j[q]
                                      : lower.along_k[q];
          }
          for (int r = 0; r < 3 * nt; ++r) faces[3 * t_out + r] = id[table.tri[config][r]];
          t_out += nt;
        }
      }
    }
  }
  return mesh;
}

// Largest distance between two points (the maximum Feret diameter), in mm. Points are given on
// the half-voxel lattice as integers (twice the index, array-axis order) with the grid spacing.
// Only convex-hull vertices can be the ends of a diameter, and a point strictly between two
// others on a line is not one: for each of the 13 lattice directions (axes, face and body
// diagonals) only the two extremes of every line along it are kept. The surviving pairs are
// searched exhaustively (max is exact, so the result does not depend on the thread count).
struct Diameter {
  double length = 0;
  index_t a = -1, b = -1;  // indices into the input points
};

inline Diameter max_diameter(const std::int32_t* pts, index_t n, const double spacing[3],
                             int n_threads) {
  Diameter best;
  if (n == 0) return best;
  std::vector<index_t> keep(static_cast<std::size_t>(n));
  for (index_t p = 0; p < n; ++p) keep[p] = p;
  static constexpr int directions[13][3] = {
      {1, 0, 0}, {0, 1, 0},  {0, 0, 1}, {1, 1, 0},  {1, -1, 0}, {1, 0, 1},  {1, 0, -1},
      {0, 1, 1}, {0, 1, -1}, {1, 1, 1}, {1, 1, -1}, {1, -1, 1}, {1, -1, -1}};
  struct Keyed {
    std::int64_t line[3];  // p x v: the same for every point of a line along v
    std::int64_t along;    // p . v: the position on it
    index_t id;
  };
  std::vector<Keyed> keyed;
  for (const auto& v : directions) {
    if (keep.size() <= 2) break;
    keyed.clear();
    for (index_t id : keep) {
      const std::int64_t x = pts[3 * id], y = pts[3 * id + 1], z = pts[3 * id + 2];
      keyed.push_back({{y * v[2] - z * v[1], z * v[0] - x * v[2], x * v[1] - y * v[0]},
                       x * v[0] + y * v[1] + z * v[2],
                       id});
    }
    std::sort(keyed.begin(), keyed.end(), [](const Keyed& a, const Keyed& b) {
      if (a.line[0] != b.line[0]) return a.line[0] < b.line[0];
      if (a.line[1] != b.line[1]) return a.line[1] < b.line[1];
      if (a.line[2] != b.line[2]) return a.line[2] < b.line[2];
      return a.along < b.along || (a.along == b.along && a.id < b.id);
    });
    keep.clear();
    for (std::size_t s = 0; s < keyed.size();) {
      std::size_t e = s + 1;
      while (e < keyed.size() && keyed[e].line[0] == keyed[s].line[0] &&
             keyed[e].line[1] == keyed[s].line[1] && keyed[e].line[2] == keyed[s].line[2])
        ++e;
      keep.push_back(keyed[s].id);
      if (e - 1 > s) keep.push_back(keyed[e - 1].id);
      s = e;
    }
  }
  std::sort(keep.begin(), keep.end());
  const index_t m = static_cast<index_t>(keep.size());
  std::vector<double> x(static_cast<std::size_t>(m)), y(x.size()), z(x.size()), row_max(x.size());
  for (index_t r = 0; r < m; ++r) {
    x[r] = 0.5 * pts[3 * keep[r]] * spacing[0];
    y[r] = 0.5 * pts[3 * keep[r] + 1] * spacing[1];
    z[r] = 0.5 * pts[3 * keep[r] + 2] * spacing[2];
  }
  // First the largest squared distance per row (a vectorisable max), then the pair itself.
#pragma omp parallel for schedule(dynamic, 16) \
    num_threads(clamp_threads(n_threads)) if (m > kParallelPoints)
  for (index_t r = 0; r < m; ++r) {
    double d2 = 0;
    for (index_t s = r + 1; s < m; ++s) {
      const double dx = x[r] - x[s], dy = y[r] - y[s], dz = z[r] - z[s];
      d2 = std::max(d2, dx * dx + dy * dy + dz * dz);
    }
    row_max[r] = d2;
  }
  const index_t r =
      static_cast<index_t>(std::max_element(row_max.begin(), row_max.end()) - row_max.begin());
  index_t partner = r;
  for (index_t s = r + 1; s < m; ++s) {
    const double dx = x[r] - x[s], dy = y[r] - y[s], dz = z[r] - z[s];
    if (dx * dx + dy * dy + dz * dz == row_max[r]) {
      partner = s;
      break;
    }
  }
  best.length = std::sqrt(row_max[r]);
  best.a = keep[r];
  best.b = keep[partner];
  return best;
}

}  // namespace medkern
