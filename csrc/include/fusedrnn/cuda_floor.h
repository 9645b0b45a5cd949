#pragma once
// The floor under a persistent kernel's step (issue 12, "measure the floor first"): a
// cooperative launch whose blocks do nothing but meet at a grid-wide barrier once per step,
// optionally exchanging an h vector through global memory as the persistent loops do
// (csrc/device/persistent.h). Plain C++ so the bindings (g++) call it without CUDA headers;
// present in a build with FUSEDRNN_WITH_CUDA == 1 only (csrc/cuda/floor.cu).
namespace fusedrnn {
namespace cuda {

// The barrier of a floor run.
enum FloorBarrier : int {
  kFloorGridSync = 0,  // cooperative_groups::this_grid().sync()
  kFloorFlag = 1,      // own barrier: one thread per block atomicAdds a global counter, the
                       // last to arrive bumps a global epoch, the others spin on it (volatile),
                       // __threadfence on either side
};

// Microseconds per step of a persistent loop of `steps` steps of barrier `kind` on `blocks`
// co-resident blocks (0: one per multiprocessor) of `threads` threads (1..1024) on `device`.
// With h_floats > 0 every step also exchanges an h vector of that many floats (double-buffered
// by step parity in global memory): each block reads all of it into shared memory, writes its
// own slice (blocks own balanced slices) of the next step's buffer, then the barrier; the
// values read are checked (a stale read throws: the barrier would be broken).
//
// Timed with CUDA events around one cooperative launch on a private stream, after a warm-up
// launch of the same shape. Throws std::invalid_argument for bad arguments (a kind other than
// the two above, blocks that cannot be co-resident, h_floats over a block's shared memory),
// std::runtime_error without a usable device or on a failed CUDA call (naming it).
double barrier_floor_us(int kind, int blocks, int threads, int steps, int h_floats, int device);

}  // namespace cuda
}  // namespace fusedrnn
