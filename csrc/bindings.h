// Self-registration of pybind11 bindings: each csrc/<op>_cpu.cpp adds its functions to
// pytransfer._C with PYTRANSFER_BINDINGS(...) { m.def(...); }, so a new kernel file needs no
// edit elsewhere (CMake globs csrc/*.cpp). Kernels themselves stay pybind/torch-free.
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>
#include <vector>

namespace pytransfer {

using Binder = void (*)(pybind11::module_&);
std::vector<Binder>& binders();

struct RegisterBindings {
  explicit RegisterBindings(Binder b) { binders().push_back(b); }
};

template <typename T>
T* ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

}  // namespace pytransfer

#define PYTRANSFER_BINDINGS(name)                                          \
  static void name(pybind11::module_& m);                                  \
  static const ::pytransfer::RegisterBindings name##_registration(name);   \
  static void name(pybind11::module_& m)
