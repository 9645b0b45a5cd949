#pragma once
// The bulk part of one layer's backward, after the time loop (docs/design.md §3.4, §4): dX and the
// weight and bias gradients as GEMMs over all T*B rows at once, written once for every backend.
// A backend passes its own products (the CPU its threaded BLAS wrappers, a CUDA driver cuBLAS
// on its stream); the recipe decides only which products, on which buffers, in which order.
#include <cstdint>

#include "fusedrnn/common.h"
#include "fusedrnn/params.h"

namespace fusedrnn {
FUSEDRNN_ISA_BEGIN

// What the time loop leaves for the recipe. All (T*B)-row arrays are by time (row te*B + b)
// with zero rows past each sequence's length.
template <class T>
struct GradientSources {
  const T* dxp = nullptr;    // (T*B, G*H) d(input pre-activations)
  const T* dhp = nullptr;    // (T*B, G*H) d(recurrent pre-activations); dxp unless kSplitGrad
  const T* dproj = nullptr;  // (T*B, P)   d(projection output), projection only
  const T* x = nullptr;      // (T*B, ld_x) the layer input for dW_ih: x, or a copy whose
  int64_t ld_x = 0;          //   padding rows are zeroed when they hold NaN/inf (0 * NaN = NaN)
  const T* ones = nullptr;   // (T*B) ones, for the bias sums; read only if db_ih or db_hh
};

// Gemm:  gemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc), row-major
//        C(M,N) = alpha op(A) op(B) + beta C (the signature of cpu/gemm.h).
// GemvT: gemv_t(M, N, alpha, A, lda, x, beta, y): y(N) = alpha A(M,N)^T x + beta y.
// beta is 1 where p asks to accumulate (accumulate_dx, accumulate_grads), else 0.
template <class Cell, class T, class Gemm, class GemvT>
void weight_gradients(const BackwardParams<T>& p, const GradientSources<T>& src, Gemm gemm,
                      GemvT gemv_t) {
  constexpr int G = Cell::kGates;
  constexpr int S = Cell::kSaved;
  // The two-phase cell (GruV1Cell) is r, z, n with W_hh rows [2H, 3H) acting on r h, which the
  // recipe reads as saved value 3.
  static_assert(!Cell::kTwoPhase || (G == 3 && Cell::kPhase1Gates == 2 && S == 4),
                "weight_gradients expects a two-phase cell saving [r, z, n, r h]");
  const int64_t TB = p.steps * p.batch, I = p.input, H = p.hidden, P = p.proj;
  const int64_t R = p.recurrent(), GH = G * H;
  const T beta_dx = p.accumulate_dx ? T(1) : T(0);
  const T beta_w = p.accumulate_grads ? T(1) : T(0);

  // dX = dXP W_ih;  dW_ih = dXP^T X
  gemm(false, false, TB, I, GH, T(1), src.dxp, GH, p.w_ih, I, beta_dx, p.dx, I);
  gemm(true, false, GH, I, TB, T(1), src.dxp, GH, src.x, src.ld_x, beta_w, p.dw_ih, I);
  // dW_hh = dHP^T H_prev
  if constexpr (Cell::kTwoPhase) {
    // Rows [0, 2H) of W_hh act on h_prev, rows [2H, 3H) on r h (saved value 3).
    const int64_t k_rec = Cell::kPhase1Gates * H;
    gemm(true, false, k_rec, R, TB, T(1), src.dhp, GH, p.h_prev, R, beta_w, p.dw_hh, R);
    gemm(true, false, H, H, TB, T(1), src.dhp + k_rec, GH, p.saved + 3 * H, S * H, beta_w,
         p.dw_hh + k_rec * R, R);
  } else {
    gemm(true, false, GH, R, TB, T(1), src.dhp, GH, p.h_prev, R, beta_w, p.dw_hh, R);
  }
  // dW_hr = dProj^T (o tanh c)
  if (P > 0) gemm(true, false, P, H, TB, T(1), src.dproj, P, p.proj_in, H, beta_w, p.dw_hr, H);
  // db_ih, db_hh: column sums of dXP and dHP
  if (p.db_ih) gemv_t(TB, GH, T(1), src.dxp, GH, src.ones, beta_w, p.db_ih);
  if (p.db_hh) gemv_t(TB, GH, T(1), src.dhp, GH, src.ones, beta_w, p.db_hh);
}

FUSEDRNN_ISA_END
}  // namespace fusedrnn
