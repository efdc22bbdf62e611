// One instruction-set level of the hot kernel families (CMakeLists.txt, MEDKERN_ISA_FAMILIES): the
// same binding files as medkern._core, compiled with that level's flags into their own module,
// medkern._core_<level>. medkern._cpu imports it only on a CPU that supports the level.
#include "../bindings.hpp"

PYBIND11_MODULE(MEDKERN_ISA_MODULE, m) {
  m.doc() = "medkern hot kernels compiled for one x86-64 level (private; use the medkern package)";
  m.attr("isa") = MEDKERN_ISA_LEVEL;
  register_resample(m);
  register_filters(m);
}
