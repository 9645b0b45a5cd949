// Threads, BLAS and SIMD facts for show_config().
#include <cblas.h>
#include <omp.h>
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "cpu/tuning.h"
#include "fusedrnn/api.h"
#include "fusedrnn/check.h"

namespace fusedrnn {
namespace {
std::atomic<int> g_threads{0};  // 0: not yet initialised
}

void set_num_threads(int n) {
  FUSEDRNN_CHECK(n >= 1 && n <= kMaxThreads, "set_num_threads: n must lie in [1, ", kMaxThreads,
                 "], got ", n);
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
    // First use: OMP_NUM_THREADS (or the core count) governs both runtimes; a larger value
    // than kMaxThreads is taken as kMaxThreads (libgomp crashes or aborts creating ~40000).
    n = std::min(std::max(omp_get_max_threads(), 1), kMaxThreads);
    set_num_threads(n);
  }
  return n;
}

// ---------------------------------------------------------------------------------------------
// fork. libgomp keeps each master thread's worker pool in that thread's state and has no fork
// handler: in a child forked after the parent ran a multi-threaded region (ours or PyTorch's,
// which shares libgomp), the thread that called fork still "has" workers that do not exist,
// and its next multi-threaded region waits for them forever. A thread created in the child
// gets a fresh pool. So in a forked child, multi-threaded work asked for on the forking thread
// runs on one helper thread started in the child (the caller blocks until it is done); every
// other thread calls straight through. One-thread regions never touch the pool and run in place.
namespace {

// Jobs come only from the forking thread, so one at a time.
struct ForkHelper {
  std::mutex m;
  std::condition_variable cv;
  const std::function<void()>* job = nullptr;
  bool done = false;
  std::exception_ptr error;
  bool started = false;
};

std::atomic<bool> g_forked_child{false};
pthread_t g_forking_thread;
// Raw storage, constructed afresh in each child (the parent's helper thread does not exist
// there and its mutexes may be held); never destroyed, so exit cannot race a running job.
alignas(ForkHelper) unsigned char g_helper_storage[sizeof(ForkHelper)];
ForkHelper* g_helper = nullptr;

void helper_loop(ForkHelper* h) {
  std::unique_lock<std::mutex> lock(h->m);
  for (;;) {
    h->cv.wait(lock, [&] { return h->job != nullptr; });
    const std::function<void()>* job = h->job;
    lock.unlock();
    std::exception_ptr error;
    try {
      (*job)();
    } catch (...) {
      error = std::current_exception();
    }
    lock.lock();
    h->job = nullptr;
    h->error = error;
    h->done = true;
    h->cv.notify_all();
  }
}

}  // namespace

void run_parallel_work(const std::function<void()>& fn) {
  if (!g_forked_child.load(std::memory_order_acquire) ||
      !pthread_equal(pthread_self(), g_forking_thread) || get_num_threads() == 1) {
    fn();
    return;
  }
  ForkHelper* h = g_helper;
  std::unique_lock<std::mutex> lock(h->m);
  if (!h->started) {
    std::thread(helper_loop, h).detach();
    h->started = true;
  }
  h->done = false;
  h->job = &fn;
  h->cv.notify_all();
  h->cv.wait(lock, [&] { return h->done; });
  if (h->error) {
    std::exception_ptr e = h->error;
    h->error = nullptr;
    std::rethrow_exception(e);
  }
}

// ---------------------------------------------------------------------------------------------
// Workspace buffers are kept between calls: a fresh multi-megabyte allocation is a fresh
// mmap, and faulting its pages in (and unmapping them after) cost more than the whole B=1
// LSTM H=1024 forward it served (perf: clear_page/exc_page_fault on top).
namespace {
struct CachedBuffer {
  void* ptr;
  size_t bytes;
};
struct Pool {
  std::mutex mutex;
  std::vector<CachedBuffer> idle;
  bool closed = false;  // at exit: buffers are freed, none kept
  size_t idle_bytes() const {
    size_t n = 0;
    for (const auto& b : idle) n += b.bytes;
    return n;
  }
};
// Never destroyed (a thread still inside a call at exit may release into it); its idle
// buffers are freed at exit by PoolCloser.
Pool& pool() {
  static Pool* p = new Pool;
  return *p;
}
constexpr size_t kPoolMaxBuffers = 8;
constexpr size_t kPoolMaxBytes = size_t(512) << 20;  // idle bytes kept at most

struct PoolCloser {
  ~PoolCloser() {
    Pool& p = pool();
    std::lock_guard<std::mutex> lock(p.mutex);
    p.closed = true;
    for (const auto& b : p.idle) std::free(b.ptr);
    p.idle.clear();
  }
};
PoolCloser g_pool_closer;

// fork: no other thread may hold the pool's mutex in the child (it would stay locked there).
void before_fork() { pool().mutex.lock(); }
void after_fork_in_parent() { pool().mutex.unlock(); }
void after_fork_in_child() {
  pool().mutex.unlock();
  g_helper = new (g_helper_storage) ForkHelper();
  g_forking_thread = pthread_self();
  g_forked_child.store(true, std::memory_order_release);
}
const int g_atfork_registered = [] {
  pool();
  return pthread_atfork(before_fork, after_fork_in_parent, after_fork_in_child);
}();
}  // namespace

// FUSEDRNN_POISON_WORKSPACE=1 (or the knob poison_workspace, cpu/tuning.h) fills every
// workspace with NaN bit patterns before use, so that a kernel reading workspace it did not
// write fails the tests deterministically (a reused buffer holds whatever the last call left;
// a fresh one, zeros). Read once per buffer.
static bool poison_workspace() { return tuning(Tuning::PoisonWorkspace) != 0; }

static void* poisoned(void* p, size_t bytes) {
  if (poison_workspace()) std::memset(p, 0xff, bytes);
  return p;
}

void* workspace_acquire(size_t bytes, size_t& capacity) {
  bytes = std::max<size_t>(64, (bytes + 63) / 64 * 64);
  {
    Pool& p = pool();
    std::lock_guard<std::mutex> lock(p.mutex);
    // The smallest idle buffer that fits, unless it is much larger than needed.
    auto best = p.idle.end();
    for (auto it = p.idle.begin(); it != p.idle.end(); ++it)
      if (it->bytes >= bytes && it->bytes <= 4 * bytes &&
          (best == p.idle.end() || it->bytes < best->bytes))
        best = it;
    if (best != p.idle.end()) {
      void* ptr = best->ptr;
      capacity = best->bytes;
      p.idle.erase(best);
      return poisoned(ptr, capacity);
    }
  }
  void* ptr = std::aligned_alloc(64, bytes);
  if (!ptr) throw std::bad_alloc();
  capacity = bytes;
  return poisoned(ptr, bytes);
}

void workspace_release(void* ptr, size_t capacity) {
  if (!ptr) return;
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mutex);
  if (p.closed || capacity > kPoolMaxBytes) {  // never kept: over the idle limit on its own
    std::free(ptr);
    return;
  }
  p.idle.push_back({ptr, capacity});
  // Over the limits: free the oldest idle buffers.
  while (p.idle.size() > kPoolMaxBuffers || p.idle_bytes() > kPoolMaxBytes) {
    std::free(p.idle.front().ptr);
    p.idle.erase(p.idle.begin());
  }
}

void workspace_trim() {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mutex);
  for (const auto& b : p.idle) std::free(b.ptr);
  p.idle.clear();
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
