// cuBLAS behind the device backend's one GEMM function, loaded at run time: libcublas.so.13
// from the candidates fusedrnn.cuda passes (the nvidia-cublas wheel's directory) or the
// dynamic linker's search (a libcublas torch has already loaded is found by its soname).
// Nothing links against it, so importing fusedrnn never needs it; without it (or with
// FUSEDRNN_CUBLAS=0) the own GemmBlock kernel runs. The functions used are declared here from
// cuBLAS's documented C API (stable since CUDA 4), not from its headers, which the build
// machine need not have.
#include <dlfcn.h>

#include <climits>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "cuda/cublas.h"
#include "cuda/exec.cuh"
#include "device/blas_mapping.h"

namespace fusedrnn {
namespace cuda {

namespace {

using Handle = void*;
using Status = int;  // cublasStatus_t: 0 is CUBLAS_STATUS_SUCCESS
using Create = Status (*)(Handle*);
using SetStream = Status (*)(Handle, cudaStream_t);
using Sgemm = Status (*)(Handle, int, int, int, int, int, const float*, const float*, int,
                         const float*, int, const float*, float*, int);
using Dgemm = Status (*)(Handle, int, int, int, int, int, const double*, const double*, int,
                         const double*, int, const double*, double*, int);
constexpr int kOpN = 0, kOpT = 1;  // cublasOperation_t

struct Library {
  std::once_flag once;
  std::mutex mutex;
  std::vector<std::string> candidates;
  std::string status = "not loaded yet (loads at the first GEMM)";
  void* dl = nullptr;
  Create create = nullptr;
  SetStream set_stream = nullptr;
  Sgemm sgemm = nullptr;
  Dgemm dgemm = nullptr;
};

Library& lib() {
  static Library l;
  return l;
}

void load(Library& l) {
  const char* env = std::getenv("FUSEDRNN_CUBLAS");
  if (env && std::string(env) == "0") {
    l.status = "disabled (FUSEDRNN_CUBLAS=0): own GEMM kernel";
    return;
  }
  std::vector<std::string> names;
  {
    std::lock_guard<std::mutex> g(l.mutex);
    names = l.candidates;
  }
  names.push_back("libcublas.so.13");
  std::string tried;
  for (const std::string& name : names) {
    void* dl = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!dl) {
      tried += " " + name;
      continue;
    }
    l.create = reinterpret_cast<Create>(dlsym(dl, "cublasCreate_v2"));
    l.set_stream = reinterpret_cast<SetStream>(dlsym(dl, "cublasSetStream_v2"));
    l.sgemm = reinterpret_cast<Sgemm>(dlsym(dl, "cublasSgemm_v2"));
    l.dgemm = reinterpret_cast<Dgemm>(dlsym(dl, "cublasDgemm_v2"));
    if (l.create && l.set_stream && l.sgemm && l.dgemm) {
      l.dl = dl;
      l.status = "loaded: " + name;
      return;
    }
    dlclose(dl);
    tried += " " + name + " (missing symbols)";
  }
  l.status = "not found (tried" + tried + "): own GEMM kernel";
}

// One handle per (thread, device): a handle's stream is per call state, so threads never share
// one. Handles live as long as the process (cuBLAS may not be unloaded at exit safely).
Handle handle_for(Library& l, int device) {
  thread_local std::map<int, Handle> handles;
  auto it = handles.find(device);
  if (it != handles.end()) return it->second;
  Handle h = nullptr;
  if (l.create(&h) != 0) return nullptr;
  handles[device] = h;
  return h;
}

bool fits_int(int64_t v) { return v >= 0 && v <= INT_MAX; }

}  // namespace

void set_cublas_candidates(const std::vector<std::string>& paths) {
  Library& l = lib();
  std::lock_guard<std::mutex> g(l.mutex);
  l.candidates = paths;
}

std::string cublas_status() {
  Library& l = lib();
  std::lock_guard<std::mutex> g(l.mutex);
  return l.status;
}

template <class T>
bool cublas_gemm(cudaStream_t stream, bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha,
                 const T* A, int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  Library& l = lib();
  std::call_once(l.once, [&] { load(l); });
  if (!l.dl || !fits_int(M) || !fits_int(N) || !fits_int(K) || !fits_int(lda) ||
      !fits_int(ldb) || !fits_int(ldc))
    return false;
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice (cuBLAS)");
  Handle h = handle_for(l, device);
  if (!h) return false;
  if (l.set_stream(h, stream) != 0) throw std::runtime_error("cuBLAS: cublasSetStream_v2 failed");
  const device::ColMajorGemm c = device::to_col_major(ta, tb, M, N, K);
  Status st;
  if constexpr (sizeof(T) == 4)
    st = l.sgemm(h, c.trans_first ? kOpT : kOpN, c.trans_second ? kOpT : kOpN, int(c.m),
                 int(c.n), int(c.k), &alpha, B, int(ldb), A, int(lda), &beta, C, int(ldc));
  else
    st = l.dgemm(h, c.trans_first ? kOpT : kOpN, c.trans_second ? kOpT : kOpN, int(c.m),
                 int(c.n), int(c.k), &alpha, B, int(ldb), A, int(lda), &beta, C, int(ldc));
  if (st != 0)
    throw std::runtime_error("cuBLAS: " + std::string(sizeof(T) == 4 ? "cublasSgemm_v2"
                                                                       : "cublasDgemm_v2") +
                             " failed with status " + std::to_string(st));
  return true;
}

template bool cublas_gemm<float>(cudaStream_t, bool, bool, int64_t, int64_t, int64_t, float,
                                 const float*, int64_t, const float*, int64_t, float, float*,
                                 int64_t);
template bool cublas_gemm<double>(cudaStream_t, bool, bool, int64_t, int64_t, int64_t, double,
                                  const double*, int64_t, const double*, int64_t, double,
                                  double*, int64_t);

}  // namespace cuda
}  // namespace fusedrnn
