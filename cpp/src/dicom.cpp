#include "bindings.hpp"
#include "medkern/modality.hpp"

namespace {

using medkern::bind::carray;

// stored: (n_frames, ...) array of stored values; out: preallocated C-contiguous array of the same
// shape and the output dtype (int16, int32 or float32).
void modality_lut(const py::array& stored, py::array& out, const carray<double>& slope,
                  const carray<double>& intercept, int bits_stored, bool is_signed, bool invert,
                  int n_threads) {
  if (stored.ndim() < 1 || stored.size() != out.size() || stored.ndim() != out.ndim())
    throw py::value_error("stored and out must have the same shape");
  if (!(out.flags() & py::array::c_style) || !out.writeable())
    throw py::value_error("out must be a writeable C-contiguous array");
  const py::ssize_t n_frames = stored.shape(0);
  if (slope.size() != n_frames || intercept.size() != n_frames)
    throw py::value_error("slope and intercept need one value per frame");
  const py::ssize_t frame_size = n_frames ? stored.size() / n_frames : 0;
  medkern::bind::visit_dtype(stored.dtype(), [&](auto in_tag) {
    using In = decltype(in_tag);
    auto in = carray<In>::ensure(stored);
    medkern::bind::visit_dtype(out.dtype(), [&](auto out_tag) {
      using Out = decltype(out_tag);
      const In* src = in.data();
      Out* dst = static_cast<Out*>(out.mutable_data());
      const double* a = slope.data();
      const double* b = intercept.data();
      // Raw pointers into arrays held by the caller and this frame; no Python object below.
      py::gil_scoped_release release;
      medkern::modality_lut(src, dst, n_frames, frame_size, a, b, bits_stored, is_signed, invert,
                            n_threads);
    });
  });
}

}  // namespace

void register_dicom(py::module_& m) {
  m.def("modality_lut", &modality_lut, py::arg("stored"), py::arg("out"), py::arg("slope"),
        py::arg("intercept"), py::arg("bits_stored"), py::arg("is_signed"), py::arg("invert"),
        py::arg("n_threads"));
}
