#pragma once
// Block programs (device/grid.h) on a GPU: a cooperative launch of co-resident blocks, one per
// SM, with the program's shared memory dynamic (up to the device's opt-in maximum, 227 KiB on
// sm_90) and cooperative_groups' grid barrier.
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include "cuda/exec.cuh"

namespace fusedrnn {
namespace cuda {

struct CudaBlock {
  char* shared_;
  __device__ int block() const { return int(blockIdx.x); }
  __device__ int blocks() const { return int(gridDim.x); }
  __device__ int threads() const { return int(blockDim.x); }
  __device__ char* shared() const { return shared_; }
  template <class F>
  __device__ void for_threads(F&& f) const {
    f(int(threadIdx.x));
  }
  __device__ void sync_block() const { __syncthreads(); }
  __device__ void grid_sync() const { cooperative_groups::this_grid().sync(); }
};

template <class Program>
__global__ void __launch_bounds__(kPersistentThreads) grid_kernel(Program program) {
  extern __shared__ __align__(16) char shared[];
  const CudaBlock ctx{shared};
  program(ctx);
}

// program on plan.blocks blocks, cooperatively; false (nothing launched) when the device cannot
// hold that many blocks at once with this shared memory.
template <class Program>
bool launch_grid(const char* name, int blocks, int threads, size_t shared_bytes,
                 cudaStream_t stream, const Program& program) {
  auto kernel = grid_kernel<Program>;
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             int(shared_bytes)),
        "cudaFuncSetAttribute (persistent kernel shared memory)");
  int device = 0, sms = 0, per_sm = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device),
        "cudaDeviceGetAttribute (multiprocessors)");
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, shared_bytes),
        "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
  if (per_sm * sms < blocks) return false;  // not co-resident: the step loop runs instead
  Program copy = program;
  void* args[] = {&copy};
  check(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), dim3(unsigned(blocks)),
                                    dim3(unsigned(threads)), args, shared_bytes, stream),
        name);
  return true;
}

template <class Program>
bool CudaExec::run_grid(const char* name, const fusedrnn::device::PersistentPlan& plan,
                        const Program& program) {
  return launch_grid(name, plan.blocks, plan.threads, plan.shared_bytes, stream_, program);
}

}  // namespace cuda
}  // namespace fusedrnn
