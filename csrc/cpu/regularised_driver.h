#pragma once
// CPU loop of the regularised layer (fusedrnn/regularised.h), one layer and one direction.
//
// Unlike the plain driver (cpu/driver.h), whose threads own blocks of hidden units for the whole
// loop, layer normalisation needs every unit of a row at once (its mean and variance are over
// the G*H gate vector), so here the threads split the batch rows in the pointwise phases and the
// per-step products are GEMMs split over the whole team (gemm_par):
//   forward:  XP = X W_ih^T (all T*B rows) -> [LN] + b_ih; W = W_hh * DropConnect once; per step:
//             h_in = h * recurrent dropout -> HP = h_in W^T -> per row: [LN] + b_hh, the cell
//             (LSTM: peepholes, clips, [LN of c]) [two-phase GRU: r h, its GEMM, n]
//             [projection: GEMM] -> zoneout -> commit.
//   backward: per step, reversed: zoneout split -> [projection GEMM] -> per row: the cell's
//             backward, [LN] -> d h_prev = dHP W -> mask, direct paths, zoneout; after the loop
//             the weight gradients as bulk GEMMs over all T*B rows (core/grad_recipe.h's plan).
// Time indexing, lengths and reverse: core/step_map.h, as in the plain driver.
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cells/gru.h"
#include "cells/regularised.h"
#include "cells/rnn.h"
#include "cpu/driver.h"
#include "fusedrnn/regularised.h"

namespace fusedrnn {
FUSEDRNN_ISA_BEGIN
namespace cpu {

// Runs body(b, tid) for b in [0, B) over the team (rows split in blocks); team size returned
// through `team` so per-thread accumulators can be sized before.
template <class F>
void for_rows(int64_t B, int nt, F&& body) {
  if (nt <= 1 || B <= 1) {
    for (int64_t b = 0; b < B; ++b) body(b, 0);
    return;
  }
#pragma omp parallel num_threads(nt)
  {
    const int team = omp_get_num_threads(), tid = omp_get_thread_num();
    int64_t lo, hi;
    split_range(B, team, tid, lo, hi);
    for (int64_t b = lo; b < hi; ++b) body(b, tid);
  }
}

template <class T>
struct RegPlan {
  CellKind kind;
  int G;
  bool lstm, gru, v1, relu, ln, proj, training;
  int64_t Tn, B, I, H, P, R, GH, G1H, TB, S, ld_x, ld_y, steps;
  int nt;
  StepMap map;
  RegLayout lay;

  RegPlan(CellKind k, const LayerShape<T>& p, const RegOptions<T>& o, bool train)
      : kind(k), G(reg_gates(k)), lstm(k == CellKind::Lstm), gru(k == CellKind::Gru),
        v1(k == CellKind::GruV1), relu(k == CellKind::RnnRelu), ln(o.layer_norm()),
        proj(p.proj > 0), training(train), Tn(p.steps), B(p.batch), I(p.input), H(p.hidden),
        P(p.proj), R(p.recurrent()), GH(G * p.hidden), G1H((k == CellKind::GruV1 ? 2 : G) * H),
        TB(p.steps * p.batch), S(0), ld_x(p.ld_x ? p.ld_x : p.input), ld_y(0),
        steps(max_length(p.lengths, p.batch, p.steps)), nt(get_num_threads()),
        map{p.lengths, p.steps, p.reverse},
        lay(reg_layout(k, p.steps, p.batch, p.hidden, p.proj, o.layer_norm(),
                       o.recurrent_dropout != nullptr, o.gate_clip, o.cell_clip)) {
    S = lay.saved_units;
  }
};

template <class T>
T* at(T* base, int64_t off) {
  return off < 0 ? nullptr : base + off;
}
template <class T>
const T* at(const T* base, int64_t off) {
  return off < 0 ? nullptr : base + off;
}

// W_hh, or W_hh * DropConnect (the call's weights, written into `scratch`).
template <class T>
const T* recurrent_weights(const T* w_hh, const T* mask, int64_t n, T* scratch, int nt) {
  if (!mask) return w_hh;
#pragma omp parallel for num_threads(nt) schedule(static) if (n > 65536)
  for (int64_t k = 0; k < n; ++k) scratch[k] = w_hh[k] * mask[k];
  return scratch;
}

// Calls f(gate_clip, cell_clip) with the two clip flags as compile-time constants, so the loops
// over units inside f have no branch on them.
template <class T, class F>
void with_clips(const RegOptions<T>& o, F&& f) {
  using Yes = std::true_type;
  using No = std::false_type;
  if (o.gate_clip) {
    if (o.cell_clip) f(Yes{}, Yes{});
    else f(Yes{}, No{});
  } else {
    if (o.cell_clip) f(No{}, Yes{});
    else f(No{}, No{});
  }
}

// ---------------------------------------------------------------------------------------------
// Forward

// The forward time loop without layer normalisation (and not the two-phase GRU): as the plain
// driver, each thread owns a block of hidden units for the whole loop (its rows of W packed
// once, its gates' pre-activations, cell and columns of the state), so a step needs one barrier
// (two with a projection) and no pre-activation crosses between cores. The state is double
// buffered (h, hnext; with recurrent dropout also its masked copy); the final state is left in h.
template <class T>
void forward_by_units(const RegForwardParams<T>& p, const RegPlan<T>& pl, const T* w,
                      const T* xp, T* hp, T* h, T* hnext, T* hin, T* c, T* cn, T* out,
                      T* hproj, T* svs, T* wpack, const T* zeros, bool panels) {
  const RegOptions<T>& o = p.opt;
  const int64_t B = pl.B, H = pl.H, R = pl.R, GH = pl.GH, S = pl.S, P = pl.P;
  const int G = pl.G;
  const int64_t ld_y = p.ld_y ? p.ld_y : R;
  const StepMap map = pl.map;
  const T* b_hh = p.b_hh ? p.b_hh : zeros;
  T* rs = p.reserve;
  T* saved = pl.training ? rs + pl.lay.saved : nullptr;
  T* h_prev_s = pl.training ? rs + pl.lay.h_prev : nullptr;
  T* h_in_s = pl.training ? at(rs, pl.lay.h_in) : nullptr;
  T* proj_in_s = pl.training ? at(rs, pl.lay.proj_in) : nullptr;
  const T* rd = o.recurrent_dropout;
  T* hin2 = rd ? hin + B * R : nullptr;
  if (rd)
    for (int64_t k = 0; k < B * R; ++k) hin[k] = h[k] * rd[k];
  const T* peep = o.peephole ? o.peephole : zeros;
  const uint8_t* zhm = o.zoneout_h_mask;
  const uint8_t* zcm = o.zoneout_c_mask;
  const T zh = o.zoneout_h, zc = o.zoneout_c;
  bool final_in_next = false;

#pragma omp parallel num_threads(pl.nt)
  {
    const int team = omp_get_num_threads(), tid = omp_get_thread_num();
    const Slice sl(H, P, team, tid);
    const int64_t j0 = sl.j0, j1 = sl.j1, nj = sl.units(), q0 = sl.q0, q1 = sl.q1;
    const int64_t ldh = G * nj;
    T* hpt = hp + B * G * j0;  // (B, G*nj): this thread's gates, gate-major over its units
    T* wp = wpack + (G * j0 + kLanes * tid) * R;
    if (panels && nj > 0)
      pack_rows_to_panels(wp, G * nj, R, [&](int64_t i) {
        return w + ((i / nj) * H + j0 + i % nj) * R;
      });
    T* h_cur = h;
    T* h_nxt = hnext;
    T* in_cur = rd ? hin : h;
    T* in_nxt = rd ? hin2 : hnext;

    // the new state of columns [q0, q1) of row b from `fresh` (zoneout, output, masked copy)
    auto commit = [&](int64_t row, int64_t b, int64_t q0, int64_t q1, const T* fresh) {
      const T* hc = h_cur + b * R;
      T* hn = h_nxt + b * R;
      if (zhm) {
        const uint8_t* m = zhm + row * R;
        for (int64_t q = q0; q < q1; ++q) hn[q] = m[q] ? hc[q] : fresh[q];
      } else if (zh != T(0)) {
        for (int64_t q = q0; q < q1; ++q) hn[q] = zoneout_mix(zh, hc[q], fresh[q]);
      } else {
        for (int64_t q = q0; q < q1; ++q) hn[q] = fresh[q];
      }
      std::memcpy(p.y + row * ld_y + q0, hn + q0, sizeof(T) * (q1 - q0));
      if (rd)
        for (int64_t q = q0; q < q1; ++q) in_nxt[b * R + q] = hn[q] * rd[b * R + q];
    };

    for (int64_t s = 0; s < pl.steps; ++s) {
      if (nj > 0) {
        if (panels) {
          packed_gemm(B, G * nj, R, in_cur, R, wp, hpt, ldh);
        } else {
          for (int g = 0; g < G; ++g)
            dot_gemm(B, nj, R, in_cur, R, w + (g * H + j0) * R, R, hpt + g * nj, ldh);
        }
      }
      for (int64_t b = 0; b < B; ++b) {
        if (!map.active(s, b)) {
          for (int64_t q = q0; q < q1; ++q) {
            h_nxt[b * R + q] = h_cur[b * R + q];
            if (rd) in_nxt[b * R + q] = in_cur[b * R + q];
          }
          continue;
        }
        const int64_t row = map.time(s, b) * B + b;
        const T* xr = xp + row * GH;
        const T* hrow = hpt + b * ldh - j0;  // gate g of unit j: hrow[g * nj + j]
        T* sv = pl.training ? saved + row * S * H : svs + b * S * H;
        if (pl.training) {
          for (int64_t q = q0; q < q1; ++q) {
            h_prev_s[row * R + q] = h_cur[b * R + q];
            if (h_in_s) h_in_s[row * R + q] = in_cur[b * R + q];
          }
        }
        if (pl.lstm) {
          T* cb = c + b * H;
          T* cnb = cn + b * H;
          T* ob = out + b * H;
          with_clips(o, [&](auto gate_clip, auto cell_clip) {
#pragma GCC ivdep
            for (int64_t j = j0; j < j1; ++j) {  // branch-free: vectorises
              T a[4], og;
              for (int g = 0; g < 4; ++g)
                a[g] = xr[g * H + j] + hrow[g * nj + j] + b_hh[g * H + j];
              const T cnew = RegLstmCell::gates<gate_clip(), cell_clip()>(
                  a, cb[j], peep[j], peep[H + j], peep[2 * H + j], o, sv + j, H, og);
              const T tc = tanh_(cnew);
              sv[kSlotTanhC * H + j] = tc;
              ob[j] = og * tc;
              cnb[j] = cnew;
            }
          });
          if (zcm) {
            const uint8_t* m = zcm + row * H;
            for (int64_t j = j0; j < j1; ++j) cb[j] = m[j] ? cb[j] : cnb[j];
          } else if (zc != T(0)) {
            for (int64_t j = j0; j < j1; ++j) cb[j] = zoneout_mix(zc, cb[j], cnb[j]);
          } else {
            for (int64_t j = j0; j < j1; ++j) cb[j] = cnb[j];
          }
          if (!pl.proj) {
            commit(row, b, j0, j1, ob);
          } else if (pl.training) {
            std::memcpy(proj_in_s + row * H + j0, ob + j0, sizeof(T) * nj);
          }
        } else {
          const T* hb = h_cur + b * R;
          auto run = [&](auto cell) {
            using Cell = decltype(cell);
#pragma GCC ivdep
            for (int64_t j = j0; j < j1; ++j) {
              T ax[Cell::kGates], ah[Cell::kGates], unused = 0;
              for (int g = 0; g < Cell::kGates; ++g)
                ax[g] = xr[g * H + j], ah[g] = hrow[g * nj + j] + b_hh[g * H + j];
              out[b * H + j] = Cell::forward(ax, ah, hb[j], unused, sv + j, H);
            }
          };
          if (pl.gru) run(GruCell{});
          else if (pl.relu) run(RnnReluCell{});
          else run(RnnTanhCell{});
          commit(row, b, j0, j1, out + b * H);
        }
      }
      if (pl.proj) {  // every unit's output first, then this thread's projected columns
#pragma omp barrier
        if (q1 > q0)
          gemm<T>(false, true, B, q1 - q0, H, T(1), out, H, p.w_hr + q0 * H, H, T(0),
                  hproj + q0, R);
        for (int64_t b = 0; b < B; ++b) {
          if (!map.active(s, b)) continue;
          const int64_t row = map.time(s, b) * B + b;
          commit(row, b, q0, q1, hproj + b * R);
        }
      }
#pragma omp barrier
      std::swap(h_cur, h_nxt);
      std::swap(in_cur, in_nxt);
    }
    if (tid == 0) final_in_next = h_cur != h;
  }
  if (final_in_next) std::memcpy(h, hnext, sizeof(T) * B * R);
}

template <class T>
void reg_forward(const RegForwardParams<T>& p) {
  const RegOptions<T>& o = p.opt;
  const RegPlan<T> pl(p.kind, p, o, p.reserve != nullptr);
  const int64_t B = pl.B, H = pl.H, R = pl.R, GH = pl.GH, G1H = pl.G1H, TB = pl.TB, S = pl.S;
  const int64_t ld_y = p.ld_y ? p.ld_y : R;
  const StepMap map = pl.map;
  T* rs = p.reserve;

  Carver<T> measure(nullptr);
  auto carve = [&](Carver<T>& cv, T** xp, T** w, T** hin, T** hp, T** h, T** c, T** cn, T** out,
                   T** hnew, T** rh, T** sv, T** zeros, T** wpack, T** hproj) {
    *xp = cv.take(TB * GH);
    *hproj = cv.take(pl.proj ? B * R : 0);
    *wpack = cv.take(B >= panel_min_rows() ? (G1H + kLanes * pl.nt) * R : 0);
    *w = cv.take(o.dropconnect ? GH * R : 0);
    *hin = cv.take(o.recurrent_dropout ? 2 * B * R : 0);  // two: the unit loop swaps them
    *hp = cv.take(B * GH);
    *h = cv.take(B * R);
    *c = cv.take(pl.lstm ? B * H : 0);
    *cn = cv.take(pl.lstm ? B * H : 0);
    *out = cv.take(B * H);  // the cell output (LSTM; the unit loop: every cell)
    *hnew = cv.take(B * R);
    *rh = cv.take(pl.v1 ? B * H : 0);
    *sv = cv.take(pl.training ? 0 : B * S * H);
    *zeros = cv.take(GH);
  };
  T *xp, *wbuf, *hin, *hp, *h, *c, *cn, *out, *hnew, *rh, *svs, *zeros, *wpack, *hproj;
  carve(measure, &xp, &wbuf, &hin, &hp, &h, &c, &cn, &out, &hnew, &rh, &svs, &zeros, &wpack,
        &hproj);
  Workspace<T> ws(measure.used(), p.scratch, p.scratch_bytes);
  Carver<T> cv(ws.data());
  carve(cv, &xp, &wbuf, &hin, &hp, &h, &c, &cn, &out, &hnew, &rh, &svs, &zeros, &wpack,
        &hproj);
  std::fill(zeros, zeros + GH, T(0));
  const T* b_ih = p.b_ih ? p.b_ih : zeros;
  const T* b_hh = p.b_hh ? p.b_hh : zeros;
  const T* w = recurrent_weights(p.w_hh, o.dropconnect, GH * R, wbuf, pl.nt);
  T* saved = pl.training ? rs + pl.lay.saved : nullptr;
  T* xhat = pl.training ? at(rs, pl.lay.xhat) : nullptr;
  T* rstd_ih = pl.training ? at(rs, pl.lay.rstd_ih) : nullptr;
  T* hhat = pl.training ? at(rs, pl.lay.hhat) : nullptr;
  T* rstd_hh = pl.training ? at(rs, pl.lay.rstd_hh) : nullptr;
  T* stats_c = pl.training ? at(rs, pl.lay.stats_c) : nullptr;
  T* h_prev_s = pl.training ? rs + pl.lay.h_prev : nullptr;
  T* h_in_s = pl.training ? at(rs, pl.lay.h_in) : nullptr;
  T* proj_in_s = pl.training ? at(rs, pl.lay.proj_in) : nullptr;

  // The input projection for all T*B rows, normalised, b_ih added: each thread finishes the
  // rows it multiplied while they are in its cache (a separate pass over T*B*G*H was a tenth of
  // a B=64 forward). Few rows: W_ih read in place by column blocks (a BLAS call would re-pack
  // all of it for a handful of rows), then the rows after a barrier.
  auto finish_row = [&](int64_t r) {
    T* v = xp + r * GH;
    if (pl.ln) {
      const T rstd = ln_forward_row(v, GH, o.ln_eps, o.ln_weight_ih, b_ih,
                                    xhat ? xhat + r * GH : nullptr);
      if (rstd_ih) rstd_ih[r] = rstd;
    } else {
#pragma GCC ivdep
      for (int64_t k = 0; k < GH; ++k) v[k] += b_ih[k];
    }
  };
  const bool dot_proj = TB <= dot_projection_max_rows();
#pragma omp parallel num_threads(pl.nt)
  {
    const int team = omp_get_num_threads(), tid = omp_get_thread_num();
    int64_t r0, r1;
    split_range(TB, team, tid, r0, r1);
    if (dot_proj) {
      int64_t c0, c1;
      split_range(GH, team, tid, c0, c1);
      if (c1 > c0) dot_gemm(TB, c1 - c0, pl.I, p.x, pl.ld_x, p.w_ih + c0 * pl.I, pl.I, xp + c0, GH);
#pragma omp barrier
    } else if (r1 > r0) {
      gemm<T>(false, true, r1 - r0, GH, pl.I, T(1), p.x + r0 * pl.ld_x, pl.ld_x, p.w_ih, pl.I,
              T(0), xp + r0 * GH, GH);
    }
    for (int64_t r = r0; r < r1; ++r) finish_row(r);
  }

  if (p.h0) std::memcpy(h, p.h0, sizeof(T) * B * R);
  else std::fill(h, h + B * R, T(0));
  if (pl.lstm) {
    if (p.c0) std::memcpy(c, p.c0, sizeof(T) * B * H);
    else std::fill(c, c + B * H, T(0));
  }
  const T* hg = o.recurrent_dropout ? hin : h;  // what W_hh multiplies

  // The phases of one step for one batch row (the region below runs them).
  // Per row: the recurrent pre-activation's normalisation, then the cell (up to its output).
  auto forward_row = [&](int64_t s, int64_t b) {
    if (!map.active(s, b)) return;
    const int64_t row = map.time(s, b) * B + b;
    const T* xr = xp + row * GH;
    T* hr = hp + b * GH;
    T* sv = pl.training ? saved + row * S * H : svs + b * S * H;
    if (pl.training) {
      std::memcpy(h_prev_s + row * R, h + b * R, sizeof(T) * R);
      if (h_in_s) std::memcpy(h_in_s + row * R, hin + b * R, sizeof(T) * R);
    }
    if (pl.ln) {
      const T rstd = ln_forward_row(hr, GH, o.ln_eps, o.ln_weight_hh, b_hh,
                                    hhat ? hhat + row * GH : nullptr);
      if (rstd_hh) rstd_hh[row] = rstd;
    } else {
      for (int64_t k = 0; k < G1H; ++k) hr[k] += b_hh[k];
    }
    if (pl.lstm) {
      T* cb = c + b * H;
      T* cnb = cn + b * H;
      T* ob = out + b * H;
      const T* pp = o.peephole ? o.peephole : zeros;  // zeros: the plain cell's terms
      with_clips(o, [&](auto gate_clip, auto cell_clip) {
#pragma GCC ivdep
        for (int64_t j = 0; j < H; ++j) {
          T a[4], og;
          for (int g = 0; g < 4; ++g) a[g] = xr[g * H + j] + hr[g * H + j];
          cnb[j] = RegLstmCell::gates<gate_clip(), cell_clip()>(
              a, cb[j], pp[j], pp[H + j], pp[2 * H + j], o, sv + j, H, og);
          ob[j] = og;  // o, until tanh(c) is known
        }
      });
      if (o.ln_weight_c) {
        T mean, rstd;
        ln_stats(cnb, H, o.ln_eps, mean, rstd);
        if (stats_c) stats_c[2 * row] = mean, stats_c[2 * row + 1] = rstd;
        for (int64_t j = 0; j < H; ++j) {
          const T tc = tanh_((cnb[j] - mean) * rstd * o.ln_weight_c[j] + o.ln_bias_c[j]);
          sv[kSlotTanhC * H + j] = tc;
          ob[j] *= tc;
        }
      } else {
        for (int64_t j = 0; j < H; ++j) {
          const T tc = tanh_(cnb[j]);
          sv[kSlotTanhC * H + j] = tc;
          ob[j] *= tc;
        }
      }
      if (!pl.proj) std::memcpy(hnew + b * R, ob, sizeof(T) * H);
      else if (pl.training) std::memcpy(proj_in_s + row * H, ob, sizeof(T) * H);
    } else if (pl.v1) {
      const T* hi = hg + b * R;
      for (int64_t j = 0; j < H; ++j) {
        T ax[3], ah[3];
        for (int g = 0; g < 2; ++g) ax[g] = xr[g * H + j], ah[g] = hr[g * H + j];
        rh[b * H + j] = GruV1Cell::gates(ax, ah, hi[j], sv + j, H);
      }
    } else {
      const T* hb = h + b * R;
      T* nb = hnew + b * R;
      auto run = [&](auto cell) {
        using Cell = decltype(cell);
#pragma GCC ivdep
        for (int64_t j = 0; j < H; ++j) {
          T ax[Cell::kGates], ah[Cell::kGates], unused = 0;
          for (int g = 0; g < Cell::kGates; ++g) ax[g] = xr[g * H + j], ah[g] = hr[g * H + j];
          nb[j] = Cell::forward(ax, ah, hb[j], unused, sv + j, H);
        }
      };
      if (pl.gru) run(GruCell{});
      else if (pl.relu) run(RnnReluCell{});
      else run(RnnTanhCell{});
    }
  };
  // The two-phase GRU, after the n block's GEMM on r h_in.
  auto forward_row_new_gate = [&](int64_t s, int64_t b) {
    if (!map.active(s, b)) return;
    const int64_t row = map.time(s, b) * B + b;
    const T* xr = xp + row * GH;
    const T* hr = hp + b * GH;
    T* sv = pl.training ? saved + row * S * H : svs + b * S * H;
    T dummy = 0;
    for (int64_t j = 0; j < H; ++j) {
      T ax[3], ah[3];
      ax[2] = xr[2 * H + j];
      ah[2] = hr[2 * H + j] + b_hh[2 * H + j];
      hnew[b * R + j] = GruV1Cell::forward(ax, ah, h[b * R + j], dummy, sv + j, H);
    }
  };
  // Zoneout and commit.
  auto commit_row = [&](int64_t s, int64_t b) {
    if (!map.active(s, b)) return;
    const int64_t te = map.time(s, b), row = te * B + b;
    T* hb = h + b * R;
    const T* nb = hnew + b * R;
    T* yb = p.y + row * ld_y;
    if (o.zoneout_h_mask) {
      const uint8_t* m = o.zoneout_h_mask + row * R;
      for (int64_t k = 0; k < R; ++k) hb[k] = yb[k] = m[k] ? hb[k] : nb[k];
    } else if (o.zoneout_h != T(0)) {
      for (int64_t k = 0; k < R; ++k) hb[k] = yb[k] = zoneout_mix(o.zoneout_h, hb[k], nb[k]);
    } else {
      for (int64_t k = 0; k < R; ++k) hb[k] = yb[k] = nb[k];
    }
    if (pl.lstm) {
      T* cb = c + b * H;
      const T* cnb = cn + b * H;
      if (o.zoneout_c_mask) {
        const uint8_t* m = o.zoneout_c_mask + row * H;
        for (int64_t j = 0; j < H; ++j) cb[j] = m[j] ? cb[j] : cnb[j];
      } else if (o.zoneout_c != T(0)) {
        for (int64_t j = 0; j < H; ++j) cb[j] = zoneout_mix(o.zoneout_c, cb[j], cnb[j]);
      } else {
        std::memcpy(cb, cnb, sizeof(T) * H);
      }
    }
  };
  const bool panels = B >= panel_min_rows();

  if (!pl.ln && !pl.v1) {
    forward_by_units(p, pl, w, xp, hp, h, hnew, hin, c, cn, out, hproj, svs, wpack, zeros,
                     panels);
  } else {
  // One region for the time loop: each thread owns a block of batch rows for the pointwise
  // phases and a block of the product's columns (W's rows, packed once into its own panels),
  // with barriers between the phases (layer norm needs whole rows).
#pragma omp parallel num_threads(pl.nt)
  {
    const int team = omp_get_num_threads(), tid = omp_get_thread_num();
    int64_t b0, b1, c0, c1, n0, n1, q0, q1;
    split_range(B, team, tid, b0, b1);
    split_range(G1H, team, tid, c0, c1);
    split_range(H, team, tid, n0, n1);     // the two-phase GRU's n block
    split_range(pl.P, team, tid, q0, q1);  // projection columns
    T* wp = wpack + (c0 + kLanes * tid) * R;
    if (panels && c1 > c0)
      pack_rows_to_panels(wp, c1 - c0, R, [&](int64_t i) { return w + (c0 + i) * R; });

    for (int64_t s = 0; s < pl.steps; ++s) {
      if (o.recurrent_dropout) {
        for (int64_t k = b0 * R; k < b1 * R; ++k) hin[k] = h[k] * o.recurrent_dropout[k];
#pragma omp barrier
      }
      if (c1 > c0) {
        if (panels) packed_gemm(B, c1 - c0, R, hg, R, wp, hp + c0, GH);
        else dot_gemm(B, c1 - c0, R, hg, R, w + c0 * R, R, hp + c0, GH);
      }
#pragma omp barrier
      for (int64_t b = b0; b < b1; ++b) forward_row(s, b);
      if (pl.v1) {  // the n block's recurrent GEMM acts on r h_in
#pragma omp barrier
        if (n1 > n0)
          gemm<T>(false, true, B, n1 - n0, H, T(1), rh, H, w + (2 * H + n0) * R, R, T(0),
                  hp + 2 * H + n0, GH);
#pragma omp barrier
        for (int64_t b = b0; b < b1; ++b) forward_row_new_gate(s, b);
      }
      if (pl.proj) {
#pragma omp barrier
        if (q1 > q0)
          gemm<T>(false, true, B, q1 - q0, H, T(1), out, H, p.w_hr + q0 * H, H, T(0),
                  hnew + q0, R);
#pragma omp barrier
      }
      for (int64_t b = b0; b < b1; ++b) commit_row(s, b);
#pragma omp barrier
    }
  }
  }

  zero_padding(p.y, R, map, B, ld_y);
  if (pl.training) {  // rows past a length: zero, so the bulk GEMMs of backward read no garbage
    zero_padding(saved, S * H, map, B);
    zero_padding(h_prev_s, R, map, B);
    if (h_in_s) zero_padding(h_in_s, R, map, B);
    if (proj_in_s) zero_padding(proj_in_s, H, map, B);
    if (xhat) zero_padding(xhat, GH, map, B);
    if (hhat) zero_padding(hhat, GH, map, B);
    if (rstd_ih) zero_padding(rstd_ih, 1, map, B);
    if (rstd_hh) zero_padding(rstd_hh, 1, map, B);
    if (stats_c) zero_padding(stats_c, 2, map, B);
  }
  std::memcpy(p.h_n, h, sizeof(T) * B * R);
  if (pl.lstm && p.c_n) std::memcpy(p.c_n, c, sizeof(T) * B * H);
}

// ---------------------------------------------------------------------------------------------
// Backward

template <class T>
void reg_backward(const RegBackwardParams<T>& p) {
  const RegOptions<T>& o = p.opt;
  const RegPlan<T> pl(p.kind, p, o, true);
  const int64_t B = pl.B, I = pl.I, H = pl.H, P = pl.P, R = pl.R, GH = pl.GH, G1H = pl.G1H;
  const int64_t TB = pl.TB, S = pl.S;
  const int64_t ld_dy = p.ld_dy ? p.ld_dy : R;
  const StepMap map = pl.map;
  const T* rs = p.reserve;
  const T* saved = rs + pl.lay.saved;
  const T* h_prev_s = rs + pl.lay.h_prev;
  const T* h_in_s = pl.lay.h_in >= 0 ? rs + pl.lay.h_in : h_prev_s;
  const T* proj_in_s = at(rs, pl.lay.proj_in);
  const T* xhat = at(rs, pl.lay.xhat);
  const T* rstd_ih = at(rs, pl.lay.rstd_ih);
  const T* hhat = at(rs, pl.lay.hhat);
  const T* rstd_hh = at(rs, pl.lay.rstd_hh);
  const T* stats_c = at(rs, pl.lay.stats_c);

  // Per-thread accumulators: db_hh, d ln_weight_hh (G*H each), d ln_weight_c, d ln_bias_c (H),
  // d peephole (3H), d ln_weight_ih (G*H).
  const int64_t acc_w = 3 * GH + 5 * H;
  const int nt = std::max(1, pl.nt);

  Carver<T> measure(nullptr);
  auto carve = [&](Carver<T>& cv, T** dxp, T** dhh, T** dproj, T** w, T** dh, T** dc, T** dht,
                   T** dhnew, T** dout, T** da, T** dstep, T** dtmp, T** direct, T** drh,
                   T** rowtmp, T** acc, T** ones, T** xz, T** zeros, T** wpack) {
    *dxp = cv.take(TB * GH);
    *wpack = cv.take(B >= panel_min_rows() ? (R + kLanes * nt) * G1H : 0);
    // d(recurrent pre-activations) by time: dxp itself unless layer norm or the GRU's split
    // makes them differ
    *dhh = (pl.ln || pl.gru) ? cv.take(TB * GH) : nullptr;
    *dproj = cv.take(pl.proj ? TB * P : 0);
    *w = cv.take(o.dropconnect ? GH * R : 0);
    *dh = cv.take(B * R);
    *dc = cv.take(pl.lstm ? B * H : 0);
    *dht = cv.take(B * R);
    *dhnew = cv.take(B * R);
    *dout = cv.take(pl.proj ? B * H : 0);
    *da = cv.take(B * GH);
    *dstep = cv.take(B * GH);
    *dtmp = cv.take(B * R);
    *direct = cv.take(B * R);
    *drh = cv.take(pl.v1 ? B * H : 0);
    *rowtmp = cv.take(nt * 2 * (H + 16));  // per thread: d tanh input, zoneout-c weights
    *acc = cv.take(nt * acc_w);
    *ones = cv.take(TB);
    *xz = cv.take(p.lengths ? TB * I : 0);
    *zeros = cv.take(3 * H);
  };
  T *dxp, *dhh, *dproj, *wbuf, *dh, *dc, *dht, *dhnew, *dout, *da, *dstep, *dtmp, *direct, *drh;
  T *rowtmp, *acc, *ones, *xz, *zeros, *wpack;
  carve(measure, &dxp, &dhh, &dproj, &wbuf, &dh, &dc, &dht, &dhnew, &dout, &da, &dstep, &dtmp,
        &direct, &drh, &rowtmp, &acc, &ones, &xz, &zeros,
        &wpack);
  Workspace<T> ws(measure.used(), p.scratch, p.scratch_bytes);
  Carver<T> cv(ws.data());
  carve(cv, &dxp, &dhh, &dproj, &wbuf, &dh, &dc, &dht, &dhnew, &dout, &da, &dstep, &dtmp, &direct,
        &drh, &rowtmp, &acc, &ones, &xz, &zeros,
        &wpack);
  const T* w = recurrent_weights(p.w_hh, o.dropconnect, GH * R, wbuf, pl.nt);
  if (!dhh) dhh = dxp;
  std::fill(zeros, zeros + 3 * H, T(0));
  zero_padding(dxp, GH, map, B);
  if (dhh != dxp) zero_padding(dhh, GH, map, B);
  if (pl.proj) zero_padding(dproj, P, map, B);
  std::fill(acc, acc + nt * acc_w, T(0));
  if (p.dh_n) std::memcpy(dh, p.dh_n, sizeof(T) * B * R);
  else std::fill(dh, dh + B * R, T(0));
  if (pl.lstm) {
    if (p.dc_n) std::memcpy(dc, p.dc_n, sizeof(T) * B * H);
    else std::fill(dc, dc + B * H, T(0));
  }
  std::fill(direct, direct + B * R, T(0));
  auto acc_of = [&](int tid) { return acc + tid * acc_w; };
  // offsets inside one thread's accumulators
  const int64_t a_bhh = 0, a_lnhh = GH, a_lnih = 2 * GH, a_lnc = 3 * GH, a_lnbc = 3 * GH + H,
                a_peep = 3 * GH + 2 * H;

  const T* dcell = pl.proj ? dout : dhnew;  // d(cell output), (B, H) with row stride ldc
  const int64_t ldc = pl.proj ? H : R;
  // The phases of one step for one batch row (the region below runs them).
  // d h_t: the later step's and the output's; zoneout splits it.
  auto gather_row = [&](int64_t s, int64_t b) {
    T* dn = dhnew + b * R;
    if (!map.active(s, b)) {
      std::fill(dn, dn + R, T(0));
      return;
    }
    const int64_t row = map.time(s, b) * B + b;
    T* dt = dht + b * R;
    const T* db = dh + b * R;
    const T* dyr = p.dy ? p.dy + row * ld_dy : nullptr;
    for (int64_t k = 0; k < R; ++k) dt[k] = db[k] + (dyr ? dyr[k] : T(0));
    if (o.zoneout_h_mask) {
      const uint8_t* m = o.zoneout_h_mask + row * R;
      for (int64_t k = 0; k < R; ++k) dn[k] = m[k] ? T(0) : dt[k];
    } else if (o.zoneout_h != T(0)) {
      for (int64_t k = 0; k < R; ++k) dn[k] = (T(1) - o.zoneout_h) * dt[k];
    } else {
      std::memcpy(dn, dt, sizeof(T) * R);
    }
    if (pl.proj) std::memcpy(dproj + row * P, dn, sizeof(T) * P);
  };
  // The cell's backward, then the recurrent normalisation's.
  auto cell_row = [&](int64_t s, int64_t b, int tid) {
    T* dst = dstep + b * GH;
    if (!map.active(s, b)) {
      std::fill(dst, dst + GH, T(0));
      return;
    }
    T* ac = acc_of(tid);
    const int64_t row = map.time(s, b) * B + b;
    const T* sv = saved + row * S * H;
    const T* dob = dcell + b * ldc;
    T* dxr = dxp + row * GH;
    T* dab = da + b * GH;  // d(recurrent pre-activation after its normalisation)
    T* dirb = direct + b * R;
    const T* hpb = h_prev_s + row * R;
    if (pl.lstm) {
      T* dcb = dc + b * H;
      T* tmp = rowtmp + tid * 2 * (H + 16);
      const T mc = o.zoneout_c;
      const uint8_t* mcm = o.zoneout_c_mask ? o.zoneout_c_mask + row * H : nullptr;
      T* keepv = tmp + (H + 16);  // zoneout weight of the previous c, per unit (no branch below)
      if (mcm) for (int64_t j = 0; j < H; ++j) keepv[j] = T(mcm[j]);
      else std::fill(keepv, keepv + H, mc);
      // d(tanh input) -> through the cell-state normalisation -> d c'
      for (int64_t j = 0; j < H; ++j) tmp[j] = RegLstmCell::d_tanh_input(sv + j, H, dob[j]);
      if (o.ln_weight_c) {
        const T mean = stats_c[2 * row], rstd = stats_c[2 * row + 1];
        T* chat = dxr;  // scratch: dxr is written below, after its last use here
        const T* cv_ = sv + kSlotC * H;
        for (int64_t j = 0; j < H; ++j) chat[j] = (cv_[j] - mean) * rstd;
        for (int64_t j = 0; j < H; ++j) ac[a_lnbc + j] += tmp[j];
        ln_backward_row(tmp, chat, o.ln_weight_c, rstd, H, tmp, ac + a_lnc);
      }
      const T* pp = o.peephole ? o.peephole : zeros;
      T* dpp = ac + a_peep;
      with_clips(o, [&](auto gate_clip, auto cell_clip) {
#pragma GCC ivdep
        for (int64_t j = 0; j < H; ++j) {
          const T dct = dcb[j];
          const T keep = keepv[j];
          T dat[4];
          const T dcp = RegLstmCell::backward<gate_clip(), cell_clip()>(
              sv + j, H, dob[j], (T(1) - keep) * dct + tmp[j], pp[j], pp[H + j],
              pp[2 * H + j], dat, dpp + j, H);
          for (int g = 0; g < 4; ++g) dxr[g * H + j] = dab[g * H + j] = dat[g];
          dcb[j] = dcp + keep * dct;
        }
      });
    } else if (pl.v1) {
      T dummy = 0;
#pragma GCC ivdep
      for (int64_t j = 0; j < H; ++j) {
        T dax[3], dahx[3], dd;
        GruV1Cell::backward(sv + j, H, dob[j], hpb[j], dummy, dax, dahx, dd);
        dxr[H + j] = dab[H + j] = dax[1];
        dxr[2 * H + j] = dab[2 * H + j] = dax[2];
        dirb[j] = dd;
      }
      return;  // the reset gate waits for d(r h)
    } else {
      auto run = [&](auto cell) {
        using Cell = decltype(cell);
#pragma GCC ivdep
        for (int64_t j = 0; j < H; ++j) {
          T dax[Cell::kGates], dah[Cell::kGates], dd = 0, unused = 0;
          Cell::backward(sv + j, H, dob[j], hpb[j], unused, dax, dah, dd);
          for (int g = 0; g < Cell::kGates; ++g)
            dxr[g * H + j] = dax[g], dab[g * H + j] = Cell::kSplitGrad ? dah[g] : dax[g];
          dirb[j] = dd;
        }
      };
      if (pl.gru) run(GruCell{});
      else if (pl.relu) run(RnnReluCell{});
      else run(RnnTanhCell{});
    }
    for (int64_t k = 0; k < GH; ++k) ac[a_bhh + k] += dab[k];
    if (pl.ln) {
      ln_backward_row(dab, hhat + row * GH, o.ln_weight_hh, rstd_hh[row], GH, dst,
                      ac + a_lnhh);
    } else {
      std::memcpy(dst, dab, sizeof(T) * GH);
    }
    std::memcpy(dhh + row * GH, dst, sizeof(T) * GH);
  };
  // The two-phase GRU's reset gate, given d(r h_in).
  auto reset_row = [&](int64_t s, int64_t b, int tid) {
    T* dst = dstep + b * GH;
    if (!map.active(s, b)) {
      std::fill(dst, dst + GH, T(0));
      return;
    }
    T* ac = acc_of(tid);
    const int64_t row = map.time(s, b) * B + b;
    const T* sv = saved + row * S * H;
    const T* hib = h_in_s + row * R;
    const T* rd = o.recurrent_dropout ? o.recurrent_dropout + b * R : nullptr;
    T* dxr = dxp + row * GH;
    T* dab = da + b * GH;
    for (int64_t j = 0; j < H; ++j) {
      T dar, through = 0;
      GruV1Cell::backward_reset(sv + j, H, drh[b * H + j], hib[j], dar, through);
      dxr[j] = dab[j] = dar;
      direct[b * R + j] += rd ? through * rd[j] : through;
    }
    for (int64_t k = 0; k < GH; ++k) ac[a_bhh + k] += dab[k];
    std::memcpy(dst, dab, sizeof(T) * GH);
    std::memcpy(dhh + row * GH, dst, sizeof(T) * GH);
  };
  // d h_prev: the product, masked, plus the direct paths and zoneout's share.
  auto state_row = [&](int64_t s, int64_t b) {
    if (!map.active(s, b)) return;
    const int64_t row = map.time(s, b) * B + b;
    T* db = dh + b * R;
    const T* tb = dtmp + b * R;
    const T* dt = dht + b * R;
    const T* rd = o.recurrent_dropout ? o.recurrent_dropout + b * R : nullptr;
    const T* dir = direct + b * R;
    const bool has_direct = pl.gru || pl.v1;
    for (int64_t k = 0; k < R; ++k) {
      T v = rd ? tb[k] * rd[k] : tb[k];
      if (has_direct) v += dir[k];
      db[k] = v;
    }
    if (o.zoneout_h_mask) {
      const uint8_t* m = o.zoneout_h_mask + row * R;
      for (int64_t k = 0; k < R; ++k) db[k] += m[k] ? dt[k] : T(0);
    } else if (o.zoneout_h != T(0)) {
      for (int64_t k = 0; k < R; ++k) db[k] += o.zoneout_h * dt[k];
    }
  };
  const bool panels = B >= panel_min_rows();

  if (!pl.ln && !pl.v1) {
  // Without layer normalisation: as the plain driver, each thread owns hidden units (and the
  // columns of d h_prev: its units, or a block of the P projected columns) for the whole loop;
  // one barrier per step (two with a projection), the step's d(pre-activations) double
  // buffered so the next step's cell can write while another thread still multiplies.
  T* dbuf[2] = {dstep, da};
  const T* peep = o.peephole ? o.peephole : zeros;
  const uint8_t* zhm = o.zoneout_h_mask;
  const uint8_t* zcm = o.zoneout_c_mask;
  const T zh = o.zoneout_h, zc = o.zoneout_c;
  const T* rd = o.recurrent_dropout;
  const bool has_direct = pl.gru;
#pragma omp parallel num_threads(pl.nt)
  {
    const int team = omp_get_num_threads(), tid = omp_get_thread_num();
    const Slice sl(H, P, team, tid);
    const int64_t j0 = sl.j0, j1 = sl.j1, nj = sl.units(), q0 = sl.q0, q1 = sl.q1;
    T* wp = wpack + (q0 + kLanes * tid) * G1H;
    if (panels && q1 > q0) pack_cols_to_panels(wp, q1 - q0, G1H, w + q0, R);
    T* ac = acc_of(tid);

    for (int64_t s = pl.steps - 1; s >= 0; --s) {
      T* dst = dbuf[s & 1];
      // d h_t of this thread's columns; zoneout splits it
      for (int64_t b = 0; b < B; ++b) {
        T* dn = dhnew + b * R;
        if (!map.active(s, b)) {
          for (int64_t q = q0; q < q1; ++q) dn[q] = T(0);
          continue;
        }
        const int64_t row = map.time(s, b) * B + b;
        T* dt = dht + b * R;
        const T* db = dh + b * R;
        const T* dyr = p.dy ? p.dy + row * ld_dy : nullptr;
        for (int64_t q = q0; q < q1; ++q) dt[q] = db[q] + (dyr ? dyr[q] : T(0));
        if (zhm) {
          const uint8_t* m = zhm + row * R;
          for (int64_t q = q0; q < q1; ++q) dn[q] = m[q] ? T(0) : dt[q];
        } else if (zh != T(0)) {
          for (int64_t q = q0; q < q1; ++q) dn[q] = (T(1) - zh) * dt[q];
        } else {
          for (int64_t q = q0; q < q1; ++q) dn[q] = dt[q];
        }
        if (pl.proj) std::memcpy(dproj + row * P + q0, dn + q0, sizeof(T) * (q1 - q0));
      }
      if (pl.proj) {  // every projected column first, then this thread's units of d(out)
#pragma omp barrier
        if (nj > 0)
          gemm<T>(false, false, B, nj, P, T(1), dhnew, R, p.w_hr + j0, H, T(0), dout + j0, H);
      }
      // the cell's backward on this thread's units
      for (int64_t b = 0; b < B; ++b) {
        T* dsb = dst + b * GH;
        if (!map.active(s, b)) {
          for (int g = 0; g < pl.G; ++g)
            for (int64_t j = j0; j < j1; ++j) dsb[g * H + j] = T(0);
          continue;
        }
        const int64_t row = map.time(s, b) * B + b;
        const T* sv = saved + row * S * H;
        const T* dob = dcell + b * ldc;
        T* dxr = dxp + row * GH;
        T* dhr = dhh + row * GH;
        if (pl.lstm) {
          T* dcb = dc + b * H;
          const uint8_t* mcm = zcm ? zcm + row * H : nullptr;
          T* dpp = ac + a_peep;
          T* keepv = rowtmp + tid * 2 * (H + 16);  // zoneout weight of the previous c, per unit
          if (mcm) for (int64_t j = j0; j < j1; ++j) keepv[j] = T(mcm[j]);
          else for (int64_t j = j0; j < j1; ++j) keepv[j] = zc;
          with_clips(o, [&](auto gate_clip, auto cell_clip) {
#pragma GCC ivdep
            for (int64_t j = j0; j < j1; ++j) {
              const T dct = dcb[j];
              const T keep = keepv[j];
              T dat[4];
              const T dcp = RegLstmCell::backward<gate_clip(), cell_clip()>(
                  sv + j, H, dob[j], (T(1) - keep) * dct +
                  RegLstmCell::d_tanh_input(sv + j, H, dob[j]), peep[j], peep[H + j],
                  peep[2 * H + j], dat, dpp + j, H);
              for (int g = 0; g < 4; ++g) {
                dxr[g * H + j] = dhr[g * H + j] = dsb[g * H + j] = dat[g];
                ac[a_bhh + g * H + j] += dat[g];
              }
              dcb[j] = dcp + keep * dct;
            }
          });
        } else {
          const T* hpb = h_prev_s + row * R;
          T* dirb = direct + b * R;
          auto run = [&](auto cell) {
            using Cell = decltype(cell);
#pragma GCC ivdep
            for (int64_t j = j0; j < j1; ++j) {
              T dax[Cell::kGates], dah[Cell::kGates], dd = 0, unused = 0;
              Cell::backward(sv + j, H, dob[j], hpb[j], unused, dax, dah, dd);
              for (int g = 0; g < Cell::kGates; ++g) {
                const T d_h = Cell::kSplitGrad ? dah[g] : dax[g];
                dxr[g * H + j] = dax[g];
                dhr[g * H + j] = dsb[g * H + j] = d_h;
                ac[a_bhh + g * H + j] += d_h;
              }
              dirb[j] = dd;
            }
          };
          if (pl.gru) run(GruCell{});
          else if (pl.relu) run(RnnReluCell{});
          else run(RnnTanhCell{});
        }
      }
#pragma omp barrier
      // d h_prev of this thread's columns: the product, masked, the direct path, zoneout
      if (q1 > q0) {
        if (panels) packed_gemm(B, q1 - q0, G1H, dst, GH, wp, dtmp + q0, R);
        else direct_gemm_small(B, q1 - q0, G1H, dst, GH, w + q0, R, dtmp + q0, R);
      }
      for (int64_t b = 0; b < B; ++b) {
        if (!map.active(s, b)) continue;
        const int64_t row = map.time(s, b) * B + b;
        T* db = dh + b * R;
        const T* tb = dtmp + b * R;
        const T* dt = dht + b * R;
        const T* dir = direct + b * R;
        const T* rdb = rd ? rd + b * R : nullptr;
        for (int64_t q = q0; q < q1; ++q) {
          T v = rdb ? tb[q] * rdb[q] : tb[q];
          if (has_direct) v += dir[q];
          db[q] = v;
        }
        if (zhm) {
          const uint8_t* m = zhm + row * R;
          for (int64_t q = q0; q < q1; ++q) db[q] += m[q] ? dt[q] : T(0);
        } else if (zh != T(0)) {
          for (int64_t q = q0; q < q1; ++q) db[q] += zh * dt[q];
        }
      }
    }
  }
  } else {
  // One region for the time loop, as the forward's: batch rows for the pointwise phases,
  // column blocks (of W's columns, packed once per thread) for the products.
#pragma omp parallel num_threads(pl.nt)
  {
    const int team = omp_get_num_threads(), tid = omp_get_thread_num();
    int64_t b0, b1, q0, q1, j0, j1;
    split_range(B, team, tid, b0, b1);
    split_range(R, team, tid, q0, q1);  // columns of d h_prev
    split_range(H, team, tid, j0, j1);  // columns of d(cell output), d(r h_in)
    T* wp = wpack + (q0 + kLanes * tid) * G1H;
    if (panels && q1 > q0) pack_cols_to_panels(wp, q1 - q0, G1H, w + q0, R);

    for (int64_t s = pl.steps - 1; s >= 0; --s) {
      for (int64_t b = b0; b < b1; ++b) gather_row(s, b);
      if (pl.proj) {
#pragma omp barrier
        if (j1 > j0)
          gemm<T>(false, false, B, j1 - j0, P, T(1), dhnew, R, p.w_hr + j0, H, T(0), dout + j0,
                  H);
#pragma omp barrier
      }
      for (int64_t b = b0; b < b1; ++b) cell_row(s, b, tid);
      if (pl.v1) {  // d(r h_in) = d(a_n) W_n, then the reset gate
#pragma omp barrier
        if (j1 > j0)
          gemm<T>(false, false, B, j1 - j0, H, T(1), da + 2 * H, GH, w + 2 * H * R + j0, R, T(0),
                  drh + j0, H);
#pragma omp barrier
        for (int64_t b = b0; b < b1; ++b) reset_row(s, b, tid);
      }
#pragma omp barrier
      if (q1 > q0) {
        if (panels) packed_gemm(B, q1 - q0, G1H, dstep, GH, wp, dtmp + q0, R);
        else direct_gemm_small(B, q1 - q0, G1H, dstep, GH, w + q0, R, dtmp + q0, R);
      }
#pragma omp barrier
      for (int64_t b = b0; b < b1; ++b) state_row(s, b);
    }
  }

  }

  // Final state gradients; parameter gradients from the accumulators.
  if (p.dh0) std::memcpy(p.dh0, dh, sizeof(T) * B * R);
  if (pl.lstm && p.dc0) std::memcpy(p.dc0, dc, sizeof(T) * B * H);
  auto reduce = [&](int64_t off, int64_t n, T* dst) {
    if (!dst) return;
    for (int64_t k = 0; k < n; ++k) {
      T v = 0;
      for (int t = 0; t < nt; ++t) v += acc_of(t)[off + k];
      dst[k] = v;
    }
  };
  reduce(a_bhh, GH, p.db_hh);
  reduce(a_lnhh, GH, p.d_ln_weight_hh);
  reduce(a_lnc, H, p.d_ln_weight_c);
  reduce(a_lnbc, H, p.d_ln_bias_c);
  reduce(a_peep, 3 * H, p.d_peephole);

  // d W_hh (of the DropConnect-ed weights, then masked): the h blocks against what W saw, the
  // two-phase GRU's n block against r h_in.
  T* dw = p.dw_hh;
  gemm_par<T>(true, false, G1H, R, TB, T(1), dhh, GH, h_in_s, R, T(0), dw, R);
  if (pl.v1)
    gemm_par<T>(true, false, H, H, TB, T(1), dhh + 2 * H, GH, saved + 3 * H, S * H, T(0),
                dw + 2 * H * R, R);
  if (o.dropconnect) {
    const T* m = o.dropconnect;
    const int64_t n = GH * R;
#pragma omp parallel for num_threads(pl.nt) schedule(static) if (n > 65536)
    for (int64_t k = 0; k < n; ++k) dw[k] *= m[k];
  }
  if (pl.proj && p.dw_hr)
    gemm_par<T>(true, false, P, H, TB, T(1), dproj, P, proj_in_s, H, T(0), p.dw_hr, H);

  // The input side: b_ih is added after the normalisation; then back through it, row by row.
  std::fill(ones, ones + TB, T(1));
  if (p.db_ih) gemv_t_par<T>(TB, GH, T(1), dxp, GH, ones, T(0), p.db_ih);
  if (pl.ln) {
    for_rows(TB, pl.nt, [&](int64_t r, int tid) {
      const int64_t te = r / B, b = r % B;
      if (te >= map.len(b)) return;  // padding row: stays zero
      ln_backward_row(dxp + r * GH, xhat + r * GH, o.ln_weight_ih, rstd_ih[r], GH, dxp + r * GH,
                      acc_of(tid) + a_lnih);
    });
    reduce(a_lnih, GH, p.d_ln_weight_ih);
  }
  if (p.dx) gemm_par<T>(false, false, TB, I, GH, T(1), dxp, GH, p.w_ih, I, T(0), p.dx, I);
  // d W_ih over the valid rows: padding rows of x may hold anything (NaN times a zero
  // gradient would still be NaN), so they are zeroed in a copy when lengths are given.
  const T* xv = p.x;
  int64_t ldx = pl.ld_x;
  if (p.lengths) {
    for (int64_t r = 0; r < TB; ++r) {
      const int64_t te = r / B, b = r % B;
      if (te < map.len(b)) std::memcpy(xz + r * I, p.x + r * ldx, sizeof(T) * I);
      else std::fill(xz + r * I, xz + (r + 1) * I, T(0));
    }
    xv = xz, ldx = I;
  }
  gemm_par<T>(true, false, GH, I, TB, T(1), dxp, GH, xv, ldx, T(0), p.dw_ih, I);
}

}  // namespace cpu
FUSEDRNN_ISA_END
}  // namespace fusedrnn
