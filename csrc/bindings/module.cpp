// pybind11 module fusedrnn._C: registration only. Each job lives in its own file:
// arrays.cpp (array views, validation), stack.cpp (the stack entry point), runtime.cpp
// (threads, config, gemm), testing.cpp (private test hooks).
#include <pybind11/pybind11.h>

#include "fusedrnn/check.h"

namespace py = pybind11;

namespace fusedrnn {
namespace bind {
void register_stack(py::module_& m);
void register_runtime(py::module_& m);
void register_testing(py::module_& m);
void register_regularised(py::module_& m);
}  // namespace bind
}  // namespace fusedrnn

PYBIND11_MODULE(_C, m) {
  m.doc() = "fusedrnn native kernels. Use fusedrnn.functional, not this module.";
  py::register_exception<fusedrnn::TypeError>(m, "NativeTypeError", PyExc_TypeError);
  fusedrnn::bind::register_runtime(m);
  fusedrnn::bind::register_stack(m);
  fusedrnn::bind::register_testing(m);
  fusedrnn::bind::register_regularised(m);
}
