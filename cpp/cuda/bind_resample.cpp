#include "cuda_bindings.hpp"
#include "launch_resample.hpp"

namespace {

namespace mc = medkern::cuda;
using medkern::bind::shape3;
using medkern::cuda::bind::check;
using medkern::cuda::bind::kShape2d;

// Sampling dtypes: the kernel dtypes for linear/cubic, plus 4- and 8-byte unsigned element views
// for nearest/label (1- and 2-byte views are uint8/uint16, already in the table).
template <class F>
decltype(auto) visit_sampling_dtype(const py::dtype& dt, F&& f) {
  if (dt.kind() == 'u' && dt.itemsize() == 4) return f(std::uint32_t{});
  if (dt.kind() == 'u' && dt.itemsize() == 8) return f(std::uint64_t{});
  return medkern::bind::visit_dtype(dt, std::forward<F>(f));
}

void resample_warp(std::uintptr_t x, const py::dtype& dtype,
                   const std::vector<std::int64_t>& shape_in, int interpolation, std::uintptr_t out,
                   const std::vector<std::int64_t>& shape_out, const std::vector<double>& matrix,
                   std::uintptr_t disp, int n_comp, const std::vector<double>& disp_matrix,
                   double fill, std::uint64_t fill_bits, mc::stream_t stream) {
  const auto si = shape3(shape_in, "shape_in", kShape2d),
             so = shape3(shape_out, "shape_out", kShape2d);
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

void resample_points(std::uintptr_t x, const py::dtype& dtype,
                     const std::vector<std::int64_t>& shape_in, int interpolation,
                     std::uintptr_t out, std::uintptr_t coords, std::int64_t n_points, int ndim,
                     double fill, std::uint64_t fill_bits, mc::stream_t stream) {
  const auto si = shape3(shape_in, "shape_in", kShape2d);
  visit_sampling_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    check(mc::resample_points(interpolation, reinterpret_cast<const T*>(x), si.data(),
                              reinterpret_cast<void*>(out), reinterpret_cast<const double*>(coords),
                              n_points, ndim, fill, fill_bits, stream));
  });
}

void resample_axis_pass(std::uintptr_t in, const py::dtype& dtype, std::uintptr_t out,
                        std::int64_t outer, std::int64_t n_in, std::int64_t inner,
                        std::int64_t n_out, std::uintptr_t idx, std::uintptr_t w, int taps,
                        bool prefilter, std::uintptr_t scratch, mc::stream_t stream) {
  medkern::bind::visit_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    check(mc::resample_axis_pass(
        reinterpret_cast<const T*>(in), reinterpret_cast<void*>(out), outer, n_in, inner, n_out,
        reinterpret_cast<const std::int64_t*>(idx), reinterpret_cast<const void*>(w), taps,
        prefilter, reinterpret_cast<void*>(scratch), stream));
  });
}

void bspline_coefficients(std::uintptr_t in, const py::dtype& dtype,
                          const std::vector<std::int64_t>& shape, std::uintptr_t out,
                          mc::stream_t stream) {
  const auto s = shape3(shape, "shape", kShape2d);
  medkern::bind::visit_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    check(mc::bspline_coefficients(reinterpret_cast<const T*>(in), s.data(),
                                   reinterpret_cast<void*>(out), stream));
  });
}

void gather_nearest(std::uintptr_t in, const py::dtype& dtype,
                    const std::vector<std::int64_t>& shape_in, std::uintptr_t out,
                    const std::vector<std::int64_t>& shape_out, std::uintptr_t idx0,
                    std::uintptr_t idx1, std::uintptr_t idx2, std::uint64_t fill_bits,
                    mc::stream_t stream) {
  const auto si = shape3(shape_in, "shape_in", kShape2d),
             so = shape3(shape_out, "shape_out", kShape2d);
  medkern::bind::visit_itemsize(dtype, [&](auto tag) {
    using U = decltype(tag);
    check(mc::gather_nearest(reinterpret_cast<const U*>(in), si.data(), reinterpret_cast<U*>(out),
                             so.data(), reinterpret_cast<const std::int64_t*>(idx0),
                             reinterpret_cast<const std::int64_t*>(idx1),
                             reinterpret_cast<const std::int64_t*>(idx2), fill_bits, stream));
  });
}

}  // namespace

void register_cuda_resample(py::module_& m) {
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
  m.def("bspline_coefficients", &bspline_coefficients, py::arg("x"), py::arg("dtype"),
        py::arg("shape"), py::arg("out"), py::arg("stream"));
  m.def("gather_nearest", &gather_nearest, py::arg("x"), py::arg("dtype"), py::arg("shape_in"),
        py::arg("out"), py::arg("shape_out"), py::arg("idx0"), py::arg("idx1"), py::arg("idx2"),
        py::arg("fill_bits"), py::arg("stream"));
}
