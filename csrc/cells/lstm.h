#pragma once
// LSTM cell, gate blocks ordered i, f, g, o (PyTorch):
//   i, f, o = sigmoid(a_i, a_f, a_o), g = tanh(a_g)
//   c' = f c + i g,  out = o tanh(c')   (out is projected by W_hr when proj_size > 0)
// Saved per unit: [i, f, g, o, c_prev, tanh(c')].
#include "cells/activations.h"

namespace fusedrnn {
FUSEDRNN_ISA_BEGIN

struct LstmCell {
  static constexpr int kGates = 4;
  static constexpr int kSaved = 6;
  static constexpr bool kHasCellState = true;
  static constexpr bool kSplitGrad = false;
  static constexpr bool kTwoPhase = false;
  static constexpr int kPhase1Gates = kGates;  // gate blocks whose W_hh rows act on h

  template <class T>
  FUSEDRNN_HOST_DEVICE static T forward(const T* ax, const T* ah, T /*h_prev*/, T& c, T* sv,
                                        long ss) {
    const T i = sigmoid(ax[0] + ah[0]);
    const T f = sigmoid(ax[1] + ah[1]);
    const T g = tanh_(ax[2] + ah[2]);
    const T o = sigmoid(ax[3] + ah[3]);
    const T c_prev = c;
    c = f * c_prev + i * g;
    const T tc = tanh_(c);
    sv[0 * ss] = i;
    sv[1 * ss] = f;
    sv[2 * ss] = g;
    sv[3 * ss] = o;
    sv[4 * ss] = c_prev;
    sv[5 * ss] = tc;
    return o * tc;
  }

  // dc: in, d(c') from the later step; out, d(c_prev).
  template <class T>
  FUSEDRNN_HOST_DEVICE static void backward(const T* sv, long ss, T dout, T /*h_prev*/, T& dc,
                                            T* dax, T* /*dah*/, T& dh_direct) {
    const T i = sv[0 * ss], f = sv[1 * ss], g = sv[2 * ss], o = sv[3 * ss];
    const T c_prev = sv[4 * ss], tc = sv[5 * ss];
    const T dcc = dc + dout * o * (T(1) - tc * tc);
    dax[0] = dcc * g * i * (T(1) - i);
    dax[1] = dcc * c_prev * f * (T(1) - f);
    dax[2] = dcc * i * (T(1) - g * g);
    dax[3] = dout * tc * o * (T(1) - o);
    dc = dcc * f;
    dh_direct = T(0);
  }
};

FUSEDRNN_ISA_END
}  // namespace fusedrnn
