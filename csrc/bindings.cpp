// pytransfer._C: the module runs every binder registered with PYTRANSFER_BINDINGS. Tensors
// cross as raw data pointers (uintptr_t) plus sizes, so the module needs no libtorch; the
// Python wrappers own validation, contiguity and allocation.
#include "bindings.h"

namespace pytransfer {
std::vector<Binder>& binders() {
  static std::vector<Binder> all;
  return all;
}
}  // namespace pytransfer

PYBIND11_MODULE(_C, m) {
  m.doc() = "pytransfer compiled CPU kernels (raw-pointer interface; use the Python wrappers)";
#ifdef PYTRANSFER_OPENMP
  m.attr("openmp") = true;
#else
  m.attr("openmp") = false;
#endif
  for (auto bind : pytransfer::binders()) bind(m);
}
