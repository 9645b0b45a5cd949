// fusedrnn/cuda_floor.h: the empty persistent loop that measures what a step of the persistent
// kernels (csrc/device/persistent.h on csrc/cuda/grid.cuh) cannot go below: one grid-wide
// barrier, and with h_floats > 0 the h exchange through global memory (each block reads the
// whole vector into shared memory after the barrier, then writes its own slice of the other
// buffer, reading past L1 as the kernels do). Two barriers: cooperative_groups' grid.sync(),
// and grid.cuh's grid_barrier (a counter + generation flag barrier), the one the persistent
// kernels use.
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda/exec.cuh"
#include "cuda/grid.cuh"
#include "fusedrnn/cuda.h"
#include "fusedrnn/cuda_floor.h"

namespace fusedrnn {
namespace cuda {

// The most threads a floor block may have (the kernels' launch bound).
constexpr int kFloorMaxThreads = 1024;
// Steps are checked through float step numbers: exact up to 2^24.
constexpr int kFloorMaxSteps = 1 << 24;

struct FloorArgs {
  unsigned int* counter;  // flag barrier: arrivals at the current barrier (reset by the last)
  unsigned int* epoch;    // flag barrier: its generation (barriers completed)
  unsigned int* errors;   // h values read that were not the previous step's
  float* h;               // (2, h_floats), zeros at launch: buffer s % 2 is read in step s
  int steps;
  int h_floats;
};

struct GridSyncBarrier {
  __device__ static void sync(const FloorArgs&, unsigned int) {
    cooperative_groups::this_grid().sync();
  }
};

// grid.cuh's barrier, on the floor's words: counter and generation on their own lines.
struct FlagBarrier {
  __device__ static void sync(const FloorArgs& a, unsigned int) {
    grid_barrier(GridBarrier{a.counter, a.epoch});
  }
};

// Step s: read h (buffer s % 2, all h_floats, into shared memory), check it holds s, write s + 1
// into this block's slice of buffer (s + 1) % 2, barrier. Without h: the barrier alone.
template <class Barrier>
__global__ void __launch_bounds__(kFloorMaxThreads) barrier_floor_kernel(FloorArgs a) {
  extern __shared__ float h_s[];
  const int H = a.h_floats, nt = int(blockDim.x), t = int(threadIdx.x);
  const int j0 = int(int64_t(blockIdx.x) * H / gridDim.x);
  const int j1 = int(int64_t(blockIdx.x + 1) * H / gridDim.x);
  unsigned int bad = 0;
  for (int s = 0; s < a.steps; ++s) {
    if (H > 0) {
      const float* cur = a.h + (s & 1) * H;
      float* next = a.h + ((s + 1) & 1) * H;
      const float expect = float(s);
      for (int i = t; i < H; i += nt) {
        const float v = __ldcg(cur + i);  // as the persistent kernels read h
        bad += v != expect ? 1u : 0u;
        h_s[i] = v;
      }
      __syncthreads();
      for (int j = j0 + t; j < j1; j += nt) next[j] = h_s[j] + 1.0f;
    }
    Barrier::sync(a, unsigned(s + 1));
  }
  if (bad) atomicAdd(a.errors, bad);
}

namespace {

// The floor run's CUDA objects, released on every path out.
struct FloorResources {
  cudaStream_t stream = nullptr;
  cudaEvent_t start = nullptr, stop = nullptr;
  unsigned int* sync = nullptr;  // counter [0], epoch [32], errors [64]: own 128-byte lines
  float* h = nullptr;
  FloorResources() = default;
  FloorResources(const FloorResources&) = delete;
  FloorResources& operator=(const FloorResources&) = delete;
  ~FloorResources() {
    if (stream) (void)cudaStreamSynchronize(stream);
    if (h) (void)cudaFree(h);
    if (sync) (void)cudaFree(sync);
    if (stop) (void)cudaEventDestroy(stop);
    if (start) (void)cudaEventDestroy(start);
    if (stream) (void)cudaStreamDestroy(stream);
  }
};
constexpr size_t kSyncWords = 96;

template <class Barrier>
double run_floor(int blocks, int threads, int steps, int h_floats, int sms) {
  auto kernel = barrier_floor_kernel<Barrier>;
  const size_t shared = size_t(h_floats) * sizeof(float);
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared)),
        "cudaFuncSetAttribute (barrier floor shared memory)");
  int per_sm = 0;
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, shared),
        "cudaOccupancyMaxActiveBlocksPerMultiprocessor (barrier floor)");
  if (int64_t(per_sm) * sms < blocks)
    throw std::invalid_argument("barrier floor: " + std::to_string(blocks) + " blocks of " +
                                std::to_string(threads) + " threads cannot be co-resident (at "
                                "most " + std::to_string(int64_t(per_sm) * sms) + ")");
  FloorResources r;
  check(cudaStreamCreateWithFlags(&r.stream, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
  check(cudaEventCreate(&r.start), "cudaEventCreate");
  check(cudaEventCreate(&r.stop), "cudaEventCreate");
  check(cudaMalloc(reinterpret_cast<void**>(&r.sync), kSyncWords * sizeof(unsigned int)),
        "cudaMalloc (barrier floor flags)");
  const size_t h_bytes = 2 * size_t(h_floats) * sizeof(float);
  if (h_bytes) check(cudaMalloc(reinterpret_cast<void**>(&r.h), h_bytes), "cudaMalloc (h)");
  FloorArgs a{r.sync, r.sync + 32, r.sync + 64, r.h, steps, h_floats};
  void* args[] = {&a};
  const auto reset = [&] {
    check(cudaMemsetAsync(r.sync, 0, kSyncWords * sizeof(unsigned int), r.stream),
          "cudaMemsetAsync (barrier floor flags)");
    if (h_bytes) check(cudaMemsetAsync(r.h, 0, h_bytes, r.stream), "cudaMemsetAsync (h)");
  };
  const auto launch = [&] {
    check(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), dim3(unsigned(blocks)),
                                      dim3(unsigned(threads)), args, shared, r.stream),
          "cudaLaunchCooperativeKernel (barrier floor)");
  };
  const auto stale_reads = [&] {
    unsigned int errors = 0;
    check(cudaMemcpyAsync(&errors, a.errors, sizeof errors, cudaMemcpyDeviceToHost, r.stream),
          "cudaMemcpyAsync (barrier floor errors)");
    check(cudaStreamSynchronize(r.stream), "cudaStreamSynchronize (barrier floor)");
    if (errors)
      throw std::runtime_error("barrier floor: " + std::to_string(errors) + " h values read "
                               "were not the previous step's: the barrier is broken");
  };
  reset();
  launch();  // warm-up: module load, first-touch of the buffers, clocks up
  stale_reads();
  reset();
  check(cudaEventRecord(r.start, r.stream), "cudaEventRecord");
  launch();
  check(cudaEventRecord(r.stop, r.stream), "cudaEventRecord");
  check(cudaEventSynchronize(r.stop), "cudaEventSynchronize");
  float ms = 0.f;
  check(cudaEventElapsedTime(&ms, r.start, r.stop), "cudaEventElapsedTime");
  stale_reads();
  return double(ms) * 1e3 / steps;
}

}  // namespace

double barrier_floor_us(int kind, int blocks, int threads, int steps, int h_floats, int device) {
  if (kind != kFloorGridSync && kind != kFloorFlag)
    throw std::invalid_argument("barrier floor: kind must be 0 (grid_sync) or 1 (flag), got " +
                                std::to_string(kind));
  if (blocks < 0 || threads < 1 || threads > kFloorMaxThreads || steps < 1 ||
      steps > kFloorMaxSteps || h_floats < 0)
    throw std::invalid_argument(
        "barrier floor: need blocks >= 0 (0: one per multiprocessor), 1 <= threads <= " +
        std::to_string(kFloorMaxThreads) + ", 1 <= steps <= " + std::to_string(kFloorMaxSteps) +
        ", h_floats >= 0; got blocks " + std::to_string(blocks) + ", threads " +
        std::to_string(threads) + ", steps " + std::to_string(steps) + ", h_floats " +
        std::to_string(h_floats));
  const int n = device_count();
  if (n == 0)
    throw std::runtime_error("barrier floor: no CUDA device is usable in this process (no GPU, "
                             "or no driver)");
  if (device < 0 || device >= n)
    throw std::invalid_argument("barrier floor: device must lie in [0, " + std::to_string(n) +
                                "), got " + std::to_string(device));
  DeviceGuard guard(device);
  const DeviceLimits limits = device_limits(device);
  const int sms = limits.multiprocessors;
  const int64_t optin = int64_t(limits.shared_optin);
  if (!limits.cooperative) throw std::runtime_error("barrier floor: the device has no cooperative launch");
  if (int64_t(h_floats) * int64_t(sizeof(float)) > optin)
    throw std::invalid_argument("barrier floor: h_floats " + std::to_string(h_floats) +
                                " floats exceed a block's shared memory (" +
                                std::to_string(optin) + " bytes)");
  if (blocks == 0) blocks = sms;
  return kind == kFloorGridSync ? run_floor<GridSyncBarrier>(blocks, threads, steps, h_floats, sms)
                                : run_floor<FlagBarrier>(blocks, threads, steps, h_floats, sms);
}

}  // namespace cuda
}  // namespace fusedrnn
