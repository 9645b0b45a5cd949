#pragma once
// The only things the bindings hand to the kernels: plain pointers and sizes.
// All arrays are C-contiguous but where a row stride (ld_*) says otherwise. Shapes use T (time),
// B (batch), I (input), H (hidden), G (gates), R (recurrent width: H, or P with an LSTM
// projection), S (saved values per unit).
#include <cstddef>
#include <cstdint>

namespace fusedrnn {

enum class CellKind : int {
  RnnTanh = 0,
  RnnRelu = 1,
  Lstm = 2,
  Gru = 3,    // reset_after=True: PyTorch / cuDNN / ONNX linear_before_reset=1
  GruV1 = 4,  // reset_after=False: Cho et al. / Keras / ONNX default
};

// Gate and saved counts per kind: csrc/core/registry.h (cell_info), read from the cells.

// One layer, one direction.
template <class T>
struct LayerShape {
  int64_t steps = 0;   // T
  int64_t batch = 0;   // B
  int64_t input = 0;   // I
  int64_t hidden = 0;  // H
  int64_t proj = 0;    // P, 0 without projection
  int64_t recurrent() const { return proj > 0 ? proj : hidden; }  // R

  const T* x = nullptr;       // (T, B, ld_x), columns [0, I) are used
  int64_t ld_x = 0;           // row stride of x; 0 means I (rows of a wider array need no copy)
  const T* w_ih = nullptr;    // (G*H, I)
  const T* w_hh = nullptr;    // (G*H, R)
  const T* b_ih = nullptr;    // (G*H) or null: no bias
  const T* b_hh = nullptr;    // (G*H) or null
  const T* w_hr = nullptr;    // (P, H) or null
  const int64_t* lengths = nullptr;  // (B), each in [1, T]; null: all T
  bool reverse = false;

  // Backend resources, owned by the caller.
  void* stream = nullptr;   // the backend's stream (CUDA: a cudaStream_t; null: the default
                            // stream); unused on the CPU
  void* scratch = nullptr;  // caller-provided scratch memory the call may overwrite; null, or
  size_t scratch_bytes = 0; // smaller than the call needs: the backend allocates its own (the
                            // CPU from its reused workspace pool)
};

template <class T>
struct ForwardParams : LayerShape<T> {
  const T* h0 = nullptr;  // (B, R) or null: zeros
  const T* c0 = nullptr;  // (B, H) or null: zeros (LSTM)
  T* y = nullptr;         // (T, B, ld_y) out, columns [0, R); zero past each length
  int64_t ld_y = 0;       // row stride of y; 0 means R (a bidirectional stack writes 2R-wide rows)
  T* h_n = nullptr;       // (B, R) out
  T* c_n = nullptr;       // (B, H) out (LSTM)
  // Training mode saves these (all null in inference); rows past a sequence's length are zeroed.
  T* saved = nullptr;     // (T, B, S*H) the cell's saved post-activations, by time
  T* h_prev = nullptr;    // (T, B, R)   state entering each time step
  T* proj_in = nullptr;   // (T, B, H)   o*tanh(c), the input of W_hr (projection only)
};

template <class T>
struct BackwardParams : LayerShape<T> {
  const T* saved = nullptr;    // from the training forward
  const T* h_prev = nullptr;
  const T* proj_in = nullptr;
  const T* dy = nullptr;       // (T, B, ld_dy) or null: zeros; columns [0, R) are used
  int64_t ld_dy = 0;           // row stride of dy; 0 means R
  const T* dh_n = nullptr;     // (B, R) or null
  const T* dc_n = nullptr;     // (B, H) or null
  T* dx = nullptr;             // (T, B, I) out (contiguous whatever ld_x)
  T* dh0 = nullptr;            // (B, R) out
  T* dc0 = nullptr;            // (B, H) out (LSTM)
  T* dw_ih = nullptr;          // (G*H, I) out
  T* dw_hh = nullptr;          // (G*H, R) out
  T* db_ih = nullptr;          // (G*H) out, null without bias
  T* db_hh = nullptr;          // (G*H) out
  T* dw_hr = nullptr;          // (P, H) out (projection)
  bool accumulate_dx = false;     // dx += ... instead of dx = ... (second direction of a stack)
  bool accumulate_grads = false;  // dW, db += ... (gradients accumulate across calls)
};

}  // namespace fusedrnn
