#include <string>

#include "bindings.hpp"
#include "medkern/radiomics.hpp"
#include "medkern/texture.hpp"

namespace {

using medkern::index_t;
using medkern::bind::carray;
namespace tx = medkern::texture;

// Discretised levels: a 3D int32 volume, 0 outside the ROI, 1..n_levels inside.
struct Levels {
  carray<std::int32_t> array;
  tx::Grid grid;
};

Levels checked_levels(const py::array& levels, int n_levels) {
  if (levels.ndim() != 3)
    throw py::value_error("levels must be a 3D array (use shape (1, ny, nx) for a 2D image)");
  if (n_levels < 1) throw py::value_error("n_levels must be >= 1, got " + std::to_string(n_levels));
  Levels out{carray<std::int32_t>::ensure(levels),
             {levels.shape(0), levels.shape(1), levels.shape(2)}};
  const std::int32_t* p = out.array.data();
  for (index_t i = 0; i < out.grid.size(); ++i)
    if (p[i] < 0 || p[i] > n_levels)
      throw py::value_error("levels must lie in [0, n_levels]; found " + std::to_string(p[i]));
  return out;
}

py::array_t<double> zeros(std::vector<py::ssize_t> shape) {
  py::array_t<double> a(shape);
  std::fill(a.mutable_data(), a.mutable_data() + a.size(), 0.0);
  return a;
}

py::array_t<double> glcm(const py::array& levels, int n_levels, bool by_slice, index_t distance,
                         int n_threads) {
  if (distance < 1) throw py::value_error("distance must be >= 1");
  auto lv = checked_levels(levels, n_levels);
  const auto n_dirs = static_cast<py::ssize_t>(tx::directions(by_slice, 1).size());
  auto out = zeros({by_slice ? lv.grid.nz : 1, n_dirs, n_levels, n_levels});
  double* dst = out.mutable_data();
  const std::int32_t* src = lv.array.data();
  py::gil_scoped_release release;  // raw pointers into arrays owned by this frame
  tx::glcm(src, lv.grid, n_levels, by_slice, distance, dst, n_threads);
  return out;
}

py::array_t<double> glrlm(const py::array& levels, int n_levels, bool by_slice, int n_threads) {
  auto lv = checked_levels(levels, n_levels);
  const auto n_dirs = static_cast<py::ssize_t>(tx::directions(by_slice, 1).size());
  const index_t max_run = std::max({by_slice ? index_t{1} : lv.grid.nz, lv.grid.ny, lv.grid.nx});
  auto out = zeros({by_slice ? lv.grid.nz : 1, n_dirs, n_levels, max_run});
  double* dst = out.mutable_data();
  const std::int32_t* src = lv.array.data();
  py::gil_scoped_release release;  // raw pointers into arrays owned by this frame
  tx::glrlm(src, lv.grid, n_levels, by_slice, max_run, dst, n_threads);
  return out;
}

py::tuple zones(const py::array& levels, int n_levels, bool by_slice, const py::object& morph_mask,
                int n_threads) {
  auto lv = checked_levels(levels, n_levels);
  carray<std::uint8_t> mask_holder;
  const std::uint8_t* mask = medkern::bind::mask_ptr(morph_mask, mask_holder, lv.array.size());
  std::vector<tx::Zone> found;
  {
    py::gil_scoped_release release;  // raw pointers into arrays owned by this frame
    std::vector<std::int32_t> dist;
    if (mask) {
      dist.resize(static_cast<std::size_t>(lv.grid.size()));
      tx::border_distance(mask, lv.grid, by_slice, dist.data());
    }
    found = tx::zones(lv.array.data(), lv.grid, n_levels, by_slice, mask ? dist.data() : nullptr,
                      n_threads);
  }
  const auto n = static_cast<py::ssize_t>(found.size());
  py::array_t<std::int32_t> group(n), level(n), distance(n);
  py::array_t<std::int64_t> size(n);
  for (py::ssize_t i = 0; i < n; ++i) {
    const auto& z = found[static_cast<std::size_t>(i)];
    group.mutable_data()[i] = z.group;
    level.mutable_data()[i] = z.level;
    size.mutable_data()[i] = z.size;
    distance.mutable_data()[i] = z.distance;
  }
  return py::make_tuple(group, level, size, distance);
}

py::tuple ngtdm(const py::array& levels, int n_levels, bool by_slice, index_t delta,
                int n_threads) {
  if (delta < 1) throw py::value_error("distance must be >= 1");
  auto lv = checked_levels(levels, n_levels);
  auto s = zeros({lv.grid.nz, n_levels});
  auto n = zeros({lv.grid.nz, n_levels});
  double* ps = s.mutable_data();
  double* pn = n.mutable_data();
  const std::int32_t* src = lv.array.data();
  {
    py::gil_scoped_release release;  // raw pointers into arrays owned by this frame
    tx::ngtdm(src, lv.grid, n_levels, by_slice, delta, ps, pn, n_threads);
  }
  return py::make_tuple(s, n);
}

py::array_t<double> ngldm(const py::array& levels, int n_levels, bool by_slice, index_t delta,
                          int alpha, int n_threads) {
  if (delta < 1) throw py::value_error("distance must be >= 1");
  if (alpha < 0) throw py::value_error("coarseness alpha must be >= 0");
  auto lv = checked_levels(levels, n_levels);
  const index_t side = 2 * delta + 1;
  const index_t max_dependence = by_slice ? side * side : side * side * side;
  auto out = zeros({lv.grid.nz, n_levels, max_dependence});
  double* dst = out.mutable_data();
  const std::int32_t* src = lv.array.data();
  py::gil_scoped_release release;  // raw pointers into arrays owned by this frame
  tx::ngldm(src, lv.grid, n_levels, by_slice, delta, alpha, max_dependence, dst, n_threads);
  return out;
}

py::array_t<double> offset_means(const py::array& image, const py::array& centres,
                                 const py::array& offsets, int n_threads) {
  if (image.ndim() != 3) throw py::value_error("image must be a 3D array");
  auto c = carray<std::int64_t>::ensure(centres);
  auto o = carray<std::int64_t>::ensure(offsets);
  if (!c || c.ndim() != 1) throw py::value_error("centres must be a 1D array of flat indices");
  if (!o || o.ndim() != 2 || o.shape(1) != 3)
    throw py::value_error("offsets must be an (n, 3) array of index offsets");
  if (o.shape(0) == 0) throw py::value_error("offsets must not be empty");
  const tx::Grid grid{image.shape(0), image.shape(1), image.shape(2)};
  for (py::ssize_t i = 0; i < c.size(); ++i)
    if (c.data()[i] < 0 || c.data()[i] >= grid.size())
      throw py::value_error("centres must be flat indices into image");
  return medkern::bind::visit_dtype(image.dtype(), [&](auto tag) {
    using T = decltype(tag);
    auto img = carray<T>::ensure(image);
    py::array_t<double> out(c.size());
    double* dst = out.mutable_data();
    py::gil_scoped_release release;  // raw pointers into arrays owned by this frame
    medkern::radiomics::offset_means(img.data(), grid, c.data(), c.size(), o.data(), o.shape(0),
                                     dst, n_threads);
    return out;
  });
}

py::array_t<std::int64_t> convex_hull(const py::array& points) {
  auto p = carray<std::int64_t>::ensure(points);
  if (!p || p.ndim() != 2 || p.shape(1) != 3)
    throw py::value_error("points must be an (n, 3) integer array");
  for (py::ssize_t i = 0; i < p.size(); ++i)
    if (p.data()[i] >= (1 << 20) || p.data()[i] <= -(1 << 20))
      throw py::value_error("points must have coordinates below 2**20 in magnitude");
  std::vector<std::array<index_t, 3>> faces;
  {
    py::gil_scoped_release release;  // raw pointer into an array owned by this frame
    faces = medkern::radiomics::convex_hull(p.data(), p.shape(0));
  }
  py::array_t<std::int64_t> out({static_cast<py::ssize_t>(faces.size()), py::ssize_t{3}});
  for (std::size_t f = 0; f < faces.size(); ++f)
    for (int a = 0; a < 3; ++a) out.mutable_data()[3 * f + a] = faces[f][a];
  return out;
}

}  // namespace

void register_radiomics(py::module_& m) {
  m.def("texture_glcm", &glcm, py::arg("levels"), py::arg("n_levels"), py::arg("by_slice"),
        py::arg("distance"), py::arg("n_threads"));
  m.def("texture_glrlm", &glrlm, py::arg("levels"), py::arg("n_levels"), py::arg("by_slice"),
        py::arg("n_threads"));
  m.def("texture_zones", &zones, py::arg("levels"), py::arg("n_levels"), py::arg("by_slice"),
        py::arg("morph_mask"), py::arg("n_threads"));
  m.def("texture_ngtdm", &ngtdm, py::arg("levels"), py::arg("n_levels"), py::arg("by_slice"),
        py::arg("distance"), py::arg("n_threads"));
  m.def("texture_ngldm", &ngldm, py::arg("levels"), py::arg("n_levels"), py::arg("by_slice"),
        py::arg("distance"), py::arg("alpha"), py::arg("n_threads"));
  m.def("convex_hull", &convex_hull, py::arg("points"));
  m.def("offset_means", &offset_means, py::arg("image"), py::arg("centres"), py::arg("offsets"),
        py::arg("n_threads"));
}
