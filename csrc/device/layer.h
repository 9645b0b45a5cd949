#pragma once
// The device backend: one layer's forward and backward as a sequence of GEMMs and element
// kernels (kernels.h), and the stack loop's Backend (core/stack_loop.h) over them, generic over
// an executor. CUDA instantiates it with CudaExec (csrc/cuda/exec.cuh); the CPU build with
// HostExec (host_exec.h), which runs the same functors in loops so the suite checks this
// code against the reference without a GPU.
//
// An Exec provides, on its stream, in order:
//   launch(name, n, f)                  f(i) for i in [0, n), any order
//   buffer<T>(n)                        scratch of n T's, freed on scope exit (.get())
//   copy(dst, src, bytes)               device to device
//   vendor_gemm(...) -> bool            a vendor BLAS's GEMM (cuBLAS), or false
//   persistent_plan(cell_ok, G, B, H, elem, forward) -> PersistentPlan   (persistent.h)
//   run_grid(name, plan, program) -> bool   a block program (grid.h) on plan.blocks co-resident
//                                       blocks; false: it cannot run so (the step loop runs)
//   run_blocks(name, blocks, threads, shared_bytes, program)   independent blocks (grid.h)
// and the GEMM/GEMV below run kernels.h's GemmBlock/GemvT where no vendor GEMM runs.
//
// Forward, per step s: hp = h W_hh^T (one GEMM over the batch; the two-phase GRU: its r, z
// blocks, ResetGatesStep, then the n block on r h), ForwardStep (the cell, saved values, y),
// with a projection h = out W_hr^T then ProjectionCommit. Backward, per step from the last:
// with a projection GatherDh and dout = dh W_hr, BackwardStep (which gathers dh + dy itself
// without one), the two-phase GRU's drh GEMM and ResetGradStep, dh_prev += dstep W_hh. The input projection before the loop and the weight
// gradients after it are GEMMs over all T*B rows (core/grad_recipe.h).
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <utility>
#include <vector>

#include "core/grad_recipe.h"
#include "core/registry.h"
#include "core/step_map.h"
#include "device/kernels.h"
#include "device/persistent.h"
#include "fusedrnn/params.h"
#include "fusedrnn/stack.h"

namespace fusedrnn {
namespace device {

template <class T, class Exec>
void gemm(Exec& ex, bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
          int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;  // K <= 0: C = beta C (the k loop is empty)
  if (ex.vendor_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)) return;
  using G = GemmBlock<T>;
  ex.run_blocks("gemm", G::blocks(M, N), G::kThreads, G::shared_bytes(),
                G{ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, (N + G::kBN - 1) / G::kBN});
}

template <class T, class Exec>
void gemv_t(Exec& ex, int64_t M, int64_t N, T alpha, const T* A, int64_t lda, const T* x, T beta,
            T* y) {
  if (N <= 0) return;
  ex.launch("gemv_t", N, GemvT<T>{M, N, alpha, A, lda, x, beta, y});
}

// The steps a call runs (the longest sequence) and whether any row is padding, from the host's
// copy of the lengths.
struct HostSteps {
  int64_t steps;
  bool padded;
  HostSteps(const int64_t* host_lengths, int64_t B, int64_t T) : steps(T), padded(false) {
    if (!host_lengths) return;
    int64_t longest = 0;
    for (int64_t b = 0; b < B; ++b) {
      longest = std::max(longest, host_lengths[b]);
      padded = padded || host_lengths[b] < T;
    }
    steps = longest;
  }
};

template <class Cell, class T, class Exec>
struct DeviceLayer {
  static constexpr int G = Cell::kGates;
  static constexpr int S = Cell::kSaved;

  // dst (cols, rows) = src (rows, cols)^T.
  static void transpose(Exec& ex, const T* src, T* dst, int64_t rows, int64_t cols) {
    if (rows * cols > 0)
      ex.launch("transpose", rows * cols, SwapLeadingAxes<T>{src, dst, rows, cols, 1});
  }

  // A state buffer: a copy of src, or zeros where the caller passed none.
  static void copy_or_zero(Exec& ex, T* dst, const T* src, int64_t n) {
    if (src) ex.copy(dst, src, sizeof(T) * size_t(n));
    else ex.launch("fill", n, Fill<T>{dst, T(0)});
  }

  // Zeros of a by-time array's rows no step reaches (times >= steps).
  static void zero_tail(Exec& ex, T* a, int64_t width, int64_t ld, int64_t steps, int64_t Tn,
                        int64_t B) {
    if (a && steps < Tn)
      ex.launch("zero rows", (Tn - steps) * B * width, ZeroRows<T>{a, steps * B, width, ld});
  }

  static void forward(Exec& ex, const ForwardParams<T>& p, const HostSteps& hs) {
    const int64_t Tn = p.steps, B = p.batch, I = p.input, H = p.hidden, R = p.recurrent();
    const int64_t GH = G * H, TB = Tn * B, ld_x = p.ld_x ? p.ld_x : I;
    const int64_t ld_y = p.ld_y ? p.ld_y : R;
    const bool proj = p.proj > 0, training = p.saved != nullptr;
    const StepMap map{p.lengths, Tn, p.reverse};

    zero_tail(ex, p.y, R, ld_y, hs.steps, Tn, B);
    if (training) {
      zero_tail(ex, p.saved, S * H, S * H, hs.steps, Tn, B);
      zero_tail(ex, p.h_prev, R, R, hs.steps, Tn, B);
      if (proj) zero_tail(ex, p.proj_in, H, H, hs.steps, Tn, B);
    }
    // The weights transposed once per call, (K, N) row-major: in every per-step GEMM,
    // neighbouring threads then read neighbouring columns of one row (coalesced), where W
    // itself would have them read rows K elements apart.
    PersistentPlan plan;
    if constexpr (has_persistent_loop<Cell>())
      plan = ex.persistent_plan(!proj, G, B, H, sizeof(T), true);
    auto w_ih_t = ex.template buffer<T>(GH * I);
    auto w_hh_t = ex.template buffer<T>(plan.use ? 0 : GH * R);  // the persistent loop reads W_hh
    auto w_hr_t = ex.template buffer<T>(proj ? R * H : 0);
    transpose(ex, p.w_ih, w_ih_t.get(), GH, I);
    if (!plan.use) transpose(ex, p.w_hh, w_hh_t.get(), GH, R);
    if (proj) transpose(ex, p.w_hr, w_hr_t.get(), R, H);
    // Input pre-activations of every step: XP = X W_ih^T + b_ih.
    auto xp = ex.template buffer<T>(TB * GH);
    if (TB > 0) {
      ex.launch("bias rows", TB * GH, BiasRows<T>{xp.get(), p.b_ih, GH});
      gemm<T>(ex, false, false, TB, GH, I, T(1), p.x, ld_x, w_ih_t.get(), GH, T(1), xp.get(),
              GH);
    }
    auto zeros = ex.template buffer<T>(p.b_hh ? 0 : GH);
    if (!p.b_hh) ex.launch("fill", GH, Fill<T>{zeros.get(), T(0)});
    const T* b_hh = p.b_hh ? p.b_hh : zeros.get();

    auto h = ex.template buffer<T>(2 * B * R);
    T* h_cur = h.get();
    T* h_next = h.get() + B * R;
    copy_or_zero(ex, h_cur, p.h0, B * R);
    auto c = ex.template buffer<T>(Cell::kHasCellState ? B * H : 0);
    if (Cell::kHasCellState) copy_or_zero(ex, c.get(), p.c0, B * H);
    auto hp = ex.template buffer<T>(B * GH);
    auto out = ex.template buffer<T>(proj ? B * H : 0);
    auto rh = ex.template buffer<T>(Cell::kTwoPhase ? B * H : 0);
    auto saved_scratch = ex.template buffer<T>(training ? 0 : B * S * H);
    T* saved = training ? p.saved : saved_scratch.get();
    const int64_t k1 = Cell::kPhase1Gates * H;  // W_hh rows acting on h

    // The persistent loop (persistent.h) where the executor plans one: every step in one launch.
    if constexpr (has_persistent_loop<Cell>()) {
      if (plan.use && B > 0) {
        PersistentForwardParams<T> pp{map,    B,     H,        hs.steps, xp.get(), p.w_hh,
                                      b_hh,   h.get(), c.get(), p.y,      ld_y,     saved,
                                      p.h_prev, training, p.h_n, p.c_n};
        if (ex.run_grid("persistent forward", plan, PersistentForward<Cell, T>{pp})) return;
        // not co-resident after all: the step loop, which reads W_hh transposed
        w_hh_t = ex.template buffer<T>(GH * R);
        transpose(ex, p.w_hh, w_hh_t.get(), GH, R);
      }
    }

    for (int64_t s = 0; s < hs.steps && B > 0; ++s) {
      const StepShape<T> sh{map, s, B, H, R, proj, training};
      gemm<T>(ex, false, false, B, k1, R, T(1), h_cur, R, w_hh_t.get(), GH, T(0), hp.get(), GH);
      if constexpr (Cell::kTwoPhase) {
        ex.launch("reset gates", B * H,
                  ResetGatesStep<Cell, T>{sh, xp.get(), hp.get(), b_hh, h_cur, rh.get(), saved});
        gemm<T>(ex, false, false, B, H, H, T(1), rh.get(), H, w_hh_t.get() + k1, GH, T(0),
                hp.get() + k1, GH);
      }
      ex.launch("forward step", B * H,
                ForwardStep<Cell, T>{sh, xp.get(), hp.get(), b_hh, h_cur, h_next, c.get(),
                                     out.get(), p.y, ld_y, saved, p.h_prev, p.proj_in});
      if (proj) {
        gemm<T>(ex, false, false, B, R, H, T(1), out.get(), H, w_hr_t.get(), R, T(0), h_next, R);
        ex.launch("projection commit", B * R,
                  ProjectionCommit<T>{sh, h_cur, h_next, p.y, ld_y, p.h_prev});
      }
      std::swap(h_cur, h_next);
    }
    if (B > 0) {
      ex.copy(p.h_n, h_cur, sizeof(T) * B * R);
      if (Cell::kHasCellState && p.c_n) ex.copy(p.c_n, c.get(), sizeof(T) * B * H);
    }
  }

  static void backward(Exec& ex, const BackwardParams<T>& p, const HostSteps& hs) {
    const int64_t Tn = p.steps, B = p.batch, I = p.input, H = p.hidden, R = p.recurrent();
    const int64_t GH = G * H, TB = Tn * B, ld_x = p.ld_x ? p.ld_x : I;
    const int64_t ld_dy = p.ld_dy ? p.ld_dy : R;
    const bool proj = p.proj > 0;
    const StepMap map{p.lengths, Tn, p.reverse};

    auto dxp = ex.template buffer<T>(TB * GH);
    auto dhp = ex.template buffer<T>(Cell::kSplitGrad ? TB * GH : 0);
    auto dproj = ex.template buffer<T>(proj ? TB * R : 0);
    zero_tail(ex, dxp.get(), GH, GH, hs.steps, Tn, B);
    zero_tail(ex, dhp.get(), GH, GH, hs.steps, Tn, B);
    zero_tail(ex, dproj.get(), R, R, hs.steps, Tn, B);

    auto dh = ex.template buffer<T>(2 * B * R);
    T* dh_cur = dh.get();
    T* dh_next = dh.get() + B * R;
    copy_or_zero(ex, dh_cur, p.dh_n, B * R);
    auto dc = ex.template buffer<T>(Cell::kHasCellState ? B * H : 0);
    if (Cell::kHasCellState) copy_or_zero(ex, dc.get(), p.dc_n, B * H);
    PersistentPlan plan;
    if constexpr (has_persistent_loop<Cell>())
      plan = ex.persistent_plan(!proj, G, B, H, sizeof(T), false);
    // the persistent loop exchanges dstep through two buffers (by step parity)
    auto dstep = ex.template buffer<T>((plan.use ? 2 : 1) * B * GH);
    auto dout = ex.template buffer<T>(proj ? B * H : 0);
    auto drh = ex.template buffer<T>(Cell::kTwoPhase ? B * H : 0);
    const int64_t k1 = Cell::kPhase1Gates * H;
    bool done = false;  // the time loop ran persistently (dh0, dc0 written)

    if constexpr (has_persistent_loop<Cell>()) {
      if (plan.use && B > 0) {
        PersistentBackwardParams<T> pp{map,   B,      H,           hs.steps,  p.saved,
                                       p.h_prev, p.dy, ld_dy,     p.w_hh,    dh_cur,
                                       dc.get(), dstep.get(), dxp.get(), dhp.get(), p.dh0,
                                       p.dc0};
        done = ex.run_grid("persistent backward", plan, PersistentBackward<Cell, T>{pp});
      }
    }

    for (int64_t s = hs.steps - 1; s >= 0 && B > 0 && !done; --s) {
      const StepShape<T> sh{map, s, B, H, R, proj, true};
      if (proj) {  // without a projection BackwardStep gathers dh itself
        ex.launch("gather dh", B * R,
                  GatherDh<T>{sh, p.dy, ld_dy, dh_cur, dh_next, dproj.get()});
        gemm<T>(ex, false, false, B, H, R, T(1), dh_cur, R, p.w_hr, H, T(0), dout.get(), H);
      }
      ex.launch("backward step", B * H,
                BackwardStep<Cell, T>{sh, p.saved, p.h_prev, proj ? dout.get() : dh_cur, dc.get(),
                                      dxp.get(), dhp.get(), dstep.get(), dh_next, p.dy, ld_dy});
      if constexpr (Cell::kTwoPhase) {
        gemm<T>(ex, false, false, B, H, H, T(1), dstep.get() + k1, GH, p.w_hh + k1 * R, R, T(0),
                drh.get(), H);
        ex.launch("reset gradient", B * H,
                  ResetGradStep<Cell, T>{sh, p.saved, p.h_prev, drh.get(), dxp.get(), dstep.get(),
                                         dh_next});
      }
      gemm<T>(ex, false, false, B, R, k1, T(1), dstep.get(), GH, p.w_hh, R, T(1), dh_next, R);
      std::swap(dh_cur, dh_next);
    }
    if (B > 0 && !done) {
      ex.copy(p.dh0, dh_cur, sizeof(T) * B * R);
      if (Cell::kHasCellState && p.dc0) ex.copy(p.dc0, dc.get(), sizeof(T) * B * H);
    }

    // Bulk gradients. dW_ih reads x with its padding rows zeroed (0 * NaN padding is NaN).
    GradientSources<T> src;
    src.dxp = dxp.get();
    src.dhp = Cell::kSplitGrad ? dhp.get() : dxp.get();
    src.dproj = dproj.get();
    src.x = p.x;
    src.ld_x = ld_x;
    auto x_clean = ex.template buffer<T>(hs.padded ? TB * I : 0);
    if (hs.padded && TB > 0) {
      ex.launch("masked rows", TB * I, MaskedRows<T>{x_clean.get(), p.x, ld_x, I, B, map});
      src.x = x_clean.get();
      src.ld_x = I;
    }
    auto ones = ex.template buffer<T>(p.db_ih || p.db_hh ? TB : 0);
    if ((p.db_ih || p.db_hh) && TB > 0) ex.launch("fill", TB, Fill<T>{ones.get(), T(1)});
    src.ones = ones.get();
    weight_gradients<Cell>(
        p, src,
        [&](bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
            const T* Bm, int64_t ldb, T beta, T* C, int64_t ldc) {
          gemm<T>(ex, ta, tb, M, N, K, alpha, A, lda, Bm, ldb, beta, C, ldc);
        },
        [&](int64_t M, int64_t N, T alpha, const T* A, int64_t lda, const T* x, T beta, T* y) {
          gemv_t<T>(ex, M, N, alpha, A, lda, x, beta, y);
        });
  }
};

// The stack loop's Backend (core/stack_loop.h) on an executor.
template <class Exec>
struct DeviceBackend {
  Exec& ex;
  HostSteps steps;

  void* stream() const { return ex.stream(); }

  template <class T>
  auto scratch(int64_t n) {
    return ex.template buffer<T>(n);
  }

  template <class T>
  void layer_forward(CellKind kind, const ForwardParams<T>& p) {
    visit_cell(kind, [&](auto cell) {
      DeviceLayer<decltype(cell), T, Exec>::forward(ex, p, steps);
    });
  }
  template <class T>
  void layer_backward(CellKind kind, const BackwardParams<T>& p) {
    visit_cell(kind, [&](auto cell) {
      DeviceLayer<decltype(cell), T, Exec>::backward(ex, p, steps);
    });
  }

  template <class T>
  void swap_leading_axes(const T* src, T* dst, int64_t a, int64_t b, int64_t c) {
    if (a * b * c > 0)
      ex.launch("swap leading axes", a * b * c, SwapLeadingAxes<T>{src, dst, a, b, c});
  }

  void zero_padding(void* reserve, const std::vector<std::pair<size_t, size_t>>& padding) {
    ZeroByteRanges f{static_cast<uint8_t*>(reserve), {}, {}};
    for (size_t k = 0; k < padding.size(); ++k) {
      f.offset[f.seg.count] = int64_t(padding[k].first);
      f.seg.add(int64_t(padding[k].second));
      if (f.seg.full() || k + 1 == padding.size()) {
        ex.launch("zero padding", f.seg.total, f);
        f.seg = {};
      }
    }
  }

  void dropout_draw(uint8_t* keep, int64_t n, double p, uint64_t seed, int64_t layer) {
    if (n > 0) ex.launch("dropout draw", n, DropoutDraw{keep, dropout_stream(seed, layer), p});
  }

  template <class T>
  void dropout_scale(T* a, const uint8_t* keep, int64_t n, double p) {
    if (n > 0) ex.launch("dropout scale", n, DropoutScale<T>{a, keep, T(1.0 / (1.0 - p))});
  }
};

}  // namespace device
}  // namespace fusedrnn
