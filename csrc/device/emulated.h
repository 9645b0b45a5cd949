#pragma once
// The device backend run on the host (emulated.cpp), for tests.
#include "device/persistent.h"
#include "fusedrnn/half.h"
#include "fusedrnn/stack.h"

namespace fusedrnn {
namespace device {

// -1: off (the CPU backend runs host arrays); 0, 1, 2: host arrays run the device backend,
// its launches' elements in ascending, descending or permuted order (host_exec.h).
int emulation();
void set_emulation(int order);
// The emulated persistent loops: mode 0 off, 1 on where they fit, 2 auto; a grid of at most
// max_blocks blocks of `threads` (host) threads. And the plan a layer would get.
void set_persistent_emulation(int mode, int max_blocks, int threads);
PersistentPlan emulated_persistent_plan(int kind, int64_t B, int64_t H, int64_t proj,
                                        size_t elem, bool forward);

template <class T>
void emulated_stack_forward(const StackConfig& cfg, const StackWeights<T>* w,
                            const int64_t* lengths, const T* x, const T* h0, const T* c0, T* y,
                            T* h_n, T* c_n, void* reserve);

template <class T>
void emulated_stack_backward(const StackConfig& cfg, const StackWeights<T>* w,
                             const int64_t* lengths, const T* x, const void* reserve, const T* dy,
                             const T* dh_n, const T* dc_n, T* dx, T* dh0, T* dc0,
                             const StackGrads<T>* g, bool accumulate);

}  // namespace device
}  // namespace fusedrnn
