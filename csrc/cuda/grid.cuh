#pragma once
// Block programs (device/grid.h) on a GPU: a cooperative launch of co-resident blocks, one per
// SM, with the program's shared memory dynamic (up to the device's opt-in maximum, 227 KiB on
// sm_90). The grid barrier is a counter and a generation word in global memory, inline: the
// cooperative_groups barrier is a function call, and the register save around it made the
// persistent kernels spill (ptxas, sm_80/sm_90). The cooperative launch still guarantees the
// co-residency a spinning barrier needs.
#include <cuda_runtime.h>

#include "cuda/exec.cuh"

namespace fusedrnn {
namespace cuda {

// Two words in global memory, zero at launch.
struct GridBarrier {
  unsigned* count;
  unsigned* generation;
};

// Every thread of every block meets: thread 0 of each block arrives; the last to arrive resets
// the count and advances the generation, the others spin until it does. Fences order each
// block's writes before its arrival and the others' reads after the release. (The barrier the
// persistent kernels use, and the one the barrier floor, csrc/cuda/floor.cu, measures.)
__device__ __forceinline__ void grid_barrier(const GridBarrier& barrier) {
  __syncthreads();
  if (threadIdx.x == 0) {
    volatile unsigned* gen = barrier.generation;
    const unsigned g = *gen;
    __threadfence();
    if (atomicAdd(barrier.count, 1u) == gridDim.x - 1) {
      *barrier.count = 0;
      __threadfence();
      atomicAdd(barrier.generation, 1u);
    } else {
      while (*gen == g) {
      }
    }
    __threadfence();
  }
  __syncthreads();
}

struct CudaBlock {
  char* shared_;
  GridBarrier barrier_;
  template <class T, int N>
  struct Private {
    T v[N];
    __device__ explicit Private(const CudaBlock&) {}
    __device__ T* at(int) { return v; }
  };
  __device__ int block() const { return int(blockIdx.x); }
  __device__ int blocks() const { return int(gridDim.x); }
  __device__ int threads() const { return int(blockDim.x); }
  __device__ char* shared() const { return shared_; }
  template <class F>
  __device__ __forceinline__ void for_threads(F&& f) const {
    f(int(threadIdx.x));
  }
  __device__ __forceinline__ void sync_block() const { __syncthreads(); }
  __device__ __forceinline__ void grid_sync() const { grid_barrier(barrier_); }
};

// (256 threads, at least 1 block per SM: without the second bound ptxas held some persistent
// kernels to 64 registers and spilled; one block per SM is what they run at anyway.)
template <class Program>
__global__ void __launch_bounds__(kPersistentThreads, 1) grid_kernel(Program program,
                                                                  GridBarrier barrier) {
  extern __shared__ __align__(16) char shared[];
  const CudaBlock ctx{shared, barrier};
  program(ctx);
}

// program on plan.blocks blocks, cooperatively; false (nothing launched) when the device cannot
// hold that many blocks at once with this shared memory.
// Independent blocks (GemmBlock): ptxas picks the registers for occupancy (no minimum
// blocks per SM, unlike grid_kernel's one).
template <class Program>
__global__ void __launch_bounds__(kPersistentThreads) block_kernel(Program program) {
  extern __shared__ __align__(16) char shared[];
  const CudaBlock ctx{shared, GridBarrier{nullptr, nullptr}};
  program(ctx);
}

// program on `blocks` independent blocks (no grid barrier), an ordinary launch.
template <class Program>
void launch_blocks(const char* name, int64_t blocks, int threads, size_t shared_bytes,
                   cudaStream_t stream, const Program& program) {
  if (blocks <= 0) return;
  block_kernel<Program><<<unsigned(blocks), unsigned(threads), shared_bytes, stream>>>(program);
  check(cudaGetLastError(), name);
}

// Counts for fusedrnn/cuda.h's persistent_counts (runtime.cu).
void count_persistent_launch(bool launched);

template <class Program>
bool launch_grid(const char* name, int blocks, int threads, size_t shared_bytes,
                 cudaStream_t stream, unsigned* barrier_words, const Program& program) {
  auto kernel = grid_kernel<Program>;
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             int(shared_bytes)),
        "cudaFuncSetAttribute (persistent kernel shared memory)");
  int device = 0, per_sm = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  const int sms = device_limits(device).multiprocessors;
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, shared_bytes),
        "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
  if (per_sm * sms < blocks) {  // not co-resident: the step loop runs instead
    count_persistent_launch(false);
    return false;
  }
  check(cudaMemsetAsync(barrier_words, 0, 2 * sizeof(unsigned), stream),
        "cudaMemsetAsync (grid barrier)");
  Program copy = program;
  GridBarrier barrier{barrier_words, barrier_words + 1};
  void* args[] = {&copy, &barrier};
  check(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), dim3(unsigned(blocks)),
                                    dim3(unsigned(threads)), args, shared_bytes, stream),
        name);
  count_persistent_launch(true);
  return true;
}

template <class Program>
void CudaExec::run_blocks(const char* name, int64_t blocks, int threads, size_t shared_bytes,
                          const Program& program) {
  launch_blocks(name, blocks, threads, shared_bytes, stream_, program);
}

template <class Program>
bool CudaExec::run_grid(const char* name, const fusedrnn::device::PersistentPlan& plan,
                        const Program& program) {
  auto words = buffer<unsigned>(2);
  return launch_grid(name, plan.blocks, plan.threads, plan.shared_bytes, stream_, words.get(),
                     program);
}

}  // namespace cuda
}  // namespace fusedrnn
