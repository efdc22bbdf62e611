#include <pybind11/stl.h>

#include "bindings.hpp"
#include "medkern/distance.hpp"
#include "medkern/label.hpp"
#include "medkern/morphology.hpp"

namespace {

using medkern::index_t;
using medkern::bind::carray;

// (nk, nj, ni) of a 2D or 3D array; a 2D image is one plane.
std::array<index_t, 3> grid_shape(const py::array& a, const char* name) {
  if (a.ndim() == 3) return {a.shape(0), a.shape(1), a.shape(2)};
  if (a.ndim() == 2) return {1, a.shape(0), a.shape(1)};
  throw py::value_error(std::string(name) + " must be 2D or 3D");
}

py::tuple label(const py::array& x, int connectivity, int n_threads) {
  if (connectivity != 6 && connectivity != 18 && connectivity != 26)
    throw py::value_error("connectivity must be 6, 18 or 26");
  const auto shape = grid_shape(x, "mask");
  return medkern::bind::visit_label_dtype(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    auto in = carray<T>::ensure(x);
    // numpy.zeros gets its memory from calloc: pages the labelling never writes stay untouched.
    py::array_t<std::int32_t> out =
        py::module_::import("numpy").attr("zeros")(x.attr("shape"), "int32");
    const T* src = in.data();
    std::int32_t* dst = out.mutable_data();
    index_t n;
    {
      py::gil_scoped_release release;  // in and out are held by this frame; raw memory only
      n = medkern::label_components(src, dst, shape[0], shape[1], shape[2], connectivity,
                                    n_threads);
    }
    return py::make_tuple(out, n);
  });
}

py::array_t<float> distance_transform(const py::array& x, const std::vector<double>& spacing,
                                      bool sites_nonzero, bool border_sites, bool squared,
                                      int n_threads) {
  const auto shape = grid_shape(x, "mask");
  if (spacing.size() != static_cast<std::size_t>(x.ndim()))
    throw py::value_error("spacing needs one value per array axis");
  const double sp[3] = {x.ndim() == 3 ? spacing[0] : 1.0, spacing[x.ndim() - 2],
                        spacing[x.ndim() - 1]};
  return medkern::bind::visit_label_dtype(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    auto in = carray<T>::ensure(x);
    py::array_t<float> out(medkern::bind::dims(x));
    const T* src = in.data();
    float* dst = out.mutable_data();
    py::gil_scoped_release release;  // in and out are held by this frame; raw memory only
    medkern::distance_transform(src, dst, shape[0], shape[1], shape[2], sp, sites_nonzero,
                                border_sites, squared, x.ndim() == 3, n_threads);
    return out;
  });
}

py::array_t<std::uint8_t> binary_morphology(const py::array& x, const py::array& rows, bool erode,
                                            int n_threads) {
  const auto shape = grid_shape(x, "mask");
  auto in = carray<std::uint8_t>::ensure(x);
  auto off = carray<std::int32_t>::ensure(rows);
  if (!off || off.ndim() != 2 || off.shape(1) != 3)
    throw py::value_error("rows must be an (n, 3) int32 array (dk, dj, half-width along i)");
  py::array_t<std::uint8_t> out(medkern::bind::dims(x));
  const std::uint8_t* src = in.data();
  std::uint8_t* dst = out.mutable_data();
  py::gil_scoped_release release;  // in, off and out are held by this frame; raw memory only
  medkern::binary_morphology(src, dst, shape[0], shape[1], shape[2], off.data(), off.shape(0),
                             erode, n_threads);
  return out;
}

}  // namespace

void register_segment(py::module_& m) {
  m.def("label", &label, py::arg("x"), py::arg("connectivity"), py::arg("n_threads"));
  m.def("distance_transform", &distance_transform, py::arg("x"), py::arg("spacing"),
        py::arg("sites_nonzero"), py::arg("border_sites"), py::arg("squared"),
        py::arg("n_threads"));
  m.def("binary_morphology", &binary_morphology, py::arg("x"), py::arg("rows"), py::arg("erode"),
        py::arg("n_threads"));
}
