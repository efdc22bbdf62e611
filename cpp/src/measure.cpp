#include <pybind11/stl.h>

#include "bindings.hpp"
#include "medkern/mesh.hpp"

namespace {

using medkern::index_t;
using medkern::bind::carray;

carray<std::uint8_t> mask3d(const py::array& mask) {
  auto m = carray<std::uint8_t>::ensure(mask);
  if (!m || m.ndim() != 3) throw py::value_error("mask must be a 3D uint8 array");
  return m;
}

std::array<double, 3> spacing3(const std::vector<double>& spacing) {
  if (spacing.size() != 3) throw py::value_error("spacing needs 3 values (array-axis order)");
  return {spacing[0], spacing[1], spacing[2]};
}

py::tuple mesh_area_volume(const py::array& mask, const std::vector<double>& spacing,
                           int n_threads) {
  auto m = mask3d(mask);
  const auto s = spacing3(spacing);
  medkern::MeshMeasures r;
  {
    py::gil_scoped_release release;  // m is held by this frame; only raw memory is read below
    r = medkern::mesh_area_volume(m.data(), m.shape(0), m.shape(1), m.shape(2), s.data(),
                                  n_threads);
  }
  return py::make_tuple(r.area, r.volume, r.n_triangles);
}

py::tuple surface_mesh(const py::array& mask, int n_threads) {
  auto m = mask3d(mask);
  medkern::Mesh mesh;
  {
    py::gil_scoped_release release;  // m is held by this frame; only raw memory is read below
    mesh = medkern::surface_mesh(m.data(), m.shape(0), m.shape(1), m.shape(2), n_threads);
  }
  const auto nv = static_cast<py::ssize_t>(mesh.vertices.size() / 3);
  const auto nf = static_cast<py::ssize_t>(mesh.faces.size() / 3);
  py::array_t<double> verts({nv, py::ssize_t{3}});
  py::array_t<std::int32_t> faces({nf, py::ssize_t{3}});
  std::copy(mesh.vertices.begin(), mesh.vertices.end(), verts.mutable_data());
  std::copy(mesh.faces.begin(), mesh.faces.end(), faces.mutable_data());
  return py::make_tuple(verts, faces);
}

py::tuple max_diameter(const py::array& points, const std::vector<double>& spacing, int n_threads) {
  auto p = carray<std::int32_t>::ensure(points);
  if (!p || p.ndim() != 2 || p.shape(1) != 3)
    throw py::value_error("points must be an (n, 3) int32 array of doubled indices");
  const auto s = spacing3(spacing);
  medkern::Diameter d;
  {
    py::gil_scoped_release release;  // p is held by this frame; only raw memory is read below
    d = medkern::max_diameter(p.data(), p.shape(0), s.data(), n_threads);
  }
  return py::make_tuple(d.length, d.a, d.b);
}

}  // namespace

void register_measure(py::module_& m) {
  m.def("mesh_area_volume", &mesh_area_volume, py::arg("mask"), py::arg("spacing"),
        py::arg("n_threads"));
  m.def("surface_mesh", &surface_mesh, py::arg("mask"), py::arg("n_threads"));
  m.def("max_diameter", &max_diameter, py::arg("points"), py::arg("spacing"), py::arg("n_threads"));
}
