#pragma once
// The regularised cells' math (spec: python/fusedrnn/reference_regularised.py), host and device.
// The GRU and RNN steps are the plain cells' (cells/gru.h, cells/rnn.h): their regularisations
// act outside the cell. What is new lives here: layer normalisation of a row, clipping with its
// gradient, zoneout, and the LSTM step with peepholes, gate and cell clipping and a normalised
// cell state.
#include <cstdint>

#include "cells/activations.h"
#include "fusedrnn/regularised.h"

namespace fusedrnn {
FUSEDRNN_ISA_BEGIN

// Sum of v[0, n) in kAcc interleaved partial sums, so the loop vectorises without reassociating
// a single chain (no -ffast-math here).
template <class T>
FUSEDRNN_HOST_DEVICE T row_sum(const T* v, int64_t n) {
  constexpr int kAcc = 16;
  T acc[kAcc] = {};
  int64_t k = 0;
  for (; k + kAcc <= n; k += kAcc)
    for (int u = 0; u < kAcc; ++u) acc[u] += v[k + u];
  T s = 0;
  for (; k < n; ++k) s += v[k];
  for (int u = 0; u < kAcc; ++u) s += acc[u];
  return s;
}

// Mean and 1/sqrt(biased variance + eps) of v[0, n), two passes (exact for large means).
template <class T>
FUSEDRNN_HOST_DEVICE void ln_stats(const T* v, int64_t n, T eps, T& mean, T& rstd) {
  mean = row_sum(v, n) / T(n);
  constexpr int kAcc = 16;
  T acc[kAcc] = {};
  int64_t k = 0;
  for (; k + kAcc <= n; k += kAcc)
    for (int u = 0; u < kAcc; ++u) {
      const T d = v[k + u] - mean;
      acc[u] += d * d;
    }
  T q = 0;
  for (; k < n; ++k) q += (v[k] - mean) * (v[k] - mean);
  for (int u = 0; u < kAcc; ++u) q += acc[u];
  rstd = T(1) / std::sqrt(q / T(n) + eps);
}

// Normalises v[0, n) in place to v_hat * gamma + beta (beta may be a row of zeros), writes v_hat
// to v_hat_out when given, and returns 1/std for the backward.
template <class T>
FUSEDRNN_HOST_DEVICE T ln_forward_row(T* v, int64_t n, T eps, const T* gamma, const T* beta,
                                      T* v_hat_out) {
  T mean, rstd;
  ln_stats(v, n, eps, mean, rstd);
  for (int64_t k = 0; k < n; ++k) {
    const T hat = (v[k] - mean) * rstd;
    if (v_hat_out) v_hat_out[k] = hat;
    v[k] = hat * gamma[k] + beta[k];
  }
  return rstd;
}

// Backward of y = v_hat * gamma (+ beta), v_hat = (v - mean) * rstd, given dy: writes
// dv = rstd * (g - mean(g) - v_hat * mean(g * v_hat)), g = dy * gamma (dv may be dy), and adds
// dy * v_hat to dgamma.
template <class T>
FUSEDRNN_HOST_DEVICE void ln_backward_row(const T* dy, const T* v_hat, const T* gamma, T rstd,
                                          int64_t n, T* dv, T* dgamma) {
  constexpr int kAcc = 16;
  T ag[kAcc] = {}, agv[kAcc] = {};
  int64_t k = 0;
  for (; k + kAcc <= n; k += kAcc)
    for (int u = 0; u < kAcc; ++u) {
      const T g = dy[k + u] * gamma[k + u];
      ag[u] += g;
      agv[u] += g * v_hat[k + u];
    }
  T sg = 0, sgv = 0;
  for (; k < n; ++k) {
    const T g = dy[k] * gamma[k];
    sg += g;
    sgv += g * v_hat[k];
  }
  for (int u = 0; u < kAcc; ++u) sg += ag[u], sgv += agv[u];
  for (k = 0; k < n; ++k) dgamma[k] += dy[k] * v_hat[k];
  const T mg = sg / T(n), mgv = sgv / T(n);
  for (k = 0; k < n; ++k) dv[k] = rstd * (dy[k] * gamma[k] - mg - v_hat[k] * mgv);
}

// clip(v, lo, hi) when kOn; keep = 1 where v passed (lo <= v <= hi), else 0: the gradient's
// factor. NaN passes through with keep 0, as the reference's np.clip and mask.
template <bool kOn, class T>
FUSEDRNN_HOST_DEVICE T clip_keep(T v, T lo, T hi, T& keep) {
  if (!kOn) {
    keep = T(1);
    return v;
  }
  keep = (v >= lo && v <= hi) ? T(1) : T(0);
  return v < lo ? lo : (v > hi ? hi : v);
}

// Zoneout: a unit keeps its previous value with weight m (a 0/1 mask in training, the rate in
// inference). The backward splits d(new state) into the cell's part and the previous state's.
template <class T>
FUSEDRNN_HOST_DEVICE T zoneout_mix(T m, T prev, T fresh) {
  return m * prev + (T(1) - m) * fresh;
}

// The LSTM step with the options (gate order i, f, g, o; peepholes [p_i, p_o, p_f]).
struct RegLstmCell {
  // Gates and the new (clipped) cell state of one unit; saves every slot but tanh(c) (the
  // normalised cell state needs the whole row first: the driver then writes it). a: the unit's
  // four pre-activations, biases in; p: its peepholes (p_i, p_o, p_f; zeros without). The
  // clips are template flags, so the driver's loop over units has no branch and vectorises.
  template <bool kGateClip, bool kCellClip, class T>
  FUSEDRNN_HOST_DEVICE static T gates(const T* a, T c_prev, T p_i, T p_o, T p_f,
                                      const RegOptions<T>& o, T* sv, int64_t ss, T& gate_o) {
    T k_i, k_f, k_g, k_o, k_c;
    const T i = sigmoid(clip_keep<kGateClip>(a[0] + p_i * c_prev, o.gate_lo, o.gate_hi, k_i));
    const T f = sigmoid(clip_keep<kGateClip>(a[1] + p_f * c_prev, o.gate_lo, o.gate_hi, k_f));
    const T g = tanh_(clip_keep<kGateClip>(a[2], o.gate_lo, o.gate_hi, k_g));
    const T c = clip_keep<kCellClip>(f * c_prev + i * g, o.cell_lo, o.cell_hi, k_c);
    const T og = sigmoid(clip_keep<kGateClip>(a[3] + p_o * c, o.gate_lo, o.gate_hi, k_o));
    sv[kSlotI * ss] = i;
    sv[kSlotF * ss] = f;
    sv[kSlotG * ss] = g;
    sv[kSlotO * ss] = og;
    sv[kSlotCPrev * ss] = c_prev;
    sv[kSlotC * ss] = c;
    int slot = kLstmSlots;
    if (kGateClip) {
      sv[slot++ * ss] = k_i;
      sv[slot++ * ss] = k_f;
      sv[slot++ * ss] = k_g;
      sv[slot++ * ss] = k_o;
    }
    if (kCellClip) sv[slot * ss] = k_c;
    gate_o = og;
    return c;
  }

  // d(out) -> d(tanh's input) of one unit: what the cell-state normalisation's backward takes.
  template <class T>
  FUSEDRNN_HOST_DEVICE static T d_tanh_input(const T* sv, int64_t ss, T dout) {
    const T o = sv[kSlotO * ss], tc = sv[kSlotTanhC * ss];
    return dout * o * (T(1) - tc * tc);
  }

  // Backward of one unit. dc_total: d(c) from the later step plus d(c) through tanh (and its
  // normalisation); writes the four d(pre-activations), returns d(c_prev) and adds the
  // peepholes' gradient terms (dp: [d p_i, d p_o, d p_f] of this unit, strided by ss_p).
  template <bool kGateClip, bool kCellClip, class T>
  FUSEDRNN_HOST_DEVICE static T backward(const T* sv, int64_t ss, T dout, T dc_total, T p_i,
                                         T p_o, T p_f, T* da, T* dp, int64_t ss_p) {
    const T i = sv[kSlotI * ss], f = sv[kSlotF * ss], g = sv[kSlotG * ss];
    const T og = sv[kSlotO * ss], c_prev = sv[kSlotCPrev * ss], c = sv[kSlotC * ss];
    const T tc = sv[kSlotTanhC * ss];
    T k_i = 1, k_f = 1, k_g = 1, k_o = 1, k_c = 1;
    int slot = kLstmSlots;
    if (kGateClip) {
      k_i = sv[slot++ * ss];
      k_f = sv[slot++ * ss];
      k_g = sv[slot++ * ss];
      k_o = sv[slot++ * ss];
    }
    if (kCellClip) k_c = sv[slot * ss];
    const T da_o = k_o * (dout * tc * og * (T(1) - og));
    const T dcc = k_c * (dc_total + da_o * p_o);  // d(f c_prev + i g)
    const T da_i = k_i * (dcc * g * i * (T(1) - i));
    const T da_f = k_f * (dcc * c_prev * f * (T(1) - f));
    da[0] = da_i;
    da[1] = da_f;
    da[2] = k_g * (dcc * i * (T(1) - g * g));
    da[3] = da_o;
    dp[0] += da_i * c_prev;
    dp[ss_p] += da_o * c;
    dp[2 * ss_p] += da_f * c_prev;
    return dcc * f + da_i * p_i + da_f * p_f;
  }
};

FUSEDRNN_ISA_END
}  // namespace fusedrnn
