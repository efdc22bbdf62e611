#include "cuda_bindings.hpp"
#include "launch_intensity.hpp"

namespace {

namespace mc = medkern::cuda;
using medkern::cuda::bind::check;

void affine_intensity(std::uintptr_t x, const py::dtype& dtype, std::uintptr_t out, std::int64_t n,
                      double scale, double offset, double lo, double hi, mc::stream_t stream) {
  medkern::bind::visit_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    check(mc::affine_intensity(reinterpret_cast<const T*>(x), reinterpret_cast<float*>(out), n,
                               scale, offset, lo, hi, stream));
  });
}

}  // namespace

void register_cuda_intensity(py::module_& m) {
  m.def("affine_intensity", &affine_intensity, py::arg("x"), py::arg("dtype"), py::arg("out"),
        py::arg("n"), py::arg("scale"), py::arg("offset"), py::arg("lo"), py::arg("hi"),
        py::arg("stream"));
}
