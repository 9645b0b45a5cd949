#pragma once
// The regularised layer (docs/design.md §3.6): one layer, one direction of an RNN, LSTM or GRU
// with any of layer normalisation, zoneout, recurrent dropout, DropConnect, gate and cell
// clipping and peepholes. The spec is python/fusedrnn/reference_regularised.py; the cell math
// is csrc/cells/regularised.h; the CPU loop csrc/cpu/regularised_driver.h.
#include <cstdint>

#include "fusedrnn/params.h"

namespace fusedrnn {

// The options of one layer and direction. Null pointers and false flags mean "not used".
template <class T>
struct RegOptions {
  // Layer normalisation: ln_weight_ih and ln_weight_hh (every cell), ln_weight_c and ln_bias_c
  // (the LSTM's cell state); all of a cell's or none.
  const T* ln_weight_ih = nullptr;  // (G*H)
  const T* ln_weight_hh = nullptr;  // (G*H)
  const T* ln_weight_c = nullptr;   // (H)
  const T* ln_bias_c = nullptr;     // (H)
  T ln_eps = T(1e-5);
  const T* peephole = nullptr;      // (3H) ONNX's order [p_i, p_o, p_f] (LSTM)
  bool gate_clip = false;           // each gate pre-activation clipped to [gate_lo, gate_hi]
  T gate_lo = 0, gate_hi = 0;
  bool cell_clip = false;           // the new cell state clipped to [cell_lo, cell_hi]
  T cell_lo = 0, cell_hi = 0;
  // Zoneout, training: binary masks by time, 1 where a unit keeps its previous value.
  const uint8_t* zoneout_h_mask = nullptr;  // (T, B, R)
  const uint8_t* zoneout_c_mask = nullptr;  // (T, B, H) (LSTM)
  // Zoneout, inference: the expectation with these rates (0: none). Exclusive with the masks.
  T zoneout_h = 0, zoneout_c = 0;
  const T* recurrent_dropout = nullptr;  // (B, R) scaled mask on h where it enters W_hh
  const T* dropconnect = nullptr;        // (G*H, R) scaled mask on W_hh, one per call

  bool layer_norm() const { return ln_weight_ih != nullptr; }
};

// Where a training forward keeps what backward reads: offsets, in elements of T, into one
// reserve array (every piece indexed by time, row te*B + b; rows past a length are zero).
struct RegLayout {
  int64_t saved_units = 0;  // S: values saved per hidden unit by the cell
  int64_t h_prev = 0;       // (T, B, R) the state entering each step
  int64_t h_in = -1;        // (T, B, R) what W_hh saw: h_prev * recurrent_dropout (-1: h_prev)
  int64_t saved = 0;        // (T, B, S*H) the cell's values, slot-major: [slot * H + j]
  int64_t proj_in = -1;     // (T, B, H) the input of W_hr (projection)
  int64_t xhat = -1;        // (T, B, G*H) the normalised input projection (layer norm)
  int64_t rstd_ih = -1;     // (T, B)
  int64_t hhat = -1;        // (T, B, G*H) the normalised recurrent projection (layer norm)
  int64_t rstd_hh = -1;     // (T, B)
  int64_t stats_c = -1;     // (T, B, 2) mean and 1/std of the cell state (LSTM layer norm)
  int64_t total = 0;
};

// The LSTM's saved slots; the gate-clip keep flags and the cell-clip flag follow when used.
enum RegLstmSlot : int { kSlotI, kSlotF, kSlotG, kSlotO, kSlotCPrev, kSlotC, kSlotTanhC,
                         kLstmSlots };

inline int reg_gates(CellKind kind) {
  return kind == CellKind::Lstm ? 4 : (kind == CellKind::Gru || kind == CellKind::GruV1) ? 3 : 1;
}

inline RegLayout reg_layout(CellKind kind, int64_t Tn, int64_t B, int64_t H, int64_t P,
                            bool layer_norm, bool recurrent_dropout, bool gate_clip,
                            bool cell_clip) {
  const int64_t G = reg_gates(kind), R = P > 0 ? P : H, TB = Tn * B;
  RegLayout l;
  if (kind == CellKind::Lstm)
    l.saved_units = kLstmSlots + (gate_clip ? 4 : 0) + (cell_clip ? 1 : 0);
  else
    l.saved_units = G == 3 ? 4 : 1;  // GRU [r, z, n, hp_n or r*h_in]; RNN [h]
  int64_t at = 0;
  auto take = [&](int64_t n) { const int64_t o = at; at += n; return o; };
  l.h_prev = take(TB * R);
  if (recurrent_dropout) l.h_in = take(TB * R);
  l.saved = take(TB * l.saved_units * H);
  if (P > 0) l.proj_in = take(TB * H);
  if (layer_norm) {
    l.xhat = take(TB * G * H);
    l.rstd_ih = take(TB);
    l.hhat = take(TB * G * H);
    l.rstd_hh = take(TB);
    if (kind == CellKind::Lstm) l.stats_c = take(TB * 2);
  }
  l.total = at;
  return l;
}

template <class T>
struct RegForwardParams : ForwardParams<T> {
  CellKind kind = CellKind::Lstm;
  RegOptions<T> opt;
  T* reserve = nullptr;  // training: reg_layout(...).total elements; null: inference
};

template <class T>
struct RegBackwardParams : BackwardParams<T> {
  CellKind kind = CellKind::Lstm;
  RegOptions<T> opt;
  const T* reserve = nullptr;
  // The options' parameter gradients (out; null where the option is off).
  T* d_ln_weight_ih = nullptr;
  T* d_ln_weight_hh = nullptr;
  T* d_ln_weight_c = nullptr;
  T* d_ln_bias_c = nullptr;
  T* d_peephole = nullptr;
};

// Masks of core/dropout.h's generator for elements [0, n) of `stream`, in parallel: out[i] = 1
// where element i is kept (keep=true) or dropped (keep=false), or scale / 0 (scaled). threshold:
// dropout_threshold(p).
void draw_mask_bits(uint8_t* out, int64_t n, uint64_t stream, uint64_t threshold, bool keep);
template <class T>
void draw_mask_scaled(T* out, int64_t n, uint64_t stream, uint64_t threshold, T scale);

// The CPU kernels (cpu/dispatch.cpp: the instruction set chosen at run time).
template <class T>
void reg_layer_forward(const RegForwardParams<T>& p);
template <class T>
void reg_layer_backward(const RegBackwardParams<T>& p);

}  // namespace fusedrnn
