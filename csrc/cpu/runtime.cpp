// Threads, BLAS and SIMD facts for show_config().
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "fusedrnn/api.h"
#include "fusedrnn/check.h"

namespace fusedrnn {
namespace {
std::atomic<int> g_threads{0};  // 0: not yet initialised
}

void set_num_threads(int n) {
  FUSEDRNN_CHECK(n >= 1, "set_num_threads: n must be >= 1, got ", n);
  g_threads.store(n);
  // Not omp_set_num_threads: every region names its count, and the OpenMP runtime may be
  // shared with PyTorch's (same libgomp soname), whose default we must not change.
  // The BLAS runs single-threaded inside our OpenMP threads (cpu/gemm.h): its own pthread pool
  // never starts, so the two runtimes never compete for the cores.
  scipy_openblas_set_num_threads(1);
}

int get_num_threads() {
  int n = g_threads.load();
  if (n == 0) {
    // First use: OMP_NUM_THREADS (or the core count) governs both runtimes.
    n = omp_get_max_threads();
    set_num_threads(n);
  }
  return n;
}

// Workspace buffers are kept between calls: a fresh multi-megabyte allocation is a fresh
// mmap, and faulting its pages in (and unmapping them after) cost more than the whole B=1
// LSTM H=1024 forward it served (perf: clear_page/exc_page_fault on top).
namespace {
struct CachedBuffer {
  void* ptr;
  size_t bytes;
};
std::mutex g_pool_mutex;
std::vector<CachedBuffer> g_pool;  // idle buffers
constexpr size_t kPoolMaxBuffers = 8;
constexpr size_t kPoolMaxBytes = size_t(512) << 20;  // idle bytes kept at most

size_t pool_bytes() {
  size_t n = 0;
  for (const auto& b : g_pool) n += b.bytes;
  return n;
}
}  // namespace

// FUSEDRNN_POISON_WORKSPACE=1 fills every workspace with NaN bit patterns before use, so that
// a kernel reading workspace it did not write fails the tests deterministically (a reused
// buffer holds whatever the last call left; a fresh one, zeros).
static bool poison_workspace() {
  static const bool v = [] {
    const char* e = std::getenv("FUSEDRNN_POISON_WORKSPACE");
    return e && *e && *e != '0';
  }();
  return v;
}

static void* poisoned(void* p, size_t bytes) {
  if (poison_workspace()) std::memset(p, 0xff, bytes);
  return p;
}

void* workspace_acquire(size_t bytes, size_t& capacity) {
  bytes = std::max<size_t>(64, (bytes + 63) / 64 * 64);
  {
    std::lock_guard<std::mutex> lock(g_pool_mutex);
    // The smallest idle buffer that fits, unless it is much larger than needed.
    auto best = g_pool.end();
    for (auto it = g_pool.begin(); it != g_pool.end(); ++it)
      if (it->bytes >= bytes && it->bytes <= 4 * bytes &&
          (best == g_pool.end() || it->bytes < best->bytes))
        best = it;
    if (best != g_pool.end()) {
      void* p = best->ptr;
      capacity = best->bytes;
      g_pool.erase(best);
      return poisoned(p, capacity);
    }
  }
  void* p = std::aligned_alloc(64, bytes);
  FUSEDRNN_CHECK(p != nullptr, "out of memory allocating a ", bytes, "-byte workspace");
  capacity = bytes;
  return poisoned(p, bytes);
}

void workspace_release(void* ptr, size_t capacity) {
  if (!ptr) return;
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  g_pool.push_back({ptr, capacity});
  // Over the limits: free the oldest idle buffers.
  while (g_pool.size() > kPoolMaxBuffers || (g_pool.size() > 1 && pool_bytes() > kPoolMaxBytes)) {
    std::free(g_pool.front().ptr);
    g_pool.erase(g_pool.begin());
  }
}

void workspace_trim() {
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  for (const auto& b : g_pool) std::free(b.ptr);
  g_pool.clear();
}

std::string blas_name() { return "scipy-openblas32 (OpenBLAS)"; }
std::string blas_config() { return scipy_openblas_get_config(); }
std::string blas_core() { return scipy_openblas_get_corename(); }

std::string simd_compiled() {
  std::string s;
#if defined(__AVX512F__)
  s += "avx512f ";
#endif
#if defined(__AVX2__)
  s += "avx2 ";
#endif
#if defined(__FMA__)
  s += "fma ";
#endif
#if defined(__SSE2__)
  s += "sse2 ";
#endif
#if defined(__ARM_NEON)
  s += "neon ";
#endif
  if (!s.empty()) s.pop_back();
  return s.empty() ? "scalar" : s;
}

std::string simd_cpu() {
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return "avx512f";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "avx2+fma";
  if (__builtin_cpu_supports("avx")) return "avx";
  return "sse2";
#else
  return "unknown";
#endif
}

}  // namespace fusedrnn
