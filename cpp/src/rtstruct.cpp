#include <cmath>
#include <string>
#include "bindings.hpp"

#include "medkern/polygon.hpp"

namespace {

using medkern::bind::carray;

py::array_t<std::uint8_t> fill_polygons(const carray<double>& xy, const carray<std::int64_t>& start,
                                        const carray<std::int64_t>& slice_of, py::ssize_t nk,
                                        py::ssize_t nj, py::ssize_t ni, int n_threads) {
  if (nk < 0 || nj < 0 || ni < 0) throw py::value_error("nk, nj, ni must be non-negative sizes");
  if (xy.ndim() != 2 || xy.shape(1) != 2)
    throw py::value_error("xy must have shape (n_vertices, 2)");
  const py::ssize_t n_polygons = slice_of.size();
  if (start.size() != n_polygons + 1)
    throw py::value_error("start must have one more entry than slice_of");
  const std::int64_t* s = start.data();
  for (py::ssize_t p = 0; p < n_polygons; ++p)
    if (s[p] < 0 || s[p + 1] < s[p] || s[p + 1] > xy.shape(0))
      throw py::value_error("start must be non-decreasing offsets into xy");
  // Vertices must be finite and within the range where a crossing's voxel index converts to an
  // integer exactly (a NaN breaks the crossing sort, a huge value an out-of-range cast).
  const double* v = xy.data();
  for (py::ssize_t n = 0; n < 2 * xy.shape(0); ++n)
    if (!(std::fabs(v[n]) <= 1e15))
      throw py::value_error("xy must hold finite vertex indices of magnitude <= 1e15, got " +
                            std::to_string(v[n]));
  py::array_t<std::uint8_t> out({nk, nj, ni});
  const double* pts = xy.data();
  const std::int64_t* slices = slice_of.data();
  std::uint8_t* mask = out.mutable_data();
  // Raw pointers into arrays owned by this frame; no Python object is touched below.
  py::gil_scoped_release release;
  medkern::fill_polygons_even_odd(pts, s, slices, n_polygons, mask, nk, nj, ni, n_threads);
  return out;
}

}  // namespace

void register_rtstruct(py::module_& m) {
  m.def("fill_polygons", &fill_polygons, py::arg("xy"), py::arg("start"), py::arg("slice_of"),
        py::arg("nk"), py::arg("nj"), py::arg("ni"), py::arg("n_threads"));
}
