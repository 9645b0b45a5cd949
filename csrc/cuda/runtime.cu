// fusedrnn/cuda.h's runtime queries and copies, and the error type every CUDA call reports.
#include <cuda_runtime.h>

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <stdexcept>
#include <string>

#include "cuda/exec.cuh"
#include "cuda/grid.cuh"
#include "fusedrnn/cuda.h"

namespace fusedrnn {
namespace cuda {

void throw_cuda_error(cudaError_t err, const char* what) {
  (void)cudaGetLastError();  // clear a non-sticky error so the next call starts clean
  throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorName(err) +
                           ": " + cudaGetErrorString(err));
}

cudaMemPool_t scratch_pool(int device) {
  constexpr int kMaxDevices = 64;
  static std::mutex mutex;
  static cudaMemPool_t pools[kMaxDevices] = {};
  static bool tried[kMaxDevices] = {};
  if (device < 0 || device >= kMaxDevices) return nullptr;
  std::lock_guard<std::mutex> lock(mutex);
  if (!tried[device]) {
    tried[device] = true;
    cudaMemPoolProps props = {};
    props.allocType = cudaMemAllocationTypePinned;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = device;
    cudaMemPool_t pool = nullptr;
    if (cudaMemPoolCreate(&pool, &props) == cudaSuccess) {
      uint64_t keep = kPoolKeepBytes;
      if (cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep) == cudaSuccess)
        pools[device] = pool;
      else
        (void)cudaMemPoolDestroy(pool);
    }
    (void)cudaGetLastError();  // no pool: the default one (a device without pools support)
  }
  return pools[device];
}

DeviceLimits device_limits(int device) {
  constexpr int kMaxDevices = 64;
  static std::mutex mutex;
  static DeviceLimits known[kMaxDevices] = {};
  static bool read[kMaxDevices] = {};
  const bool cached = device >= 0 && device < kMaxDevices;
  if (cached) {
    std::lock_guard<std::mutex> lock(mutex);
    if (read[device]) return known[device];
  }
  int sms = 0, optin = 0, coop = 0;
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device),
        "cudaDeviceGetAttribute (multiprocessors)");
  check(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
        "cudaDeviceGetAttribute (shared memory per block, opt-in)");
  check(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device),
        "cudaDeviceGetAttribute (cooperative launch)");
  const DeviceLimits d{sms, size_t(optin), coop != 0};
  if (cached) {
    std::lock_guard<std::mutex> lock(mutex);
    known[device] = d;
    read[device] = true;
  }
  return d;
}

PersistentSetting persistent_setting(int device) {
  PersistentSetting s{fusedrnn::device::PersistentMode::Off, 0, 0};
  const char* env = std::getenv("FUSEDRNN_PERSISTENT");
  const std::string mode = env ? env : "0";
  if (mode == "1" || mode == "on") s.mode = fusedrnn::device::PersistentMode::On;
  else if (mode == "auto") s.mode = fusedrnn::device::PersistentMode::Auto;
  else if (mode != "0" && mode != "off" && !mode.empty())
    throw std::invalid_argument("FUSEDRNN_PERSISTENT must be 0, 1 or auto, got '" + mode + "'");
  if (s.mode == fusedrnn::device::PersistentMode::Off) return s;
  const DeviceLimits d = device_limits(device);
  if (!d.cooperative) s.mode = fusedrnn::device::PersistentMode::Off;
  s.multiprocessors = d.multiprocessors;
  s.shared_optin = d.shared_optin;
  return s;
}

namespace {
std::atomic<long long> g_persistent_launched{0}, g_persistent_declined{0};
}

void count_persistent_launch(bool launched) {
  (launched ? g_persistent_launched : g_persistent_declined).fetch_add(1);
}

PersistentCounts persistent_counts() {
  return PersistentCounts{g_persistent_launched.load(), g_persistent_declined.load()};
}

int device_count() {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  // No driver (a machine without a GPU: 35) or no device (100): no GPU, not an error.
  if (err == cudaErrorInsufficientDriver || err == cudaErrorNoDevice) {
    (void)cudaGetLastError();
    return 0;
  }
  check(err, "cudaGetDeviceCount");
  return n;
}

std::string device_name(int device) {
  cudaDeviceProp prop;
  check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  return std::string(prop.name) + " (sm_" + std::to_string(prop.major) +
         std::to_string(prop.minor) + ")";
}

int runtime_version() {
  int v = 0;
  check(cudaRuntimeGetVersion(&v), "cudaRuntimeGetVersion");
  return v;
}

int driver_version() {
  int v = 0;
  if (cudaDriverGetVersion(&v) != cudaSuccess) return 0;  // 0 without a driver
  return v;
}

void copy_to_host(void* dst, const void* src, size_t bytes, int device, void* stream) {
  if (!bytes) return;
  DeviceGuard guard(device);
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s),
        "cudaMemcpyAsync (device to host)");
  check(cudaStreamSynchronize(s), "cudaStreamSynchronize (device to host copy)");
}

void stream_wait(int device, void* producer, void* consumer) {
  if (producer == consumer) return;
  DeviceGuard guard(device);
  cudaEvent_t event;
  check(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "cudaEventCreateWithFlags");
  cudaError_t err = cudaEventRecord(event, static_cast<cudaStream_t>(producer));
  if (err == cudaSuccess) err = cudaStreamWaitEvent(static_cast<cudaStream_t>(consumer), event, 0);
  (void)cudaEventDestroy(event);  // released once the wait is satisfied
  check(err, "cudaEventRecord/cudaStreamWaitEvent (stream_wait)");
}

}  // namespace cuda
}  // namespace fusedrnn
