// fusedrnn/cuda.h's stack entry points: the stack loop (core/stack_loop.h) over the device
// backend (device/layer.h) with the CUDA executor, on the caller's device and stream.
#include <stdexcept>

#include "core/stack_loop.h"
#include "cuda/exec.cuh"
#include "cuda/grid.cuh"
#include "device/layer.h"
#include "device/widened.h"
#include "device/stamps.h"
#include "fusedrnn/cuda.h"

namespace fusedrnn {
namespace cuda {

namespace {
void check_lengths(const StackConfig& cfg, const int64_t* lengths) {
  if (lengths && !cfg.host_lengths)
    throw std::invalid_argument("cuda::stack: device lengths need their host copy "
                                "(StackConfig::host_lengths)");
}
}  // namespace

template <class T>
void stack_forward(const StackConfig& cfg, const StackWeights<T>* w, const int64_t* lengths,
                   const T* x, const T* h0, const T* c0, T* y, T* h_n, T* c_n, void* reserve,
                   int device) {
  check_lengths(cfg, lengths);
  DeviceGuard guard(device);
  CudaExec ex{static_cast<cudaStream_t>(cfg.stream), scratch_pool(device), device};
  fusedrnn::device::DeviceBackend<CudaExec> be{
      ex, fusedrnn::device::HostSteps(lengths ? cfg.host_lengths : nullptr, cfg.batch, cfg.steps)};
  fusedrnn::device::device_stack_forward<T>(be, cfg, w, lengths, x, h0, c0, y, h_n, c_n,
                                            reserve);
}

template <class T>
void stack_backward(const StackConfig& cfg, const StackWeights<T>* w, const int64_t* lengths,
                    const T* x, const void* reserve, const T* dy, const T* dh_n, const T* dc_n,
                    T* dx, T* dh0, T* dc0, const StackGrads<T>* g, bool accumulate, int device) {
  check_lengths(cfg, lengths);
  DeviceGuard guard(device);
  CudaExec ex{static_cast<cudaStream_t>(cfg.stream), scratch_pool(device), device};
  fusedrnn::device::DeviceBackend<CudaExec> be{
      ex, fusedrnn::device::HostSteps(lengths ? cfg.host_lengths : nullptr, cfg.batch, cfg.steps)};
  fusedrnn::device::device_stack_backward<T>(be, cfg, w, lengths, x, reserve, dy, dh_n, dc_n,
                                             dx, dh0, dc0, g, accumulate);
}

void content_stamps(size_t n, const void* const* data, const size_t* bytes, uint64_t* out,
                    int device, void* stream) {
  DeviceGuard guard(device);
  CudaExec ex{static_cast<cudaStream_t>(stream), scratch_pool(device), device};
  fusedrnn::device::device_stamps(ex, n, data, bytes, out);
}

int64_t changed_stamp(size_t n, const void* const* data, const size_t* bytes,
                      const uint64_t* stamps, int device, void* stream) {
  DeviceGuard guard(device);
  CudaExec ex{static_cast<cudaStream_t>(stream), scratch_pool(device), device};
  return fusedrnn::device::first_changed_stamp(ex, n, data, bytes, stamps);
}

fusedrnn::device::PersistentPlan persistent_choice(CellKind kind, int64_t batch, int64_t hidden,
                                                   int64_t proj, size_t elem, bool forward,
                                                   int device) {
  DeviceGuard guard(device);
  const CudaExec ex{nullptr, nullptr, device};
  return visit_cell(kind, [&](auto cell) {
    using Cell = decltype(cell);
    return ex.persistent_plan(fusedrnn::device::has_persistent_loop<Cell>() && proj == 0,
                              Cell::kGates, batch, hidden, elem, forward);
  });
}

#define FUSEDRNN_INSTANTIATE_CUDA_STACK(T)                                                     \
  template void stack_forward<T>(const StackConfig&, const StackWeights<T>*, const int64_t*,  \
                                 const T*, const T*, const T*, T*, T*, T*, void*, int);       \
  template void stack_backward<T>(const StackConfig&, const StackWeights<T>*, const int64_t*, \
                                  const T*, const void*, const T*, const T*, const T*, T*, T*, \
                                  T*, const StackGrads<T>*, bool, int);

FUSEDRNN_INSTANTIATE_CUDA_STACK(float)
FUSEDRNN_INSTANTIATE_CUDA_STACK(double)
FUSEDRNN_INSTANTIATE_CUDA_STACK(bfloat16)
FUSEDRNN_INSTANTIATE_CUDA_STACK(float16)

}  // namespace cuda
}  // namespace fusedrnn
