#pragma once
// Block programs: code for a grid of co-resident blocks that meet at grid-wide barriers (the
// persistent kernels, persistent.h), written once against a block context:
//
//   ctx.block(), ctx.blocks(), ctx.threads()   this block, the grid's blocks, threads per block
//   ctx.for_threads(f)    one phase: f(t) for this thread (device) / every t (host), where f
//                         may only read what earlier phases wrote
//   ctx.sync_block()      the block's threads meet (__syncthreads)
//   ctx.grid_sync()       every thread of every block meets; writes before are visible after
//   ctx.shared()          the block's dynamic shared memory
//   typename Ctx::template Private<T, N> p(ctx); p.at(t)
//                         N values private to thread t that live across phases (registers on
//                         a device, where one thread runs every phase; a slot per thread on
//                         the host, where a phase runs for all threads before the next)
//
// CUDA runs a program as a cooperative kernel (csrc/cuda/grid.cuh). The host runner below runs
// each block as a std::thread meeting the others at a barrier, and a block's threads as a loop
// per phase, ascending or descending: the test shim that checks the programs on a CPU (a phase
// whose threads depend on each other's writes gives different results in the two orders).
#include <algorithm>
#include <condition_variable>
#include <cstddef>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace fusedrnn {
namespace device {

class HostBarrier {
 public:
  explicit HostBarrier(int count) : count_(count), waiting_(0), generation_(0) {}
  void arrive_and_wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    const long gen = generation_;
    if (++waiting_ == count_) {
      waiting_ = 0;
      ++generation_;
      cv_.notify_all();
      return;
    }
    cv_.wait(lock, [&] { return generation_ != gen; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  const int count_;
  int waiting_;
  long generation_;
};

struct HostBlock {
  int block_, blocks_, threads_;
  char* shared_;
  HostBarrier* barrier_;
  bool descending_;

  template <class T, int N>
  struct Private {
    std::vector<T> slots;
    explicit Private(const HostBlock& ctx) : slots(size_t(ctx.threads_) * N) {}
    T* at(int t) { return slots.data() + size_t(t) * N; }
  };

  int block() const { return block_; }
  int blocks() const { return blocks_; }
  int threads() const { return threads_; }
  char* shared() const { return shared_; }
  template <class F>
  void for_threads(F&& f) const {
    if (descending_)
      for (int t = threads_ - 1; t >= 0; --t) f(t);
    else
      for (int t = 0; t < threads_; ++t) f(t);
  }
  void sync_block() const {}
  void grid_sync() const { barrier_->arrive_and_wait(); }
};

// program(ctx) for independent blocks (no grid_sync), one after another on this thread.
template <class Program>
void run_host_blocks(int64_t blocks, int threads, size_t shared_bytes, bool descending,
                     const Program& program) {
  std::vector<char> shared(shared_bytes);
  for (int64_t b = 0; b < blocks; ++b) {
    std::fill(shared.begin(), shared.end(), char(-1));
    HostBlock ctx{int(b), int(blocks), threads, shared.data(), nullptr, descending};
    program(ctx);
  }
}

// program(ctx) on `blocks` host threads; shared memory starts as all-ones bytes (NaN in every
// float type), so a read of shared memory no phase wrote poisons the result.
template <class Program>
void run_host_grid(int blocks, int threads, size_t shared_bytes, bool descending,
                   const Program& program) {
  HostBarrier barrier(blocks);
  std::vector<std::vector<char>> shared(static_cast<size_t>(blocks),
                                        std::vector<char>(shared_bytes, char(-1)));
  std::vector<std::exception_ptr> errors(static_cast<size_t>(blocks));
  std::vector<std::thread> pool;
  pool.reserve(size_t(blocks));
  for (int b = 0; b < blocks; ++b)
    pool.emplace_back([&, b] {
      try {
        HostBlock ctx{b, blocks, threads, shared[size_t(b)].data(), &barrier, descending};
        program(ctx);
      } catch (...) {  // programs do not throw (device code); kept for a clear failure
        errors[size_t(b)] = std::current_exception();
      }
    });
  for (auto& t : pool) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace device
}  // namespace fusedrnn
