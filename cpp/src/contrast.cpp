// Bindings of the contrast kernels: histograms, equalisation, CLAHE and N4.
#include <array>
#include <string>
#include <vector>

#include <pybind11/stl.h>

#include "bindings.hpp"
#include "medkern/clahe.hpp"
#include "medkern/histogram.hpp"
#include "medkern/n4.hpp"

namespace {

using medkern::index_t;
using medkern::bind::carray;
using medkern::bind::dims;
using medkern::bind::shape3;

// Extremes, count and NaN count of the masked voxels (medkern::masked_moments), with as many
// threads as the size warrants: the contrast kernels call it first on every image.
py::dict value_range(const py::array& x, const py::object& mask, int n_threads) {
  return medkern::bind::visit_dtype(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    auto in = carray<T>::ensure(x);
    carray<std::uint8_t> mask_holder;
    const std::uint8_t* m = medkern::bind::mask_ptr(mask, mask_holder, in.size());
    const auto n = static_cast<index_t>(in.size());
    medkern::Moments r;
    {
      py::gil_scoped_release release;  // raw pointers into arrays held by this frame
      r = medkern::masked_moments(in.data(), m, n, medkern::threads_for(n, n_threads));
    }
    py::dict d;
    d["count"] = r.count;
    d["min"] = r.min;
    d["max"] = r.max;
    d["nan_count"] = r.nan_count;
    return d;
  });
}

py::array_t<std::int64_t> histogram_edges(const py::array& x, const py::object& mask,
                                          const carray<double>& edges, int n_threads) {
  if (edges.ndim() != 1 || edges.size() < 2) throw py::value_error("edges needs at least 2 values");
  return medkern::bind::visit_dtype(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    auto in = carray<T>::ensure(x);
    carray<std::uint8_t> mask_holder;
    const std::uint8_t* m = medkern::bind::mask_ptr(mask, mask_holder, in.size());
    const index_t n_bins = static_cast<index_t>(edges.size()) - 1;
    py::array_t<std::int64_t> counts(n_bins);
    std::int64_t* c = counts.mutable_data();
    const T* src = in.data();
    const double* e = edges.data();
    const auto n = static_cast<index_t>(in.size());
    py::gil_scoped_release release;  // raw pointers into arrays held by this frame
    medkern::histogram_edges(src, m, n, e, n_bins, c, n_threads);
    return counts;
  });
}

py::array_t<float> interp_map(const py::array& x, const carray<double>& xp,
                              const carray<double>& fp, int n_threads) {
  if (xp.ndim() != 1 || xp.size() < 1 || xp.size() != fp.size())
    throw py::value_error("xp and fp must be 1D arrays of the same non-zero length");
  return medkern::bind::visit_dtype(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    auto in = carray<T>::ensure(x);
    py::array_t<float> out(dims(x));
    const T* src = in.data();
    float* dst = out.mutable_data();
    const double *pxp = xp.data(), *pfp = fp.data();
    const auto n = static_cast<index_t>(in.size()), n_points = static_cast<index_t>(xp.size());
    py::gil_scoped_release release;  // raw pointers into arrays held by this frame
    medkern::interp_map(src, dst, n, pxp, pfp, n_points, n_threads);
    return out;
  });
}

py::array_t<float> clahe_skimage(const py::array& x, std::array<index_t, 3> kernel, double x_min,
                                 double x_max, bool unit_float, index_t nbins,
                                 std::int64_t clip_limit, int n_threads) {
  const auto shape = shape3(x, "x");
  for (index_t k : kernel)
    if (k < 1) throw py::value_error("kernel sizes must be >= 1");
  if (nbins < 1) throw py::value_error("nbins must be >= 1");
  return medkern::bind::visit_dtype(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    auto in = carray<T>::ensure(x);
    py::array_t<float> out(dims(x));
    const T* src = in.data();
    float* dst = out.mutable_data();
    py::gil_scoped_release release;  // raw pointers into arrays held by this frame
    medkern::clahe_skimage(src, dst, shape.data(), kernel.data(), x_min, x_max, unit_float, nbins,
                           clip_limit, n_threads);
    return out;
  });
}

template <class T>
py::array clahe_opencv_typed(const py::array& x, index_t tiles_y, index_t tiles_x,
                             double clip_limit, int n_threads) {
  const auto shape = shape3(x, "x");
  auto in = carray<T>::ensure(x);
  py::array_t<T> out(dims(x));
  const T* src = in.data();
  T* dst = out.mutable_data();
  py::gil_scoped_release release;  // raw pointers into arrays held by this frame
  medkern::clahe_opencv(src, dst, shape[0], shape[1], shape[2], tiles_y, tiles_x, clip_limit,
                        n_threads);
  return std::move(out);
}

py::array clahe_opencv(const py::array& x, index_t tiles_y, index_t tiles_x, double clip_limit,
                       int n_threads) {
  if (tiles_y < 1 || tiles_x < 1) throw py::value_error("tile grid sizes must be >= 1");
  const py::dtype dt = x.dtype();
  if (dt.kind() == 'u' && dt.itemsize() == 1)
    return clahe_opencv_typed<std::uint8_t>(x, tiles_y, tiles_x, clip_limit, n_threads);
  if (dt.kind() == 'u' && dt.itemsize() == 2)
    return clahe_opencv_typed<std::uint16_t>(x, tiles_y, tiles_x, clip_limit, n_threads);
  throw py::type_error("OpenCV-compatible CLAHE takes uint8 or uint16 images");
}

std::array<const double*, 3> positions(const std::array<carray<double>, 3>& u,
                                       const std::array<index_t, 3>& shape) {
  std::array<const double*, 3> out{};
  for (int a = 0; a < 3; ++a) {
    if (u[a].ndim() != 1 || static_cast<index_t>(u[a].size()) != shape[a])
      throw py::value_error("positions along axis " + std::to_string(a) +
                            " need one value per voxel");
    out[a] = u[a].data();
  }
  return out;
}

py::tuple n4_shrink(const py::array& x, const py::object& mask, std::array<index_t, 3> factor,
                    int n_threads) {
  const auto shape = shape3(x, "x");
  for (index_t f : factor)
    if (f < 1) throw py::value_error("shrink factors must be >= 1");
  return medkern::bind::visit_dtype(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    auto in = carray<T>::ensure(x);
    carray<std::uint8_t> mask_holder;
    const std::uint8_t* m = medkern::bind::mask_ptr(mask, mask_holder, in.size());
    std::vector<py::ssize_t> out_shape(3);
    for (int a = 0; a < 3; ++a) out_shape[a] = (shape[a] + factor[a] - 1) / factor[a];
    py::array_t<double> log_image(out_shape);
    py::array_t<std::uint8_t> shrunk_mask(out_shape);
    const T* src = in.data();
    double* lm = log_image.mutable_data();
    std::uint8_t* sm = shrunk_mask.mutable_data();
    {
      py::gil_scoped_release release;  // raw pointers into arrays held by this frame
      medkern::n4_shrink(src, m, shape.data(), factor.data(), lm, sm, n_threads);
    }
    return py::make_tuple(log_image, shrunk_mask);
  });
}

py::dict n4_fit(const carray<double>& log_image, const carray<std::uint8_t>& mask,
                std::array<carray<double>, 3> u, std::array<index_t, 3> control_points,
                std::array<bool, 3> refine, std::vector<int> iterations, int histogram_bins,
                double fwhm, double wiener_noise, double convergence, int n_threads) {
  const auto shape = shape3(log_image, "log_image");
  if (mask.size() != log_image.size()) throw py::value_error("mask and log_image differ in size");
  for (index_t c : control_points)
    if (c < 4) throw py::value_error("control points must be >= 4 per axis (cubic B-spline)");
  // The FFT length is the power of two above 2 * histogram_bins, computed in int.
  if (histogram_bins < 2 || histogram_bins > (1 << 24))
    throw py::value_error("histogram_bins must be in [2, 2**24]");
  medkern::N4Settings s;
  s.control_points = control_points;
  s.refine = refine;
  s.iterations = std::move(iterations);
  s.histogram_bins = histogram_bins;
  s.fwhm = fwhm;
  s.wiener_noise = wiener_noise;
  s.convergence = convergence;
  const auto pos = positions(u, shape);
  const double* li = log_image.data();
  const std::uint8_t* m = mask.data();
  medkern::N4Result r;
  {
    py::gil_scoped_release release;  // raw pointers into arrays held by this frame
    r = medkern::n4_fit(li, m, shape.data(), pos, s, n_threads);
  }
  const auto& ls = r.lattice_shape;
  py::array_t<double> lattice(std::vector<py::ssize_t>{ls[0], ls[1], ls[2]});
  std::copy(r.lattice.begin(), r.lattice.end(), lattice.mutable_data());
  py::dict d;
  d["lattice"] = lattice;
  d["iterations"] = r.iterations;
  d["convergence"] = r.convergence;
  return d;
}

py::tuple n4_apply(const py::array& x, const carray<double>& lattice,
                   std::array<carray<double>, 3> u, bool want_field, int n_threads) {
  const auto shape = shape3(x, "x");
  const auto ls = shape3(lattice, "lattice");
  for (index_t c : ls)
    if (c < 4) throw py::value_error("lattice needs >= 4 control points per axis");
  const auto pos = positions(u, shape);
  return medkern::bind::visit_dtype(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    auto in = carray<T>::ensure(x);
    py::array_t<float> corrected(dims(x));
    py::object field = py::none();
    float* fp = nullptr;
    if (want_field) {
      py::array_t<float> f(dims(x));
      fp = f.mutable_data();
      field = f;
    }
    const T* src = in.data();
    float* dst = corrected.mutable_data();
    const double* lat = lattice.data();
    {
      py::gil_scoped_release release;  // raw pointers into arrays held by this frame
      medkern::n4_apply(src, lat, ls, shape.data(), pos, dst, fp, n_threads);
    }
    return py::make_tuple(corrected, field);
  });
}

}  // namespace

void register_contrast(py::module_& m) {
  m.def("value_range", &value_range, py::arg("x"), py::arg("mask"), py::arg("n_threads"));
  m.def("histogram_edges", &histogram_edges, py::arg("x"), py::arg("mask"), py::arg("edges"),
        py::arg("n_threads"));
  m.def("interp_map", &interp_map, py::arg("x"), py::arg("xp"), py::arg("fp"),
        py::arg("n_threads"));
  m.def("clahe_skimage", &clahe_skimage, py::arg("x"), py::arg("kernel"), py::arg("x_min"),
        py::arg("x_max"), py::arg("unit_float"), py::arg("nbins"), py::arg("clip_limit"),
        py::arg("n_threads"));
  m.def("clahe_opencv", &clahe_opencv, py::arg("x"), py::arg("tiles_y"), py::arg("tiles_x"),
        py::arg("clip_limit"), py::arg("n_threads"));
  m.def("n4_shrink", &n4_shrink, py::arg("x"), py::arg("mask"), py::arg("factor"),
        py::arg("n_threads"));
  m.def("n4_fit", &n4_fit, py::arg("log_image"), py::arg("mask"), py::arg("u"),
        py::arg("control_points"), py::arg("refine"), py::arg("iterations"),
        py::arg("histogram_bins"), py::arg("fwhm"), py::arg("wiener_noise"), py::arg("convergence"),
        py::arg("n_threads"));
  m.def("n4_apply", &n4_apply, py::arg("x"), py::arg("lattice"), py::arg("u"),
        py::arg("want_field"), py::arg("n_threads"));
}
