#include "bindings.hpp"
#include "medkern/label.hpp"

namespace {

using medkern::bind::carray;
using medkern::index_t;

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
    py::array_t<std::int32_t> out = py::module_::import("numpy").attr("zeros")(
        x.attr("shape"), "int32");
    const T* src = in.data();
    std::int32_t* dst = out.mutable_data();
    index_t n;
    {
      py::gil_scoped_release release;  // in and out are held by this frame; raw memory only
      n = medkern::label_components(src, dst, shape[0], shape[1], shape[2], connectivity, n_threads);
    }
    return py::make_tuple(out, n);
  });
}

}  // namespace

void register_segment(py::module_& m) {
  m.def("label", &label, py::arg("x"), py::arg("connectivity"), py::arg("n_threads"));
}
