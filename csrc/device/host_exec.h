#pragma once
// The host executor of the device backend (layer.h): the kernels' functors run in a plain loop
// over their elements, buffers are host memory. It exists to test the device code paths
// (every functor, the step sequence, the GEMM tiles) on a machine without a GPU; it is not a
// fast CPU path (the CPU backend is csrc/cpu).
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>

#include "device/grid.h"
#include "device/persistent.h"

namespace fusedrnn {
namespace device {

struct HostExec {
  template <class T>
  class Buffer {
   public:
    explicit Buffer(int64_t n) : data_(n > 0 ? new T[size_t(n)] : nullptr) {
      // Scratch starts as NaN where T is floating: a kernel that reads what no kernel wrote
      // poisons the result instead of passing by luck (a device allocation is garbage too).
      for (int64_t i = 0; i < n; ++i) data_[size_t(i)] = poison(T());
    }
    T* get() const { return data_.get(); }

   private:
    template <class U>
    static U poison(U) {
      if constexpr (std::numeric_limits<U>::has_quiet_NaN) return std::numeric_limits<U>::quiet_NaN();
      else return U(0xAB);
    }
    std::unique_ptr<T[]> data_;
  };

  // The order the elements of a launch run in: 0 ascending, 1 descending, 2 a stride
  // permutation. A kernel whose result depends on it (one element reading what another writes
  // in the same launch: a race on a GPU) fails the tests in one of the orders.
  int order = 0;
  // The persistent loops (persistent.h) on the host runner (grid.h): off unless a test asks,
  // with a grid of at most max_blocks blocks of `threads` threads.
  PersistentMode persistent = PersistentMode::Off;
  int max_blocks = 3, threads = 32;
  size_t shared_limit = size_t(1) << 24;

  void* stream() const { return nullptr; }

  template <class T>
  Buffer<T> buffer(int64_t n) {
    return Buffer<T>(n);
  }

  template <class F>
  void launch(const char* /*name*/, int64_t n, const F& f) {
    if (n <= 0) return;
    if (order == 1) {
      for (int64_t i = n - 1; i >= 0; --i) f(i);
    } else if (order == 2) {
      // i -> (i * k) mod n with k coprime to n visits every element once.
      int64_t k = 7919 % n ? 7919 : 7907;
      while (n > 1 && gcd(k, n) != 1) ++k;
      for (int64_t i = 0; i < n; ++i) f(int64_t((unsigned __int128)(i) * uint64_t(k) % uint64_t(n)));
    } else {
      for (int64_t i = 0; i < n; ++i) f(i);
    }
  }

  // No vendor BLAS on the host executor: the GEMM tiles run, which is what is under test.
  template <class T>
  bool vendor_gemm(bool, bool, int64_t, int64_t, int64_t, T, const T*, int64_t, const T*,
                   int64_t, T, T*, int64_t) {
    return false;
  }

  PersistentPlan persistent_plan(bool cell_ok, int64_t G, int64_t B, int64_t H, size_t elem,
                                 bool forward) const {
    return plan_persistent(persistent, cell_ok, G, B, H, elem, forward, max_blocks, threads,
                           shared_limit, /*auto_max_batch=*/16);
  }

  template <class Program>
  void run_blocks(const char* /*name*/, int64_t blocks, int threads, size_t shared_bytes,
                  const Program& program) {
    run_host_blocks(blocks, threads, shared_bytes, order == 1, program);
  }

  template <class Program>
  bool run_grid(const char* /*name*/, const PersistentPlan& plan, const Program& program) {
    run_host_grid(plan.blocks, plan.threads, plan.shared_bytes, order == 1, program);
    return true;
  }

  static int64_t gcd(int64_t a, int64_t b) {
    while (b) {
      const int64_t t = a % b;
      a = b;
      b = t;
    }
    return a;
  }

  void copy(void* dst, const void* src, size_t bytes) {
    if (bytes) std::memcpy(dst, src, bytes);
  }

  void to_host(void* dst, const void* src, size_t bytes) { copy(dst, src, bytes); }
};

}  // namespace device
}  // namespace fusedrnn
