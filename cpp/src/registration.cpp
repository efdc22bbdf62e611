#include <array>
#include <string>

#include <pybind11/stl.h>

#include "bindings.hpp"
#include "medkern/registration.hpp"

namespace {

using medkern::index_t;
using medkern::bind::carray;

carray<float> volume(const py::array& a, const char* name) {
  auto v = carray<float>::ensure(a);
  if (!v || v.ndim() != 3) throw py::value_error(std::string(name) + " must be a 3D float32 array");
  if (v.size() == 0) throw py::value_error(std::string(name) + " is empty");
  return v;
}

std::array<double, 12> matrix3x4(const py::array& m) {
  auto a = carray<double>::ensure(m);
  if (!a || a.size() != 12) throw py::value_error("to_moving must be a 3x4 matrix");
  std::array<double, 12> out{};
  for (int c = 0; c < 12; ++c) out[c] = a.data()[c];
  return out;
}

py::tuple metric(const py::array& fixed, const py::array& moving, const py::object& indices,
                 const py::object& fixed_values, const py::object& moving_mask,
                 const py::array& to_moving, const std::string& kind, int bins,
                 std::array<double, 4> ranges, int n_threads) {
  auto f = volume(fixed, "fixed");
  auto m = volume(moving, "moving");
  carray<std::int64_t> idx;
  medkern::MetricSamples s{f.data(), nullptr,  f.shape(0), f.shape(1),          f.shape(2),
                           nullptr,  f.size(), nullptr,    matrix3x4(to_moving)};
  if (!indices.is_none()) {
    idx = carray<std::int64_t>::ensure(indices);
    if (!idx || idx.ndim() != 1) throw py::value_error("indices must be a 1D int64 array");
    s.indices = idx.data();
    s.count = idx.size();
  }
  carray<float> values;
  if (!fixed_values.is_none()) {
    values = carray<float>::ensure(fixed_values);
    if (!values || values.size() != s.count)
      throw py::value_error("fixed_values must hold one float32 value per sample");
    s.fixed_values = values.data();
  }
  carray<std::uint8_t> mask_holder;
  s.moving_mask = medkern::bind::mask_ptr(moving_mask, mask_holder, m.size());
  const medkern::LinearVolume mov{m.data(), m.shape(0), m.shape(1), m.shape(2)};
  if (kind == "mi" && bins < 5) throw py::value_error("bins must be at least 5");
  if (kind != "mse" && kind != "ncc" && kind != "mi")
    throw py::value_error("metric must be 'mse', 'ncc' or 'mi', got '" + kind + "'");
  medkern::MetricResult r;
  {
    // Every array is held by this frame; the kernels see raw pointers only.
    py::gil_scoped_release release;
    if (kind == "mse") {
      r = medkern::sums_metric<medkern::MeanSquaresSums>(s, mov, n_threads);
    } else if (kind == "ncc") {
      r = medkern::sums_metric<medkern::CorrelationSums>(s, mov, n_threads);
    } else {
      const medkern::MattesBins b(bins, ranges[0], ranges[1], ranges[2], ranges[3]);
      r = medkern::mattes_mutual_information(s, mov, b, n_threads);
    }
  }
  py::array_t<double> grad({3, 4});
  std::copy(r.gradient.begin(), r.gradient.end(), grad.mutable_data());
  return py::make_tuple(r.value, grad, r.count);
}

py::array_t<float> smooth_shrink(const py::array& x, std::array<int, 3> shrink,
                                 std::array<double, 3> sigma_vox, int n_threads) {
  if (x.ndim() != 3) throw py::value_error("smooth_shrink takes a 3D array");
  for (int a = 0; a < 3; ++a) {
    if (shrink[a] < 1) throw py::value_error("shrink factors must be >= 1");
    // Bounded so the tap range (centre +- 3 sigma) converts to an index without overflow.
    if (!(sigma_vox[a] >= 0 && sigma_vox[a] <= 1e9))
      throw py::value_error("sigma must be in [0, 1e9] voxels");
  }
  return medkern::bind::visit_dtype(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    auto in = carray<T>::ensure(x);
    const index_t shape[3] = {in.shape(0), in.shape(1), in.shape(2)};
    std::vector<py::ssize_t> out_shape(3);
    for (int a = 0; a < 3; ++a) out_shape[a] = std::max<index_t>(1, shape[a] / shrink[a]);
    py::array_t<float> out(out_shape);
    const T* src = in.data();
    float* dst = out.mutable_data();
    // Input and output are held by this frame; no Python object is touched below.
    py::gil_scoped_release release;
    medkern::smooth_shrink(src, dst, shape, shrink.data(), sigma_vox.data(), n_threads);
    return out;
  });
}

// A (3, nk, nj, ni) float32 field on the grid of `like`, or null when `field` is None.
const float* field_ptr(const py::object& field, carray<float>& holder, const carray<float>& like,
                       const char* name) {
  if (field.is_none()) return nullptr;
  holder = carray<float>::ensure(field);
  if (!holder || holder.ndim() != 4 || holder.shape(0) != 3 || holder.shape(1) != like.shape(0) ||
      holder.shape(2) != like.shape(1) || holder.shape(3) != like.shape(2))
    throw py::value_error(std::string(name) +
                          " must be a (3, nk, nj, ni) float32 field on the fixed grid");
  return holder.data();
}

py::array_t<float> new_field(const carray<float>& like) {
  return py::array_t<float>({py::ssize_t{3}, like.shape(0), like.shape(1), like.shape(2)});
}

py::tuple lncc_force(const py::array& fixed, const py::array& warped, const py::array& gradient,
                     const py::object& mask, std::array<int, 3> radius, int n_threads) {
  auto f = volume(fixed, "fixed");
  auto w = volume(warped, "warped");
  if (w.size() != f.size()) throw py::value_error("warped must have the fixed image's shape");
  carray<float> gh;
  const float* g = field_ptr(gradient, gh, f, "gradient");
  if (!g) throw py::value_error("lncc_force needs the gradient of the warped image");
  carray<std::uint8_t> mask_holder;
  const std::uint8_t* mk = medkern::bind::mask_ptr(mask, mask_holder, f.size());
  for (int a = 0; a < 3; ++a)
    if (radius[a] < 0) throw py::value_error("radius must be >= 0");
  auto force = new_field(f);
  float* dst = force.mutable_data();
  const medkern::index_t shape[3] = {f.shape(0), f.shape(1), f.shape(2)};
  double value;
  {
    py::gil_scoped_release release;  // raw pointers into arrays held by this frame
    value = medkern::lncc_force(f.data(), w.data(), g, mk, shape, radius.data(), dst, n_threads);
  }
  return py::make_tuple(value, force);
}

py::array_t<float> new_field(const index_t shape[3]) {
  return py::array_t<float>({py::ssize_t{3}, shape[0], shape[1], shape[2]});
}

// A (3, nk, nj, ni) float32 field argument and its grid shape.
carray<float> field_arg(const py::array& a, const char* name, index_t shape[3]) {
  auto f = carray<float>::ensure(a);
  if (!f || f.ndim() != 4 || f.shape(0) != 3 || f.size() == 0)
    throw py::value_error(std::string(name) + " must be a non-empty (3, nk, nj, ni) float32 field");
  for (int a2 = 0; a2 < 3; ++a2) shape[a2] = f.shape(a2 + 1);
  return f;
}

template <std::size_t N>
std::array<float, N> float_matrix(const py::array& m, const char* name) {
  auto a = carray<double>::ensure(m);
  if (!a || a.size() != static_cast<py::ssize_t>(N))
    throw py::value_error(std::string(name) + " must have " + std::to_string(N) + " entries");
  std::array<float, N> out{};
  for (std::size_t c = 0; c < N; ++c) out[c] = static_cast<float>(a.data()[c]);
  return out;
}

double field_max_norm(const py::array& field, int n_threads) {
  index_t shape[3];
  auto f = field_arg(field, "field", shape);
  const float* p = f.data();
  py::gil_scoped_release release;  // f is held by this frame
  return medkern::field_max_norm(p, shape[0] * shape[1] * shape[2], n_threads);
}

py::array_t<float> field_exponential(const py::array& velocity, const py::array& to_index,
                                     int n_squarings, int n_threads) {
  index_t shape[3];
  auto v = field_arg(velocity, "velocity", shape);
  if (n_squarings < 0 || n_squarings > 64) throw py::value_error("n_squarings must be in [0, 64]");
  const auto M = float_matrix<9>(to_index, "to_index");
  auto out = new_field(shape);
  std::vector<float> scratch(static_cast<std::size_t>(v.size()));
  float* dst = out.mutable_data();
  {
    py::gil_scoped_release release;  // raw pointers into arrays held by this frame
    medkern::field_exponential(v.data(), shape, M.data(), n_squarings, dst, scratch.data(),
                               n_threads);
  }
  return out;
}

py::tuple velocity_update(const py::array& velocity, const py::array& force, double sigma_u,
                          double sigma_v, double step, int n_threads) {
  index_t shape[3], fshape[3];
  auto v = field_arg(velocity, "velocity", shape);
  auto u = field_arg(force, "force", fshape);
  if (!std::equal(shape, shape + 3, fshape))
    throw py::value_error("force must have the velocity's shape");
  for (double sigma : {sigma_u, sigma_v})
    if (!(sigma >= 0 && sigma <= 1e3)) throw py::value_error("sigmas must be in [0, 1000] voxels");
  if (!(std::isfinite(step) && step > 0)) throw py::value_error("step must be positive");
  py::array_t<float> out = new_field(shape);
  std::vector<float> work(u.data(), u.data() + u.size());  // the force is left untouched
  float* dst = out.mutable_data();
  std::copy(v.data(), v.data() + v.size(), dst);
  double umax;
  {
    py::gil_scoped_release release;  // out and work are owned by this frame
    umax = medkern::velocity_update(dst, work.data(), shape, sigma_u, sigma_v, step, n_threads);
  }
  return py::make_tuple(out, umax);
}

py::tuple warp_field_gradient(const py::array& moving, const py::array& to_moving_index,
                              const py::array& disp_to_moving, const py::array& displacement,
                              const py::object& to_field, std::array<index_t, 3> shape,
                              int n_threads) {
  auto m = volume(moving, "moving");
  index_t dshape[3];
  auto d = field_arg(displacement, "displacement", dshape);
  for (index_t e : shape)
    if (e < 1) throw py::value_error("shape must be positive");
  const auto P = float_matrix<12>(to_moving_index, "to_moving_index");
  const auto Q = float_matrix<9>(disp_to_moving, "disp_to_moving");
  std::array<float, 12> F{};
  const bool resampled = !to_field.is_none();
  if (resampled) {
    F = float_matrix<12>(to_field.cast<py::array>(), "to_field");
  } else if (!std::equal(dshape, dshape + 3, shape.begin())) {
    throw py::value_error("displacement must be on the output grid when to_field is None");
  }
  const index_t mshape[3] = {m.shape(0), m.shape(1), m.shape(2)};
  py::array_t<float> out({shape[0], shape[1], shape[2]});
  auto grad = new_field(shape.data());
  float* o = out.mutable_data();
  float* g = grad.mutable_data();
  {
    py::gil_scoped_release release;  // raw pointers into arrays held by this frame
    medkern::warp_field_gradient(m.data(), mshape, shape.data(), P.data(), Q.data(), d.data(),
                                 dshape, resampled ? F.data() : nullptr, o, g, n_threads);
  }
  return py::make_tuple(out, grad);
}

py::array_t<float> resample_field(const py::array& field, const py::array& to_source,
                                  std::array<index_t, 3> shape, int n_threads) {
  index_t src[3];
  auto f = field_arg(field, "field", src);
  for (index_t e : shape)
    if (e < 1) throw py::value_error("shape must be positive");
  const auto P = float_matrix<12>(to_source, "to_source");
  auto out = new_field(shape.data());
  float* dst = out.mutable_data();
  {
    py::gil_scoped_release release;  // raw pointers into arrays held by this frame
    medkern::resample_field(f.data(), src, shape.data(), P.data(), dst, n_threads);
  }
  return out;
}

}  // namespace

void register_registration(py::module_& m) {
  m.def("registration_metric", &metric, py::arg("fixed"), py::arg("moving"), py::arg("indices"),
        py::arg("fixed_values"), py::arg("moving_mask"), py::arg("to_moving"), py::arg("kind"),
        py::arg("bins"), py::arg("ranges"), py::arg("n_threads"));
  m.def("lncc_force", &lncc_force, py::arg("fixed"), py::arg("warped"), py::arg("gradient"),
        py::arg("mask"), py::arg("radius"), py::arg("n_threads"));
  m.def("field_max_norm", &field_max_norm, py::arg("field"), py::arg("n_threads"));
  m.def("field_exponential", &field_exponential, py::arg("velocity"), py::arg("to_index"),
        py::arg("n_squarings"), py::arg("n_threads"));
  m.def("velocity_update", &velocity_update, py::arg("velocity"), py::arg("force"),
        py::arg("sigma_u"), py::arg("sigma_v"), py::arg("step"), py::arg("n_threads"));
  m.def("warp_field_gradient", &warp_field_gradient, py::arg("moving"), py::arg("to_moving_index"),
        py::arg("disp_to_moving"), py::arg("displacement"), py::arg("to_field"), py::arg("shape"),
        py::arg("n_threads"));
  m.def("resample_field", &resample_field, py::arg("field"), py::arg("to_source"), py::arg("shape"),
        py::arg("n_threads"));
  m.def("smooth_shrink", &smooth_shrink, py::arg("x"), py::arg("shrink"), py::arg("sigma_vox"),
        py::arg("n_threads"));
}
