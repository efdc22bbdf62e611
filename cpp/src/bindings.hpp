// Helpers shared by the binding files: array conversion and the one dtype dispatch table.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "medkern/common.hpp"

namespace py = pybind11;

namespace medkern::bind {

template <class T>
using carray = py::array_t<T, py::array::c_style | py::array::forcecast>;

// The array's shape, for a result array of the same shape.
inline std::vector<py::ssize_t> dims(const py::array& a) {
  return std::vector<py::ssize_t>(a.shape(), a.shape() + a.ndim());
}

// (n0, n1, n2) of a 3D array argument; with one_slice_2d, a 2D (ny, nx) array is accepted too,
// as the one-slice volume (1, ny, nx).
inline std::array<index_t, 3> shape3(const py::array& a, const char* name,
                                     bool one_slice_2d = false) {
  if (a.ndim() == 3) return {a.shape(0), a.shape(1), a.shape(2)};
  if (!one_slice_2d) throw py::value_error(std::string(name) + " must be a 3D array");
  if (a.ndim() == 2) return {1, a.shape(0), a.shape(1)};
  throw py::value_error("expected a 2D or 3D array, got " + std::to_string(a.ndim()) +
                        " dimensions");
}

// The entries of a shape argument, which must be three; `hint` (appended to the message) says how
// the caller passes a 2D image.
inline std::array<index_t, 3> shape3(const std::vector<index_t>& s, const char* name,
                                     const char* hint = "") {
  if (s.size() != 3) throw py::value_error(std::string(name) + " must have 3 entries" + hint);
  return {s[0], s[1], s[2]};
}

// Calls f(T{}) with T the C++ type of the array's dtype, for the dtypes medkern accepts.
// This is the only dtype ladder in the bindings; every kernel goes through it.
template <class F>
decltype(auto) visit_dtype(const py::dtype& dt, F&& f) {
  const char kind = dt.kind();
  const auto size = dt.itemsize();
  if (kind == 'u' && size == 1) return f(std::uint8_t{});
  if (kind == 'i' && size == 2) return f(std::int16_t{});
  if (kind == 'u' && size == 2) return f(std::uint16_t{});
  if (kind == 'i' && size == 4) return f(std::int32_t{});
  if (kind == 'f' && size == 4) return f(float{});
  if (kind == 'f' && size == 8) return f(double{});
  throw py::type_error("unsupported dtype " + std::string(py::str(dt)) +
                       "; expected uint8, int16, uint16, int32, float32 or float64");
}

// Same table for label images (integer dtypes only, including the wider ones labels use).
template <class F>
decltype(auto) visit_label_dtype(const py::dtype& dt, F&& f) {
  const char kind = dt.kind();
  const auto size = dt.itemsize();
  if (kind == 'b' && size == 1) return f(std::uint8_t{});
  if (kind == 'u' && size == 1) return f(std::uint8_t{});
  if (kind == 'i' && size == 1) return f(std::int8_t{});
  if (kind == 'i' && size == 2) return f(std::int16_t{});
  if (kind == 'u' && size == 2) return f(std::uint16_t{});
  if (kind == 'i' && size == 4) return f(std::int32_t{});
  if (kind == 'u' && size == 4) return f(std::uint32_t{});
  if (kind == 'i' && size == 8) return f(std::int64_t{});
  if (kind == 'u' && size == 8) return f(std::uint64_t{});
  throw py::type_error("unsupported label dtype " + std::string(py::str(dt)) +
                       "; expected an integer or bool array");
}

// For kernels that only copy or compare elements (nearest neighbour, label votes): calls f(U{})
// with the unsigned integer type of the element size, so one instantiation serves every dtype.
template <class F>
decltype(auto) visit_itemsize(const py::dtype& dt, F&& f) {
  switch (dt.itemsize()) {
    case 1:
      return f(std::uint8_t{});
    case 2:
      return f(std::uint16_t{});
    case 4:
      return f(std::uint32_t{});
    case 8:
      return f(std::uint64_t{});
    default:
      throw py::type_error("unsupported dtype " + std::string(py::str(dt)) +
                           "; expected an element size of 1, 2, 4 or 8 bytes");
  }
}

// Optional uint8 mask with the same number of elements as the image.
inline const std::uint8_t* mask_ptr(const py::object& mask, carray<std::uint8_t>& holder,
                                    py::ssize_t expected_size) {
  if (mask.is_none()) return nullptr;
  holder = carray<std::uint8_t>::ensure(mask);
  if (!holder) throw py::type_error("mask must be convertible to a uint8 array");
  if (holder.size() != expected_size)
    throw py::value_error("mask has " + std::to_string(holder.size()) + " elements, image has " +
                          std::to_string(expected_size));
  return holder.data();
}

}  // namespace medkern::bind

// One declaration per family; defined in <family>.cpp.
void register_intensity(py::module_& m);
void register_inference(py::module_& m);
void register_measure(py::module_& m);
void register_radiomics(py::module_& m);
void register_resample(py::module_& m);
void register_dicom(py::module_& m);
void register_rtstruct(py::module_& m);
void register_filters(py::module_& m);
void register_contrast(py::module_& m);
void register_segment(py::module_& m);
void register_registration(py::module_& m);
