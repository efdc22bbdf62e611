// Bindings of medkern._cuda. Arrays arrive as (device pointer, dtype, size) from CuPy; the
// Python layer (medkern._dispatch) owns allocation and keeps the arrays alive during the call.
#include "../src/bindings.hpp"
#include "launch.hpp"

namespace {

namespace mc = medkern::cuda;

void check(const std::string& err) {
  if (!err.empty()) throw std::runtime_error("CUDA kernel launch failed: " + err);
}

void affine_intensity(std::uintptr_t x, const py::dtype& dtype, std::uintptr_t out, std::int64_t n,
                      double scale, double offset, double lo, double hi, mc::stream_t stream) {
  medkern::bind::visit_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    check(mc::affine_intensity(reinterpret_cast<const T*>(x), reinterpret_cast<float*>(out), n,
                               scale, offset, lo, hi, stream));
  });
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "medkern CUDA kernels (private; use the medkern package with CuPy arrays)";
  m.def("device_count", &mc::device_count);
  m.def("runtime_version", &mc::runtime_version);
  m.def("affine_intensity", &affine_intensity, py::arg("x"), py::arg("dtype"), py::arg("out"),
        py::arg("n"), py::arg("scale"), py::arg("offset"), py::arg("lo"), py::arg("hi"),
        py::arg("stream"));
}
