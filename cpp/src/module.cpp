#include "bindings.hpp"

PYBIND11_MODULE(_core, m) {
  m.doc() = "medkern compiled kernels (private; use the medkern package)";
#ifdef _OPENMP
  m.attr("openmp") = true;
#else
  m.attr("openmp") = false;
#endif
  register_intensity(m);
  register_inference(m);
  register_measure(m);
  register_radiomics(m);
  register_resample(m);
  register_registration(m);
  register_dicom(m);
  register_rtstruct(m);
  register_filters(m);
  register_contrast(m);
  register_segment(m);
}
