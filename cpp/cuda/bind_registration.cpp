#include "cuda_bindings.hpp"
#include "launch_registration.hpp"

namespace {

namespace mc = medkern::cuda;
using medkern::cuda::bind::check;

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

void register_cuda_registration(py::module_& m) {
  m.def("registration_metric", &registration_metric, py::arg("kind"), py::arg("fixed"),
        py::arg("fixed_values"), py::arg("indices"), py::arg("count"), py::arg("fixed_shape"),
        py::arg("moving"), py::arg("moving_shape"), py::arg("moving_mask"), py::arg("to_moving"),
        py::arg("bins"), py::arg("ranges"), py::arg("accumulator"), py::arg("cache"),
        py::arg("stream"));
}
