#pragma once
// The CUDA backend's entry points (csrc/cuda/), declared in plain C++ so the bindings (g++)
// call them without CUDA headers. Present in a build with FUSEDRNN_WITH_CUDA == 1 only.
//
// Every array pointer is device memory of `device`, except StackConfig::host_lengths. Work is
// queued on cfg.stream (a cudaStream_t; null: the legacy default stream) with no device-wide
// synchronisation; a failed CUDA call or launch throws std::runtime_error naming the call.
#include <cstddef>
#include <string>
#include <vector>

#include "device/persistent.h"
#include "fusedrnn/stack.h"

namespace fusedrnn {
namespace cuda {

// Devices usable now: 0 when there is no driver (cudaErrorInsufficientDriver, 35: what a
// machine without a GPU reports) or no device (cudaErrorNoDevice, 100). Other errors throw.
int device_count();

// "NVIDIA H200", compute capability and the like, for reports.
std::string device_name(int device);
int runtime_version();  // cudaRuntimeGetVersion: 13000 for CUDA 13.0
int driver_version();   // cudaDriverGetVersion: 0 without a driver

// cuBLAS, loaded at the first GEMM from these paths (then the dynamic linker's search for
// libcublas.so.13); without it the own GEMM kernel runs. cublas_status says which.
void set_cublas_candidates(const std::vector<std::string>& paths);
std::string cublas_status();

// bytes from device memory src to host memory dst, queued on stream; waits for that stream
// only (the lengths of a device call: the host needs their maximum to bound the time loop).
void copy_to_host(void* dst, const void* src, size_t bytes, int device, void* stream);

// Makes `consumer` wait for the work queued so far on `producer` (an event, no host wait): an
// array whose producer named its stream (__cuda_array_interface__ v3) is read safely.
void stream_wait(int device, void* producer, void* consumer);

// Content stamps of device arrays (device/stamps.h): out (device memory, n uint64) gets the
// stamp of the bytes[k] bytes at data[k]; changed_stamp recomputes them and returns the index
// of the first that differs from stamps (device memory), or -1, waiting for the stream.
void content_stamps(size_t n, const void* const* data, const size_t* bytes, uint64_t* out,
                    int device, void* stream);
int64_t changed_stamp(size_t n, const void* const* data, const size_t* bytes,
                      const uint64_t* stamps, int device, void* stream);

// What a layer's time loop would run on `device` now (FUSEDRNN_PERSISTENT and the device's
// limits): the persistent kernel (blocks x threads, shared bytes) or the per-step path (why).
device::PersistentPlan persistent_choice(CellKind kind, int64_t batch, int64_t hidden,
                                         int64_t proj, size_t elem, bool forward, int device);

// Persistent time loops launched, and declined at launch (the device could not hold the grid at
// once: the step loop ran), since the process started: what the plans above turned into.
struct PersistentCounts {
  long long launched = 0, declined = 0;
};
PersistentCounts persistent_counts();

// fusedrnn/stack.h's stack_forward/stack_backward on device `device`. lengths (when not null)
// is device memory and cfg.host_lengths must hold the same values on the host.
template <class T>
void stack_forward(const StackConfig& cfg, const StackWeights<T>* w, const int64_t* lengths,
                   const T* x, const T* h0, const T* c0, T* y, T* h_n, T* c_n, void* reserve,
                   int device);

template <class T>
void stack_backward(const StackConfig& cfg, const StackWeights<T>* w, const int64_t* lengths,
                    const T* x, const void* reserve, const T* dy, const T* dh_n, const T* dc_n,
                    T* dx, T* dh0, T* dc0, const StackGrads<T>* g, bool accumulate, int device);

}  // namespace cuda
}  // namespace fusedrnn
