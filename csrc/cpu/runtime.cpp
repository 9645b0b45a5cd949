// Threads, BLAS and SIMD facts for show_config().
#include <cblas.h>
#include <omp.h>

#include <atomic>
#include <string>

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
