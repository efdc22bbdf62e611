#include "medkern/intensity.hpp"
#include "bindings.hpp"

namespace {

using medkern::bind::carray;

py::array_t<float> affine_intensity(const py::array& x, double scale, double offset, double lo,
                                    double hi, int n_threads) {
  return medkern::bind::visit_dtype(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    auto in = carray<T>::ensure(x);
    py::array_t<float> out(medkern::bind::dims(x));
    const T* src = in.data();
    float* dst = out.mutable_data();
    const auto n = static_cast<medkern::index_t>(in.size());
    // Both buffers are owned by arrays held in this frame; no Python object is touched below.
    py::gil_scoped_release release;
    medkern::affine_intensity(src, dst, n, scale, offset, lo, hi, n_threads);
    return out;
  });
}

py::dict moments(const py::array& x, const py::object& mask, int n_threads) {
  return medkern::bind::visit_dtype(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    auto in = carray<T>::ensure(x);
    carray<std::uint8_t> mask_holder;
    const std::uint8_t* m = medkern::bind::mask_ptr(mask, mask_holder, in.size());
    medkern::Moments r;
    {
      py::gil_scoped_release release;  // raw pointers into arrays kept alive by this frame
      r = medkern::masked_moments(in.data(), m, static_cast<medkern::index_t>(in.size()),
                                  n_threads);
    }
    py::dict d;
    d["count"] = r.count;
    d["sum"] = r.sum;
    d["sum_sq"] = r.sum_sq;
    d["min"] = r.min;
    d["max"] = r.max;
    d["nan_count"] = r.nan_count;
    return d;
  });
}

}  // namespace

void register_intensity(py::module_& m) {
  m.def("affine_intensity", &affine_intensity, py::arg("x"), py::arg("scale"), py::arg("offset"),
        py::arg("lo"), py::arg("hi"), py::arg("n_threads"));
  m.def("moments", &moments, py::arg("x"), py::arg("mask"), py::arg("n_threads"));
}
