// A plain C door into fusedrnn's thread count, exported from _C for threadpoolctl
// (python/fusedrnn/_threadpoolctl.py). threadpoolctl finds libraries among those loaded in the
// process and calls their C functions through ctypes, without Python: these are the only
// symbols _C exports besides PyInit__C. pybind11_add_module builds _C with hidden visibility,
// so each is marked visible explicitly. They never throw (a C caller cannot catch).
#include <algorithm>

#include "fusedrnn/api.h"
#include "fusedrnn/build_config.h"

#define FUSEDRNN_C_EXPORT extern "C" __attribute__((visibility("default")))

// The threads of fusedrnn's OpenMP regions, as fusedrnn.get_num_threads().
FUSEDRNN_C_EXPORT int fusedrnn_get_num_threads(void) noexcept {
  try {
    return fusedrnn::get_num_threads();
  } catch (...) {
    return -1;
  }
}

// fusedrnn.set_num_threads(n), with n clamped to [1, MAX_THREADS] (as libgomp takes
// omp_set_num_threads(0) for 1) instead of raising. Returns the count set, -1 on failure.
FUSEDRNN_C_EXPORT int fusedrnn_set_num_threads(int n) noexcept {
  try {
    n = std::min(std::max(n, 1), fusedrnn::kMaxThreads);
    fusedrnn::set_num_threads(n);
    return n;
  } catch (...) {
    return -1;
  }
}

// The version of this build, as fusedrnn.config()["version"].
FUSEDRNN_C_EXPORT const char* fusedrnn_version(void) noexcept { return FUSEDRNN_VERSION; }
