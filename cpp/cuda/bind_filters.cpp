#include "cuda_bindings.hpp"
#include "launch_filters.hpp"

namespace {

namespace mc = medkern::cuda;
using medkern::bind::shape3;
using medkern::cuda::bind::check;
using medkern::cuda::bind::kShape2d;

std::array<int, 3> radius3(const std::vector<int>& radius) {
  if (radius.size() != 3) throw py::value_error("radius must have 3 entries");
  return {radius[0], radius[1], radius[2]};
}

void correlate_axis(std::uintptr_t x, const py::dtype& dtype, std::uintptr_t out,
                    const std::vector<std::int64_t>& shape, int axis, std::uintptr_t w, int taps,
                    int mode, float cval, mc::stream_t stream) {
  const auto s = shape3(shape, "shape", kShape2d);
  medkern::bind::visit_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    check(mc::correlate_axis(reinterpret_cast<const T*>(x), reinterpret_cast<float*>(out), s.data(),
                             axis, reinterpret_cast<const float*>(w), taps, mode, cval, stream));
  });
}

void median_filter(std::uintptr_t x, const py::dtype& dtype, std::uintptr_t out,
                   const std::vector<std::int64_t>& shape, const std::vector<int>& radius, int mode,
                   mc::stream_t stream) {
  const auto s = shape3(shape, "shape", kShape2d);
  const auto r = radius3(radius);
  medkern::bind::visit_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    check(mc::median_filter(reinterpret_cast<const T*>(x), reinterpret_cast<T*>(out), s.data(),
                            r.data(), mode, stream));
  });
}

void bilateral_filter(std::uintptr_t x, const py::dtype& dtype, std::uintptr_t out,
                      const std::vector<std::int64_t>& shape, std::uintptr_t wd,
                      const std::vector<int>& radius, float cutoff, float to_bin, float bin_width,
                      float nhiv, mc::stream_t stream) {
  const auto s = shape3(shape, "shape", kShape2d);
  const auto r = radius3(radius);
  medkern::bind::visit_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    check(mc::bilateral_filter(reinterpret_cast<const T*>(x), reinterpret_cast<float*>(out),
                               s.data(), reinterpret_cast<const float*>(wd), r.data(), cutoff,
                               to_bin, bin_width, nhiv, stream));
  });
}

}  // namespace

void register_cuda_filters(py::module_& m) {
  m.def("correlate_axis", &correlate_axis, py::arg("x"), py::arg("dtype"), py::arg("out"),
        py::arg("shape"), py::arg("axis"), py::arg("w"), py::arg("taps"), py::arg("mode"),
        py::arg("cval"), py::arg("stream"));
  m.def("median_filter", &median_filter, py::arg("x"), py::arg("dtype"), py::arg("out"),
        py::arg("shape"), py::arg("radius"), py::arg("mode"), py::arg("stream"));
  m.def("bilateral_filter", &bilateral_filter, py::arg("x"), py::arg("dtype"), py::arg("out"),
        py::arg("shape"), py::arg("wd"), py::arg("radius"), py::arg("cutoff"), py::arg("to_bin"),
        py::arg("bin_width"), py::arg("nhiv"), py::arg("stream"));
}
