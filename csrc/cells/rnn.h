#pragma once
// Vanilla RNN cell: h' = act(a), a = (W_ih x + b_ih) + (W_hh h + b_hh), act = tanh or relu.
// Saved per unit: [h'].
#include "cells/activations.h"

namespace fusedrnn {
FUSEDRNN_ISA_BEGIN

template <bool kRelu>
struct RnnCell {
  static constexpr int kGates = 1;
  static constexpr int kSaved = 1;
  static constexpr bool kHasCellState = false;
  static constexpr bool kSplitGrad = false;  // d(input part) == d(recurrent part)
  static constexpr bool kTwoPhase = false;
  static constexpr int kPhase1Gates = kGates;  // gate blocks whose W_hh rows act on h

  // ax, ah: the unit's pre-activations, input and recurrent parts. Returns the cell output.
  template <class T>
  FUSEDRNN_HOST_DEVICE static T forward(const T* ax, const T* ah, T /*h_prev*/, T& /*c*/, T* sv,
                                        long ss) {
    const T a = ax[0] + ah[0];
    const T h = kRelu ? relu(a) : tanh_(a);
    sv[0] = h;
    return h;
  }

  // dout: d(cell output); writes d(pre-activations). No direct path to h_prev.
  template <class T>
  FUSEDRNN_HOST_DEVICE static void backward(const T* sv, long ss, T dout, T /*h_prev*/,
                                            T& /*dc*/, T* dax, T* /*dah*/, T& dh_direct) {
    const T h = sv[0];
    // relu: PyTorch's threshold_backward, h <= 0 ? 0 : dout, for every input: relu'(0) is 0,
    // and a NaN output passes the gradient on (NaN <= 0 is false).
    dax[0] = kRelu ? (h <= T(0) ? T(0) : dout) : dout * (T(1) - h * h);
    dh_direct = T(0);
  }
};

using RnnTanhCell = RnnCell<false>;
using RnnReluCell = RnnCell<true>;

FUSEDRNN_ISA_END
}  // namespace fusedrnn
