#include <pybind11/stl.h>

#include <array>

#include "bindings.hpp"
#include "medkern/bilateral.hpp"
#include "medkern/bilateral_grid.hpp"
#include "medkern/diffusion.hpp"
#include "medkern/filters.hpp"
#include "medkern/median.hpp"

namespace {

using medkern::index_t;
using medkern::Shape3;
using medkern::bind::carray;
using medkern::bind::dims;

// 2D arrays are filtered as one-slice volumes: (ny, nx) -> (1, ny, nx).
Shape3 volume_of(const py::array& x) {
  const auto n = medkern::bind::shape3(x, "x", /*one_slice_2d=*/true);
  return {n[0], n[1], n[2]};
}

// Per-array-axis values given for the image's axes, padded to three (axis 0 of a 2D image first).
template <class V>
std::array<V, 3> per_axis3(const std::vector<V>& v, const py::array& x, V pad, const char* name) {
  if (static_cast<py::ssize_t>(v.size()) != x.ndim())
    throw py::value_error(std::string(name) + " needs one value per array axis");
  std::array<V, 3> out{pad, pad, pad};
  std::copy(v.begin(), v.end(), out.begin() + (3 - v.size()));
  return out;
}

// Runs kernel(src, dst) for the array's dtype on a new float32 array of the same shape.
template <class F>
py::array_t<float> float_result(const py::array& x, F&& kernel) {
  return medkern::bind::visit_dtype(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    auto in = carray<T>::ensure(x);
    py::array_t<float> out(dims(x));
    const T* src = in.data();
    float* dst = out.mutable_data();
    py::gil_scoped_release release;  // only raw buffers of arrays owned by this frame are used
    kernel(src, dst);
    return out;
  });
}

medkern::Boundary boundary(int b) {
  if (b < 0 || b > 4) throw py::value_error("boundary code out of range");
  return static_cast<medkern::Boundary>(b);
}

py::array_t<float> separable_correlate(const py::array& x, const std::vector<std::vector<float>>& w,
                                       int mode, float cval, int n_threads) {
  const Shape3 s = volume_of(x);
  const auto kernels = per_axis3<std::vector<float>>(w, x, {}, "kernels");
  for (const auto& k : kernels)
    if (!k.empty() && k.size() % 2 == 0) throw py::value_error("kernels must have odd length");
  const auto b = boundary(mode);
  return float_result(x, [&](const auto* src, float* dst) {
    medkern::separable_correlate(src, dst, s, kernels.data(), b, cval, n_threads);
  });
}

py::array_t<float> recursive_gaussian(const py::array& x, const std::vector<double>& sigma_vox,
                                      int n_threads) {
  const Shape3 s = volume_of(x);
  const auto sigma = per_axis3<double>(sigma_vox, x, 0.0, "sigma_vox");
  const bool is_3d = x.ndim() == 3;
  return float_result(x, [&](const auto* src, float* dst) {
    medkern::recursive_gaussian(src, dst, s, sigma.data(), is_3d, n_threads);
  });
}

// Box radii in [0, 2^19]: the window size (2r + 1)^3 and the per-thread buffers then stay within
// int64 arithmetic (the Python layer bounds radii by the image long before).
std::array<index_t, 3> box_radius(const std::vector<index_t>& radius, const py::array& x) {
  const auto r = per_axis3<index_t>(radius, x, 0, "radius");
  for (index_t v : r)
    if (v < 0 || v > (index_t{1} << 19))
      throw py::value_error("radius must be in [0, 2**19] voxels");
  return r;
}

py::array median_filter(const py::array& x, const std::vector<index_t>& radius, int mode,
                        int n_threads) {
  const Shape3 s = volume_of(x);
  const auto r = box_radius(radius, x);
  const auto b = boundary(mode);
  return medkern::bind::visit_dtype(x.dtype(), [&](auto tag) -> py::array {
    using T = decltype(tag);
    auto in = carray<T>::ensure(x);
    py::array_t<T> out(dims(x));
    const T* src = in.data();
    T* dst = out.mutable_data();
    py::gil_scoped_release release;  // only raw buffers of arrays owned by this frame are used
    medkern::median_filter(src, dst, s, r.data(), b, n_threads);
    return out;
  });
}

py::array_t<float> bilateral_filter(const py::array& x, const std::vector<double>& spacing,
                                    const std::vector<double>& sigma_mm,
                                    const std::vector<index_t>& radius, double sigma_range,
                                    double cutoff_sigmas, int samples, int n_threads) {
  const Shape3 s = volume_of(x);
  const auto sp = per_axis3<double>(spacing, x, 1.0, "spacing");
  const auto sg = per_axis3<double>(sigma_mm, x, 1.0, "sigma_mm");
  const auto r = box_radius(radius, x);
  const medkern::RangeKernel rk(sigma_range, cutoff_sigmas, samples);
  return float_result(x, [&](const auto* src, float* dst) {
    medkern::bilateral_filter(src, dst, s, sp.data(), sg.data(), r.data(), rk, n_threads);
  });
}

// Grid sampling, kernels and range from medkern._filters (which sizes the grid); checked here
// again only so that no argument can index outside the grid.
py::array_t<float> bilateral_grid(const py::array& x, const std::vector<double>& sampling,
                                  const std::vector<std::vector<float>>& kernels,
                                  const std::vector<float>& range_kernel, double lo, double hi,
                                  double range_sampling, double max_bytes, int n_threads) {
  const Shape3 s = volume_of(x);
  medkern::BilateralGridPlan plan;
  plan.n[0] = s.n0, plan.n[1] = s.n1, plan.n[2] = s.n2;
  const auto sp = per_axis3<double>(sampling, x, 1.0, "sampling");
  const auto ks = per_axis3<std::vector<float>>(kernels, x, {1.0f}, "kernels");
  for (int a = 0; a < 3; ++a) {
    if (!(sp[a] >= 1.0 && sp[a] <= 1e6)) throw py::value_error("sampling must be in [1, 1e6]");
    if (ks[a].empty() || ks[a].size() % 2 == 0 || ks[a].size() > 1025)
      throw py::value_error("kernels must have odd length <= 1025");
    plan.sampling[a] = sp[a];
    plan.kernel[a] = ks[a];
  }
  if (range_kernel.empty() || range_kernel.size() % 2 == 0 || range_kernel.size() > 1025)
    throw py::value_error("range_kernel must have odd length <= 1025");
  plan.range_kernel = range_kernel;
  const float lo_f = static_cast<float>(lo), rs = static_cast<float>(range_sampling);
  if (!(std::isfinite(lo_f) && std::isfinite(static_cast<float>(hi)) && hi >= lo && rs > 0 &&
        std::isfinite(rs)))
    throw py::value_error("need lo <= hi and range_sampling > 0, finite in float32");
  if (!(max_bytes > 0 && std::isfinite(max_bytes))) throw py::value_error("max_bytes must be > 0");
  const float top = (static_cast<float>(hi) - lo_f) * (1.0f / rs);
  if (!(top < float(1 << 24))) throw py::value_error("more than 2**24 range cells");
  plan.lo = lo_f;
  plan.range_sampling = rs;
  plan.range_cells = static_cast<index_t>(top) + 2;
  const auto layout = medkern::bilateral_grid_layout(plan, n_threads, max_bytes);
  if (static_cast<double>(layout.task_floats()) * sizeof(float) > max_bytes)
    throw py::value_error("the bilateral grid exceeds max_bytes");
  return float_result(x, [&](const auto* src, float* dst) {
    medkern::bilateral_grid(src, dst, plan, layout, n_threads);
  });
}

py::array_t<float> anisotropic_diffusion(const py::array& x, const std::vector<double>& spacing,
                                         int iterations, double time_step, double conductance,
                                         int kind, int n_threads) {
  const Shape3 s = volume_of(x);
  const auto sp = per_axis3<double>(spacing, x, 1.0, "spacing");
  if (kind != 0 && kind != 1) throw py::value_error("diffusion kind must be 0 or 1");
  // Works in place on a float32 copy of the input, which is also the result.
  py::array_t<float> out = carray<float>::ensure(x);
  if (out.ptr() == x.ptr()) out = py::array_t<float>(py::array(x).attr("copy")());
  float* data = out.mutable_data();
  const bool is_3d = x.ndim() == 3;
  py::gil_scoped_release release;  // `out` is owned by this frame; no Python object is touched
  medkern::anisotropic_diffusion(data, s, sp.data(), is_3d, iterations, time_step, conductance,
                                 static_cast<medkern::Diffusion>(kind), n_threads);
  return out;
}

}  // namespace

void register_filters(py::module_& m) {
  m.def("separable_correlate", &separable_correlate, py::arg("x"), py::arg("kernels"),
        py::arg("mode"), py::arg("cval"), py::arg("n_threads"));
  m.def("recursive_gaussian", &recursive_gaussian, py::arg("x"), py::arg("sigma_vox"),
        py::arg("n_threads"));
  m.def("median_filter", &median_filter, py::arg("x"), py::arg("radius"), py::arg("mode"),
        py::arg("n_threads"));
  m.def("bilateral_filter", &bilateral_filter, py::arg("x"), py::arg("spacing"),
        py::arg("sigma_mm"), py::arg("radius"), py::arg("sigma_range"), py::arg("cutoff_sigmas"),
        py::arg("samples"), py::arg("n_threads"));
  m.def("bilateral_grid", &bilateral_grid, py::arg("x"), py::arg("sampling"), py::arg("kernels"),
        py::arg("range_kernel"), py::arg("lo"), py::arg("hi"), py::arg("range_sampling"),
        py::arg("max_bytes"), py::arg("n_threads"));
  m.def("anisotropic_diffusion", &anisotropic_diffusion, py::arg("x"), py::arg("spacing"),
        py::arg("iterations"), py::arg("time_step"), py::arg("conductance"), py::arg("kind"),
        py::arg("n_threads"));
}
