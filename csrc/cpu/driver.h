#pragma once
// CPU driver for one layer and one direction, generic over the cell (csrc/cells/*.h).
//
// Structure (docs/design.md §4), as phases a CUDA driver mirrors:
//   forward:  plan; carve the scratch; then in one persistent OpenMP region, per thread:
//               pack its W_hh rows, project the inputs (XP = X W_ih^T + b_ih, all T*B rows),
//               and per step: recurrent GEMM (HP = h W_hh^T, its units) [two-phase GRU: r and z,
//               barrier, the n block's GEMM on r h] -> pointwise cell [projection: barrier,
//               out W_hr^T] -> commit (outputs, saved state, frozen sequences) -> barrier.
//   backward: per step: gather dh (+ dy) [projection: barrier, back through W_hr] ->
//               pointwise backward [two-phase GRU: barrier, the reset-gate phase] -> barrier ->
//               recurrent dh GEMM (dG W_hh) -> barrier; after the loop the weight-gradient
//               recipe (core/grad_recipe.h): dX, dW_ih, dW_hh, dW_hr and the bias sums as bulk
//               GEMMs over all T*B rows.
// Time indexing, lengths and reverse: core/step_map.h. Each thread owns a block of hidden units
// (Slice). The per-step products are our own kernels: packed panels (microkernel.h) from B = 4,
// W read in place below (dotkernel.h, direct_gemm_small); the bulk products go to the BLAS.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>

#include "core/grad_recipe.h"
#include "core/step_map.h"
#include "cpu/dotkernel.h"
#include "cpu/gemm.h"
#include "cpu/microkernel.h"
#include "fusedrnn/api.h"
#include "fusedrnn/params.h"

namespace fusedrnn {
FUSEDRNN_ISA_BEGIN
namespace cpu {

// One buffer per call: the caller's scratch when given and big enough, else the workspace pool
// (api.h). Not initialised (no page-touching memset).
template <class T>
class Workspace {
 public:
  Workspace(int64_t elements, void* scratch, size_t scratch_bytes) {
    const size_t bytes = sizeof(T) * size_t(std::max<int64_t>(elements, 1));
    // 64-byte aligned like the pool's buffers, so every piece is aligned the same either way.
    if (scratch && std::align(64, bytes, scratch, scratch_bytes)) {
      buf_ = static_cast<T*>(scratch);
      return;
    }
    buf_ = static_cast<T*>(workspace_acquire(bytes, capacity_));
    pooled_ = true;
  }
  ~Workspace() {
    if (pooled_) workspace_release(buf_, capacity_);
  }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  T* data() { return buf_; }

 private:
  T* buf_ = nullptr;
  size_t capacity_ = 0;
  bool pooled_ = false;
};

// Cuts consecutive pieces out of one buffer, each a multiple of 64 bytes for float. With a null
// base it only measures: the buffer structs below are built once to size the Workspace, then
// on it.
template <class T>
class Carver {
 public:
  explicit Carver(T* base) : base_(base) {}
  T* take(int64_t n) {
    T* piece = base_ ? base_ + used_ : nullptr;
    used_ += (n + 15) / 16 * 16;
    return piece;
  }
  int64_t used() const { return used_; }

 private:
  T* base_;
  int64_t used_ = 0;
};

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

// True if a row (te, b) with te >= L_b of a (T, B, ld) array holds a NaN or an infinity in
// columns [0, width).
template <class T>
bool padding_not_finite(const T* a, int64_t width, const StepMap& m, int64_t B, int64_t ld) {
  if (!m.lengths) return false;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t te = m.len(b); te < m.steps; ++te) {
      const T* row = a + (te * B + b) * ld;
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

// ---------------------------------------------------------------------------------------------
// Forward

// What a forward call decides once, before the threads start.
template <class Cell>
struct ForwardPlan {
  static constexpr int G = Cell::kGates;
  static constexpr int G1 = Cell::kPhase1Gates;  // gate blocks whose W_hh rows act on h directly
  static constexpr int S = Cell::kSaved;
  int64_t Tn, B, I, H, P, R, GH, TB;
  int64_t ld_x, ld_y;
  bool training;  // saves what backward reads
  bool proj;
  // B >= panel_min_rows(): W_hh packed, each thread's G1*nj rows in kLanes-row panels
  // (padding: < kLanes rows each); fewer rows: dot_gemm straight from W_hh, nothing packed.
  bool use_panels;
  // Few T*B rows: the input projection straight from W_ih's rows too (a BLAS GEMM would
  // re-pack all of W_ih for a handful of rows); many rows: the BLAS.
  bool dot_proj;
  int threads;    // asked for; the team OpenMP grants may be smaller
  int64_t steps;  // the longest sequence
  StepMap map;

  template <class T>
  explicit ForwardPlan(const ForwardParams<T>& p)
      : Tn(p.steps), B(p.batch), I(p.input), H(p.hidden), P(p.proj), R(p.recurrent()),
        GH(G * p.hidden), TB(p.steps * p.batch), ld_x(p.ld_x ? p.ld_x : p.input),
        ld_y(p.ld_y ? p.ld_y : p.recurrent()), training(p.saved != nullptr), proj(p.proj > 0),
        use_panels(p.batch >= panel_min_rows()),
        dot_proj(p.steps * p.batch <= dot_projection_max_rows()), threads(loop_threads(p.hidden)),
        steps(max_length(p.lengths, p.batch, p.steps)), map{p.lengths, p.steps, p.reverse} {}
};

template <class T>
struct ForwardBuffers {
  T* xp;             // input pre-activations, b_ih in: (T*B, G*H), or per-thread blocks (dot_proj)
  T* wpack;          // each thread's W_hh rows in panels (use_panels)
  T* hp;             // (B, G*H) the step's recurrent pre-activations, per-thread column blocks
  T* h[2];           // (B, R) state entering the step, and leaving it
  T* c;              // (B, H) cell state (LSTM)
  T* out;            // (B, H) cell output before W_hr (projection)
  T* rh;             // (B, H) r h (two-phase GRU)
  T* saved_scratch;  // (B, S*H) the cell's saved values when inference keeps none
  T* zeros;          // (G*H) stands in for a missing bias or h_prev: no branch in the loops

  template <class Cell>
  ForwardBuffers(const ForwardPlan<Cell>& pl, Carver<T>& cv) {
    constexpr int G = Cell::kGates, G1 = Cell::kPhase1Gates, S = Cell::kSaved;
    xp = cv.take(pl.TB * pl.GH);
    wpack = cv.take(pl.use_panels ? (G1 * pl.H + kLanes * pl.threads) * pl.R : 0);
    hp = cv.take(pl.B * pl.GH);
    h[0] = cv.take(pl.B * pl.R);
    h[1] = cv.take(pl.B * pl.R);
    c = cv.take(pl.B * pl.H);
    out = cv.take(pl.proj ? pl.B * pl.H : 0);
    rh = cv.take(Cell::kTwoPhase ? pl.B * pl.H : 0);
    saved_scratch = cv.take(pl.training ? 0 : pl.B * S * pl.H);
    zeros = cv.take(G * pl.H);
  }
};

// The state before step 0.
template <class Cell, class T>
void forward_initial_state(const ForwardParams<T>& p, const ForwardPlan<Cell>& pl,
                           const ForwardBuffers<T>& buf) {
  const int64_t B = pl.B, H = pl.H, R = pl.R;
  std::fill(buf.zeros, buf.zeros + pl.GH, T(0));
  if (p.h0) std::memcpy(buf.h[0], p.h0, sizeof(T) * B * R);
  else std::fill(buf.h[0], buf.h[0] + B * R, T(0));
  if (Cell::kHasCellState) {
    if (p.c0) std::memcpy(buf.c, p.c0, sizeof(T) * B * H);
    else std::fill(buf.c, buf.c + B * H, T(0));
  }
  if (pl.proj) std::fill(buf.out, buf.out + B * H, T(0));
  if (Cell::kTwoPhase) std::fill(buf.rh, buf.rh + B * H, T(0));
}

// One loop thread's share of the forward: its units [j0, j1), columns [q0, q1) and the phases
// it runs; forward() calls them in order with the barriers between.
template <class Cell, class T>
class ForwardThread {
  static constexpr int G = Cell::kGates;
  static constexpr int G1 = Cell::kPhase1Gates;
  static constexpr int S = Cell::kSaved;

 public:
  ForwardThread(const ForwardParams<T>& p, const ForwardPlan<Cell>& pl,
                const ForwardBuffers<T>& buf, int team, int tid)
      : p(p), pl(pl), buf(buf), sl(pl.H, pl.P, team, tid), nj(sl.units()),
        // This thread's W_hh rows, gate-major (packed row g*nj + (j - j0) is W_hh row g*H + j).
        wp(buf.wpack + (G1 * sl.j0 + kLanes * tid) * pl.R),
        hpt(buf.hp + pl.B * G * sl.j0), ldh(G * nj),
        b_ih(p.b_ih ? p.b_ih : buf.zeros), b_hh(p.b_hh ? p.b_hh : buf.zeros),
        h_cur(buf.h[0]), h_next(buf.h[1]) {}

  // Packs this thread's W_hh rows into panels for the step's micro-kernel (by the thread that
  // uses them).
  void pack_weights() {
    if (!pl.use_panels) return;
    const int64_t H = pl.H, R = pl.R, j0 = sl.j0, nj = this->nj;
    const T* w_hh = p.w_hh;
    pack_rows_to_panels(wp, G1 * nj, R, [&](int64_t i) {
      return w_hh + ((i / nj) * H + j0 + i % nj) * R;
    });
  }

  // The input pre-activations for all steps at once, b_ih added. Few rows (dot_proj): this
  // thread's units, (T*B, G*nj) at xpt, straight from W_ih's rows (each thread reads only its
  // rows of W_ih). Many rows: a block of T*B rows for all units, one BLAS call per thread into
  // the shared (T*B, G*H) array (per-gate calls re-pack X for every gate: measured up to 10%
  // slower at H=256, B=64); the caller then waits at a barrier before the steps read it.
  void project_inputs(int team, int tid) {
    const int64_t TB = pl.TB, I = pl.I, H = pl.H, GH = pl.GH, ld_x = pl.ld_x;
    const int64_t j0 = sl.j0, j1 = sl.j1, nj = this->nj, ldh = this->ldh;
    const T* b_ih = this->b_ih;
    T* xp = buf.xp;
    if (pl.dot_proj) {
      T* xpt = xp + TB * G * j0;
      for (int g = 0; g < G; ++g)
        dot_gemm(TB, nj, I, p.x, ld_x, p.w_ih + (g * H + j0) * I, I, xpt + g * nj, ldh);
      for (int64_t r = 0; r < TB; ++r)
        for (int g = 0; g < G; ++g) {
          T* dst = xpt + r * ldh + g * nj - j0;
          const T* bias = b_ih + g * H;
#pragma GCC ivdep
          for (int64_t j = j0; j < j1; ++j) dst[j] += bias[j];
        }
      xbase = xpt - j0, ldx = ldh, xgs = nj;
    } else {
      int64_t r0, r1;
      split_range(TB, team, tid, r0, r1);
      if (r1 > r0) {
        gemm<T>(false, true, r1 - r0, GH, I, T(1), p.x + r0 * ld_x, ld_x, p.w_ih, I, T(0),
                xp + r0 * GH, GH);
        for (int64_t r = r0; r < r1; ++r) {
          T* dst = xp + r * GH;
#pragma GCC ivdep
          for (int64_t k = 0; k < GH; ++k) dst[k] += b_ih[k];
        }
      }
      xbase = xp, ldx = GH, xgs = H;
    }
  }

  // This thread's slice of h W_hh^T, the gate blocks acting on h (all but the two-phase GRU's n).
  void recurrent_gemm() {
    const int64_t B = pl.B, H = pl.H, R = pl.R, j0 = sl.j0, nj = this->nj;
    if (pl.use_panels) {
      packed_gemm(B, G1 * nj, R, h_cur, R, wp, hpt, ldh);
    } else {  // a few rows: straight from W_hh's rows, nothing packed
      for (int g = 0; g < G1; ++g)
        dot_gemm(B, nj, R, h_cur, R, p.w_hh + (g * H + j0) * R, R, hpt + g * nj, ldh);
    }
  }

  // Two-phase GRU, phase 1: r and z (saved) and r h of this thread's units.
  void reset_gates(int64_t s) {
    const int64_t B = pl.B, H = pl.H, R = pl.R, j0 = sl.j0, j1 = sl.j1, nj = this->nj;
    const int64_t ldx = this->ldx, xgs = this->xgs, ldh = this->ldh;
    const StepMap map = pl.map;
    const T* xbase = this->xbase;
    const T* hpt = this->hpt;
    const T* b_hh = this->b_hh;
    const T* h_cur = this->h_cur;
    T* rh = buf.rh;
    for (int64_t b = 0; b < B; ++b) {
      if (!map.active(s, b)) continue;
      const int64_t te = map.time(s, b);
      T* sv = saved_at(te, b);
      const T* xrow = xbase + (te * B + b) * ldx;
      const T* hrow = hpt + b * ldh - j0;
#pragma GCC ivdep
      for (int64_t j = j0; j < j1; ++j) {
        T ax[G], ah[G];
        gather_preactivations<G1>(ax, ah, xrow, xgs, hrow, nj, b_hh, H, j);
        rh[b * H + j] = Cell::gates(ax, ah, h_cur[b * R + j], sv + j, H);
      }
    }
  }

  // Two-phase GRU, after a barrier (all units' r h): W_hh rows [G1*H + j0, G1*H + j1), the n
  // block of this thread's units, act on r h.
  void new_gate_gemm() {
    const int64_t B = pl.B, H = pl.H, R = pl.R, j0 = sl.j0, nj = this->nj;
    gemm<T>(false, true, B, nj, H, T(1), buf.rh, H, p.w_hh + (G1 * H + j0) * R, R, T(0),
            hpt + G1 * nj, ldh);
  }

  // The cell on this thread's units: the new state (or the output before W_hr), c, saved values.
  void pointwise_cell(int64_t s) {
    const int64_t B = pl.B, H = pl.H, R = pl.R, j0 = sl.j0, j1 = sl.j1, nj = this->nj;
    const int64_t ldx = this->ldx, xgs = this->xgs, ldh = this->ldh;
    const bool proj = pl.proj;
    const StepMap map = pl.map;
    const T* xbase = this->xbase;
    const T* hpt = this->hpt;
    const T* b_hh = this->b_hh;
    const T* zeros = buf.zeros;
    const T* h_cur = this->h_cur;
    T* h_next = this->h_next;
    T* c = buf.c;
    T* out = buf.out;
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
        gather_preactivations<G>(ax, ah, xrow, xgs, hrow, nj, b_hh, H, j);
        T cj = Cell::kHasCellState ? cb[j] : T(0);
        dst[j] = Cell::forward(ax, ah, hprev[j], cj, sv + j, H);
        if (Cell::kHasCellState) cb[j] = cj;
      }
    }
  }

  // Projection, after a barrier (all units' out): this thread's columns of out W_hr^T.
  void project_output() {
    const int64_t B = pl.B, H = pl.H, R = pl.R, q0 = sl.q0, q1 = sl.q1;
    if (q1 > q0)
      gemm<T>(false, true, B, q1 - q0, H, T(1), buf.out, H, p.w_hr + q0 * H, H, T(0),
              h_next + q0, R);
  }

  // This thread's columns: outputs, saved state, frozen sequences.
  void commit(int64_t s) {
    const int64_t B = pl.B, H = pl.H, R = pl.R, ld_y = pl.ld_y;
    const int64_t j0 = sl.j0, nj = this->nj, q0 = sl.q0, q1 = sl.q1;
    const StepMap map = pl.map;
    for (int64_t b = 0; b < B; ++b) {
      if (!map.active(s, b)) {
        std::memcpy(h_next + b * R + q0, h_cur + b * R + q0, sizeof(T) * (q1 - q0));
        continue;
      }
      const int64_t row = map.time(s, b) * B + b;
      std::memcpy(p.y + row * ld_y + q0, h_next + b * R + q0, sizeof(T) * (q1 - q0));
      if (pl.training) {
        std::memcpy(p.h_prev + row * R + q0, h_cur + b * R + q0, sizeof(T) * (q1 - q0));
        if (pl.proj) std::memcpy(p.proj_in + row * H + j0, buf.out + b * H + j0, sizeof(T) * nj);
      }
    }
  }

  // After the step's last barrier: the new state becomes the current one.
  void next_step() { std::swap(h_cur, h_next); }

 private:
  // Where the cell's saved values of (te, b) go: the training output, or per-row scratch.
  T* saved_at(int64_t te, int64_t b) const {
    return pl.training ? p.saved + (te * pl.B + b) * S * pl.H
                       : buf.saved_scratch + b * S * pl.H;
  }

  const ForwardParams<T>& p;
  const ForwardPlan<Cell>& pl;
  const ForwardBuffers<T>& buf;
  const Slice sl;
  const int64_t nj;
  T* const wp;         // this thread's W_hh panels
  T* const hpt;        // (B, G*nj): this thread's recurrent pre-activations
  const int64_t ldh;   // G*nj
  const T* const b_ih;
  const T* const b_hh;
  const T* xbase = nullptr;  // xbase + row * ldx + g * xgs + j: pre-activation of gate g, unit j
  int64_t ldx = 0, xgs = 0;
  T* h_cur;
  T* h_next;
};

// After the loop: padding rows zeroed, final state out.
template <class Cell, class T>
void forward_finish(const ForwardParams<T>& p, const ForwardPlan<Cell>& pl,
                    const ForwardBuffers<T>& buf) {
  const int64_t B = pl.B, H = pl.H, R = pl.R, S = Cell::kSaved;
  const T* h_final = buf.h[pl.steps % 2];
  zero_padding(p.y, R, pl.map, B, pl.ld_y);
  if (pl.training) {
    zero_padding(p.saved, S * H, pl.map, B);
    zero_padding(p.h_prev, R, pl.map, B);
    if (pl.proj) zero_padding(p.proj_in, H, pl.map, B);
  }
  std::memcpy(p.h_n, h_final, sizeof(T) * B * R);
  if (Cell::kHasCellState && p.c_n) std::memcpy(p.c_n, buf.c, sizeof(T) * B * H);
}

// Forward. The time loop is one OpenMP region: each thread owns a block of hidden units and
// meets the others at one barrier per step (two with a projection or the two-phase GRU).
template <class Cell, class T>
void forward(const ForwardParams<T>& p) {
  const ForwardPlan<Cell> plan(p);
  Carver<T> measure(nullptr);
  (void)ForwardBuffers<T>(plan, measure);
  Workspace<T> ws(measure.used(), p.scratch, p.scratch_bytes);
  Carver<T> carver(ws.data());
  const ForwardBuffers<T> buf(plan, carver);
  forward_initial_state(p, plan, buf);

#pragma omp parallel num_threads(plan.threads)
  {
    // Split over the team that actually runs, which OpenMP may make smaller than plan.threads
    // (OMP_THREAD_LIMIT, OMP_DYNAMIC, a call from inside another parallel region).
    const int team = omp_get_num_threads(), tid = omp_get_thread_num();
    ForwardThread<Cell, T> th(p, plan, buf, team, tid);
    th.pack_weights();
    th.project_inputs(team, tid);
    if (!plan.dot_proj) {
#pragma omp barrier
    }
    for (int64_t s = 0; s < plan.steps; ++s) {
      th.recurrent_gemm();
      if constexpr (Cell::kTwoPhase) {
        th.reset_gates(s);
#pragma omp barrier
        th.new_gate_gemm();
      }
      th.pointwise_cell(s);
      if (plan.proj) {
#pragma omp barrier
        th.project_output();
      }
      th.commit(s);
#pragma omp barrier
      th.next_step();
    }
  }

  forward_finish(p, plan, buf);
}

// ---------------------------------------------------------------------------------------------
// Backward

// What a backward call decides once, before the threads start.
template <class Cell>
struct BackwardPlan {
  static constexpr int G = Cell::kGates;
  static constexpr int S = Cell::kSaved;
  int64_t Tn, B, I, H, P, R, GH, TB;
  int64_t k_rec;  // W_hh rows acting on h_prev directly
  int64_t ld_x, ld_dy;
  bool proj;
  bool use_panels;  // else W_hh is read in place
  int threads;      // asked for; the team OpenMP grants may be smaller
  int64_t steps;    // the longest sequence
  StepMap map;

  template <class T>
  explicit BackwardPlan(const BackwardParams<T>& p)
      : Tn(p.steps), B(p.batch), I(p.input), H(p.hidden), P(p.proj), R(p.recurrent()),
        GH(G * p.hidden), TB(p.steps * p.batch), k_rec(Cell::kPhase1Gates * p.hidden),
        ld_x(p.ld_x ? p.ld_x : p.input), ld_dy(p.ld_dy ? p.ld_dy : p.recurrent()),
        proj(p.proj > 0), use_panels(p.batch >= panel_min_rows()),
        threads(loop_threads(p.hidden)), steps(max_length(p.lengths, p.batch, p.steps)),
        map{p.lengths, p.steps, p.reverse} {}
};

template <class T>
struct BackwardBuffers {
  T* dxp;    // (T*B, G*H) d(input pre-activations), by time
  T* dhp;    // (T*B, G*H) d(recurrent pre-activations), by time: dxp unless kSplitGrad
  T* dstep;  // (B, G*H) this step's d(recurrent pre-activations)
  T* dh[2];  // (B, R) gradient reaching the state leaving the step, and entering it
  T* dc;     // (B, H) (LSTM)
  T* dout;   // (B, H) d(cell output before W_hr) (projection)
  T* dproj;  // (T*B, P) d(projection output), by time (projection)
  T* drh;    // (B, H) d(r h) (two-phase GRU)
  T* ones;   // (T*B) for the bias sums
  T* zeros;  // (H) stands in for h_prev with a projection (no branch in the loop)
  T* wpack;  // each thread's W_hh columns in panels (use_panels)

  template <class Cell>
  BackwardBuffers(const BackwardPlan<Cell>& pl, Carver<T>& cv) {
    dxp = cv.take(pl.TB * pl.GH);
    dhp = cv.take(Cell::kSplitGrad ? pl.TB * pl.GH : 0);
    if (!Cell::kSplitGrad) dhp = dxp;
    dstep = cv.take(pl.B * pl.GH);
    dh[0] = cv.take(pl.B * pl.R);
    dh[1] = cv.take(pl.B * pl.R);
    dc = cv.take(pl.B * pl.H);
    dout = cv.take(pl.proj ? pl.B * pl.H : 0);
    dproj = cv.take(pl.proj ? pl.TB * pl.P : 0);
    drh = cv.take(Cell::kTwoPhase ? pl.B * pl.H : 0);
    ones = cv.take(pl.TB);
    zeros = cv.take(pl.H);
    wpack = cv.take(pl.use_panels ? (pl.R + kLanes * pl.threads) * pl.k_rec : 0);
  }
};

// The gradients before the last step (in time order), and the padding rows of the by-time
// arrays, which the loop never writes.
template <class Cell, class T>
void backward_initial_state(const BackwardParams<T>& p, const BackwardPlan<Cell>& pl,
                            const BackwardBuffers<T>& buf) {
  const int64_t B = pl.B, H = pl.H, R = pl.R;
  std::fill(buf.zeros, buf.zeros + H, T(0));
  zero_padding(buf.dxp, pl.GH, pl.map, B);
  if (Cell::kSplitGrad) zero_padding(buf.dhp, pl.GH, pl.map, B);
  if (pl.proj) zero_padding(buf.dproj, pl.P, pl.map, B);
  if (p.dh_n) std::memcpy(buf.dh[0], p.dh_n, sizeof(T) * B * R);
  else std::fill(buf.dh[0], buf.dh[0] + B * R, T(0));
  if (Cell::kHasCellState) {
    if (p.dc_n) std::memcpy(buf.dc, p.dc_n, sizeof(T) * B * H);
    else std::fill(buf.dc, buf.dc + B * H, T(0));
  }
}

// One loop thread's share of the backward, phases in the order backward() calls them.
template <class Cell, class T>
class BackwardThread {
  static constexpr int G = Cell::kGates;
  static constexpr int S = Cell::kSaved;

 public:
  BackwardThread(const BackwardParams<T>& p, const BackwardPlan<Cell>& pl,
                 const BackwardBuffers<T>& buf, int team, int tid)
      : p(p), pl(pl), buf(buf), sl(pl.H, pl.P, team, tid),
        wpb(buf.wpack + (sl.q0 + kLanes * tid) * pl.k_rec), dh_cur(buf.dh[0]),
        dh_next(buf.dh[1]) {}

  // dh_prev[:, q0:q1] += dstep W_hh[:k_rec, q0:q1]: this thread's W_hh columns as panels.
  void pack_weights() {
    if (pl.use_panels) pack_cols_to_panels(wpb, sl.q1 - sl.q0, pl.k_rec, p.w_hh + sl.q0, pl.R);
  }

  // This thread's recurrent columns: the total gradient reaching each state (dy added); frozen
  // sequences pass it through; with a projection it is saved for dW_hr and dh_next starts at 0.
  void gather_dh(int64_t s) {
    const int64_t B = pl.B, P = pl.P, R = pl.R, ld_dy = pl.ld_dy, q0 = sl.q0, q1 = sl.q1;
    const StepMap map = pl.map;
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
      if (pl.proj) {
        std::memcpy(buf.dproj + row * P + q0, dcur + q0, sizeof(T) * (q1 - q0));
        std::fill(dh_next + b * R + q0, dh_next + b * R + q1, T(0));
      }
    }
  }

  // Projection, after a barrier (all columns of dh): dout[:, j0:j1] = dh W_hr[:, j0:j1].
  void project_back() {
    const int64_t B = pl.B, H = pl.H, P = pl.P, R = pl.R, j0 = sl.j0, nj = sl.units();
    gemm<T>(false, false, B, nj, P, T(1), dh_cur, R, p.w_hr + j0, H, T(0), buf.dout + j0, H);
  }

  // The cell backward on this thread's units: d(pre-activations) by time and for this step's
  // recurrent GEMM, dc, and the direct path to dh_prev.
  void pointwise_backward(int64_t s) {
    const int64_t B = pl.B, H = pl.H, R = pl.R, GH = pl.GH, j0 = sl.j0, j1 = sl.j1;
    const bool proj = pl.proj;
    const StepMap map = pl.map;
    T* dxp = buf.dxp;
    T* dhp = buf.dhp;
    T* dstep = buf.dstep;
    T* dc = buf.dc;
    T* dout = buf.dout;
    const T* zeros = buf.zeros;
    const T* dh_cur = this->dh_cur;
    T* dh_next = this->dh_next;
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
  }

  // Two-phase GRU, after a barrier (all units' d(a_n)): d(r h) = d(a_n) W_hn, then d(a_r) and
  // the r h path to dh_prev.
  void reset_gate_backward(int64_t s) {
    const int64_t B = pl.B, H = pl.H, R = pl.R, GH = pl.GH, k_rec = pl.k_rec;
    const int64_t j0 = sl.j0, j1 = sl.j1, nj = sl.units();
    const StepMap map = pl.map;
    T* dxp = buf.dxp;
    T* dstep = buf.dstep;
    T* drh = buf.drh;
    T* dh_next = this->dh_next;
    const T* h_prev = p.h_prev;
    gemm<T>(false, false, B, nj, H, T(1), dstep + k_rec, GH, p.w_hh + k_rec * R + j0, R, T(0),
            drh + j0, H);
    for (int64_t b = 0; b < B; ++b) {
      if (!map.active(s, b)) continue;
      const int64_t row = map.time(s, b) * B + b;
      const T* sv = p.saved + row * S * H;
#pragma GCC ivdep
      for (int64_t j = j0; j < j1; ++j) {
        T dar, direct = dh_next[b * R + j];
        Cell::backward_reset(sv + j, H, drh[b * H + j], h_prev[row * R + j], dar, direct);
        dxp[row * GH + j] = dar;
        dstep[b * GH + j] = dar;
        dh_next[b * R + j] = direct;
      }
    }
  }

  // After a barrier (all units' dstep): dh_prev[:, q0:q1] += dstep W_hh[:, q0:q1].
  void recurrent_dh_gemm() {
    const int64_t B = pl.B, R = pl.R, GH = pl.GH, k_rec = pl.k_rec, q0 = sl.q0, q1 = sl.q1;
    if (q1 > q0 && pl.use_panels)
      packed_gemm<true>(B, q1 - q0, k_rec, buf.dstep, GH, wpb, dh_next + q0, R);
    else if (q1 > q0)  // a few rows: W_hh read in place, nothing packed
      direct_gemm_small<true>(B, q1 - q0, k_rec, buf.dstep, GH, p.w_hh + q0, R, dh_next + q0, R);
  }

  // After the step's last barrier: the gradient entering the step becomes the current one.
  void next_step() { std::swap(dh_cur, dh_next); }

 private:
  const BackwardParams<T>& p;
  const BackwardPlan<Cell>& pl;
  const BackwardBuffers<T>& buf;
  const Slice sl;
  T* const wpb;  // this thread's W_hh column panels
  T* dh_cur;
  T* dh_next;
};

// After the loop: dh0, dc0, then the weight-gradient recipe on the BLAS. The rows past a
// sequence's length have dxp = 0, but 0 * NaN is NaN: padding that holds NaN/inf (a common way
// to pad) would poison dW_ih, so then dW_ih reads a copy of x with the padding zeroed.
template <class Cell, class T>
void backward_finish(const BackwardParams<T>& p, const BackwardPlan<Cell>& pl,
                     const BackwardBuffers<T>& buf) {
  const int64_t B = pl.B, H = pl.H, R = pl.R, I = pl.I, TB = pl.TB;
  std::memcpy(p.dh0, buf.dh[pl.steps % 2], sizeof(T) * B * R);
  if (Cell::kHasCellState && p.dc0) std::memcpy(p.dc0, buf.dc, sizeof(T) * B * H);

  GradientSources<T> src;
  src.dxp = buf.dxp;
  src.dhp = buf.dhp;
  src.dproj = buf.dproj;
  src.x = p.x;
  src.ld_x = pl.ld_x;
  src.ones = buf.ones;
  std::unique_ptr<Workspace<T>> x_clean;
  if (padding_not_finite(p.x, I, pl.map, B, pl.ld_x)) {
    x_clean.reset(new Workspace<T>(TB * I, nullptr, 0));
    T* xc = x_clean->data();
    if (pl.ld_x == I) std::memcpy(xc, p.x, sizeof(T) * TB * I);
    else
      for (int64_t r = 0; r < TB; ++r) std::memcpy(xc + r * I, p.x + r * pl.ld_x, sizeof(T) * I);
    zero_padding(xc, I, pl.map, B);
    src.x = xc;
    src.ld_x = I;
  }
  if (p.db_ih || p.db_hh) std::fill(buf.ones, buf.ones + TB, T(1));
  weight_gradients<Cell>(
      p, src,
      [](bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
         const T* Bm, int64_t ldb, T beta, T* C, int64_t ldc) {
        gemm_par<T>(ta, tb, M, N, K, alpha, A, lda, Bm, ldb, beta, C, ldc);
      },
      [](int64_t M, int64_t N, T alpha, const T* A, int64_t lda, const T* x, T beta, T* y) {
        gemv_t_par<T>(M, N, alpha, A, lda, x, beta, y);
      });
}

// Backward. Per step only the pointwise backward and dG W_hh, in one OpenMP region like the
// forward; dX, dW_ih, dW_hh, dW_hr and the bias sums are bulk GEMMs after the loop.
template <class Cell, class T>
void backward(const BackwardParams<T>& p) {
  const BackwardPlan<Cell> plan(p);
  Carver<T> measure(nullptr);
  (void)BackwardBuffers<T>(plan, measure);
  Workspace<T> ws(measure.used(), p.scratch, p.scratch_bytes);
  Carver<T> carver(ws.data());
  const BackwardBuffers<T> buf(plan, carver);
  backward_initial_state(p, plan, buf);

#pragma omp parallel num_threads(plan.threads)
  {
    const int team = omp_get_num_threads(), tid = omp_get_thread_num();  // <= plan.threads
    BackwardThread<Cell, T> th(p, plan, buf, team, tid);
    th.pack_weights();
    for (int64_t s = plan.steps - 1; s >= 0; --s) {
      th.gather_dh(s);
      if (plan.proj) {
#pragma omp barrier
        th.project_back();
      }
      th.pointwise_backward(s);
      if constexpr (Cell::kTwoPhase) {
#pragma omp barrier
        th.reset_gate_backward(s);
      }
#pragma omp barrier
      th.recurrent_dh_gemm();
#pragma omp barrier
      th.next_step();
    }
  }

  backward_finish(p, plan, buf);
}

}  // namespace cpu
FUSEDRNN_ISA_END
}  // namespace fusedrnn
