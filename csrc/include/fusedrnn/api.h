#pragma once
// The CPU backend's runtime: workspace pool, content stamps, fork-safe parallel work, threads,
// build facts, and the one-layer kernels the stack loop runs (fusedrnn/stack.h is the entry
// point the bindings call).
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "fusedrnn/params.h"

namespace fusedrnn {

// Workspace memory, kept between calls (cpu/runtime.cpp). acquire returns at least `bytes`
// (64-byte aligned) and its capacity, which release takes back; trim frees every idle buffer.
void* workspace_acquire(size_t bytes, size_t& capacity);
void workspace_release(void* ptr, size_t capacity);
void workspace_trim();

// 64-bit fingerprints of n arrays (data[i], bytes[i] bytes) into out[i], the same whatever the
// thread count: a training forward stamps the arrays backward will read, backward checks
// them, so an in-place change in between raises instead of mixing old activations with new
// weights. Parallel over 256 KiB chunks (cpu/stamp.h, per instruction set).
void content_stamps(size_t n, const void* const* data, const size_t* bytes, uint64_t* out);

// Runs fn where a multi-threaded OpenMP region cannot hang: in place, except on the thread
// that called fork() in a forked child, whose libgomp worker pool is stale (cpu/runtime.cpp).
// Exceptions propagate. Every entry point that may open a parallel region goes through it.
void run_parallel_work(const std::function<void()>& fn);

template <class T>
void layer_forward(CellKind kind, const ForwardParams<T>& p);
template <class T>
void layer_backward(CellKind kind, const BackwardParams<T>& p);

// Threads used by the OpenMP regions and the BLAS (both, never nested). n in [1, kMaxThreads]
// (std::invalid_argument otherwise); OpenMP may grant fewer, and the kernels split their work
// over the team they get.
constexpr int kMaxThreads = 1024;
void set_num_threads(int n);
int get_num_threads();

std::string blas_name();
std::string blas_config();
std::string blas_core();
std::string simd_compiled();  // instruction sets the compiler was allowed to use
std::string simd_cpu();       // what the running CPU supports (best first)
std::string simd_path();      // the kernels' instruction set chosen at run time

}  // namespace fusedrnn
