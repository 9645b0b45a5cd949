#pragma once
// GRU cells, gate blocks ordered r, z, n (PyTorch).
//
// GruCell (reset_after=True; PyTorch, cuDNN, ONNX linear_before_reset=1):
//   r, z = sigmoid(a_x + a_h),  n = tanh(ax_n + r * ah_n),  h' = (1 - z) n + z h
//   with ah_n = W_hn h + b_hn. Saved per unit: [r, z, n, ah_n].
//
// GruV1Cell (reset_after=False; Cho et al. 2014, Keras reset_after=False, ONNX default):
//   r, z as above, n = tanh(ax_n + W_hn (r h) + b_hn). The recurrent GEMM of the n block needs
//   r first, so the step runs in two phases: gates() gives r h, the driver multiplies by W_hn,
//   then forward() finishes. Saved per unit: [r, z, n, r h].
#include "cells/activations.h"

namespace fusedrnn {
FUSEDRNN_ISA_BEGIN

struct GruCell {
  static constexpr int kGates = 3;
  static constexpr int kSaved = 4;
  static constexpr bool kHasCellState = false;
  static constexpr bool kSplitGrad = true;  // d(ah_n) = r d(ax_n)
  static constexpr bool kTwoPhase = false;
  static constexpr int kPhase1Gates = kGates;  // gate blocks whose W_hh rows act on h

  template <class T>
  FUSEDRNN_HOST_DEVICE static T forward(const T* ax, const T* ah, T h_prev, T& /*c*/, T* sv,
                                        long ss) {
    const T r = sigmoid(ax[0] + ah[0]);
    const T z = sigmoid(ax[1] + ah[1]);
    const T n = tanh_(ax[2] + r * ah[2]);
    sv[0 * ss] = r;
    sv[1 * ss] = z;
    sv[2 * ss] = n;
    sv[3 * ss] = ah[2];
    return (T(1) - z) * n + z * h_prev;
  }

  template <class T>
  FUSEDRNN_HOST_DEVICE static void backward(const T* sv, long ss, T dout, T h_prev, T& /*dc*/,
                                            T* dax, T* dah, T& dh_direct) {
    const T r = sv[0 * ss], z = sv[1 * ss], n = sv[2 * ss], ah_n = sv[3 * ss];
    const T dn = dout * (T(1) - z) * (T(1) - n * n);
    const T dz = dout * (h_prev - n) * z * (T(1) - z);
    const T dr = dn * ah_n * r * (T(1) - r);
    dax[0] = dah[0] = dr;
    dax[1] = dah[1] = dz;
    dax[2] = dn;
    dah[2] = dn * r;
    dh_direct = dout * z;
  }
};

struct GruV1Cell {
  static constexpr int kGates = 3;
  static constexpr int kSaved = 4;
  static constexpr bool kHasCellState = false;
  static constexpr bool kSplitGrad = false;
  static constexpr bool kTwoPhase = true;
  static constexpr int kPhase1Gates = 2;  // r, z: W_hh rows [0, 2H) act on h, [2H, 3H) on r h

  // Phase 1: r and z (saved), returns r h for the second recurrent GEMM.
  template <class T>
  FUSEDRNN_HOST_DEVICE static T gates(const T* ax, const T* ah, T h_prev, T* sv, long ss) {
    const T r = sigmoid(ax[0] + ah[0]);
    const T z = sigmoid(ax[1] + ah[1]);
    sv[0 * ss] = r;
    sv[1 * ss] = z;
    sv[3 * ss] = r * h_prev;
    return r * h_prev;
  }

  // Phase 2: ah[2] now holds W_hn (r h) + b_hn.
  template <class T>
  FUSEDRNN_HOST_DEVICE static T forward(const T* ax, const T* ah, T h_prev, T& /*c*/, T* sv,
                                        long ss) {
    const T z = sv[1 * ss];
    const T n = tanh_(ax[2] + ah[2]);
    sv[2 * ss] = n;
    return (T(1) - z) * n + z * h_prev;
  }

  // Backward phase 1: d(a_z), d(a_n) and the direct path z dh. dax[0] waits for phase 2.
  template <class T>
  FUSEDRNN_HOST_DEVICE static void backward(const T* sv, long ss, T dout, T h_prev, T& /*dc*/,
                                            T* dax, T* /*dah*/, T& dh_direct) {
    const T z = sv[1 * ss], n = sv[2 * ss];
    dax[1] = dout * (h_prev - n) * z * (T(1) - z);
    dax[2] = dout * (T(1) - z) * (T(1) - n * n);
    dh_direct = dout * z;
  }

  // Backward phase 2: given d(r h) = d(a_n) W_hn, d(a_r) and the path through r h to h_prev.
  template <class T>
  FUSEDRNN_HOST_DEVICE static void backward_reset(const T* sv, long ss, T drh, T h_prev,
                                                  T& dar, T& dh_direct) {
    const T r = sv[0 * ss];
    dar = drh * h_prev * r * (T(1) - r);
    dh_direct += drh * r;
  }
};

FUSEDRNN_ISA_END
}  // namespace fusedrnn
