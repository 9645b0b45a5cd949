#pragma once
// The CUDA executor of the device backend (csrc/device/layer.h): a launch runs a kernels.h
// functor one element per thread on the caller's stream; scratch is stream-ordered
// (cudaMallocAsync/cudaFreeAsync on that stream), so nothing waits for the device. Every CUDA
// call and launch is checked and a failure throws, naming the call or the kernel.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "cuda/cublas.h"
#include "device/persistent.h"

namespace fusedrnn {
namespace cuda {

// Throws std::runtime_error "CUDA error in <what>: <name>: <description>" (runtime.cu).
[[noreturn]] void throw_cuda_error(cudaError_t err, const char* what);

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw_cuda_error(err, what);
}

// The launch shape every element kernel assumes (the resource gate holds each kernel to the
// registers this block size allows: tools/cuda_resource_gate.py).
constexpr int kThreadsPerBlock = 256;

// f(i) for i in [0, n): one element per thread, grid-stride beyond 2^20 blocks.
template <class F>
__global__ void __launch_bounds__(kThreadsPerBlock) for_each_kernel(int64_t n, F f) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) f(i);
}

// Makes `device` current for a scope and restores the caller's device after.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ != device) check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() {
    int now = previous_;
    if (cudaGetDevice(&now) == cudaSuccess && now != previous_) (void)cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

// fusedrnn's stream-ordered memory pool on `device` (runtime.cu): created once per device, it
// keeps up to kPoolKeepBytes of freed scratch across synchronisations (the device's default
// pool returns everything to the driver at each one, so every call would map fresh memory).
constexpr uint64_t kPoolKeepBytes = uint64_t(256) << 20;
cudaMemPool_t scratch_pool(int device);

// What a device offers the persistent kernels, read once per device (runtime.cu).
struct DeviceLimits {
  int multiprocessors;
  size_t shared_optin;  // shared memory a block may opt in to
  bool cooperative;     // cooperative launch
};
DeviceLimits device_limits(int device);

// The persistent kernels' block size: the threads a program spreads its rows and k-slices over.
constexpr int kPersistentThreads = 256;

// The persistent loops' mode (FUSEDRNN_PERSISTENT: 0 off, the default until they are measured
// on a GPU; 1 wherever they fit; auto where they fit and the batch is small) and the device's
// limits: multiprocessors and opt-in shared memory per block (runtime.cu).
struct PersistentSetting {
  fusedrnn::device::PersistentMode mode;
  int multiprocessors;
  size_t shared_optin;
};
PersistentSetting persistent_setting(int device);
// The batch up to which auto picks the persistent loop (to be measured: issue 12).
constexpr int64_t kPersistentAutoMaxBatch = 16;

struct CudaExec {
  cudaStream_t stream_;
  cudaMemPool_t pool_ = nullptr;  // null: the device's default pool
  int device_ = 0;

  void* stream() const { return stream_; }

  // n T's of stream-ordered device memory, freed (stream-ordered) on scope exit; n == 0: null.
  template <class T>
  class Buffer {
   public:
    Buffer(int64_t n, cudaStream_t stream, cudaMemPool_t pool) : stream_(stream) {
      if (n <= 0) return;
      void** p = reinterpret_cast<void**>(&ptr_);
      const size_t bytes = sizeof(T) * size_t(n);
      if (pool)
        check(cudaMallocFromPoolAsync(p, bytes, pool, stream),
              "cudaMallocFromPoolAsync (fusedrnn scratch)");
      else
        check(cudaMallocAsync(p, bytes, stream), "cudaMallocAsync (fusedrnn scratch)");
    }
    ~Buffer() {
      if (ptr_) (void)cudaFreeAsync(ptr_, stream_);
    }
    Buffer(Buffer&& o) noexcept : ptr_(o.ptr_), stream_(o.stream_) { o.ptr_ = nullptr; }
    Buffer& operator=(Buffer&& o) noexcept {
      if (this != &o) {
        if (ptr_) (void)cudaFreeAsync(ptr_, stream_);
        ptr_ = o.ptr_;
        stream_ = o.stream_;
        o.ptr_ = nullptr;
      }
      return *this;
    }
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
    T* get() const { return ptr_; }

   private:
    T* ptr_ = nullptr;
    cudaStream_t stream_;
  };

  template <class T>
  Buffer<T> buffer(int64_t n) {
    return Buffer<T>(n, stream_, pool_);
  }

  template <class F>
  void launch(const char* name, int64_t n, const F& f) {
    if (n <= 0) return;
    const int64_t blocks =
        std::min<int64_t>((n + kThreadsPerBlock - 1) / kThreadsPerBlock, int64_t(1) << 20);
    for_each_kernel<<<unsigned(blocks), kThreadsPerBlock, 0, stream_>>>(n, f);
    check(cudaGetLastError(), name);
  }

  fusedrnn::device::PersistentPlan persistent_plan(bool cell_ok, int64_t G, int64_t B, int64_t H,
                                                   size_t elem, bool forward) const {
    const PersistentSetting s = persistent_setting(device_);
    return fusedrnn::device::plan_persistent(s.mode, cell_ok, G, B, H, elem, forward,
                                             s.multiprocessors, kPersistentThreads,
                                             s.shared_optin, kPersistentAutoMaxBatch);
  }

  template <class Program>
  bool run_grid(const char* name, const fusedrnn::device::PersistentPlan& plan,
                const Program& program);

  template <class Program>
  void run_blocks(const char* name, int64_t blocks, int threads, size_t shared_bytes,
                  const Program& program);

  // The vendor GEMM when there is one (cuBLAS, loaded at run time); false: run GemmBlock.
  template <class T>
  bool vendor_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
                   int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
    return cublas_gemm<T>(stream_, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  }

  void copy(void* dst, const void* src, size_t bytes) {
    if (bytes)
      check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_),
            "cudaMemcpyAsync (device to device)");
  }

  // Device to host, then waits for this stream (only).
  void to_host(void* dst, const void* src, size_t bytes) {
    if (!bytes) return;
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_),
          "cudaMemcpyAsync (device to host)");
    check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  }
};

}  // namespace cuda
}  // namespace fusedrnn
