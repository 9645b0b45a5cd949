// The device backend (device/layer.h) on the host executor: fusedrnn/stack.h's entry points
// with every kernel of the CUDA backend run as a loop on the CPU. Tests select it with
// _C._testing.set_device_emulation(order) to check the device code against the reference and
// the CPU backend on machines without a GPU (docs/design.md §7).
#include "device/emulated.h"

#include <atomic>

#include "core/registry.h"
#include "core/stack_loop.h"
#include "device/host_exec.h"
#include "device/layer.h"
#include "device/widened.h"

namespace fusedrnn {
namespace device {

namespace {
std::atomic<int> g_emulation{-1};
std::atomic<int> g_persistent{0}, g_max_blocks{3}, g_threads{32};

HostExec make_exec() {
  HostExec ex;
  ex.order = emulation() > 0 ? emulation() : 0;
  ex.persistent = PersistentMode(g_persistent.load(std::memory_order_relaxed));
  ex.max_blocks = g_max_blocks.load(std::memory_order_relaxed);
  ex.threads = g_threads.load(std::memory_order_relaxed);
  return ex;
}
}  // namespace

int emulation() { return g_emulation.load(std::memory_order_relaxed); }
void set_emulation(int order) { g_emulation.store(order, std::memory_order_relaxed); }
void set_persistent_emulation(int mode, int max_blocks, int threads) {
  g_persistent.store(mode, std::memory_order_relaxed);
  g_max_blocks.store(max_blocks, std::memory_order_relaxed);
  g_threads.store(threads, std::memory_order_relaxed);
}

PersistentPlan emulated_persistent_plan(int kind, int64_t B, int64_t H, int64_t proj,
                                        size_t elem, bool forward) {
  const HostExec ex = make_exec();
  return visit_cell(CellKind(kind), [&](auto cell) {
    using Cell = decltype(cell);
    return ex.persistent_plan(has_persistent_loop<Cell>() && proj == 0, Cell::kGates, B, H, elem,
                              forward);
  });
}

template <class T>
void emulated_stack_forward(const StackConfig& cfg, const StackWeights<T>* w,
                            const int64_t* lengths, const T* x, const T* h0, const T* c0, T* y,
                            T* h_n, T* c_n, void* reserve) {
  HostExec ex = make_exec();
  DeviceBackend<HostExec> be{ex, HostSteps(lengths, cfg.batch, cfg.steps)};
  fusedrnn::device::device_stack_forward<T>(be, cfg, w, lengths, x, h0, c0, y, h_n, c_n,
                                            reserve);
}

template <class T>
void emulated_stack_backward(const StackConfig& cfg, const StackWeights<T>* w,
                             const int64_t* lengths, const T* x, const void* reserve, const T* dy,
                             const T* dh_n, const T* dc_n, T* dx, T* dh0, T* dc0,
                             const StackGrads<T>* g, bool accumulate) {
  HostExec ex = make_exec();
  DeviceBackend<HostExec> be{ex, HostSteps(lengths, cfg.batch, cfg.steps)};
  fusedrnn::device::device_stack_backward<T>(be, cfg, w, lengths, x, reserve, dy, dh_n, dc_n,
                                             dx, dh0, dc0, g, accumulate);
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
FUSEDRNN_INSTANTIATE_EMULATED(bfloat16)
FUSEDRNN_INSTANTIATE_EMULATED(float16)

}  // namespace device
}  // namespace fusedrnn
