#pragma once
// The array view the boundary validates and dispatches on: a data pointer with its dtype,
// shape, strides and device, whatever library allocated it (NumPy, torch, CuPy, ...).
// Kernels never see it: the bindings turn checked views into plain pointers (params.h).
#include <cstdint>
#include <string>

namespace fusedrnn {

enum class DType : int {
  Float32, Float64, Float16, BFloat16, Int64, Int32, UInt64, UInt32, UInt8, Bool, Other
};

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::Float32: return "float32";
    case DType::Float64: return "float64";
    case DType::Float16: return "float16";
    case DType::BFloat16: return "bfloat16";
    case DType::Int64: return "int64";
    case DType::Int32: return "int32";
    case DType::UInt64: return "uint64";
    case DType::UInt32: return "uint32";
    case DType::UInt8: return "uint8";
    case DType::Bool: return "bool";
    default: return "an unsupported dtype";
  }
}

// Device kinds numbered as DLPack's DLDeviceType (1 CPU, 2 CUDA, 3 CUDA pinned host,
// 13 CUDA managed, ...), so a view from __dlpack_device__ needs no translation.
enum class DeviceKind : int { Cpu = 1, Cuda = 2, CudaHost = 3, CudaManaged = 13 };

struct Device {
  int kind = int(DeviceKind::Cpu);
  int id = 0;
  bool is_cpu() const { return kind == int(DeviceKind::Cpu) || kind == int(DeviceKind::CudaHost); }
  std::string str() const {
    if (is_cpu()) return "cpu";
    if (kind == int(DeviceKind::Cuda) || kind == int(DeviceKind::CudaManaged))
      return "cuda:" + std::to_string(id);
    return "device type " + std::to_string(kind) + ":" + std::to_string(id);
  }
};

struct ArrayView {
  static constexpr int kMaxDims = 8;
  void* data = nullptr;
  DType dtype = DType::Other;
  int itemsize = 0;
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t strides[kMaxDims] = {};  // in elements
  Device device;
  bool writeable = true;

  int64_t size() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[i];
    return n;
  }
  size_t nbytes() const { return size_t(size()) * size_t(itemsize); }
  // Row-major without gaps (strides of size-1 axes do not matter), and aligned for its dtype.
  bool c_contiguous() const {
    if (size() == 0) return true;  // nothing to read: any strides will do
    int64_t want = 1;
    for (int i = ndim - 1; i >= 0; --i) {
      if (shape[i] != 1 && strides[i] != want) return false;
      want *= shape[i];
    }
    return itemsize == 0 || reinterpret_cast<uintptr_t>(data) % uintptr_t(itemsize) == 0;
  }
  std::string shape_str() const {
    std::string s = "(";
    for (int i = 0; i < ndim; ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + (ndim == 1 ? ",)" : ")");
  }
};

}  // namespace fusedrnn
