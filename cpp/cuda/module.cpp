// medkern._cuda: module.cpp only registers the families (one bind_<family>.cpp each).
#include "cuda_bindings.hpp"

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "medkern CUDA kernels (private; use the medkern package with CuPy arrays)";
  m.def("device_count", &medkern::cuda::device_count);
  m.def("runtime_version", &medkern::cuda::runtime_version);
  register_cuda_intensity(m);
  register_cuda_contrast(m);
  register_cuda_filters(m);
  register_cuda_resample(m);
  register_cuda_registration(m);
}
