// pytransfer._C: pybind11 entry points of the CPU kernels. Tensors cross as raw data
// pointers (uintptr_t) plus sizes, so the module needs no libtorch; the Python wrappers
// (pytransfer/*/_ops.py) own validation, contiguity and allocation.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "sinkhorn_cpu.h"

namespace py = pybind11;

namespace {

template <typename T>
T* ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

void sinkhorn_log(const std::string& dtype, std::uintptr_t a, std::uintptr_t b,
                  std::uintptr_t cost, int64_t B, int64_t n, int64_t m, bool shared_cost,
                  double eps, int64_t max_iter, double tol, std::uintptr_t f, std::uintptr_t g,
                  std::uintptr_t n_iter, std::uintptr_t err) {
  py::gil_scoped_release nogil;
  if (dtype == "float32") {
    pytransfer::sinkhorn_log_cpu<float>(ptr<const float>(a), ptr<const float>(b),
                                        ptr<const float>(cost), B, n, m, shared_cost,
                                        static_cast<float>(eps), max_iter,
                                        static_cast<float>(tol), ptr<float>(f), ptr<float>(g),
                                        ptr<int64_t>(n_iter), ptr<float>(err));
  } else if (dtype == "float64") {
    pytransfer::sinkhorn_log_cpu<double>(ptr<const double>(a), ptr<const double>(b),
                                         ptr<const double>(cost), B, n, m, shared_cost, eps,
                                         max_iter, tol, ptr<double>(f), ptr<double>(g),
                                         ptr<int64_t>(n_iter), ptr<double>(err));
  } else {
    throw std::invalid_argument("sinkhorn_log: dtype must be float32 or float64, got " + dtype);
  }
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "pytransfer compiled CPU kernels (raw-pointer interface; use the Python wrappers)";
#ifdef PYTRANSFER_OPENMP
  m.attr("openmp") = true;
#else
  m.attr("openmp") = false;
#endif
  m.def("sinkhorn_log", &sinkhorn_log, "Batched log-domain Sinkhorn (see csrc/sinkhorn_cpu.h)");
}
