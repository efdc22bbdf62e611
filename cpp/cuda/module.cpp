// Bindings of medkern._cuda. Arrays arrive as (device pointer, dtype, size) from CuPy; the
// Python layer (medkern._dispatch) owns allocation and keeps the arrays alive during the call.
#include <pybind11/stl.h>

#include <array>

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

mc::ClaheShape clahe_shape(const std::array<std::int64_t, 3>& shape,
                           const std::array<std::int64_t, 3>& kernel) {
  mc::ClaheShape g{};
  for (int a = 0; a < 3; ++a) {
    if (kernel[a] < 1) throw py::value_error("kernel sizes must be >= 1");
    g.shape[a] = shape[a];
    g.kernel[a] = kernel[a];
    g.tiles[a] = (shape[a] + kernel[a] - 1) / kernel[a];
  }
  return g;
}

void clahe_bin_image(std::uintptr_t x, const py::dtype& dtype, std::uintptr_t bins, std::int64_t n,
                     double lo, double hi, bool unit_float, int bin_size, mc::stream_t stream) {
  medkern::bind::visit_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    check(mc::clahe_bin_image(reinterpret_cast<const T*>(x), reinterpret_cast<std::uint16_t*>(bins),
                              n, lo, hi, unit_float, bin_size, stream));
  });
}

void clahe_tile_maps(std::uintptr_t bins, std::array<std::int64_t, 3> shape,
                     std::array<std::int64_t, 3> kernel, std::int64_t nbins, std::int64_t clip_limit,
                     std::uintptr_t hist, std::uintptr_t maps, mc::stream_t stream) {
  check(mc::clahe_tile_maps(reinterpret_cast<const std::uint16_t*>(bins), clahe_shape(shape, kernel),
                            nbins, clip_limit, reinterpret_cast<unsigned int*>(hist),
                            reinterpret_cast<double*>(maps), stream));
}

void clahe_interpolate(std::uintptr_t bins, std::array<std::int64_t, 3> shape,
                       std::array<std::int64_t, 3> kernel, std::int64_t nbins, std::uintptr_t maps,
                       mc::stream_t stream) {
  check(mc::clahe_interpolate(reinterpret_cast<std::uint16_t*>(bins), clahe_shape(shape, kernel), nbins,
                              reinterpret_cast<const double*>(maps), stream));
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "medkern CUDA kernels (private; use the medkern package with CuPy arrays)";
  m.def("device_count", &mc::device_count);
  m.def("runtime_version", &mc::runtime_version);
  m.def("affine_intensity", &affine_intensity, py::arg("x"), py::arg("dtype"), py::arg("out"),
        py::arg("n"), py::arg("scale"), py::arg("offset"), py::arg("lo"), py::arg("hi"),
        py::arg("stream"));
  m.def("clahe_bin_image", &clahe_bin_image, py::arg("x"), py::arg("dtype"), py::arg("bins"),
        py::arg("n"), py::arg("lo"), py::arg("hi"), py::arg("unit_float"), py::arg("bin_size"),
        py::arg("stream"));
  m.def("clahe_tile_maps", &clahe_tile_maps, py::arg("bins"), py::arg("shape"), py::arg("kernel"),
        py::arg("nbins"), py::arg("clip_limit"), py::arg("hist"), py::arg("maps"), py::arg("stream"));
  m.def("clahe_interpolate", &clahe_interpolate, py::arg("bins"), py::arg("shape"),
        py::arg("kernel"), py::arg("nbins"), py::arg("maps"), py::arg("stream"));
  m.def("registration_metric", &registration_metric, py::arg("kind"), py::arg("fixed"),
        py::arg("fixed_values"), py::arg("indices"), py::arg("count"), py::arg("fixed_shape"),
        py::arg("moving"), py::arg("moving_shape"), py::arg("moving_mask"), py::arg("to_moving"),
        py::arg("bins"), py::arg("ranges"), py::arg("accumulator"), py::arg("cache"),
        py::arg("stream"));
}
