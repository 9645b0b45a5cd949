// The device backend (device/layer.h) on the host executor: fusedrnn/stack.h's entry points
// with every kernel of the CUDA backend run as a loop on the CPU. Tests select it with
// _C._testing.set_device_emulation(order) to check the device code against the reference and
// the CPU backend on machines without a GPU (docs/design.md §7).
#include "device/emulated.h"

#include <atomic>

#include "core/stack_loop.h"
#include "device/host_exec.h"
#include "device/layer.h"

namespace fusedrnn {
namespace device {

namespace {
std::atomic<int> g_emulation{-1};
}

int emulation() { return g_emulation.load(std::memory_order_relaxed); }
void set_emulation(int order) { g_emulation.store(order, std::memory_order_relaxed); }

template <class T>
void emulated_stack_forward(const StackConfig& cfg, const StackWeights<T>* w,
                            const int64_t* lengths, const T* x, const T* h0, const T* c0, T* y,
                            T* h_n, T* c_n, void* reserve) {
  HostExec ex;
  ex.order = emulation() > 0 ? emulation() : 0;
  DeviceBackend<HostExec> be{ex, HostSteps(lengths, cfg.batch, cfg.steps)};
  core::stack_forward_loop<T>(be, cfg, w, lengths, x, h0, c0, y, h_n, c_n, reserve);
}

template <class T>
void emulated_stack_backward(const StackConfig& cfg, const StackWeights<T>* w,
                             const int64_t* lengths, const T* x, const void* reserve, const T* dy,
                             const T* dh_n, const T* dc_n, T* dx, T* dh0, T* dc0,
                             const StackGrads<T>* g, bool accumulate) {
  HostExec ex;
  ex.order = emulation() > 0 ? emulation() : 0;
  DeviceBackend<HostExec> be{ex, HostSteps(lengths, cfg.batch, cfg.steps)};
  core::stack_backward_loop<T>(be, cfg, w, lengths, x, reserve, dy, dh_n, dc_n, dx, dh0, dc0, g,
                               accumulate);
}

#define FUSEDRNN_INSTANTIATE_EMULATED(T)                                                        \
  template void emulated_stack_forward<T>(const StackConfig&, const StackWeights<T>*,          \
                                          const int64_t*, const T*, const T*, const T*, T*, T*, \
                                          T*, void*);                                           \
  template void emulated_stack_backward<T>(const StackConfig&, const StackWeights<T>*,         \
                                           const int64_t*, const T*, const void*, const T*,     \
                                           const T*, const T*, T*, T*, T*,                      \
                                           const StackGrads<T>*, bool);

FUSEDRNN_INSTANTIATE_EMULATED(float)
FUSEDRNN_INSTANTIATE_EMULATED(double)

}  // namespace device
}  // namespace fusedrnn
