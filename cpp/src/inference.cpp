#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include <pybind11/stl.h>

#include "bindings.hpp"
#include "medkern/prediction.hpp"
#include "medkern/sliding_window.hpp"

namespace {

using medkern::index_t;
using medkern::shape3;
using medkern::bind::carray;

shape3 spatial_shape(const py::array& a, py::ssize_t first_spatial, const char* name) {
  if (a.ndim() != first_spatial + 3)
    throw py::value_error(std::string(name) + " must have " + std::to_string(first_spatial + 3) +
                          " axes, got " + std::to_string(a.ndim()));
  return {a.shape(first_spatial), a.shape(first_spatial + 1), a.shape(first_spatial + 2)};
}

shape3 roi_from(const std::array<index_t, 3>& roi) {
  for (index_t r : roi)
    if (r < 1) throw py::value_error("roi_size entries must be positive");
  return roi;
}

// Patch list: batch index and (k, j, i) start of each patch, checked against the volume.
struct Patches {
  carray<std::int64_t> batch, start;
  index_t n;
};

Patches check_patches(const py::array& batch, const py::array& start, index_t n_batch,
                      const shape3& shape, const shape3& roi) {
  Patches p{carray<std::int64_t>::ensure(batch), carray<std::int64_t>::ensure(start), 0};
  if (!p.batch || !p.start) throw py::type_error("batch and start must be integer arrays");
  p.n = static_cast<index_t>(p.batch.size());
  if (p.start.ndim() != 2 || p.start.shape(0) != p.n || p.start.shape(1) != 3)
    throw py::value_error("start must have shape (n_patches, 3) matching batch");
  const std::int64_t* b = p.batch.data();
  const std::int64_t* s = p.start.data();
  for (index_t i = 0; i < p.n; ++i) {
    if (b[i] < 0 || b[i] >= n_batch) throw py::value_error("patch batch index out of range");
    for (int a = 0; a < 3; ++a)
      if (s[3 * i + a] < 0 ||
          s[3 * i + a] + roi[static_cast<std::size_t>(a)] > shape[static_cast<std::size_t>(a)])
        throw py::value_error("patch does not fit inside the volume");
  }
  return p;
}

py::array_t<float> importance_map(const std::array<index_t, 3>& roi_size,
                                  const std::array<double, 3>& sigma_scale, bool gaussian) {
  const shape3 roi = roi_from(roi_size);
  py::array_t<float> out({roi[0], roi[1], roi[2]});
  medkern::importance_map(roi, sigma_scale, gaussian, out.mutable_data());
  return out;
}

py::array_t<float> gather_patches(const py::array& src, const py::array& batch,
                                  const py::array& start, const std::array<index_t, 3>& roi_size,
                                  int n_threads) {
  const shape3 roi = roi_from(roi_size);
  const shape3 shape = spatial_shape(src, 2, "src");
  return medkern::bind::visit_dtype(src.dtype(), [&](auto tag) {
    using T = decltype(tag);
    auto in = carray<T>::ensure(src);
    const index_t channels = in.shape(1);
    Patches p = check_patches(batch, start, in.shape(0), shape, roi);
    py::array_t<float> out({static_cast<index_t>(p.n), channels, roi[0], roi[1], roi[2]});
    const T* s = in.data();
    float* d = out.mutable_data();
    // All arrays are owned by this frame and validated above; the kernel touches raw memory only.
    py::gil_scoped_release release;
    medkern::gather_patches(s, shape, channels, p.batch.data(), p.start.data(), p.n, roi, d,
                            n_threads);
    return out;
  });
}

// Writable float32 C-contiguous array, accumulated in place (no forcecast: a copy would be lost).
py::array_t<float> inplace_float32(const py::array& a, const char* name) {
  if (!py::isinstance<py::array_t<float>>(a) || !(a.flags() & py::array::c_style) || !a.writeable())
    throw py::type_error(std::string(name) + " must be a writable C-contiguous float32 array");
  return py::reinterpret_borrow<py::array_t<float>>(a);
}

void accumulate_patches(const py::array& out_, const py::array& pred_, const py::array& weight_,
                        const py::array& batch, const py::array& start, int n_threads) {
  auto out = inplace_float32(out_, "out");
  const shape3 shape = spatial_shape(out, 2, "out");
  auto pred = carray<float>::ensure(pred_);
  auto weight = carray<float>::ensure(weight_);
  if (!pred || !weight) throw py::type_error("pred and weight must be float arrays");
  const shape3 roi = spatial_shape(weight, 0, "weight");
  const shape3 pred_roi = spatial_shape(pred, 2, "pred");
  if (pred_roi != roi || pred.shape(1) != out.shape(1))
    throw py::value_error("pred must have shape (n_patches, out channels, *roi_size)");
  Patches p = check_patches(batch, start, out.shape(0), shape, roi);
  if (pred.shape(0) != p.n)
    throw py::value_error("pred has a different number of patches than start");
  float* o = out.mutable_data();
  const index_t channels = out.shape(1);
  // Arrays held by this frame; only raw pointers are used without the GIL.
  py::gil_scoped_release release;
  medkern::accumulate_patches(o, shape, channels, pred.data(), weight.data(), p.batch.data(),
                              p.start.data(), p.n, roi, n_threads);
}

void normalize_by_weight_sum(const py::array& out_, const std::array<py::array, 3>& starts_,
                             const py::array& weight_, int n_threads) {
  auto out = inplace_float32(out_, "out");
  const shape3 shape = spatial_shape(out, 2, "out");
  auto weight = carray<float>::ensure(weight_);
  if (!weight) throw py::type_error("weight must be a float array");
  const shape3 roi = spatial_shape(weight, 0, "weight");
  std::array<carray<std::int64_t>, 3> starts;
  std::array<const std::int64_t*, 3> ptr{};
  shape3 n_starts{};
  for (std::size_t a = 0; a < 3; ++a) {
    starts[a] = carray<std::int64_t>::ensure(starts_[a]);
    if (!starts[a] || starts[a].ndim() != 1 || starts[a].size() == 0)
      throw py::value_error("starts must be three non-empty 1D integer arrays");
    ptr[a] = starts[a].data();
    n_starts[a] = starts[a].size();
    for (index_t s = 0; s < n_starts[a]; ++s) {
      if (ptr[a][s] < 0 || ptr[a][s] + roi[a] > shape[a] ||
          (s > 0 && (ptr[a][s] <= ptr[a][s - 1] || ptr[a][s] - ptr[a][s - 1] > roi[a])))
        throw py::value_error(
            "starts must increase strictly, leave no gap between patches and "
            "keep every patch inside the volume");
    }
    if (ptr[a][0] != 0 || ptr[a][n_starts[a] - 1] + roi[a] != shape[a])
      throw py::value_error("the patch grid must cover the volume from edge to edge");
  }
  float* o = out.mutable_data();
  const index_t n_images = out.shape(0) * out.shape(1);
  // Arrays held by this frame; only raw pointers are used without the GIL.
  py::gil_scoped_release release;
  medkern::normalize_by_weight_sum(o, n_images, shape, ptr, n_starts, weight.data(), roi,
                                   n_threads);
}

py::array_t<std::uint8_t> channel_argmax(const py::array& x_, std::optional<float> threshold,
                                         int n_threads) {
  auto x = carray<float>::ensure(x_);
  if (!x || x.ndim() < 1 || x.shape(0) < 1)
    throw py::value_error("x must be a float array (channels, *spatial) with at least one channel");
  const index_t channels = x.shape(0);
  if (channels > (threshold ? 255 : 256))
    throw py::value_error("at most 255 channels (256 without threshold) fit uint8 labels");
  std::vector<py::ssize_t> shape(x.shape() + 1, x.shape() + x.ndim());
  py::array_t<std::uint8_t> out(shape);
  const index_t n = out.size();
  const float* src = x.data();
  std::uint8_t* dst = out.mutable_data();
  // Arrays held by this frame; only raw pointers are used without the GIL.
  py::gil_scoped_release release;
  medkern::channel_argmax(src, channels, n, threshold.has_value(), threshold.value_or(0.0f), dst,
                          n_threads);
  return out;
}

// planes: the channels first..C-1 of a prediction on the input grid, each float32 of one shape.
py::array_t<float> interleave_channels(const py::list& planes, bool complement, int n_threads) {
  std::vector<carray<float>> held;
  for (const auto& plane : planes) {
    held.push_back(carray<float>::ensure(plane));
    const auto& a = held.front();
    const auto& b = held.back();
    if (!b || b.ndim() != a.ndim() || !std::equal(a.shape(), a.shape() + a.ndim(), b.shape()))
      throw py::value_error("planes must be float arrays of one shape");
  }
  if (held.empty()) throw py::value_error("planes must hold at least one channel");
  const index_t channels = static_cast<index_t>(held.size()) + (complement ? 1 : 0);
  std::vector<py::ssize_t> shape(held[0].shape(), held[0].shape() + held[0].ndim());
  shape.push_back(channels);
  py::array_t<float> out(shape);
  std::vector<const float*> ptr;
  for (const auto& h : held) ptr.push_back(h.data());
  const index_t n = held[0].size();
  float* dst = out.mutable_data();
  // Arrays held by this frame; only raw pointers are used without the GIL.
  py::gil_scoped_release release;
  medkern::interleave_channels(ptr.data(), channels, complement, n, dst, n_threads);
  return out;
}

// components: int32 (2D or 3D) from _core.label; labels: the same box of the label map;
// probabilities: the same box of a channels-last float32 array (any strides, e.g. a view).
py::tuple component_probability_sums(const py::array& components_, const py::array& labels_,
                                     const py::array& probabilities, index_t first_channel,
                                     index_t n) {
  auto components = carray<std::int32_t>::ensure(components_);
  const auto ndim = labels_.ndim();
  if (!components || (ndim != 2 && ndim != 3) || components.ndim() != ndim ||
      !std::equal(labels_.shape(), labels_.shape() + ndim, components.shape()))
    throw py::value_error("components and labels must be 2D or 3D arrays of one shape");
  if (!probabilities.dtype().is(py::dtype::of<float>()) || probabilities.ndim() != ndim + 1 ||
      !std::equal(labels_.shape(), labels_.shape() + ndim, probabilities.shape()) ||
      probabilities.shape(ndim) < 1)
    throw py::value_error("probabilities must be float32 of the labels' shape plus a channel axis");
  if (n < 0) throw py::value_error("n must be the number of components (>= 0)");
  index_t shape[3] = {1, 1, 1}, stride[4] = {0, 0, 0, 0};
  for (py::ssize_t a = 0; a < ndim; ++a) {
    shape[3 - ndim + a] = labels_.shape(a);
    stride[3 - ndim + a] = probabilities.strides(a) / static_cast<py::ssize_t>(sizeof(float));
  }
  stride[3] = probabilities.strides(ndim) / static_cast<py::ssize_t>(sizeof(float));
  py::array_t<std::int64_t> counts(n + 1);
  py::array_t<double> sums(n + 1);
  std::fill_n(counts.mutable_data(), n + 1, 0);
  std::fill_n(sums.mutable_data(), n + 1, 0.0);
  medkern::bind::visit_label_dtype(labels_.dtype(), [&](auto tag) {
    using L = decltype(tag);
    auto labels = carray<L>::ensure(labels_);
    const auto* prob = static_cast<const float*>(probabilities.data());
    // Arrays held by this frame; only raw pointers are used without the GIL.
    py::gil_scoped_release release;
    medkern::component_probability_sums(components.data(), labels.data(), shape, prob, stride,
                                        probabilities.shape(ndim), first_channel, n,
                                        counts.mutable_data(), sums.mutable_data());
  });
  return py::make_tuple(counts, sums);
}

void activate(const py::array& x_, const std::string& activation, int n_threads) {
  auto x = inplace_float32(x_, "x");
  if (x.ndim() < 1) throw py::value_error("x must have a channel axis");
  float* d = x.mutable_data();
  const index_t channels = x.shape(0), n = channels ? x.size() / channels : 0;
  if (activation != "softmax" && activation != "sigmoid")
    throw py::value_error("activation must be 'softmax' or 'sigmoid'");
  // The array is held by this frame; only its raw memory is used without the GIL.
  py::gil_scoped_release release;
  if (activation == "softmax")
    medkern::softmax_channels(d, channels, n, n_threads);
  else
    medkern::sigmoid(d, x.size(), n_threads);
}

}  // namespace

void register_inference(py::module_& m) {
  m.def("importance_map", &importance_map, py::arg("roi_size"), py::arg("sigma_scale"),
        py::arg("gaussian"));
  m.def("gather_patches", &gather_patches, py::arg("src"), py::arg("batch"), py::arg("start"),
        py::arg("roi_size"), py::arg("n_threads"));
  m.def("accumulate_patches", &accumulate_patches, py::arg("out"), py::arg("pred"),
        py::arg("weight"), py::arg("batch"), py::arg("start"), py::arg("n_threads"));
  m.def("normalize_by_weight_sum", &normalize_by_weight_sum, py::arg("out"), py::arg("starts"),
        py::arg("weight"), py::arg("n_threads"));
  m.def("channel_argmax", &channel_argmax, py::arg("x"), py::arg("threshold"),
        py::arg("n_threads"));
  m.def("interleave_channels", &interleave_channels, py::arg("planes"), py::arg("complement"),
        py::arg("n_threads"));
  m.def("component_probability_sums", &component_probability_sums, py::arg("components"),
        py::arg("labels"), py::arg("probabilities"), py::arg("first_channel"), py::arg("n"));
  m.def("activate", &activate, py::arg("x"), py::arg("activation"), py::arg("n_threads"));
}
