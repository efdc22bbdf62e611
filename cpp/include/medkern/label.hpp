// Connected-component labelling of 2D/3D label images. No Python in here.
//
// Two voxels are connected when they are neighbours (6, 18 or 26 in 3D; a 2D image is one plane,
// where 6 gives 4-connectivity and 18/26 give 8) and hold the same nonzero value, so a binary mask
// gives scipy.ndimage.label's components and a multi-label image gives cc3d's (each value's
// components separately).
//
// Run-based two-pass labelling (He, Chao & Suzuki 2008): each row is cut into runs of equal
// nonzero values, runs are the union-find elements, and a run is joined with the runs of the
// earlier neighbouring rows that overlap it (widened by one voxel where the connectivity includes
// diagonals). Work is per run, not per voxel, and the output is written once. Runs are numbered
// in C (scan) order and every tree's root is its smallest run, so numbering the roots in
// increasing order numbers the components by their first voxel in scan order: the output equals
// scipy.ndimage.label exactly, for any thread count. Parallelism: runs are found per plane, and
// slabs of planes are joined independently (their runs form disjoint ranges), the joins across
// slab boundaries then added serially.
#pragma once
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <vector>

#include "medkern/common.hpp"

namespace medkern {

namespace cc {

using label_t = std::uint32_t;

inline label_t find_root(label_t* parent, label_t x) {
  while (parent[x] != x) {
    parent[x] = parent[parent[x]];  // path halving keeps every parent smaller than its child
    x = parent[x];
  }
  return x;
}

// A run carries its value so that joining never reads the image again.
template <class T>
struct Run {
  std::int32_t start, end;  // inclusive column range
  T value;
};

// Appends the runs of row `row` (length ni) to `out`. A vectorised pass marks where the value
// changes (edge, ni + 8 bytes of scratch); boundaries are then found eight bytes at a time, so
// long runs and long gaps cost a word test per eight voxels and a run costs a few operations.
template <class T>
void row_runs(const T* row, index_t ni, std::vector<Run<T>>& out, std::uint8_t* edge) {
  edge[0] = row[0] != T(0);
  for (index_t i = 1; i < ni; ++i) edge[i] = row[i] != row[i - 1];
  std::memset(edge + ni, 1, 8);  // sentinel: the row ends at a boundary
  auto next_boundary = [edge](index_t i) {
    for (;;) {
      std::uint64_t w;
      std::memcpy(&w, edge + i, 8);
      // Little-endian: the lowest set byte is the first boundary at or after i.
      if (w) return i + static_cast<index_t>(__builtin_ctzll(w) >> 3);
      i += 8;
    }
  };
  index_t s = next_boundary(0);
  while (s < ni) {
    const index_t e = next_boundary(s + 1);
    if (row[s] != T(0))
      out.push_back({static_cast<std::int32_t>(s), static_cast<std::int32_t>(e - 1), row[s]});
    s = e;
  }
}

// An earlier neighbouring row (dk, dj) and how far its runs may be offset along i and still touch:
// 1 when the connectivity includes the diagonal step, 0 otherwise.
struct RowNeighbour {
  int dk, dj, widen;
};

inline std::vector<RowNeighbour> row_neighbours(int connectivity) {
  // Face neighbours are 6-connected; an in-plane or through-plane diagonal needs 18; the
  // three-step diagonal (dk, dj, di all nonzero) needs 26.
  const int d18 = connectivity >= 18, d26 = connectivity == 26;
  std::vector<RowNeighbour> out = {{0, -1, d18}, {-1, 0, d18}};
  if (d18) {
    out.push_back({-1, -1, d26});
    out.push_back({-1, 1, d26});
  }
  return out;
}

// One earlier row a run may touch: its runs, their first label, how far to widen.
template <class T>
struct RowView {
  const Run<T>* runs;
  index_t n;
  label_t label0;  // run y of the row has label label0 + y + 1
  int widen;
};

// Joins every run of a row (labels la0 + 1, ...) with the runs of the earlier rows `nb` that touch
// it: a sweep with one pointer per earlier row over the sorted run lists. When `fresh`, the row
// is visited for the first time: its runs start as singletons here (no other run has seen them
// yet), so a run's root is tracked instead of searched for.
template <class T>
void join_row(const Run<T>* a, index_t na, label_t la0, RowView<T>* nb, int n_nb, bool fresh,
              label_t* parent) {
  index_t ptr[4] = {0, 0, 0, 0};
  for (index_t x = 0; x < na; ++x) {
    const Run<T> ra = a[x];
    const label_t la = la0 + static_cast<label_t>(x) + 1;
    if (fresh) parent[la] = la;
    label_t root = fresh ? 0 : find_root(parent, la);
    for (int r = 0; r < n_nb; ++r) {
      const RowView<T>& b = nb[r];
      index_t& p = ptr[r];
      while (p < b.n && b.runs[p].end < ra.start - b.widen) ++p;
      for (index_t y = p; y < b.n && b.runs[y].start <= ra.end + b.widen; ++y) {
        if (b.runs[y].value != ra.value) continue;
        const label_t rb = find_root(parent, b.label0 + static_cast<label_t>(y) + 1);
        if (root == 0) {
          root = rb;
          parent[la] = rb;  // rb < la: earlier rows hold smaller labels
        } else if (rb < root) {
          parent[root] = rb;
          root = rb;
        } else if (rb > root) {
          parent[rb] = root;
        }
      }
    }
  }
}

}  // namespace cc

// Labels `in` (nk x nj x ni, nk = 1 for 2D) into `out` and returns the number of components n.
// `out` (int32) must hold zeros on entry (a calloc'ed array costs nothing until written): only
// the foreground is written, with 1..n in scan order. connectivity is 6, 18 or 26. Throws
// std::overflow_error when the number of runs does not fit the int32 labels.
template <class T>
index_t label_components(const T* in, std::int32_t* out, index_t nk, index_t nj, index_t ni,
                         int connectivity, int n_threads) {
  const index_t plane = nj * ni;
  if (nk * plane == 0) return 0;
  const int threads = clamp_threads(n_threads);
  // Pass 1: the runs of each plane, rows in order (row_begin is local to the plane).
  std::vector<std::vector<cc::Run<T>>> runs(static_cast<std::size_t>(nk));
  std::vector<std::vector<index_t>> row_begin(static_cast<std::size_t>(nk));
#pragma omp parallel num_threads(threads)
  {
    std::vector<std::uint8_t> edge(static_cast<std::size_t>(ni + 8));
#pragma omp for schedule(dynamic, 4)
    for (index_t k = 0; k < nk; ++k) {
      auto& rb = row_begin[k];
      rb.resize(static_cast<std::size_t>(nj + 1));
      runs[k].reserve(static_cast<std::size_t>(4 * nj));
      rb[0] = 0;
      for (index_t j = 0; j < nj; ++j) {
        cc::row_runs(in + (k * nj + j) * ni, ni, runs[k], edge.data());
        rb[j + 1] = static_cast<index_t>(runs[k].size());
      }
    }
  }
  // Runs are numbered in scan order: plane k's labels start after plane_label[k].
  std::vector<index_t> plane_label(static_cast<std::size_t>(nk + 1), 0);
  for (index_t k = 0; k < nk; ++k)
    plane_label[k + 1] = plane_label[k] + static_cast<index_t>(runs[k].size());
  const index_t n_runs = plane_label[nk];
  if (n_runs >= static_cast<index_t>(INT32_MAX)) throw std::overflow_error("too many components");
  std::unique_ptr<cc::label_t[]> parent(new cc::label_t[static_cast<std::size_t>(n_runs + 1)]);
  cc::label_t* p = parent.get();
  p[0] = 0;  // every run's entry is initialised by the join pass when the run is first visited
  // Pass 2: equivalences, slab by slab (a slab only touches the trees of its own runs).
  const auto nbrs = cc::row_neighbours(connectivity);
  auto join = [&](index_t k, index_t j, bool in_plane, bool through_plane, bool fresh) {
    const index_t a0 = row_begin[k][j], a1 = row_begin[k][j + 1];
    if (a0 == a1) return;
    cc::RowView<T> views[4];
    int n_views = 0;
    for (const auto& nb : nbrs) {
      if (!(nb.dk == 0 ? in_plane : through_plane)) continue;
      const index_t kb = k + nb.dk, jb = j + nb.dj;
      if (jb < 0 || jb >= nj || kb < 0) continue;
      const index_t b0 = row_begin[kb][jb];
      views[n_views++] = {runs[kb].data() + b0, row_begin[kb][jb + 1] - b0,
                          static_cast<cc::label_t>(plane_label[kb] + b0), nb.widen};
    }
    cc::join_row(runs[k].data() + a0, a1 - a0, static_cast<cc::label_t>(plane_label[k] + a0), views,
                 n_views, fresh, p);
  };
  const index_t n_slabs = std::min<index_t>(threads, nk);
#pragma omp parallel for schedule(static) num_threads(threads)
  for (index_t s = 0; s < n_slabs; ++s) {
    const index_t k0 = nk * s / n_slabs, k1 = nk * (s + 1) / n_slabs;
    for (index_t k = k0; k < k1; ++k)
      for (index_t j = 0; j < nj; ++j) join(k, j, true, k > k0, true);
  }
  for (index_t s = 1; s < n_slabs; ++s)
    for (index_t j = 0; j < nj; ++j) join(nk * s / n_slabs, j, false, true, false);
  // Roots in increasing order become 1..n; every other run takes its parent's final label
  // (parents are smaller, so already final when reached).
  cc::label_t n = 0;
  for (cc::label_t l = 1; l <= static_cast<cc::label_t>(n_runs); ++l)
    p[l] = p[l] == l ? ++n : p[p[l]];
    // Pass 3: write the foreground.
#pragma omp parallel for schedule(dynamic, 4) num_threads(threads)
  for (index_t k = 0; k < nk; ++k) {
    const cc::label_t* lab = p + plane_label[k] + 1;
    for (index_t j = 0; j < nj; ++j) {
      std::int32_t* o = out + (k * nj + j) * ni;
      for (index_t a = row_begin[k][j]; a < row_begin[k][j + 1]; ++a) {
        const cc::Run<T> run = runs[k][a];
        const auto label = static_cast<std::int32_t>(lab[a]);
        std::fill(o + run.start, o + run.end + 1, label);
      }
    }
  }
  return static_cast<index_t>(n);
}

}  // namespace medkern
