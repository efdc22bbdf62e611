// Bindings of the resampling kernels (cpp/include/medkern/resample.hpp). Arrays arrive 3D (a 2D
// image as one slice); nearest and label inputs arrive viewed as unsigned integers of their
// element size, since those kernels only copy and compare values.
#include <pybind11/stl.h>

#include <array>
#include <stdexcept>

#include "bindings.hpp"
#include "medkern/resample.hpp"

namespace {

using medkern::index_t;
using medkern::Interpolation;
using medkern::bind::carray;
using medkern::bind::shape3;

// Calls body(sampler) with the sampler of `interpolation` over x; fill is a float for linear and
// cubic, the raw element bits for nearest and label.
template <class Body>
py::array with_sampler(const py::array& x, int interpolation, const py::object& fill, Body&& body) {
  const auto n = shape3(x, "x");
  switch (static_cast<Interpolation>(interpolation)) {
    case Interpolation::nearest:
    case Interpolation::label:
      return medkern::bind::visit_itemsize(x.dtype(), [&](auto tag) -> py::array {
        using U = decltype(tag);
        auto in = carray<U>::ensure(x);
        const U f = static_cast<U>(fill.cast<std::uint64_t>());
        if (static_cast<Interpolation>(interpolation) == Interpolation::nearest)
          return body(medkern::NearestSampler<U>{in.data(), {n[0], n[1], n[2]}, f}, in);
        return body(medkern::LabelSampler<U>{in.data(), {n[0], n[1], n[2]}, f}, in);
      });
    case Interpolation::linear:
      return medkern::bind::visit_dtype(x.dtype(), [&](auto tag) -> py::array {
        using T = decltype(tag);
        using A = medkern::interp_t<T>;
        auto in = carray<T>::ensure(x);
        return body(
            medkern::LinearSampler<T, A>{
                in.data(), {n[0], n[1], n[2]}, static_cast<A>(fill.cast<double>())},
            in);
      });
    case Interpolation::cubic:
      return medkern::bind::visit_dtype(x.dtype(), [&](auto tag) -> py::array {
        using T = decltype(tag);
        if constexpr (std::is_floating_point_v<T>) {
          auto in = carray<T>::ensure(x);
          return body(
              medkern::CubicSampler<T>{
                  in.data(), {n[0], n[1], n[2]}, static_cast<T>(fill.cast<double>())},
              in);
        } else {
          throw py::type_error("cubic sampling takes B-spline coefficients (float32 or float64)");
        }
      });
  }
  throw py::value_error("interpolation must be 0 (nearest), 1 (linear), 2 (cubic) or 3 (label)");
}

py::array warp(const py::array& x, int interpolation, const std::vector<index_t>& out_shape,
               const carray<double>& matrix, const py::object& displacement,
               const py::object& displacement_matrix, const py::object& fill, int n_threads) {
  const auto so = shape3(out_shape, "out_shape");
  for (index_t v : so)
    if (v < 1) throw py::value_error("out_shape entries must be positive");
  // The warp counts a row's columns in int32 (column_index, resample.hpp).
  if (so[2] >= (index_t{1} << 31))
    throw py::value_error("out_shape: output rows of 2^31 voxels or more are not supported");
  if (matrix.size() != 12) throw py::value_error("matrix must be 3x4");
  carray<float> disp;
  carray<double> rmat;
  int n_comp = 0;
  if (!displacement.is_none()) {
    disp = carray<float>::ensure(displacement);
    rmat = carray<double>::ensure(displacement_matrix);
    if (!disp || disp.ndim() != 4 || disp.shape(0) != so[0] || disp.shape(1) != so[1] ||
        disp.shape(2) != so[2])
      throw py::value_error("displacement must be float32 with shape out_shape + (n_components,)");
    n_comp = static_cast<int>(disp.shape(3));
    if (!rmat || rmat.size() != 3 * n_comp)
      throw py::value_error("displacement_matrix must be 3 x n_components");
  }
  return with_sampler(x, interpolation, fill, [&](const auto& sampler, const auto&) -> py::array {
    using V = typename std::decay_t<decltype(sampler)>::value_type;
    py::array_t<V> out({so[0], so[1], so[2]});
    V* dst = out.mutable_data();
    const float* d = n_comp ? disp.data() : nullptr;
    const double* r = n_comp ? rmat.data() : nullptr;
    const double* m = matrix.data();
    // Every pointer refers to an array held by this frame; nothing below touches Python.
    py::gil_scoped_release release;
    medkern::warp(sampler, dst, so.data(), m, d, n_comp, r, n_threads);
    return out;
  });
}

py::array map_coordinates(const py::array& x, int interpolation, const carray<double>& coords,
                          const py::object& fill, int n_threads) {
  if (coords.ndim() != 2 || (coords.shape(0) != 2 && coords.shape(0) != 3))
    throw py::value_error("coords must have shape (ndim, n_points) with ndim 2 or 3");
  const int ndim = static_cast<int>(coords.shape(0));
  const index_t n_points = coords.shape(1);
  return with_sampler(x, interpolation, fill, [&](const auto& sampler, const auto&) -> py::array {
    using V = typename std::decay_t<decltype(sampler)>::value_type;
    py::array_t<V> out(n_points);
    V* dst = out.mutable_data();
    const double* c = coords.data();
    py::gil_scoped_release release;  // raw pointers into arrays held by this frame
    medkern::sample_points(sampler, dst, c, n_points, ndim, n_threads);
    return out;
  });
}

py::array bspline_coefficients(const py::array& x, int n_threads) {
  const auto n = shape3(x, "x");
  return medkern::bind::visit_dtype(x.dtype(), [&](auto tag) -> py::array {
    using T = decltype(tag);
    using A = medkern::interp_t<T>;
    auto in = carray<T>::ensure(x);
    py::array_t<A> out({n[0], n[1], n[2]});
    const T* src = in.data();
    A* dst = out.mutable_data();
    py::gil_scoped_release release;  // raw pointers into arrays held by this frame
    medkern::bspline_coefficients(src, n.data(), dst, n_threads);
    return out;
  });
}

// taps: three (idx int64 (n_out, T), weights float64 (n_out, T), valid uint8 (n_out,)) tuples.
py::array resample_separable(const py::array& x, const py::list& taps,
                             const std::vector<int>& order, bool prefilter, double fill,
                             int n_threads) {
  const auto n = shape3(x, "x");
  if (taps.size() != 3) throw py::value_error("taps must hold one table per axis (3)");
  if (order.empty() || order.size() > 3)
    throw py::value_error("order must list 1 to 3 distinct axes");
  bool in_order[3] = {false, false, false};
  for (int a : order) {
    if (a < 0 || a > 2 || in_order[a])
      throw py::value_error("order must list 1 to 3 distinct axes");
    in_order[a] = true;
  }
  std::vector<carray<index_t>> idx(3);
  std::vector<carray<double>> wd(3);
  std::vector<carray<std::uint8_t>> valid(3);
  for (int a = 0; a < 3; ++a) {
    auto t = taps[a].cast<py::tuple>();
    idx[a] = carray<index_t>::ensure(t[0]);
    wd[a] = carray<double>::ensure(t[1]);
    valid[a] = carray<std::uint8_t>::ensure(t[2]);
    if (!idx[a] || !wd[a] || !valid[a] || idx[a].ndim() != 2 || wd[a].ndim() != 2 ||
        idx[a].shape(0) != wd[a].shape(0) || idx[a].shape(1) != wd[a].shape(1) ||
        valid[a].size() != idx[a].shape(0))
      throw py::value_error(
          "each taps entry must be (idx (n_out, T), weights (n_out, T), valid (n_out,))");
    const index_t* p = idx[a].data();
    for (index_t v = 0; v < idx[a].size(); ++v)
      if (p[v] < 0 || p[v] >= n[a]) throw py::value_error("tap index outside the input axis");
    if (!in_order[a] && idx[a].shape(0) != n[a])
      throw py::value_error("an axis without a pass must keep its size");
  }
  return medkern::bind::visit_dtype(x.dtype(), [&](auto tag) -> py::array {
    using T = decltype(tag);
    using A = medkern::interp_t<T>;
    auto in = carray<T>::ensure(x);
    std::vector<std::vector<A>> w(3);
    medkern::AxisTaps<A> axes[3];
    for (int a = 0; a < 3; ++a) {
      w[a].assign(wd[a].data(), wd[a].data() + wd[a].size());
      axes[a] = {idx[a].shape(0), static_cast<int>(idx[a].shape(1)), idx[a].data(), w[a].data(),
                 valid[a].data()};
    }
    py::array_t<A> out({axes[0].n_out, axes[1].n_out, axes[2].n_out});
    const T* src = in.data();
    A* dst = out.mutable_data();
    const std::vector<int> ord = order;
    py::gil_scoped_release release;  // tables and arrays are held by this frame
    medkern::resample_separable(src, n.data(), dst, axes, ord.data(), static_cast<int>(ord.size()),
                                prefilter, static_cast<A>(fill), n_threads);
    return out;
  });
}

py::array gather_nearest(const py::array& x, const carray<index_t>& idx0,
                         const carray<index_t>& idx1, const carray<index_t>& idx2,
                         std::uint64_t fill_bits, int n_threads) {
  const auto n = shape3(x, "x");
  const carray<index_t>* idx[3] = {&idx0, &idx1, &idx2};
  for (int a = 0; a < 3; ++a) {
    const index_t* p = idx[a]->data();
    for (index_t v = 0; v < idx[a]->size(); ++v)
      if (p[v] < -1 || p[v] >= n[a]) throw py::value_error("nearest index outside the input axis");
  }
  return medkern::bind::visit_itemsize(x.dtype(), [&](auto tag) -> py::array {
    using U = decltype(tag);
    auto in = carray<U>::ensure(x);
    const index_t so[3] = {idx0.size(), idx1.size(), idx2.size()};
    py::array_t<U> out({so[0], so[1], so[2]});
    const U* src = in.data();
    U* dst = out.mutable_data();
    py::gil_scoped_release release;  // raw pointers into arrays held by this frame
    medkern::gather_nearest(src, n.data(), dst, so, idx0.data(), idx1.data(), idx2.data(),
                            static_cast<U>(fill_bits), n_threads);
    return out;
  });
}

}  // namespace

void register_resample(py::module_& m) {
  m.def("resample_separable", &resample_separable, py::arg("x"), py::arg("taps"), py::arg("order"),
        py::arg("prefilter"), py::arg("fill"), py::arg("n_threads"));
  m.def("gather_nearest", &gather_nearest, py::arg("x"), py::arg("idx0"), py::arg("idx1"),
        py::arg("idx2"), py::arg("fill_bits"), py::arg("n_threads"));
  m.def("warp", &warp, py::arg("x"), py::arg("interpolation"), py::arg("out_shape"),
        py::arg("matrix"), py::arg("displacement"), py::arg("displacement_matrix"), py::arg("fill"),
        py::arg("n_threads"));
  m.def("map_coordinates", &map_coordinates, py::arg("x"), py::arg("interpolation"),
        py::arg("coords"), py::arg("fill"), py::arg("n_threads"));
  m.def("bspline_coefficients", &bspline_coefficients, py::arg("x"), py::arg("n_threads"));
}
