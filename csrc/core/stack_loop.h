#pragma once
// The stack loop every backend shares (docs/design.md §2 "Layers"): layers x directions over a
// backend's one-layer kernels. Layer l > 0 reads the previous layer's (T, B, D*R) output; the
// directions of one layer write interleaved column blocks of it; dropout (training) multiplies
// every layer's output but the last by keep/(1-p). Training state lives in the caller's
// reserve (fusedrnn/stack.h StateLayout); the loop allocates only scratch, from the backend.
//
// A Backend provides, for element type T:
//   layer_forward(CellKind, const ForwardParams<T>&), layer_backward(CellKind, const BackwardParams<T>&)
//   swap_leading_axes(const T* src, T* dst, a, b, c)      (a, b, c) -> (b, a, c)
//   dropout_draw(uint8_t* keep, n, p, seed, layer)        keep-bits of core/dropout.h
//   dropout_scale(T* a, const uint8_t* keep, n, p)        a *= keep / (1 - p)
//   scratch<T>(n)                                         a buffer of n T's, freed on scope exit
//   zero_padding(void* reserve, padding)                  zeroes StateLayout::padding
//   stream()                                              the stream for ForwardParams/BackwardParams
#include <cstdint>

#include "fusedrnn/stack.h"

namespace fusedrnn {
namespace core {

template <class T>
T* piece(void* reserve, size_t offset) {
  return offset == StateLayout::kNone ? nullptr
                                      : reinterpret_cast<T*>(static_cast<char*>(reserve) + offset);
}

// The shape, weights and input of layer l, direction d (a reverse direction: d == 1, or the
// one direction of a reverse stack).
template <class T>
void set_layer(LayerShape<T>& p, const StackConfig& cfg, int64_t l, int64_t d,
               const StackWeights<T>& w, const T* x, const int64_t* lengths, void* stream) {
  p.steps = cfg.steps;
  p.batch = cfg.batch;
  p.input = cfg.layer_input(l);
  p.hidden = cfg.hidden;
  p.proj = cfg.proj;
  p.x = x;
  p.w_ih = w.w_ih;
  p.w_hh = w.w_hh;
  p.b_ih = w.b_ih;
  p.b_hh = w.b_hh;
  p.w_hr = w.w_hr;
  p.lengths = lengths;
  p.reverse = d == 1 || cfg.reverse;
  p.stream = stream;
}

template <class T, class Backend>
void stack_forward_loop(Backend& be, const StackConfig& cfg, const StackWeights<T>* w,
                        const int64_t* lengths, const T* x, const T* h0, const T* c0, T* y,
                        T* h_n, T* c_n, void* reserve) {
  const int64_t Tn = cfg.steps, B = cfg.batch, H = cfg.hidden, R = cfg.recurrent();
  const int64_t L = cfg.layers, D = cfg.dirs, DR = D * R, I = cfg.input;
  const bool training = cfg.training;
  const StateLayout lay = stack_state_layout(cfg, sizeof(T));
  if (training && !lay.padding.empty()) be.zero_padding(reserve, lay.padding);

  // Layer-0 input, time-major: x itself, or a copy (kept in the reserve when training).
  const T* in = x;
  auto x_scratch = be.template scratch<T>(cfg.batch_first && !training ? Tn * B * I : 0);
  if (cfg.batch_first) {
    T* x_tb = training ? piece<T>(reserve, lay.x_tb) : x_scratch.get();
    be.swap_leading_axes(x, x_tb, B, Tn, I);
    in = x_tb;
  }
  // Layer outputs: training keeps each in the reserve (the next layer's input for backward);
  // inference ping-pongs between two scratch buffers. The last layer writes y (time-major).
  const int64_t inner = L > 1 && !training ? Tn * B * DR : 0;
  auto ping = be.template scratch<T>(inner), pong = be.template scratch<T>(L > 2 ? inner : 0);
  auto y_tb = be.template scratch<T>(cfg.batch_first ? Tn * B * DR : 0);
  T* y_last = cfg.batch_first ? y_tb.get() : y;

  for (int64_t l = 0; l < L; ++l) {
    T* out = l == L - 1 ? y_last
             : training ? piece<T>(reserve, lay.layer_out[l])
                        : (l % 2 ? pong.get() : ping.get());
    for (int64_t d = 0; d < D; ++d) {
      const int64_t k = l * D + d;
      ForwardParams<T> p;
      set_layer(p, cfg, l, d, w[k], in, lengths, be.stream());
      p.h0 = h0 ? h0 + k * B * R : nullptr;
      p.c0 = c0 ? c0 + k * B * H : nullptr;
      p.y = out + d * R;
      p.ld_y = DR;
      p.h_n = h_n + k * B * R;
      p.c_n = c_n ? c_n + k * B * H : nullptr;
      if (training) {
        p.saved = piece<T>(reserve, lay.saved[k]);
        p.h_prev = piece<T>(reserve, lay.h_prev[k]);
        p.proj_in = piece<T>(reserve, lay.proj_in[k]);
      }
      be.layer_forward(cfg.kind, p);
    }
    if (cfg.has_dropout() && l < L - 1) {
      uint8_t* keep = piece<uint8_t>(reserve, lay.keep[l]);
      be.dropout_draw(keep, Tn * B * DR, cfg.dropout, cfg.seed, l);
      be.dropout_scale(out, keep, Tn * B * DR, cfg.dropout);
    }
    in = out;
  }
  if (cfg.batch_first) be.swap_leading_axes(y_tb.get(), y, Tn, B, DR);
}

template <class T, class Backend>
void stack_backward_loop(Backend& be, const StackConfig& cfg, const StackWeights<T>* w,
                         const int64_t* lengths, const T* x, const void* reserve_in,
                         const T* dy, const T* dh_n, const T* dc_n, T* dx, T* dh0, T* dc0,
                         const StackGrads<T>* g, bool accumulate) {
  const int64_t Tn = cfg.steps, B = cfg.batch, H = cfg.hidden, R = cfg.recurrent();
  const int64_t L = cfg.layers, D = cfg.dirs, DR = D * R, I = cfg.input;
  const StateLayout lay = stack_state_layout(cfg, sizeof(T));
  void* reserve = const_cast<void*>(reserve_in);  // read only below

  auto dy_tb = be.template scratch<T>(cfg.batch_first && dy ? Tn * B * DR : 0);
  auto dx_tb = be.template scratch<T>(cfg.batch_first ? Tn * B * I : 0);
  // d(input of layer l) for l >= 1, alternating from the last layer down.
  auto d_first = be.template scratch<T>(L > 1 ? Tn * B * DR : 0);
  auto d_second = be.template scratch<T>(L > 2 ? Tn * B * DR : 0);
  const T* dcur = dy;
  if (cfg.batch_first && dy) {
    be.swap_leading_axes(dy, dy_tb.get(), B, Tn, DR);
    dcur = dy_tb.get();
  }
  for (int64_t l = L - 1; l >= 0; --l) {
    // d(input of layer l): dx for layer 0 (time-major), else a ping-pong scratch buffer.
    T* d_in = l > 0 ? ((L - 1 - l) % 2 ? d_second.get() : d_first.get())
              : cfg.batch_first ? dx_tb.get() : dx;
    const T* in = l > 0 ? piece<T>(reserve, lay.layer_out[l - 1])
                  : cfg.batch_first ? piece<T>(reserve, lay.x_tb) : x;
    for (int64_t d = 0; d < D; ++d) {
      const int64_t k = l * D + d;
      BackwardParams<T> p;
      set_layer(p, cfg, l, d, w[k], in, lengths, be.stream());
      p.saved = piece<T>(reserve, lay.saved[k]);
      p.h_prev = piece<T>(reserve, lay.h_prev[k]);
      p.proj_in = piece<T>(reserve, lay.proj_in[k]);
      p.dy = dcur ? dcur + d * R : nullptr;
      p.ld_dy = DR;
      p.dh_n = dh_n ? dh_n + k * B * R : nullptr;
      p.dc_n = dc_n ? dc_n + k * B * H : nullptr;
      p.dx = d_in;
      p.dh0 = dh0 + k * B * R;
      p.dc0 = dc0 ? dc0 + k * B * H : nullptr;
      p.dw_ih = g[k].w_ih;
      p.dw_hh = g[k].w_hh;
      p.db_ih = g[k].b_ih;
      p.db_hh = g[k].b_hh;
      p.dw_hr = g[k].w_hr;
      p.accumulate_dx = d > 0;
      p.accumulate_grads = accumulate;
      be.layer_backward(cfg.kind, p);
    }
    if (l > 0 && cfg.has_dropout())
      be.dropout_scale(d_in, piece<uint8_t>(reserve, lay.keep[l - 1]), Tn * B * DR, cfg.dropout);
    dcur = d_in;
  }
  if (cfg.batch_first) be.swap_leading_axes(dx_tb.get(), dx, Tn, B, I);
}

}  // namespace core
}  // namespace fusedrnn
