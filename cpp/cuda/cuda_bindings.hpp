// Shared by the binding files of medkern._cuda: arrays arrive as (device pointer, dtype, shape)
// from CuPy; the Python layer owns allocation and keeps the arrays alive during each call.
#pragma once
#include <pybind11/stl.h>

#include <array>
#include <stdexcept>
#include <string>
#include <vector>

#include "../src/bindings.hpp"
#include "launch_common.hpp"

namespace medkern::cuda::bind {

inline void check(const std::string& err) {
  if (!err.empty()) throw std::runtime_error("CUDA kernel launch failed: " + err);
}

inline std::array<std::int64_t, 3> shape3(const std::vector<std::int64_t>& s, const char* name) {
  if (s.size() != 3) throw py::value_error(std::string(name) + " must have 3 entries (2D as (1, ny, nx))");
  return {s[0], s[1], s[2]};
}

}  // namespace medkern::cuda::bind

// One registration function per family; defined in bind_<family>.cpp, called from module.cpp.
void register_cuda_intensity(py::module_& m);
void register_cuda_contrast(py::module_& m);
void register_cuda_filters(py::module_& m);
void register_cuda_resample(py::module_& m);
void register_cuda_registration(py::module_& m);
