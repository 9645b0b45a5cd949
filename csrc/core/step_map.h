#pragma once
// Which time each sequence processes at each step, and where a unit's gate pre-activations
// come from: backend-neutral, host and device (docs/design.md §3.4).
//
// Every array indexed by time (x, y, saved values, dXP, ...) uses row te*B + b. At step s
// sequence b is active iff s < L_b and then processes time te = s (forward direction) or
// L_b - 1 - s (reverse), so both directions start together and an inactive sequence keeps its
// state. A backend runs max_length() steps.
#include <cstdint>

#include "fusedrnn/common.h"

// Unrolls the (at most 4) gate loop in either compiler.
#if defined(__CUDACC__)
#define FUSEDRNN_UNROLL_GATES _Pragma("unroll")
#else
#define FUSEDRNN_UNROLL_GATES _Pragma("GCC unroll 4")
#endif

namespace fusedrnn {
FUSEDRNN_ISA_BEGIN

struct StepMap {
  const int64_t* lengths;  // (B), each in [1, steps]; null: all sequences run `steps`
  int64_t steps;           // T
  bool reverse;
  FUSEDRNN_HOST_DEVICE int64_t len(int64_t b) const { return lengths ? lengths[b] : steps; }
  FUSEDRNN_HOST_DEVICE bool active(int64_t s, int64_t b) const { return s < len(b); }
  FUSEDRNN_HOST_DEVICE int64_t time(int64_t s, int64_t b) const {
    return reverse ? len(b) - 1 - s : s;
  }
};

// The steps a call runs: the longest sequence (T without lengths).
FUSEDRNN_HOST_DEVICE int64_t max_length(const int64_t* lengths, int64_t B, int64_t T) {
  if (!lengths) return T;
  int64_t m = 0;
  for (int64_t b = 0; b < B; ++b) m = lengths[b] > m ? lengths[b] : m;
  return m;
}

// Unit j's pre-activations for gate blocks [0, Gates): the input part ax[g] and the recurrent
// part ah[g] with b_hh added (b_ih is already in the input part). Gate g of unit j sits at
// x_row[g * x_gate_stride + j] and h_row[g * h_gate_stride + j]; the strides let a backend
// keep either array gate-major over all H units or over its own block of units. One call per
// (batch row, unit): the CPU calls it inside its vectorised loop over j, a CUDA kernel per
// thread. Gates < kGates gathers the first blocks only (the two-phase GRU's r and z).
template <int Gates, class T>
FUSEDRNN_HOST_DEVICE void gather_preactivations(T* ax, T* ah, const T* x_row,
                                                int64_t x_gate_stride, const T* h_row,
                                                int64_t h_gate_stride, const T* b_hh,
                                                int64_t H, int64_t j) {
  FUSEDRNN_UNROLL_GATES for (int g = 0; g < Gates; ++g) {
    ax[g] = x_row[g * x_gate_stride + j];
    ah[g] = h_row[g * h_gate_stride + j] + b_hh[g * H + j];
  }
}

FUSEDRNN_ISA_END
}  // namespace fusedrnn

#undef FUSEDRNN_UNROLL_GATES
