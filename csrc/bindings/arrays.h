#pragma once
// Array arguments at the boundary: NumPy arrays, any object with __dlpack__ (torch tensors
// without a NumPy round-trip, CuPy arrays) and, in a build with the CUDA backend, objects with
// only __cuda_array_interface__ become ArrayViews, checked here for dtype, shape and device
// with errors that name the argument.
#include <pybind11/pybind11.h>

#include <cstdint>
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
  std::string dtype_text;  // the dtype as its producer spells it, for messages (CAI typestr)
  py::object keep_alive;
  py::object object;  // the object as given (returned or stored by the caller as is)
  bool copied = false;  // view is a copy of object: reading is fine, writes would be lost
  template <class T>
  T* ptr() const {
    return static_cast<T*>(view.data);
  }
};

std::string type_name(py::handle obj);

// What device arrays of one call are read with: the caller's stream (a cudaStream_t as an
// integer; 0 is the legacy default stream), which __dlpack__ exports them for and the kernels
// run on, and the device of x. A __cuda_array_interface__ array names no device: it is taken to
// be on x's device (device < 0 while x itself is being read: then the only device there is).
struct CallDevice {
  uint64_t stream = 0;
  int device = -1;
};

// obj as an array: a numpy.ndarray, an object with __dlpack__, or (CUDA builds) one with
// __cuda_array_interface__. Host views the kernels cannot read in place (strided, misaligned)
// are copied once into a C-contiguous host array; a device array must be C-contiguous already
// (ValueError: no implicit device copy). call null: a host-only argument, where a device array
// raises; without the CUDA backend any device array raises (TypeError), naming the argument.
Arg array_arg(py::handle obj, const std::string& name, const CallDevice* call = nullptr);
std::optional<Arg> optional_array_arg(py::handle obj, const std::string& name,
                                      const CallDevice* call = nullptr);

// Where obj lives without exporting it: a numpy.ndarray or a plain Python object is on the CPU,
// an object with __dlpack_device__ says, one with only __cuda_array_interface__ is on CUDA
// (device id unknown: -1). For checks that must come before an export (lengths).
Device device_of(py::handle obj);

// Float dtype checks: the first float argument fixes the call's dtype (float32 or float64);
// every other must match it.
DType first_float(const Arg& a, const std::string& name);
void check_dtype(const Arg& a, const std::string& name, DType want, const char* why);
void check_same_device(const Arg& a, const std::string& name, const Device& want);
void check_shape(const Arg& a, const std::string& name, const std::vector<int64_t>& want,
                 const std::string& meaning);
void check_writeable(const Arg& a, const std::string& name);

// A new C-contiguous array from the caller's allocator, alloc(shape: tuple, dtype: str), or a
// NumPy array when alloc is None, on `device` (x's; checked). call: as for array_arg (null for
// host outputs).
Arg allocate(py::handle alloc, const std::vector<int64_t>& shape, DType dtype,
             const Device& device = Device{}, const CallDevice* call = nullptr);

}  // namespace bind
}  // namespace fusedrnn
