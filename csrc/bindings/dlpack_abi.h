#pragma once
// The DLPack C ABI (https://dmlc.github.io/dlpack/latest/c_api.html), the unversioned
// structs a legacy "dltensor" capsule holds: declared here from the specification rather than
// vendored, since the bindings read four fields of them.
#include <cstdint>

namespace fusedrnn {
namespace dlpack {

struct DLDevice {
  int32_t device_type;  // DLDeviceType: 1 CPU, 2 CUDA, 3 CUDA host, 13 CUDA managed, ...
  int32_t device_id;
};

struct DLDataType {
  uint8_t code;  // 0 int, 1 uint, 2 float, 4 bfloat, 6 bool, ...
  uint8_t bits;
  uint16_t lanes;
};

struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;  // in elements; null: compact row-major
  uint64_t byte_offset;
};

struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor* self);
};

}  // namespace dlpack
}  // namespace fusedrnn
