#pragma once
// The device backend run on the host (emulated.cpp), for tests.
#include "fusedrnn/stack.h"

namespace fusedrnn {
namespace device {

// -1: off (the CPU backend runs host arrays); 0, 1, 2: host arrays run the device backend,
// its launches' elements in ascending, descending or permuted order (host_exec.h).
int emulation();
void set_emulation(int order);

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
