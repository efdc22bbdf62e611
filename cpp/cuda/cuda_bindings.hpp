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

// Every shape argument of the CUDA launchers is 3D; medkern::bind::shape3 adds this to its message.
constexpr const char* kShape2d = " (2D as (1, ny, nx))";

}  // namespace medkern::cuda::bind

// One registration function per family; defined in bind_<family>.cpp, called from module.cpp.
void register_cuda_intensity(py::module_& m);
void register_cuda_contrast(py::module_& m);
void register_cuda_filters(py::module_& m);
void register_cuda_resample(py::module_& m);
void register_cuda_registration(py::module_& m);
