#include "cuda_bindings.hpp"
#include "launch_contrast.hpp"

namespace {

namespace mc = medkern::cuda;
using medkern::cuda::bind::check;

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
                     std::array<std::int64_t, 3> kernel, std::int64_t nbins,
                     std::int64_t clip_limit, std::uintptr_t hist, std::uintptr_t maps,
                     mc::stream_t stream) {
  check(mc::clahe_tile_maps(
      reinterpret_cast<const std::uint16_t*>(bins), clahe_shape(shape, kernel), nbins, clip_limit,
      reinterpret_cast<unsigned int*>(hist), reinterpret_cast<double*>(maps), stream));
}

void clahe_interpolate(std::uintptr_t bins, std::array<std::int64_t, 3> shape,
                       std::array<std::int64_t, 3> kernel, std::int64_t nbins, std::uintptr_t maps,
                       mc::stream_t stream) {
  check(mc::clahe_interpolate(reinterpret_cast<std::uint16_t*>(bins), clahe_shape(shape, kernel),
                              nbins, reinterpret_cast<const double*>(maps), stream));
}

}  // namespace

void register_cuda_contrast(py::module_& m) {
  m.def("clahe_bin_image", &clahe_bin_image, py::arg("x"), py::arg("dtype"), py::arg("bins"),
        py::arg("n"), py::arg("lo"), py::arg("hi"), py::arg("unit_float"), py::arg("bin_size"),
        py::arg("stream"));
  m.def("clahe_tile_maps", &clahe_tile_maps, py::arg("bins"), py::arg("shape"), py::arg("kernel"),
        py::arg("nbins"), py::arg("clip_limit"), py::arg("hist"), py::arg("maps"),
        py::arg("stream"));
  m.def("clahe_interpolate", &clahe_interpolate, py::arg("bins"), py::arg("shape"),
        py::arg("kernel"), py::arg("nbins"), py::arg("maps"), py::arg("stream"));
}
