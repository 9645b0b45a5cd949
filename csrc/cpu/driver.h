#pragma once
// CPU driver for one layer and one direction, generic over the cell (csrc/cells/*.h).
//
// Structure (DESIGN.md §4):
//   forward:  XP = X W_ih^T + b_ih as one GEMM over all T*B rows; then per step the recurrent
//             GEMM HP = h W_hh^T and the cell applied per (batch, unit).
//   backward: per step only the pointwise backward and dG W_hh; dX, dW_ih, dW_hh, dW_hr and the
//             bias sums are bulk GEMMs over all T*B rows after the loop.
// Every array indexed by time (saved values, dXP, ...) uses row te*B + b. At step s sequence b
// is active iff s < L_b and then processes time te = s (forward) or L_b - 1 - s (reverse), so
// both directions start together and inactive sequences simply keep their state.
// The persistent-thread time loop is a later optimisation; this is the reference structure.
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>

#include "cpu/gemm.h"
#include "fusedrnn/api.h"
#include "fusedrnn/params.h"

namespace fusedrnn {
namespace cpu {

// One allocation per call, carved into named pieces (default-initialised: no page-touching memset).
template <class T>
class Workspace {
 public:
  explicit Workspace(std::initializer_list<int64_t*> sizes_in_out) {
    int64_t total = 0;
    for (int64_t* s : sizes_in_out) {
      const int64_t n = *s;
      *s = total;  // becomes the offset
      total += (n + 15) / 16 * 16;  // 64-byte aligned pieces for float
    }
    buf_.reset(new T[total > 0 ? total : 1]);
  }
  T* at(int64_t offset) { return buf_.get() + offset; }

 private:
  std::unique_ptr<T[]> buf_;
};

struct StepMap {
  const int64_t* lengths;
  int64_t steps;
  bool reverse;
  int64_t len(int64_t b) const { return lengths ? lengths[b] : steps; }
  bool active(int64_t s, int64_t b) const { return s < len(b); }
  int64_t time(int64_t s, int64_t b) const { return reverse ? len(b) - 1 - s : s; }
};

inline int64_t max_length(const int64_t* lengths, int64_t B, int64_t T) {
  if (!lengths) return T;
  int64_t m = 0;
  for (int64_t b = 0; b < B; ++b) m = std::max(m, lengths[b]);
  return m;
}

// Per-step pointwise work is parallel only when there is enough of it to pay for a fork/join.
inline bool worth_parallel(int64_t work) { return work >= 8192; }

// Zeroes rows (te, b) with te >= L_b of a (T, B, ld) array, columns [0, width): the
// never-written padding.
template <class T>
void zero_padding(T* a, int64_t width, const StepMap& m, int64_t B, int64_t ld = 0) {
  if (!a || !m.lengths) return;
  if (ld == 0) ld = width;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t te = m.len(b); te < m.steps; ++te)
      std::memset(a + (te * B + b) * ld, 0, sizeof(T) * width);
}

template <class Cell, class T>
void forward(const ForwardParams<T>& p) {
  constexpr int G = Cell::kGates;
  constexpr int S = Cell::kSaved;
  const int64_t Tn = p.steps, B = p.batch, I = p.input, H = p.hidden, P = p.proj;
  const int64_t R = p.recurrent(), GH = G * H;
  const bool training = p.saved != nullptr;
  const bool proj = P > 0;
  const int nt = get_num_threads();
  const StepMap map{p.lengths, Tn, p.reverse};
  const int64_t ld_y = p.ld_y ? p.ld_y : R;

  int64_t o_xp = Tn * B * GH, o_hp = B * GH, o_h0 = B * R, o_h1 = B * R, o_c = B * H,
          o_out = proj ? B * H : 0, o_rh = Cell::kTwoPhase ? B * H : 0,
          o_sv = training ? 0 : B * S * H;
  Workspace<T> ws({&o_xp, &o_hp, &o_h0, &o_h1, &o_c, &o_out, &o_rh, &o_sv});
  T* xp = ws.at(o_xp);
  T* hp = ws.at(o_hp);
  T* h_cur = ws.at(o_h0);
  T* h_next = ws.at(o_h1);
  T* c = ws.at(o_c);
  T* out = ws.at(o_out);
  T* rh = ws.at(o_rh);
  T* sv_scratch = ws.at(o_sv);

  // Input projection over all T*B rows.
  gemm<T>(false, true, Tn * B, GH, I, T(1), p.x, I, p.w_ih, I, T(0), xp, GH);
  if (p.b_ih) {
#pragma omp parallel for num_threads(nt) if (worth_parallel(Tn * B * GH))
    for (int64_t row = 0; row < Tn * B; ++row) {
      T* r = xp + row * GH;
      for (int64_t k = 0; k < GH; ++k) r[k] += p.b_ih[k];
    }
  }

  if (p.h0) std::memcpy(h_cur, p.h0, sizeof(T) * B * R);
  else std::fill(h_cur, h_cur + B * R, T(0));
  if (Cell::kHasCellState) {
    if (p.c0) std::memcpy(c, p.c0, sizeof(T) * B * H);
    else std::fill(c, c + B * H, T(0));
  }
  if (proj) std::fill(out, out + B * H, T(0));
  if (Cell::kTwoPhase) std::fill(rh, rh + B * H, T(0));

  const int64_t steps = max_length(p.lengths, B, Tn);
  const bool par = worth_parallel(B * GH);
  const int64_t hp_cols = Cell::kTwoPhase ? Cell::kPhase1Gates * H : GH;

  // Gathers the unit's gate pre-activations (input and recurrent part, with both biases).
  auto gather = [&](int64_t te, int64_t b, int64_t j, T* ax, T* ah, int gates) {
    const T* xrow = xp + (te * B + b) * GH;
    const T* hrow = hp + b * GH;
    for (int g = 0; g < gates; ++g) {
      ax[g] = xrow[g * H + j];
      ah[g] = hrow[g * H + j] + (p.b_hh ? p.b_hh[g * H + j] : T(0));
    }
  };
  auto saved_at = [&](int64_t te, int64_t b) -> T* {
    return training ? p.saved + (te * B + b) * S * H : sv_scratch + b * S * H;
  };

  for (int64_t s = 0; s < steps; ++s) {
    gemm<T>(false, true, B, hp_cols, R, T(1), h_cur, R, p.w_hh, R, T(0), hp, GH);

    if constexpr (Cell::kTwoPhase) {
#pragma omp parallel for num_threads(nt) if (par)
      for (int64_t b = 0; b < B; ++b) {
        if (!map.active(s, b)) continue;
        const int64_t te = map.time(s, b);
        T* sv = saved_at(te, b);
        for (int64_t j = 0; j < H; ++j) {
          T ax[G], ah[G];
          gather(te, b, j, ax, ah, Cell::kPhase1Gates);
          rh[b * H + j] = Cell::gates(ax, ah, h_cur[b * R + j], sv + j, H);
        }
      }
      const int64_t n0 = Cell::kPhase1Gates * H;
      gemm<T>(false, true, B, H, H, T(1), rh, H, p.w_hh + n0 * R, R, T(0), hp + n0, GH);
    }

#pragma omp parallel for num_threads(nt) if (par)
    for (int64_t b = 0; b < B; ++b) {
      if (!map.active(s, b)) continue;
      const int64_t te = map.time(s, b);
      T* sv = saved_at(te, b);
      T* dst = proj ? out + b * H : h_next + b * R;
      for (int64_t j = 0; j < H; ++j) {
        T ax[G], ah[G];
        gather(te, b, j, ax, ah, G);
        // h_prev of the same unit only exists without projection (R == H): GRU's z h path.
        const T hprev = proj ? T(0) : h_cur[b * R + j];
        T cj = Cell::kHasCellState ? c[b * H + j] : T(0);
        dst[j] = Cell::forward(ax, ah, hprev, cj, sv + j, H);
        if (Cell::kHasCellState) c[b * H + j] = cj;
      }
    }

    if (proj) gemm<T>(false, true, B, P, H, T(1), out, H, p.w_hr, H, T(0), h_next, R);

    for (int64_t b = 0; b < B; ++b) {
      if (!map.active(s, b)) {
        std::memcpy(h_next + b * R, h_cur + b * R, sizeof(T) * R);  // frozen past its length
        continue;
      }
      const int64_t row = map.time(s, b) * B + b;
      std::memcpy(p.y + row * ld_y, h_next + b * R, sizeof(T) * R);
      if (training) {
        std::memcpy(p.h_prev + row * R, h_cur + b * R, sizeof(T) * R);
        if (proj) std::memcpy(p.proj_in + row * H, out + b * H, sizeof(T) * H);
      }
    }
    std::swap(h_cur, h_next);
  }

  zero_padding(p.y, R, map, B, ld_y);
  if (training) {
    zero_padding(p.saved, S * H, map, B);
    zero_padding(p.h_prev, R, map, B);
    if (proj) zero_padding(p.proj_in, H, map, B);
  }
  std::memcpy(p.h_n, h_cur, sizeof(T) * B * R);
  if (Cell::kHasCellState && p.c_n) std::memcpy(p.c_n, c, sizeof(T) * B * H);
}

template <class Cell, class T>
void backward(const BackwardParams<T>& p) {
  constexpr int G = Cell::kGates;
  constexpr int S = Cell::kSaved;
  const int64_t Tn = p.steps, B = p.batch, I = p.input, H = p.hidden, P = p.proj;
  const int64_t R = p.recurrent(), GH = G * H, TB = Tn * B;
  const bool proj = P > 0;
  const int nt = get_num_threads();
  const StepMap map{p.lengths, Tn, p.reverse};
  const int64_t ld_dy = p.ld_dy ? p.ld_dy : R;
  const T beta_dx = p.accumulate_dx ? T(1) : T(0);
  const T beta_w = p.accumulate_grads ? T(1) : T(0);

  int64_t o_dxp = TB * GH, o_dhp = Cell::kSplitGrad ? TB * GH : 0, o_step = B * GH,
          o_dh0 = B * R, o_dh1 = B * R, o_dc = B * H, o_dout = proj ? B * H : 0,
          o_dproj = proj ? TB * P : 0, o_drh = Cell::kTwoPhase ? B * H : 0, o_ones = TB;
  Workspace<T> ws({&o_dxp, &o_dhp, &o_step, &o_dh0, &o_dh1, &o_dc, &o_dout, &o_dproj, &o_drh,
                   &o_ones});
  T* dxp = ws.at(o_dxp);                               // d(input pre-activations), by time
  T* dhp = Cell::kSplitGrad ? ws.at(o_dhp) : dxp;      // d(recurrent pre-activations), by time
  T* dstep = ws.at(o_step);                            // this step's d(recurrent pre-act.), (B, GH)
  T* dh_cur = ws.at(o_dh0);
  T* dh_next = ws.at(o_dh1);
  T* dc = ws.at(o_dc);
  T* dout = ws.at(o_dout);
  T* dproj = ws.at(o_dproj);
  T* drh = ws.at(o_drh);
  T* ones = ws.at(o_ones);

  zero_padding(dxp, GH, map, B);
  if (Cell::kSplitGrad) zero_padding(dhp, GH, map, B);
  if (proj) zero_padding(dproj, P, map, B);
  if (p.dh_n) std::memcpy(dh_cur, p.dh_n, sizeof(T) * B * R);
  else std::fill(dh_cur, dh_cur + B * R, T(0));
  if (Cell::kHasCellState) {
    if (p.dc_n) std::memcpy(dc, p.dc_n, sizeof(T) * B * H);
    else std::fill(dc, dc + B * H, T(0));
  }

  const int64_t steps = max_length(p.lengths, B, Tn);
  const bool par = worth_parallel(B * GH);
  const int64_t k_rec = Cell::kTwoPhase ? Cell::kPhase1Gates * H : GH;

  for (int64_t s = steps - 1; s >= 0; --s) {
    // Total gradient reaching each active state: from the later step and from y.
    for (int64_t b = 0; b < B; ++b) {
      if (!map.active(s, b)) {
        // Frozen state: the gradient passes through; no recurrent contribution.
        std::fill(dstep + b * GH, dstep + (b + 1) * GH, T(0));
        std::memcpy(dh_next + b * R, dh_cur + b * R, sizeof(T) * R);
        continue;
      }
      const int64_t row = map.time(s, b) * B + b;
      if (p.dy) {
        const T* dyr = p.dy + row * ld_dy;
        for (int64_t k = 0; k < R; ++k) dh_cur[b * R + k] += dyr[k];
      }
      if (proj) {
        std::memcpy(dproj + row * P, dh_cur + b * R, sizeof(T) * P);
        std::fill(dh_next + b * R, dh_next + (b + 1) * R, T(0));
      }
    }
    if (proj) gemm<T>(false, false, B, H, P, T(1), dh_cur, R, p.w_hr, H, T(0), dout, H);

#pragma omp parallel for num_threads(nt) if (par)
    for (int64_t b = 0; b < B; ++b) {
      if (!map.active(s, b)) continue;
      const int64_t row = map.time(s, b) * B + b;
      const T* sv = p.saved + row * S * H;
      T* dx_row = dxp + row * GH;
      T* dh_row = dhp + row * GH;
      for (int64_t j = 0; j < H; ++j) {
        const T d = proj ? dout[b * H + j] : dh_cur[b * R + j];
        const T hprev = proj ? T(0) : p.h_prev[row * R + j];
        T dcj = Cell::kHasCellState ? dc[b * H + j] : T(0);
        T dax[G], dah[G], direct;
        Cell::backward(sv + j, H, d, hprev, dcj, dax, dah, direct);
        if (Cell::kHasCellState) dc[b * H + j] = dcj;
        for (int g = 0; g < G; ++g) {
          if (Cell::kTwoPhase && g == 0) continue;  // d(a_r) comes in phase 2
          dx_row[g * H + j] = dax[g];
          const T dr = Cell::kSplitGrad ? dah[g] : dax[g];
          if (Cell::kSplitGrad) dh_row[g * H + j] = dr;
          dstep[b * GH + g * H + j] = dr;
        }
        if (!proj) dh_next[b * R + j] = direct;
      }
    }

    if constexpr (Cell::kTwoPhase) {
      // d(r h) = d(a_n) W_hn, then d(a_r) and the path through r h to h_prev.
      const int64_t n0 = Cell::kPhase1Gates * H;
      gemm<T>(false, false, B, H, H, T(1), dstep + n0, GH, p.w_hh + n0 * R, R, T(0), drh, H);
#pragma omp parallel for num_threads(nt) if (par)
      for (int64_t b = 0; b < B; ++b) {
        if (!map.active(s, b)) continue;
        const int64_t row = map.time(s, b) * B + b;
        const T* sv = p.saved + row * S * H;
        for (int64_t j = 0; j < H; ++j) {
          T dar, direct = dh_next[b * R + j];
          Cell::backward_reset(sv + j, H, drh[b * H + j], p.h_prev[row * R + j], dar, direct);
          dxp[row * GH + j] = dar;
          dstep[b * GH + j] = dar;
          dh_next[b * R + j] = direct;
        }
      }
    }

    gemm<T>(false, false, B, R, k_rec, T(1), dstep, GH, p.w_hh, R, T(1), dh_next, R);
    std::swap(dh_cur, dh_next);
  }

  std::memcpy(p.dh0, dh_cur, sizeof(T) * B * R);
  if (Cell::kHasCellState && p.dc0) std::memcpy(p.dc0, dc, sizeof(T) * B * H);

  // Bulk GEMMs over all T*B rows.
  gemm<T>(false, false, TB, I, GH, T(1), dxp, GH, p.w_ih, I, beta_dx, p.dx, I);
  gemm<T>(true, false, GH, I, TB, T(1), dxp, GH, p.x, I, beta_w, p.dw_ih, I);
  if constexpr (Cell::kTwoPhase) {
    // Rows [0, 2H) of W_hh act on h_prev, rows [2H, 3H) on r h (saved value 3).
    const int64_t n0 = Cell::kPhase1Gates * H;
    gemm<T>(true, false, n0, R, TB, T(1), dhp, GH, p.h_prev, R, beta_w, p.dw_hh, R);
    gemm<T>(true, false, H, H, TB, T(1), dhp + n0, GH, p.saved + 3 * H, S * H, beta_w,
            p.dw_hh + n0 * R, R);
  } else {
    gemm<T>(true, false, GH, R, TB, T(1), dhp, GH, p.h_prev, R, beta_w, p.dw_hh, R);
  }
  if (proj) gemm<T>(true, false, P, H, TB, T(1), dproj, P, p.proj_in, H, beta_w, p.dw_hr, H);
  if (p.db_ih || p.db_hh) {
    std::fill(ones, ones + TB, T(1));
    if (p.db_ih) gemv_t<T>(TB, GH, T(1), dxp, GH, ones, beta_w, p.db_ih);
    if (p.db_hh) gemv_t<T>(TB, GH, T(1), dhp, GH, ones, beta_w, p.db_hh);
  }
}

}  // namespace cpu
}  // namespace fusedrnn
