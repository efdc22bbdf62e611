// Bindings of medkern._cuda. Arrays arrive as (device pointer, dtype, size) from CuPy; the
// Python layer (medkern._dispatch) owns allocation and keeps the arrays alive during the call.
#include <pybind11/stl.h>

#include <array>
#include <vector>

#include "../src/bindings.hpp"
#include "launch.hpp"

#include <pybind11/stl.h>

#include <array>
#include <vector>

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

std::array<std::int64_t, 3> shape3(const std::vector<std::int64_t>& shape) {
  if (shape.size() != 3) throw py::value_error("shape must have 3 entries (2D as (1, ny, nx))");
  return {shape[0], shape[1], shape[2]};
}

std::array<int, 3> radius3(const std::vector<int>& radius) {
  if (radius.size() != 3) throw py::value_error("radius must have 3 entries");
  return {radius[0], radius[1], radius[2]};
}

void correlate_axis(std::uintptr_t x, const py::dtype& dtype, std::uintptr_t out,
                    const std::vector<std::int64_t>& shape, int axis, std::uintptr_t w, int taps,
                    int mode, float cval, mc::stream_t stream) {
  const auto s = shape3(shape);
  medkern::bind::visit_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    check(mc::correlate_axis(reinterpret_cast<const T*>(x), reinterpret_cast<float*>(out), s.data(),
                             axis, reinterpret_cast<const float*>(w), taps, mode, cval, stream));
  });
}

void median_filter(std::uintptr_t x, const py::dtype& dtype, std::uintptr_t out,
                   const std::vector<std::int64_t>& shape, const std::vector<int>& radius, int mode,
                   mc::stream_t stream) {
  const auto s = shape3(shape);
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
  const auto s = shape3(shape);
  const auto r = radius3(radius);
  medkern::bind::visit_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    check(mc::bilateral_filter(reinterpret_cast<const T*>(x), reinterpret_cast<float*>(out),
                               s.data(), reinterpret_cast<const float*>(wd), r.data(), cutoff,
                               to_bin, bin_width, nhiv, stream));
std::array<std::int64_t, 3> shape3(const std::vector<std::int64_t>& s, const char* name) {
  if (s.size() != 3) throw py::value_error(std::string(name) + " must have 3 entries");
  return {s[0], s[1], s[2]};
}

// Sampling dtypes: the kernel dtypes for linear/cubic, plus 4- and 8-byte unsigned element views
// for nearest/label (1- and 2-byte views are uint8/uint16, already in the table).
template <class F>
decltype(auto) visit_sampling_dtype(const py::dtype& dt, F&& f) {
  if (dt.kind() == 'u' && dt.itemsize() == 4) return f(std::uint32_t{});
  if (dt.kind() == 'u' && dt.itemsize() == 8) return f(std::uint64_t{});
  return medkern::bind::visit_dtype(dt, std::forward<F>(f));
}

void resample_warp(std::uintptr_t x, const py::dtype& dtype, const std::vector<std::int64_t>& shape_in,
                   int interpolation, std::uintptr_t out, const std::vector<std::int64_t>& shape_out,
                   const std::vector<double>& matrix, std::uintptr_t disp, int n_comp,
                   const std::vector<double>& disp_matrix, double fill, std::uint64_t fill_bits,
                   mc::stream_t stream) {
  const auto si = shape3(shape_in, "shape_in"), so = shape3(shape_out, "shape_out");
  if (matrix.size() != 12) throw py::value_error("matrix must have 12 entries (3x4)");
  if (disp && disp_matrix.size() != static_cast<std::size_t>(3 * n_comp))
    throw py::value_error("disp_matrix must have 3 * n_comp entries");
  visit_sampling_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    check(mc::resample_warp(interpolation, reinterpret_cast<const T*>(x), si.data(),
                            reinterpret_cast<void*>(out), so.data(), matrix.data(),
                            reinterpret_cast<const float*>(disp), n_comp,
                            disp ? disp_matrix.data() : nullptr, fill, fill_bits, stream));
  });
}

void resample_points(std::uintptr_t x, const py::dtype& dtype, const std::vector<std::int64_t>& shape_in,
                     int interpolation, std::uintptr_t out, std::uintptr_t coords, std::int64_t n_points,
                     int ndim, double fill, std::uint64_t fill_bits, mc::stream_t stream) {
  const auto si = shape3(shape_in, "shape_in");
  visit_sampling_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    check(mc::resample_points(interpolation, reinterpret_cast<const T*>(x), si.data(),
                              reinterpret_cast<void*>(out), reinterpret_cast<const double*>(coords),
                              n_points, ndim, fill, fill_bits, stream));
  });
}

void resample_axis_pass(std::uintptr_t in, const py::dtype& dtype, std::uintptr_t out, std::int64_t outer,
                        std::int64_t n_in, std::int64_t inner, std::int64_t n_out, std::uintptr_t idx,
                        std::uintptr_t w, int taps, bool prefilter, std::uintptr_t scratch,
                        mc::stream_t stream) {
  medkern::bind::visit_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    check(mc::resample_axis_pass(reinterpret_cast<const T*>(in), reinterpret_cast<void*>(out), outer,
                                 n_in, inner, n_out, reinterpret_cast<const std::int64_t*>(idx),
                                 reinterpret_cast<const void*>(w), taps, prefilter,
                                 reinterpret_cast<void*>(scratch), stream));
  });
}

void bspline_coefficients(std::uintptr_t in, const py::dtype& dtype, const std::vector<std::int64_t>& shape,
                          std::uintptr_t out, mc::stream_t stream) {
  const auto s = shape3(shape, "shape");
  medkern::bind::visit_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    check(mc::bspline_coefficients(reinterpret_cast<const T*>(in), s.data(), reinterpret_cast<void*>(out),
                                   stream));
  });
}

void gather_nearest(std::uintptr_t in, const py::dtype& dtype, const std::vector<std::int64_t>& shape_in,
                    std::uintptr_t out, const std::vector<std::int64_t>& shape_out, std::uintptr_t idx0,
                    std::uintptr_t idx1, std::uintptr_t idx2, std::uint64_t fill_bits, mc::stream_t stream) {
  const auto si = shape3(shape_in, "shape_in"), so = shape3(shape_out, "shape_out");
  medkern::bind::visit_itemsize(dtype, [&](auto tag) {
    using U = decltype(tag);
    check(mc::gather_nearest(reinterpret_cast<const U*>(in), si.data(), reinterpret_cast<U*>(out), so.data(),
                             reinterpret_cast<const std::int64_t*>(idx0),
                             reinterpret_cast<const std::int64_t*>(idx1),
                             reinterpret_cast<const std::int64_t*>(idx2), fill_bits, stream));
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
  m.def("clahe_bin_image", &clahe_bin_image, py::arg("x"), py::arg("dtype"), py::arg("bins"),
        py::arg("n"), py::arg("lo"), py::arg("hi"), py::arg("unit_float"), py::arg("bin_size"),
        py::arg("stream"));
  m.def("clahe_tile_maps", &clahe_tile_maps, py::arg("bins"), py::arg("shape"), py::arg("kernel"),
        py::arg("nbins"), py::arg("clip_limit"), py::arg("hist"), py::arg("maps"), py::arg("stream"));
  m.def("clahe_interpolate", &clahe_interpolate, py::arg("bins"), py::arg("shape"),
        py::arg("kernel"), py::arg("nbins"), py::arg("maps"), py::arg("stream"));
  m.def("correlate_axis", &correlate_axis, py::arg("x"), py::arg("dtype"), py::arg("out"),
        py::arg("shape"), py::arg("axis"), py::arg("w"), py::arg("taps"), py::arg("mode"),
        py::arg("cval"), py::arg("stream"));
  m.def("median_filter", &median_filter, py::arg("x"), py::arg("dtype"), py::arg("out"),
        py::arg("shape"), py::arg("radius"), py::arg("mode"), py::arg("stream"));
  m.def("bilateral_filter", &bilateral_filter, py::arg("x"), py::arg("dtype"), py::arg("out"),
        py::arg("shape"), py::arg("wd"), py::arg("radius"), py::arg("cutoff"), py::arg("to_bin"),
        py::arg("bin_width"), py::arg("nhiv"), py::arg("stream"));
  m.def("resample_warp", &resample_warp, py::arg("x"), py::arg("dtype"), py::arg("shape_in"),
        py::arg("interpolation"), py::arg("out"), py::arg("shape_out"), py::arg("matrix"),
        py::arg("disp"), py::arg("n_comp"), py::arg("disp_matrix"), py::arg("fill"),
        py::arg("fill_bits"), py::arg("stream"));
  m.def("resample_points", &resample_points, py::arg("x"), py::arg("dtype"), py::arg("shape_in"),
        py::arg("interpolation"), py::arg("out"), py::arg("coords"), py::arg("n_points"),
        py::arg("ndim"), py::arg("fill"), py::arg("fill_bits"), py::arg("stream"));
  m.def("resample_axis_pass", &resample_axis_pass, py::arg("x"), py::arg("dtype"), py::arg("out"),
        py::arg("outer"), py::arg("n_in"), py::arg("inner"), py::arg("n_out"), py::arg("idx"),
        py::arg("w"), py::arg("taps"), py::arg("prefilter"), py::arg("scratch"), py::arg("stream"));
  m.def("bspline_coefficients", &bspline_coefficients, py::arg("x"), py::arg("dtype"), py::arg("shape"),
        py::arg("out"), py::arg("stream"));
  m.def("gather_nearest", &gather_nearest, py::arg("x"), py::arg("dtype"), py::arg("shape_in"),
        py::arg("out"), py::arg("shape_out"), py::arg("idx0"), py::arg("idx1"), py::arg("idx2"),
        py::arg("fill_bits"), py::arg("stream"));
}
