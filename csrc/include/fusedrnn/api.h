#pragma once
// C++ entry points of the CPU backend. Bindings include only this header.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "fusedrnn/params.h"

namespace fusedrnn {

// Workspace memory, kept between calls (cpu/runtime.cpp). acquire returns at least `bytes`
// (64-byte aligned) and its capacity, which release takes back; trim frees every idle buffer.
void* workspace_acquire(size_t bytes, size_t& capacity);
void workspace_release(void* ptr, size_t capacity);
void workspace_trim();

// 64-bit fingerprints of n arrays (data[i], bytes[i] bytes) into out[i], the same whatever the
// thread count: a training forward stamps the arrays backward will read, backward checks
// them, so an in-place change in between raises instead of mixing old activations with new
// weights. Parallel over 256 KiB chunks (cpu/stamp.h, per instruction set).
void content_stamps(size_t n, const void* const* data, const size_t* bytes, uint64_t* out);

// Runs fn where a multi-threaded OpenMP region cannot hang: in place, except on the thread
// that called fork() in a forked child, whose libgomp worker pool is stale (cpu/runtime.cpp).
// Exceptions propagate. Every entry point that may open a parallel region goes through it.
void run_parallel_work(const std::function<void()>& fn);

template <class T>
void layer_forward(CellKind kind, const ForwardParams<T>& p);
template <class T>
void layer_backward(CellKind kind, const BackwardParams<T>& p);

// A whole stack: num_layers x num_directions in one call (see cpu/stack.cpp).
template <class T>
struct StackWeights {  // one layer and direction, PyTorch's tensors
  const T* w_ih = nullptr;
  const T* w_hh = nullptr;
  const T* b_ih = nullptr;
  const T* b_hh = nullptr;
  const T* w_hr = nullptr;
};

template <class T>
struct StackGrads {
  T* w_ih = nullptr;
  T* w_hh = nullptr;
  T* b_ih = nullptr;
  T* b_hh = nullptr;
  T* w_hr = nullptr;
};

struct StackConfig {
  CellKind kind = CellKind::Lstm;
  int64_t steps = 0, batch = 0, input = 0, hidden = 0, proj = 0;
  int64_t layers = 1, dirs = 1;
  bool batch_first = false;
  double dropout = 0.0;   // applied to every layer's output but the last, in training
  uint64_t seed = 0;      // dropout masks are a pure function of (seed, layer, element)
  int64_t recurrent() const { return proj > 0 ? proj : hidden; }
  int64_t layer_input(int64_t l) const { return l == 0 ? input : dirs * recurrent(); }
};

// What a training forward keeps for backward. Created by stack_forward, owned by the caller.
template <class T>
struct StackState;

template <class T>
struct StackStateDeleter {
  void operator()(StackState<T>* s) const;
};
template <class T>
using StackStatePtr = std::unique_ptr<StackState<T>, StackStateDeleter<T>>;

// x: (T, B, I) or (B, T, I) when batch_first; y likewise with D*R features; h0/h_n
// (L*D, B, R); c0/c_n (L*D, B, H); lengths (B) or null. Returns the saved state in training
// (null in inference); it points at x (unless batch_first) and at the weights, which must stay
// alive and unchanged until backward.
template <class T>
StackStatePtr<T> stack_forward(const StackConfig& cfg, const std::vector<StackWeights<T>>& w,
                               const int64_t* lengths, const T* x, const T* h0, const T* c0,
                               T* y, T* h_n, T* c_n, bool training);

// dy like y, dh_n like h_n, dc_n like c_n (each may be null: zeros). Gradients are written
// (or added, with accumulate) into g, one entry per layer and direction.
template <class T>
void stack_backward(const StackState<T>& state, const std::vector<StackWeights<T>>& w,
                    const T* dy, const T* dh_n, const T* dc_n, T* dx, T* dh0, T* dc0,
                    const std::vector<StackGrads<T>>& g, bool accumulate);

// The dropout keep-mask of layer boundary l (after layer l), (T, B, D*R) time-major, 1 = kept.
template <class T>
const uint8_t* stack_keep_mask(const StackState<T>& state, int64_t l);

// Threads used by the OpenMP regions and the BLAS (both, never nested). n in [1, kMaxThreads]
// (std::invalid_argument otherwise); OpenMP may grant fewer, and the kernels split their work
// over the team they get.
constexpr int kMaxThreads = 1024;
void set_num_threads(int n);
int get_num_threads();

std::string blas_name();
std::string blas_config();
std::string blas_core();
std::string simd_compiled();  // instruction sets the compiler was allowed to use
std::string simd_cpu();       // what the running CPU supports (best first)
std::string simd_path();      // the kernels' instruction set chosen at run time

}  // namespace fusedrnn
