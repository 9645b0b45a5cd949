// Private test hooks (fusedrnn._C._testing): not part of the API.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "cells/activations.h"

namespace py = pybind11;

namespace fusedrnn {
namespace bind {

namespace {
// The float activations the kernels use (generic build), elementwise.
py::array_t<float> activation(const std::string& name,
                              py::array_t<float, py::array::c_style | py::array::forcecast> x) {
  auto out = py::array_t<float>(x.size());
  const float* in = x.data();
  float* o = out.mutable_data();
  if (name == "exp") {
    for (py::ssize_t i = 0; i < x.size(); ++i) o[i] = exp_fast(in[i]);
  } else if (name == "sigmoid") {
    for (py::ssize_t i = 0; i < x.size(); ++i) o[i] = sigmoid(in[i]);
  } else if (name == "tanh") {
    for (py::ssize_t i = 0; i < x.size(); ++i) o[i] = tanh_(in[i]);
  } else {
    throw std::invalid_argument("name must be 'exp', 'sigmoid' or 'tanh'");
  }
  return out;
}
}  // namespace

void register_testing(py::module_& m) {
  py::module_ t = m.def_submodule("_testing", "Private test hooks.");
  t.def("activation", &activation, py::arg("name"), py::arg("x"));
  m.attr("_activation") = t.attr("activation");
}

}  // namespace bind
}  // namespace fusedrnn
