// The CPU backend of the stack loop (core/stack_loop.h): OpenMP for the copies and dropout,
// the per-ISA one-layer drivers (dispatch.cpp), scratch from the workspace pool.
#include <omp.h>

#include <cstring>

#include "core/dropout.h"
#include "core/stack_loop.h"
#include "device/emulated.h"
#include "fusedrnn/api.h"
#include "fusedrnn/stack.h"

namespace fusedrnn {

namespace {

// A scratch buffer from the workspace pool (api.h), returned on scope exit; n == 0: none.
template <class T>
class PoolBuffer {
 public:
  explicit PoolBuffer(int64_t n) {
    if (n > 0) ptr_ = static_cast<T*>(workspace_acquire(sizeof(T) * size_t(n), capacity_));
  }
  ~PoolBuffer() {
    if (ptr_) workspace_release(ptr_, capacity_);
  }
  PoolBuffer(PoolBuffer&& o) noexcept : ptr_(o.ptr_), capacity_(o.capacity_) { o.ptr_ = nullptr; }
  PoolBuffer(const PoolBuffer&) = delete;
  PoolBuffer& operator=(const PoolBuffer&) = delete;
  T* get() const { return ptr_; }

 private:
  T* ptr_ = nullptr;
  size_t capacity_ = 0;
};

struct CpuBackend {
  void* stream() const { return nullptr; }

  template <class T>
  PoolBuffer<T> scratch(int64_t n) {
    return PoolBuffer<T>(n);
  }

  template <class T>
  void layer_forward(CellKind kind, const ForwardParams<T>& p) {
    fusedrnn::layer_forward<T>(kind, p);
  }
  template <class T>
  void layer_backward(CellKind kind, const BackwardParams<T>& p) {
    fusedrnn::layer_backward<T>(kind, p);
  }

  // (a, b, c) -> (b, a, c): batch-first <-> time-major.
  template <class T>
  void swap_leading_axes(const T* src, T* dst, int64_t a, int64_t b, int64_t c) {
    const int nt = get_num_threads();
#pragma omp parallel for num_threads(nt) if (a * b * c >= (1 << 16))
    for (int64_t i = 0; i < a; ++i)
      for (int64_t j = 0; j < b; ++j)
        std::memcpy(dst + (j * a + i) * c, src + (i * b + j) * c, sizeof(T) * c);
  }

  void zero_padding(void* reserve, const std::vector<std::pair<size_t, size_t>>& padding) {
    for (const auto& [offset, bytes] : padding)
      std::memset(static_cast<char*>(reserve) + offset, 0, bytes);
  }

  void dropout_draw(uint8_t* keep, int64_t n, double p, uint64_t seed, int64_t layer) {
    const uint64_t stream = dropout_stream(seed, layer);
    const int nt = get_num_threads();
#pragma omp parallel for num_threads(nt) if (n >= (1 << 16))
    for (int64_t i = 0; i < n; ++i) keep[i] = dropout_keep(stream, i, p);
  }

  // A multiplication, as torch and the reference do, so a dropped NaN or inf stays NaN
  // (0 * inf) rather than becoming a silent 0.
  template <class T>
  void dropout_scale(T* a, const uint8_t* keep, int64_t n, double p) {
    const T scale = T(1.0 / (1.0 - p));
    const int nt = get_num_threads();
#pragma omp parallel for num_threads(nt) if (n >= (1 << 16))
    for (int64_t i = 0; i < n; ++i) a[i] *= keep[i] ? scale : T(0);
  }
};

}  // namespace

template <class T>
void stack_forward(const StackConfig& cfg, const StackWeights<T>* w, const int64_t* lengths,
                   const T* x, const T* h0, const T* c0, T* y, T* h_n, T* c_n, void* reserve) {
  if (device::emulation() >= 0)  // tests: the device backend's kernels, run on the host
    return device::emulated_stack_forward<T>(cfg, w, lengths, x, h0, c0, y, h_n, c_n, reserve);
  run_parallel_work([&] {
    CpuBackend be;
    core::stack_forward_loop<T>(be, cfg, w, lengths, x, h0, c0, y, h_n, c_n, reserve);
  });
}

template <class T>
void stack_backward(const StackConfig& cfg, const StackWeights<T>* w, const int64_t* lengths,
                    const T* x, const void* reserve, const T* dy, const T* dh_n, const T* dc_n,
                    T* dx, T* dh0, T* dc0, const StackGrads<T>* g, bool accumulate) {
  if (device::emulation() >= 0)
    return device::emulated_stack_backward<T>(cfg, w, lengths, x, reserve, dy, dh_n, dc_n, dx,
                                              dh0, dc0, g, accumulate);
  run_parallel_work([&] {
    CpuBackend be;
    core::stack_backward_loop<T>(be, cfg, w, lengths, x, reserve, dy, dh_n, dc_n, dx, dh0, dc0,
                                 g, accumulate);
  });
}

#define FUSEDRNN_INSTANTIATE_STACK(T)                                                        \
  template void stack_forward<T>(const StackConfig&, const StackWeights<T>*, const int64_t*, \
                                 const T*, const T*, const T*, T*, T*, T*, void*);           \
  template void stack_backward<T>(const StackConfig&, const StackWeights<T>*, const int64_t*, \
                                  const T*, const void*, const T*, const T*, const T*, T*, T*, \
                                  T*, const StackGrads<T>*, bool);

FUSEDRNN_INSTANTIATE_STACK(float)
FUSEDRNN_INSTANTIATE_STACK(double)

}  // namespace fusedrnn
