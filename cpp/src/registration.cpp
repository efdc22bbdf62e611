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

medkern::Grid grid_of(const carray<float>& fixed, const py::array& index_to_world) {
  return medkern::Grid{fixed.shape(0), fixed.shape(1), fixed.shape(2), matrix3x4(index_to_world)};
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

py::tuple warp_with_gradient(const py::array& moving, const py::array& to_moving,
                             const py::array& fixed_like, const py::array& index_to_world,
                             const py::object& displacement, bool with_gradient, int n_threads) {
  auto m = volume(moving, "moving");
  auto like = volume(fixed_like, "fixed");
  const medkern::Grid grid = grid_of(like, index_to_world);
  carray<float> disp_holder;
  const float* disp = field_ptr(displacement, disp_holder, like, "displacement");
  py::array_t<float> out({like.shape(0), like.shape(1), like.shape(2)});
  py::object grad_obj = py::none();
  float* grad = nullptr;
  if (with_gradient) {
    auto g = new_field(like);
    grad = g.mutable_data();
    grad_obj = g;
  }
  const medkern::LinearVolume mov{m.data(), m.shape(0), m.shape(1), m.shape(2)};
  const auto M = matrix3x4(to_moving);
  float* dst = out.mutable_data();
  {
    py::gil_scoped_release release;  // all buffers are owned by arrays held in this frame
    medkern::warp_with_gradient(mov, M, grid, disp, dst, grad, n_threads);
  }
  return py::make_tuple(out, grad_obj);
}

py::array_t<float> compose_displacements(const py::array& outer, const py::array& inner,
                                         const py::array& fixed_like,
                                         const py::array& index_to_world,
                                         const py::array& world_to_index, int n_threads) {
  auto like = volume(fixed_like, "fixed");
  carray<float> oh, ih;
  const float* o = field_ptr(outer, oh, like, "outer");
  const float* in = field_ptr(inner, ih, like, "inner");
  const medkern::Grid grid = grid_of(like, index_to_world);
  const auto w2i = matrix3x4(world_to_index);
  auto out = new_field(like);
  float* dst = out.mutable_data();
  {
    py::gil_scoped_release release;  // raw pointers into arrays held by this frame
    medkern::compose_displacements(o, in, grid, w2i, dst, n_threads);
  }
  return out;
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

}  // namespace

void register_registration(py::module_& m) {
  m.def("registration_metric", &metric, py::arg("fixed"), py::arg("moving"), py::arg("indices"),
        py::arg("fixed_values"), py::arg("moving_mask"), py::arg("to_moving"), py::arg("kind"),
        py::arg("bins"), py::arg("ranges"), py::arg("n_threads"));
  m.def("warp_with_gradient", &warp_with_gradient, py::arg("moving"), py::arg("to_moving"),
        py::arg("fixed"), py::arg("index_to_world"), py::arg("displacement"),
        py::arg("with_gradient"), py::arg("n_threads"));
  m.def("compose_displacements", &compose_displacements, py::arg("outer"), py::arg("inner"),
        py::arg("fixed"), py::arg("index_to_world"), py::arg("world_to_index"),
        py::arg("n_threads"));
  m.def("lncc_force", &lncc_force, py::arg("fixed"), py::arg("warped"), py::arg("gradient"),
        py::arg("mask"), py::arg("radius"), py::arg("n_threads"));
  m.def("smooth_shrink", &smooth_shrink, py::arg("x"), py::arg("shrink"), py::arg("sigma_vox"),
        py::arg("n_threads"));
}
