#pragma once
// The one native entry point: a whole stack (layers x directions x time) forward and BPTT.
// Device-neutral: plain pointers and sizes; the caller owns every array, including the
// training state kept between forward and backward (the "reserve", sized by
// stack_state_layout). Each backend implements stack_forward/stack_backward by instantiating
// the stack loop of csrc/core/stack_loop.h with its own layer kernels.
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "fusedrnn/params.h"

namespace fusedrnn {

template <class T>
struct StackWeights {  // one layer and direction, PyTorch's tensors
  const T* w_ih = nullptr;  // (G*H, I_l)
  const T* w_hh = nullptr;  // (G*H, R)
  const T* b_ih = nullptr;  // (G*H) or null (no bias)
  const T* b_hh = nullptr;  // (G*H) or null
  const T* w_hr = nullptr;  // (P, H) or null (no projection)
};

template <class T>
struct StackGrads {  // written, or added into with accumulate
  T* w_ih = nullptr;
  T* w_hh = nullptr;
  T* b_ih = nullptr;
  T* b_hh = nullptr;
  T* w_hr = nullptr;
};

struct StackConfig {
  CellKind kind = CellKind::Lstm;
  int64_t steps = 0, batch = 0, input = 0, hidden = 0, proj = 0;  // T, B, I, H, P
  int64_t layers = 1, dirs = 1;                                   // L, D
  bool reverse = false;      // D == 1 only: the one direction reads each sequence backwards
  bool batch_first = false;  // x, y, dx, dy are (B, T, .) instead of (T, B, .)
  bool training = false;     // forward fills the reserve for backward
  double dropout = 0.0;      // training: on every layer's output but the last
  uint64_t seed = 0;         // dropout keep-bits are a pure function of (seed, layer, element)
  void* stream = nullptr;    // the backend's stream (CUDA: cudaStream_t); unused on the CPU
  // A host copy of lengths when lengths is device memory (the host bounds the time loop by
  // their maximum); null otherwise, and for the CPU, which reads lengths itself.
  const int64_t* host_lengths = nullptr;
  int64_t recurrent() const { return proj > 0 ? proj : hidden; }  // R
  int64_t layer_input(int64_t l) const { return l == 0 ? input : dirs * recurrent(); }
  bool has_dropout() const { return training && dropout > 0 && layers > 1; }
};

// Where each piece of the training state lives in the caller's reserve buffer: byte offsets,
// each 64-byte aligned relative to its start. Per layer and direction k = l*D + d:
//   saved[k]   (T, B, S*H)  the cell's saved post-activations
//   h_prev[k]  (T, B, R)    the state entering each step
//   proj_in[k] (T, B, H)    o*tanh(c), the input of W_hr (projection only)
// per layer boundary l = 0..L-2 (index l is the output of layer l, the input of layer l+1):
//   layer_out[l] (T, B, D*R)  after dropout
//   keep[l]      (T, B, D*R)  uint8 dropout keep-bits, 1 = kept (only with dropout)
// and x_tb (T, B, I), the time-major copy of a batch-first x. Absent pieces have kNone.
struct StateLayout {
  static constexpr size_t kNone = ~size_t(0);
  size_t bytes = 0;
  std::vector<size_t> saved, h_prev, proj_in, layer_out, keep;
  size_t x_tb = kNone;
  // (offset, bytes) of the alignment padding after each piece: no kernel writes it, so the
  // stack loop zeroes it (a training forward's reserve is then a pure function of its inputs,
  // which torch.library.opcheck and any byte comparison of two runs rely on).
  std::vector<std::pair<size_t, size_t>> padding;
};

// The layout for a training forward of cfg with elements of elem_size bytes (4 or 8); bytes 0
// when cfg.training is false (inference keeps nothing).
StateLayout stack_state_layout(const StackConfig& cfg, size_t elem_size);

// x: (T, B, I) (batch_first: (B, T, I)); y likewise with D*R features; h0, h_n: (L*D, B, R);
// c0, c_n: (L*D, B, H) (LSTM; c_n may be null otherwise); h0/c0 null: zeros; lengths: (B,)
// each in [1, T], or null: all T. reserve: stack_state_layout(cfg).bytes bytes (training).
template <class T>
void stack_forward(const StackConfig& cfg, const StackWeights<T>* w, const int64_t* lengths,
                   const T* x, const T* h0, const T* c0, T* y, T* h_n, T* c_n, void* reserve);

// BPTT of a training forward with the same cfg, weights, lengths, x and reserve (unchanged
// since). dy like y, dh_n like h_n, dc_n like c_n, each null for zeros. Writes dx, dh0, dc0
// (LSTM) and g (one entry per layer and direction; added into with accumulate).
template <class T>
void stack_backward(const StackConfig& cfg, const StackWeights<T>* w, const int64_t* lengths,
                    const T* x, const void* reserve, const T* dy, const T* dh_n, const T* dc_n,
                    T* dx, T* dh0, T* dc0, const StackGrads<T>* g, bool accumulate);

}  // namespace fusedrnn
