// Bindings of medkern._cuda. Arrays arrive as (device pointer, dtype, size) from CuPy; the
// Python layer (medkern._dispatch) owns allocation and keeps the arrays alive during the call.
#include "../src/bindings.hpp"
#include <pybind11/stl.h>

#include <array>

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

py::tuple registration_metric(int kind, std::uintptr_t fixed, std::uintptr_t fixed_values,
                              std::uintptr_t indices, std::int64_t count,
                              std::array<std::int64_t, 3> fixed_shape, std::uintptr_t moving,
                              std::array<std::int64_t, 3> moving_shape, std::uintptr_t moving_mask,
                              std::array<double, 12> to_moving, int bins,
                              std::array<double, 4> ranges, std::uintptr_t accumulator,
                              std::uintptr_t cache, mc::stream_t stream) {
  std::array<double, 14> result{};
  check(mc::registration_metric(
      kind, reinterpret_cast<const float*>(fixed), reinterpret_cast<const float*>(fixed_values),
      reinterpret_cast<const std::int64_t*>(indices), count, fixed_shape.data(),
      reinterpret_cast<const float*>(moving), moving_shape.data(),
      reinterpret_cast<const std::uint8_t*>(moving_mask), to_moving.data(), bins, ranges.data(),
      reinterpret_cast<double*>(accumulator), reinterpret_cast<float*>(cache), result.data(),
      stream));
  py::array_t<double> grad({3, 4});
  std::copy(result.begin() + 1, result.begin() + 13, grad.mutable_data());
  return py::make_tuple(result[0], grad, result[13]);
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "medkern CUDA kernels (private; use the medkern package with CuPy arrays)";
  m.def("device_count", &mc::device_count);
  m.def("runtime_version", &mc::runtime_version);
  m.def("affine_intensity", &affine_intensity, py::arg("x"), py::arg("dtype"), py::arg("out"),
        py::arg("n"), py::arg("scale"), py::arg("offset"), py::arg("lo"), py::arg("hi"),
        py::arg("stream"));
  m.def("registration_metric", &registration_metric, py::arg("kind"), py::arg("fixed"),
        py::arg("fixed_values"), py::arg("indices"), py::arg("count"), py::arg("fixed_shape"),
        py::arg("moving"), py::arg("moving_shape"), py::arg("moving_mask"), py::arg("to_moving"),
        py::arg("bins"), py::arg("ranges"), py::arg("accumulator"), py::arg("cache"),
        py::arg("stream"));
}
