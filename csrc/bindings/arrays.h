#pragma once
// Array arguments at the boundary: NumPy arrays and any object with __dlpack__ (torch tensors
// without a NumPy round-trip; CuPy once the CUDA backend exists) become ArrayViews, checked
// here for dtype, shape and device with errors that name the argument.
#include <pybind11/pybind11.h>

#include <optional>
#include <string>
#include <vector>

#include "fusedrnn/array.h"

namespace fusedrnn {
namespace bind {

namespace py = pybind11;

// One array argument: its view, and what keeps the memory alive until the call ends (the
// object itself, a DLPack capsule, or the C-contiguous copy made of a strided input).
struct Arg {
  ArrayView view;
  py::object keep_alive;
  py::object object;  // the object as given (returned or stored by the caller as is)
  bool copied = false;  // view is a copy of object: reading is fine, writes would be lost
  template <class T>
  T* ptr() const {
    return static_cast<T*>(view.data);
  }
};

std::string type_name(py::handle obj);

// obj as an array: a numpy.ndarray or an object with __dlpack__. Views the kernels cannot read
// in place (strided, misaligned) are copied once into a C-contiguous host array. A device
// array raises (this build has no CUDA backend) naming the argument.
Arg array_arg(py::handle obj, const std::string& name);
std::optional<Arg> optional_array_arg(py::handle obj, const std::string& name);

// Float dtype checks: the first float argument fixes the call's dtype (float32 or float64);
// every other must match it.
DType first_float(const Arg& a, const std::string& name);
void check_dtype(const Arg& a, const std::string& name, DType want, const char* why);
void check_same_device(const Arg& a, const std::string& name, const Device& want);
void check_shape(const Arg& a, const std::string& name, const std::vector<int64_t>& want,
                 const std::string& meaning);
void check_writeable(const Arg& a, const std::string& name);

// A new C-contiguous array from the caller's allocator, alloc(shape: tuple, dtype: str), or a
// NumPy array when alloc is None.
Arg allocate(py::handle alloc, const std::vector<int64_t>& shape, DType dtype);

}  // namespace bind
}  // namespace fusedrnn
