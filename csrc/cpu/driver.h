#pragma once
// CPU driver for one layer and one direction, generic over the cell (csrc/cells/*.h).
//
// Structure (DESIGN.md §4):
//   forward:  XP = X W_ih^T + b_ih over all T*B rows at once; then per step the recurrent
//             GEMM HP = h W_hh^T and the cell applied per (batch, unit).
//   backward: per step only the pointwise backward and dG W_hh; dX, dW_ih, dW_hh, dW_hr and the
//             bias sums are bulk GEMMs over all T*B rows after the loop.
// Every array indexed by time (saved values, dXP, ...) uses row te*B + b. At step s sequence b
// is active iff s < L_b and then processes time te = s (forward) or L_b - 1 - s (reverse), so
// both directions start together and inactive sequences simply keep their state.
// The time loop is one persistent OpenMP region per call (see forward()). The per-step products
// are our own kernels: packed panels (microkernel.h) from B = 4, W read in place below
// (dotkernel.h, direct_gemm_small); the bulk products go to the BLAS.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>

#include "cpu/gemm.h"
#include "cpu/dotkernel.h"
#include "cpu/microkernel.h"
#include "fusedrnn/api.h"
#include "fusedrnn/params.h"

namespace fusedrnn {
FUSEDRNN_ISA_BEGIN
namespace cpu {

// One buffer per call from the workspace pool (api.h), carved into named pieces; not
// initialised (no page-touching memset).
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
    buf_ = static_cast<T*>(workspace_acquire(sizeof(T) * size_t(std::max<int64_t>(total, 1)), capacity_));
  }
  ~Workspace() { workspace_release(buf_, capacity_); }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  T* at(int64_t offset) { return buf_ + offset; }

 private:
  T* buf_ = nullptr;
  size_t capacity_ = 0;
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

// True if a row (te, b) with te >= L_b of a (T, B, width) array holds a NaN or an infinity.
template <class T>
bool padding_not_finite(const T* a, int64_t width, const StepMap& m, int64_t B) {
  if (!m.lengths) return false;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t te = m.len(b); te < m.steps; ++te) {
      const T* row = a + (te * B + b) * width;
      for (int64_t k = 0; k < width; ++k)
        if (!std::isfinite(row[k])) return true;
    }
  return false;
}

// Threads asked for the time loop: each owns a block of at least 32 hidden units. The work is
// split over the team OpenMP actually grants (omp_get_num_threads() inside the region), never
// over this number; workspace sized for nt covers any smaller team.
inline int loop_threads(int64_t H) {
  return (int)std::max<int64_t>(1, std::min<int64_t>(get_num_threads(), H / 32));
}

inline void split_range(int64_t n, int parts, int idx, int64_t& lo, int64_t& hi) {
  const int64_t base = n / parts, rem = n % parts;
  lo = idx * base + std::min<int64_t>(idx, rem);
  hi = lo + base + (idx < rem ? 1 : 0);
}

// The hidden units [j0, j1) and recurrent columns [q0, q1) a loop thread owns (the columns are
// the units without projection, a block of the P projected columns with it).
struct Slice {
  int64_t j0, j1, q0, q1;
  Slice(int64_t H, int64_t P, int nt, int t) {
    split_range(H, nt, t, j0, j1);
    if (P > 0) split_range(P, nt, t, q0, q1);
    else q0 = j0, q1 = j1;
  }
  int64_t units() const { return j1 - j0; }
  int64_t cols() const { return q1 - q0; }
};

// Forward. The time loop is one OpenMP region: each thread owns a block of hidden units,
// computes the input projection (see below), then per step its slice of h W_hh^T (panels of
// its W_hh rows from B = 4, the rows in place below), applies the cell, and meets the others at
// one barrier per step (two with a projection or the two-phase GRU).
template <class Cell, class T>
void forward(const ForwardParams<T>& p) {
  constexpr int G = Cell::kGates;
  constexpr int G1 = Cell::kPhase1Gates;  // gate blocks whose W_hh rows act on h directly
  constexpr int S = Cell::kSaved;
  const int64_t Tn = p.steps, B = p.batch, I = p.input, H = p.hidden, P = p.proj;
  const int64_t R = p.recurrent(), GH = G * H;
  const bool training = p.saved != nullptr;
  const bool proj = P > 0;
  const StepMap map{p.lengths, Tn, p.reverse};
  const int64_t ld_y = p.ld_y ? p.ld_y : R;
  const int nt = loop_threads(H);

  // B >= panel_min_rows(): W_hh packed, each thread's G1*nj rows in kLanes-row panels
  // (padding: < kLanes rows each); fewer rows: dot_gemm straight from W_hh, nothing packed.
  const bool use_panels = B >= panel_min_rows();
  // Few T*B rows: the input projection straight from W_ih's rows too (a BLAS GEMM would
  // re-pack all of W_ih for a handful of rows); many rows: the BLAS.
  const bool dot_proj = Tn * B <= dot_projection_max_rows();
  int64_t o_xp = Tn * B * GH, o_wp = use_panels ? (G1 * H + kLanes * nt) * R : 0, o_hp = B * GH, o_h0 = B * R, o_h1 = B * R,
          o_c = B * H, o_out = proj ? B * H : 0, o_rh = Cell::kTwoPhase ? B * H : 0,
          o_sv = training ? 0 : B * S * H, o_zero = GH;
  Workspace<T> ws({&o_xp, &o_wp, &o_hp, &o_h0, &o_h1, &o_c, &o_out, &o_rh, &o_sv, &o_zero});
  // Zeros stand in for a missing bias or h_prev, so the vectorised loops have no branches.
  T* zeros = ws.at(o_zero);
  std::fill(zeros, zeros + GH, T(0));
  const T* b_hh = p.b_hh ? p.b_hh : zeros;
  T* xp = ws.at(o_xp);
  T* wpack = ws.at(o_wp);
  T* hp = ws.at(o_hp);
  T* hbuf[2] = {ws.at(o_h0), ws.at(o_h1)};
  T* c = ws.at(o_c);
  T* out = ws.at(o_out);
  T* rh = ws.at(o_rh);
  T* sv_scratch = ws.at(o_sv);

  const T* b_ih = p.b_ih ? p.b_ih : zeros;

  if (p.h0) std::memcpy(hbuf[0], p.h0, sizeof(T) * B * R);
  else std::fill(hbuf[0], hbuf[0] + B * R, T(0));
  if (Cell::kHasCellState) {
    if (p.c0) std::memcpy(c, p.c0, sizeof(T) * B * H);
    else std::fill(c, c + B * H, T(0));
  }
  if (proj) std::fill(out, out + B * H, T(0));
  if (Cell::kTwoPhase) std::fill(rh, rh + B * H, T(0));
  const int64_t steps = max_length(p.lengths, B, Tn);

#pragma omp parallel num_threads(nt)
  {
    // Split over the team that actually runs, which OpenMP may make smaller than nt
    // (OMP_THREAD_LIMIT, OMP_DYNAMIC, a call from inside another parallel region).
    const int team = omp_get_num_threads(), tid = omp_get_thread_num();
    const Slice sl(H, P, team, tid);
    const int64_t j0 = sl.j0, j1 = sl.j1, nj = sl.units(), q0 = sl.q0, q1 = sl.q1;
    // This thread's W_hh rows, gate-major (packed row g*nj + (j - j0) is W_hh row g*H + j),
    // in panels for the step's micro-kernel; packed by the thread that uses them.
    T* wp = wpack + (G1 * j0 + kLanes * tid) * R;
    if (use_panels)
      pack_rows_to_panels(wp, G1 * nj, R, [&](int64_t i) {
        return p.w_hh + ((i / nj) * H + j0 + i % nj) * R;
      });
    T* hpt = hp + B * G * j0;  // (B, G*nj): this thread's recurrent pre-activations
    const int64_t ldh = G * nj;

    // The input pre-activations for all steps at once, b_ih added. Few rows (dot_proj): this
    // thread's units, (T*B, G*nj) at xpt, straight from W_ih's rows (each thread reads only
    // its rows of W_ih). Many rows: a block of T*B rows for all units, one BLAS call per
    // thread into the shared (T*B, G*H) array (per-gate calls re-pack X for every gate:
    // measured up to 10% slower at H=256, B=64), then a barrier before the steps read it.
    const T* xbase;  // xbase + row * ldx + g * xgs + j: pre-activation of gate g, unit j
    int64_t ldx, xgs;
    if (dot_proj) {
      T* xpt = xp + Tn * B * G * j0;
      for (int g = 0; g < G; ++g)
        dot_gemm(Tn * B, nj, I, p.x, I, p.w_ih + (g * H + j0) * I, I, xpt + g * nj, ldh);
      for (int64_t r = 0; r < Tn * B; ++r)
        for (int g = 0; g < G; ++g) {
          T* dst = xpt + r * ldh + g * nj - j0;
          const T* bias = b_ih + g * H;
#pragma GCC ivdep
          for (int64_t j = j0; j < j1; ++j) dst[j] += bias[j];
        }
      xbase = xpt - j0, ldx = ldh, xgs = nj;
    } else {
      int64_t r0, r1;
      split_range(Tn * B, team, tid, r0, r1);
      if (r1 > r0) {
        gemm<T>(false, true, r1 - r0, GH, I, T(1), p.x + r0 * I, I, p.w_ih, I, T(0),
                xp + r0 * GH, GH);
        for (int64_t r = r0; r < r1; ++r) {
          T* dst = xp + r * GH;
#pragma GCC ivdep
          for (int64_t k = 0; k < GH; ++k) dst[k] += b_ih[k];
        }
      }
      xbase = xp, ldx = GH, xgs = H;
#pragma omp barrier
    }
    T* h_cur = hbuf[0];
    T* h_next = hbuf[1];

    // The unit's gate pre-activations, input part and recurrent part (both biases in).
#define FUSEDRNN_GATHER(GATES)                                   \
  _Pragma("GCC unroll 4") for (int g = 0; g < (GATES); ++g) {    \
    ax[g] = xrow[g * xgs + j];                                   \
    ah[g] = hrow[g * nj + j] + b_hh[g * H + j];                  \
  }
    auto saved_at = [&](int64_t te, int64_t b) -> T* {
      return training ? p.saved + (te * B + b) * S * H : sv_scratch + b * S * H;
    };

    for (int64_t s = 0; s < steps; ++s) {
      if (use_panels) {
        packed_gemm(B, G1 * nj, R, h_cur, R, wp, hpt, ldh);
      } else {  // a few rows: straight from W_hh's rows, nothing packed
        for (int g = 0; g < G1; ++g)
          dot_gemm(B, nj, R, h_cur, R, p.w_hh + (g * H + j0) * R, R, hpt + g * nj, ldh);
      }

      if constexpr (Cell::kTwoPhase) {
        for (int64_t b = 0; b < B; ++b) {
          if (!map.active(s, b)) continue;
          const int64_t te = map.time(s, b);
          T* sv = saved_at(te, b);
          const T* xrow = xbase + (te * B + b) * ldx;
          const T* hrow = hpt + b * ldh - j0;
#pragma GCC ivdep
          for (int64_t j = j0; j < j1; ++j) {
            T ax[G], ah[G];
            FUSEDRNN_GATHER(G1)
            rh[b * H + j] = Cell::gates(ax, ah, h_cur[b * R + j], sv + j, H);
          }
        }
#pragma omp barrier
        // W_hh rows [G1*H + j0, G1*H + j1) (the n block of this thread's units) act on r h.
        gemm<T>(false, true, B, nj, H, T(1), rh, H, p.w_hh + (G1 * H + j0) * R, R, T(0),
                hpt + G1 * nj, ldh);
      }

      for (int64_t b = 0; b < B; ++b) {
        if (!map.active(s, b)) continue;
        const int64_t te = map.time(s, b);
        T* sv = saved_at(te, b);
        T* dst = proj ? out + b * H : h_next + b * R;
        const T* xrow = xbase + (te * B + b) * ldx;
        const T* hrow = hpt + b * ldh - j0;
        // h_prev of the same unit exists only without projection (R == H): GRU's z h path.
        const T* hprev = proj ? zeros : h_cur + b * R;
        T* cb = c + b * H;
#pragma GCC ivdep
        for (int64_t j = j0; j < j1; ++j) {
          T ax[G], ah[G];
          FUSEDRNN_GATHER(G)
          T cj = Cell::kHasCellState ? cb[j] : T(0);
          dst[j] = Cell::forward(ax, ah, hprev[j], cj, sv + j, H);
          if (Cell::kHasCellState) cb[j] = cj;
        }
      }

      if (proj) {
#pragma omp barrier
        if (q1 > q0)
          gemm<T>(false, true, B, q1 - q0, H, T(1), out, H, p.w_hr + q0 * H, H, T(0),
                  h_next + q0, R);
      }

      // This thread's columns: outputs, saved state, frozen sequences.
      for (int64_t b = 0; b < B; ++b) {
        if (!map.active(s, b)) {
          std::memcpy(h_next + b * R + q0, h_cur + b * R + q0, sizeof(T) * (q1 - q0));
          continue;
        }
        const int64_t row = map.time(s, b) * B + b;
        std::memcpy(p.y + row * ld_y + q0, h_next + b * R + q0, sizeof(T) * (q1 - q0));
        if (training) {
          std::memcpy(p.h_prev + row * R + q0, h_cur + b * R + q0, sizeof(T) * (q1 - q0));
          if (proj) std::memcpy(p.proj_in + row * H + j0, out + b * H + j0, sizeof(T) * nj);
        }
      }
#pragma omp barrier
      std::swap(h_cur, h_next);
    }
  }

#undef FUSEDRNN_GATHER
  const T* h_final = hbuf[steps % 2];
  zero_padding(p.y, R, map, B, ld_y);
  if (training) {
    zero_padding(p.saved, S * H, map, B);
    zero_padding(p.h_prev, R, map, B);
    if (proj) zero_padding(p.proj_in, H, map, B);
  }
  std::memcpy(p.h_n, h_final, sizeof(T) * B * R);
  if (Cell::kHasCellState && p.c_n) std::memcpy(p.c_n, c, sizeof(T) * B * H);
}

// Backward. Per step only the pointwise backward and dG W_hh, in one OpenMP region like the
// forward; dX, dW_ih, dW_hh, dW_hr and the bias sums are bulk GEMMs after the loop.
template <class Cell, class T>
void backward(const BackwardParams<T>& p) {
  constexpr int G = Cell::kGates;
  constexpr int S = Cell::kSaved;
  const int64_t Tn = p.steps, B = p.batch, I = p.input, H = p.hidden, P = p.proj;
  const int64_t R = p.recurrent(), GH = G * H, TB = Tn * B;
  const bool proj = P > 0;
  const StepMap map{p.lengths, Tn, p.reverse};
  const int64_t ld_dy = p.ld_dy ? p.ld_dy : R;
  const T beta_dx = p.accumulate_dx ? T(1) : T(0);
  const T beta_w = p.accumulate_grads ? T(1) : T(0);
  const int nt = loop_threads(H);
  const bool use_panels = B >= panel_min_rows();  // else W_hh is read in place

  int64_t o_dxp = TB * GH, o_dhp = Cell::kSplitGrad ? TB * GH : 0, o_step = B * GH,
          o_dh0 = B * R, o_dh1 = B * R, o_dc = B * H, o_dout = proj ? B * H : 0,
          o_dproj = proj ? TB * P : 0, o_drh = Cell::kTwoPhase ? B * H : 0, o_ones = TB,
          o_zero = H,
          o_wpb = use_panels ? (R + kLanes * nt) * Cell::kPhase1Gates * H : 0;
  Workspace<T> ws({&o_dxp, &o_dhp, &o_step, &o_dh0, &o_dh1, &o_dc, &o_dout, &o_dproj, &o_drh,
                   &o_ones, &o_zero, &o_wpb});
  T* wpack = ws.at(o_wpb);
  T* zeros = ws.at(o_zero);  // stands in for h_prev with a projection (no branch in the loop)
  std::fill(zeros, zeros + H, T(0));
  T* dxp = ws.at(o_dxp);                           // d(input pre-activations), by time
  T* dhp = Cell::kSplitGrad ? ws.at(o_dhp) : dxp;  // d(recurrent pre-activations), by time
  T* dstep = ws.at(o_step);                        // this step's d(recurrent pre-act.), (B, GH)
  T* dhbuf[2] = {ws.at(o_dh0), ws.at(o_dh1)};
  T* dc = ws.at(o_dc);
  T* dout = ws.at(o_dout);
  T* dproj = ws.at(o_dproj);
  T* drh = ws.at(o_drh);
  T* ones = ws.at(o_ones);

  zero_padding(dxp, GH, map, B);
  if (Cell::kSplitGrad) zero_padding(dhp, GH, map, B);
  if (proj) zero_padding(dproj, P, map, B);
  if (p.dh_n) std::memcpy(dhbuf[0], p.dh_n, sizeof(T) * B * R);
  else std::fill(dhbuf[0], dhbuf[0] + B * R, T(0));
  if (Cell::kHasCellState) {
    if (p.dc_n) std::memcpy(dc, p.dc_n, sizeof(T) * B * H);
    else std::fill(dc, dc + B * H, T(0));
  }
  const int64_t steps = max_length(p.lengths, B, Tn);
  const int64_t k_rec = Cell::kPhase1Gates * H;  // W_hh rows acting on h_prev directly

#pragma omp parallel num_threads(nt)
  {
    const int team = omp_get_num_threads(), tid = omp_get_thread_num();  // team <= nt
    const Slice sl(H, P, team, tid);
    const int64_t j0 = sl.j0, j1 = sl.j1, nj = sl.units(), q0 = sl.q0, q1 = sl.q1;
    T* dh_cur = dhbuf[0];
    T* dh_next = dhbuf[1];
    // dh_prev[:, q0:q1] += dstep W_hh[:k_rec, q0:q1]: this thread's W_hh columns as panels.
    T* wpb = wpack + (q0 + kLanes * tid) * k_rec;
    if (use_panels)
      pack_cols_to_panels(wpb, q1 - q0, k_rec, p.w_hh + q0, R);

    for (int64_t s = steps - 1; s >= 0; --s) {
      // This thread's recurrent columns: the total gradient reaching each state.
      for (int64_t b = 0; b < B; ++b) {
        T* dcur = dh_cur + b * R;
        if (!map.active(s, b)) {  // frozen state: the gradient passes through
          std::memcpy(dh_next + b * R + q0, dcur + q0, sizeof(T) * (q1 - q0));
          continue;
        }
        const int64_t row = map.time(s, b) * B + b;
        if (p.dy) {
          const T* dyr = p.dy + row * ld_dy;
          for (int64_t q = q0; q < q1; ++q) dcur[q] += dyr[q];
        }
        if (proj) {
          std::memcpy(dproj + row * P + q0, dcur + q0, sizeof(T) * (q1 - q0));
          std::fill(dh_next + b * R + q0, dh_next + b * R + q1, T(0));
        }
      }
      if (proj) {
#pragma omp barrier
        gemm<T>(false, false, B, nj, P, T(1), dh_cur, R, p.w_hr + j0, H, T(0), dout + j0, H);
      }

      for (int64_t b = 0; b < B; ++b) {
        if (!map.active(s, b)) {
          for (int g = 0; g < G; ++g)
            std::fill(dstep + b * GH + g * H + j0, dstep + b * GH + g * H + j1, T(0));
          continue;
        }
        const int64_t row = map.time(s, b) * B + b;
        const T* sv = p.saved + row * S * H;
        T* dx_row = dxp + row * GH;
        T* dh_row = dhp + row * GH;
        T* dstep_row = dstep + b * GH;
        const T* dsrc = proj ? dout + b * H : dh_cur + b * R;
        const T* hprev = proj ? zeros : p.h_prev + row * R;
        // Without projection the direct path goes to dh_next; with it, there is none (the
        // row was zeroed above) and the values land in dout, which is not read again.
        T* direct_dst = proj ? dout + b * H : dh_next + b * R;
        T* dcb = dc + b * H;
        constexpr int g0 = Cell::kTwoPhase ? 1 : 0;  // d(a_r) of the two-phase GRU: phase 2
#pragma GCC ivdep
        for (int64_t j = j0; j < j1; ++j) {
          T dcj = Cell::kHasCellState ? dcb[j] : T(0);
          T dax[G], dah[G], direct;
          Cell::backward(sv + j, H, dsrc[j], hprev[j], dcj, dax, dah, direct);
          if (Cell::kHasCellState) dcb[j] = dcj;
          for (int g = g0; g < G; ++g) {
            dx_row[g * H + j] = dax[g];
            const T dr = Cell::kSplitGrad ? dah[g] : dax[g];
            if (Cell::kSplitGrad) dh_row[g * H + j] = dr;
            dstep_row[g * H + j] = dr;
          }
          direct_dst[j] = direct;
        }
      }

      if constexpr (Cell::kTwoPhase) {
        // d(r h) = d(a_n) W_hn (all units' d(a_n) needed), then d(a_r) and the r h path.
#pragma omp barrier
        gemm<T>(false, false, B, nj, H, T(1), dstep + k_rec, GH, p.w_hh + k_rec * R + j0, R,
                T(0), drh + j0, H);
        for (int64_t b = 0; b < B; ++b) {
          if (!map.active(s, b)) continue;
          const int64_t row = map.time(s, b) * B + b;
          const T* sv = p.saved + row * S * H;
#pragma GCC ivdep
          for (int64_t j = j0; j < j1; ++j) {
            T dar, direct = dh_next[b * R + j];
            Cell::backward_reset(sv + j, H, drh[b * H + j], p.h_prev[row * R + j], dar, direct);
            dxp[row * GH + j] = dar;
            dstep[b * GH + j] = dar;
            dh_next[b * R + j] = direct;
          }
        }
      }
#pragma omp barrier
      // dh_prev[:, q0:q1] += dstep W_hh[:, q0:q1]
      if (q1 > q0 && use_panels)
        packed_gemm<true>(B, q1 - q0, k_rec, dstep, GH, wpb, dh_next + q0, R);
      else if (q1 > q0)  // a few rows: W_hh read in place, nothing packed
        direct_gemm_small<true>(B, q1 - q0, k_rec, dstep, GH, p.w_hh + q0, R, dh_next + q0, R);
#pragma omp barrier
      std::swap(dh_cur, dh_next);
    }
  }

  std::memcpy(p.dh0, dhbuf[steps % 2], sizeof(T) * B * R);
  if (Cell::kHasCellState && p.dc0) std::memcpy(p.dc0, dc, sizeof(T) * B * H);

  // Bulk GEMMs over all T*B rows. The rows past a sequence's length have dxp = 0, but
  // 0 * NaN is NaN: padding that holds NaN/inf (a common way to pad) would poison dW_ih, so
  // then dW_ih reads a copy of x with the padding zeroed.
  gemm_par<T>(false, false, TB, I, GH, T(1), dxp, GH, p.w_ih, I, beta_dx, p.dx, I);
  const T* x_dw = p.x;
  std::unique_ptr<Workspace<T>> x_clean;
  if (padding_not_finite(p.x, I, map, B)) {
    int64_t o_x = TB * I;
    x_clean.reset(new Workspace<T>({&o_x}));
    T* xc = x_clean->at(o_x);
    std::memcpy(xc, p.x, sizeof(T) * TB * I);
    zero_padding(xc, I, map, B);
    x_dw = xc;
  }
  gemm_par<T>(true, false, GH, I, TB, T(1), dxp, GH, x_dw, I, beta_w, p.dw_ih, I);
  if constexpr (Cell::kTwoPhase) {
    // Rows [0, 2H) of W_hh act on h_prev, rows [2H, 3H) on r h (saved value 3).
    gemm_par<T>(true, false, k_rec, R, TB, T(1), dhp, GH, p.h_prev, R, beta_w, p.dw_hh, R);
    gemm_par<T>(true, false, H, H, TB, T(1), dhp + k_rec, GH, p.saved + 3 * H, S * H, beta_w,
                p.dw_hh + k_rec * R, R);
  } else {
    gemm_par<T>(true, false, GH, R, TB, T(1), dhp, GH, p.h_prev, R, beta_w, p.dw_hh, R);
  }
  if (proj) gemm_par<T>(true, false, P, H, TB, T(1), dproj, P, p.proj_in, H, beta_w, p.dw_hr, H);
  if (p.db_ih || p.db_hh) {
    std::fill(ones, ones + TB, T(1));
    if (p.db_ih) gemv_t_par<T>(TB, GH, T(1), dxp, GH, ones, beta_w, p.db_ih);
    if (p.db_hh) gemv_t_par<T>(TB, GH, T(1), dhp, GH, ones, beta_w, p.db_hh);
  }
}

}  // namespace cpu
FUSEDRNN_ISA_END
}  // namespace fusedrnn
