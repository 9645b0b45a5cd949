#pragma once
// Persistent time loops (docs/design.md §5): one launch runs every step of a layer's forward or
// backward. Each block owns whole hidden units (every gate row of them), keeps its slice of
// W_hh (forward: the units' rows; backward: the units' columns) in shared memory for the whole
// sequence, and fuses the cell, so a step needs ONE grid-wide barrier:
//
//   forward step:  h (all units, last step's) -> shared; the block's rows of h W_hh^T as
//                  k-sliced partial sums; the cell on its units -> h_next, c, y, saved; barrier.
//   backward step: the cell backward on its units (dh of its own columns + dy) -> dstep (all
//                  gate rows of its units), dxp, dhp, dc; barrier; dh for its columns =
//                  direct + dstep W_hh[:, its units] (k-sliced over the G*H rows).
//
// h and dstep are exchanged through global memory, double-buffered by step parity (a block may
// start the next step while another still reads this one's buffer; the barrier keeps them at
// most one step apart). Cells: RNN tanh/relu, LSTM without projection, GRU (reset_after); the
// two-phase GRU and the projection need a second exchange per step and take the per-step path.
// Everything here is host-callable: the host runner (grid.h) tests it on a CPU.
#include <cstddef>
#include <cstdint>

#include "core/step_map.h"
#include "fusedrnn/common.h"

namespace fusedrnn {
namespace device {

// Units [u0, u1) of block k of nb over H: balanced, every block gets floor or ceil(H / nb).
FUSEDRNN_HOST_DEVICE void unit_range(int64_t H, int64_t nb, int64_t k, int64_t& u0, int64_t& u1) {
  // 32-bit: a 64-bit division is a call on a GPU, and the register save around it made these
  // kernels spill; a persistent grid's H and blocks are bounded by shared memory (< 2^16)
  u0 = int(k) * int(H) / int(nb);
  u1 = (int(k) + 1) * int(H) / int(nb);
}

// An odd row stride (in elements): rows that neighbouring threads read at once fall in
// different shared-memory banks.
FUSEDRNN_HOST_DEVICE int64_t odd_stride(int64_t n) { return n % 2 ? n : n + 1; }

// Where a block's shared memory holds what, for U units (the most any block of the grid
// owns), in elements of T; offsets are multiples of 16 bytes / sizeof(T) elements.
struct PersistentLayout {
  int64_t G, U, B, K;  // gates, units per block, batch, length of the dot products (R or G*H)
  int64_t threads, elem;
  bool forward;
  FUSEDRNN_HOST_DEVICE int64_t rows() const { return forward ? G * U : U; }
  // k-slices per dot product: the block's threads spread over rows x slices.
  FUSEDRNN_HOST_DEVICE static int64_t slices(int64_t threads, int64_t rows, int64_t K) {
    int64_t ks = rows > 0 ? int(threads) / int(rows) : 1;  // 32-bit, as unit_range
    ks = ks < 1 ? 1 : ks;
    return ks > K ? K : ks;
  }
  // n rounded up to a multiple of 16 bytes (elem: a power of two), without a division
  FUSEDRNN_HOST_DEVICE int64_t align(int64_t n) const {
    int64_t q = 16;
    for (int64_t e = elem; e > 1 && q > 1; e >>= 1) q >>= 1;
    return (n + q - 1) & ~(q - 1);
  }
  FUSEDRNN_HOST_DEVICE int64_t w_elems() const { return align(rows() * odd_stride(K)); }
  // h (forward: B x K), or the direct path (backward: B x U)
  FUSEDRNN_HOST_DEVICE int64_t h_elems() const { return forward ? align(B * K) : align(B * U); }
  // partial sums: slices x rows <= max(threads, rows) for a block of any unit count <= U
  FUSEDRNN_HOST_DEVICE int64_t part_elems() const {
    return align((threads > rows() ? threads : rows()) * B);
  }
  FUSEDRNN_HOST_DEVICE size_t bytes() const {
    return size_t(w_elems() + h_elems() + part_elems()) * size_t(elem);
  }

  // The layout of a grid of `blocks` blocks over H units, sized for its largest block, so the
  // plan (plan_persistent) and every block of the program (carve) agree on it.
  FUSEDRNN_HOST_DEVICE static PersistentLayout for_grid(int64_t G, int64_t B, int64_t H,
                                                        int64_t blocks, int64_t threads,
                                                        int64_t elem, bool forward) {
    return PersistentLayout{G, (int(H) + int(blocks) - 1) / int(blocks), B, forward ? H : G * H,
                            threads, elem, forward};
  }
  // Where w (the W_hh slice), h (forward: h; backward: the direct path) and the partial sums
  // start in a block's shared memory.
  template <class T>
  FUSEDRNN_HOST_DEVICE void carve(char* shared, T*& w, T*& h, T*& part) const {
    w = reinterpret_cast<T*>(shared);
    h = w + w_elems();
    part = h + h_elems();
  }
};

// Whether a layer runs its time loop persistently, and how (plan_persistent).
enum class PersistentMode : int { Off = 0, On = 1, Auto = 2 };
struct PersistentPlan {
  bool use = false;
  int blocks = 0, threads = 0;
  size_t shared_bytes = 0;
  const char* why = "";
};

// mode: Off never, On wherever it fits, Auto where it fits and B <= auto_max_batch. The grid
// is min(H, max_blocks) blocks of `threads` (co-resident: max_blocks is what the device holds
// at once), each needing PersistentLayout::bytes() of shared memory <= shared_limit.
inline PersistentPlan plan_persistent(PersistentMode mode, bool cell_has_loop, int64_t G,
                                      int64_t B, int64_t H, size_t elem, bool forward,
                                      int max_blocks, int threads, size_t shared_limit,
                                      int64_t auto_max_batch) {
  PersistentPlan plan;
  if (mode == PersistentMode::Off) {
    plan.why = "off";
    return plan;
  }
  if (!cell_has_loop) {
    plan.why = "the cell needs two exchanges per step (projection, GRU reset_after=False)";
    return plan;
  }
  if (mode == PersistentMode::Auto && B > auto_max_batch) {
    plan.why = "batch above the persistent kernel's crossover";
    return plan;
  }
  if (B < 1 || H < 1 || max_blocks < 1 || threads < 1) {
    plan.why = "empty";
    return plan;
  }
  if (G * H * B > (int64_t(1) << 30)) {  // the programs index in 32 bits
    plan.why = "the W_hh slice and the batch's state do not fit in shared memory";
    return plan;
  }
  const int blocks = int(H < max_blocks ? H : max_blocks);
  const PersistentLayout lay =
      PersistentLayout::for_grid(G, B, H, blocks, threads, int64_t(elem), forward);
  if (lay.bytes() > shared_limit) {
    plan.why = "the W_hh slice and the batch's state do not fit in shared memory";
    return plan;
  }
  plan.use = true;
  plan.blocks = blocks;
  plan.threads = threads;
  plan.shared_bytes = lay.bytes();
  plan.why = "persistent";
  return plan;
}

// A load of what other blocks wrote before the last grid barrier (h, dstep): on a GPU it
// bypasses the SM's L1 (ld.global.cg), so no line cached before the barrier can be read.
template <class T>
FUSEDRNN_HOST_DEVICE T exchange_load(const T* p) {
#if defined(__CUDA_ARCH__)
  return __ldcg(p);
#else
  return *p;
#endif
}

// out[b] = sum_{k in [k0, k1)} w[k] v[b * ld + k] for b < B: each w[k] read once per four
// batch rows, their sums in four scalars (an array indexed by a runtime bound would live in
// local memory, which the resource gate refuses).
// kExchange: v is exchange memory (exchange_load), else shared memory.
template <bool kExchange, class T>
FUSEDRNN_HOST_DEVICE T load_v(const T* p) {
  if constexpr (kExchange) return exchange_load(p);
  else return *p;
}

template <bool kExchange, class T>
FUSEDRNN_HOST_DEVICE void dot_rows(const T* w, const T* v, int64_t ld, int64_t k0, int64_t k1,
                                   int64_t B, T* out) {
  int64_t b = 0;
  for (; b + 4 <= B; b += 4) {
    const T* v0 = v + b * ld;
    T a0 = T(0), a1 = T(0), a2 = T(0), a3 = T(0);
    for (int64_t k = k0; k < k1; ++k) {
      const T wk = w[k];
      a0 += wk * load_v<kExchange>(v0 + k);
      a1 += wk * load_v<kExchange>(v0 + ld + k);
      a2 += wk * load_v<kExchange>(v0 + 2 * ld + k);
      a3 += wk * load_v<kExchange>(v0 + 3 * ld + k);
    }
    out[b] = a0;
    out[b + 1] = a1;
    out[b + 2] = a2;
    out[b + 3] = a3;
  }
  for (; b < B; ++b) {
    const T* vb = v + b * ld;
    T a = T(0);
    for (int64_t k = k0; k < k1; ++k) a += w[k] * load_v<kExchange>(vb + k);
    out[b] = a;
  }
}

// ---- Forward --------------------------------------------------------------------------------

template <class T>
struct PersistentForwardParams {
  StepMap map;
  int64_t B, H, steps;  // R == H
  const T* xp;          // (T*B, G*H) input pre-activations, b_ih in
  const T* w_hh;        // (G*H, H)
  const T* b_hh;        // (G*H), zeros without bias
  T* h_buf;             // (2, B, H): [0] holds h0 (or zeros) at launch
  T* c;                 // (B, H) c0 (or zeros) at launch, updated (LSTM), else null
  T* y;                 // (T*B, ld_y)
  int64_t ld_y;
  T* saved;     // training: (T*B, S*H); inference: (B, S*H) scratch
  T* h_prev;    // training: (T*B, H), else null
  bool training;
  T* h_n;       // (B, H)
  T* c_n;       // (B, H) or null
};

template <class Cell, class T>
struct PersistentForward {
  PersistentForwardParams<T> p;

  template <class Ctx>
  FUSEDRNN_HOST_DEVICE void operator()(const Ctx& ctx) const {
    constexpr int G = Cell::kGates, S = Cell::kSaved;
    const int64_t B = p.B, H = p.H, GH = G * H, nt = ctx.threads();
    int64_t u0, u1;
    unit_range(H, ctx.blocks(), ctx.block(), u0, u1);
    const int64_t U = u1 - u0, rows = G * U;
    const int64_t ws = odd_stride(H);
    T *w_s, *h_s, *part;
    PersistentLayout::for_grid(G, B, H, ctx.blocks(), nt, int64_t(sizeof(T)), true)
        .carve(ctx.shared(), w_s, h_s, part);
    const int64_t ks = PersistentLayout::slices(nt, rows, H), klen = (int(H) + int(ks) - 1) / int(ks);
    // task indices in 32 bits (every count here is bounded by shared memory, < 2^16 elements)
    const int nti = int(nt), Ui = int(U), Bi = int(B), Hi = int(H), rowsi = int(rows),
              ksi = int(ks);

    // The block's rows of W_hh: local row r = g*U + jl is global row g*H + u0 + jl.
    ctx.for_threads([&](int t) {
      for (int i = t; i < rowsi * Hi; i += nti) {  // 32-bit: a 64-bit division is a call
        const int r = i / Hi, k = i % Hi;
        w_s[r * ws + k] = p.w_hh[(int64_t(r / Ui) * H + u0 + r % Ui) * H + k];
      }
    });
    ctx.sync_block();
    for (int64_t s = 0; s < p.steps; ++s) {
      const T* h_cur = p.h_buf + (s % 2) * B * H;
      T* h_next = p.h_buf + ((s + 1) % 2) * B * H;
      ctx.for_threads([&](int t) {
        for (int64_t i = t; i < B * H; i += nt) h_s[i] = exchange_load(h_cur + i);
      });
      ctx.sync_block();
      // Partial dot products: task (slice q, row r) sums k in [q*klen, (q+1)*klen) for every b.
      ctx.for_threads([&](int t) {
        for (int task = t; task < rowsi * ksi; task += nti) {
          const int r = task % rowsi, q = task / rowsi;
          const int64_t k0 = q * klen, k1 = k0 + klen < H ? k0 + klen : H;
          dot_rows<false>(w_s + r * ws, h_s, H, k0, k1, B, part + (q * rows + r) * B);
        }
      });
      ctx.sync_block();
      // The cell on unit (b, u0 + jl).
      ctx.for_threads([&](int t) {
        for (int task = t; task < Bi * Ui; task += nti) {
          const int64_t b = task / Ui, jl = task % Ui, j = u0 + jl;
          if (!p.map.active(s, b)) {
            const int64_t pad = s * B + b;
            h_next[b * H + j] = h_s[b * H + j];
            p.y[pad * p.ld_y + j] = T(0);
            if (p.training) {
              for (int k = 0; k < S; ++k) p.saved[pad * S * H + k * H + j] = T(0);
              p.h_prev[pad * H + j] = T(0);
            }
            continue;
          }
          const int64_t row = p.map.time(s, b) * B + b;
          T ax[G], ah[G];
          for (int g = 0; g < G; ++g) {
            T acc = T(0);
            for (int64_t q = 0; q < ks; ++q) acc += part[(q * rows + g * U + jl) * B + b];
            ax[g] = p.xp[row * GH + g * H + j];
            ah[g] = acc + p.b_hh[g * H + j];
          }
          T* sv = p.saved + (p.training ? row : b) * S * H;
          const T hprev = h_s[b * H + j];
          T cj = Cell::kHasCellState ? p.c[b * H + j] : T(0);
          const T v = Cell::forward(ax, ah, hprev, cj, sv + j, H);
          if (Cell::kHasCellState) p.c[b * H + j] = cj;
          h_next[b * H + j] = v;
          p.y[row * p.ld_y + j] = v;
          if (p.training) p.h_prev[row * H + j] = hprev;
        }
      });
      ctx.grid_sync();
    }
    const T* h_final = p.h_buf + (p.steps % 2) * B * H;
    ctx.for_threads([&](int t) {
      for (int task = t; task < Bi * Ui; task += nti) {
        const int64_t b = task / Ui, j = u0 + task % Ui;
        p.h_n[b * H + j] = h_final[b * H + j];
        if (Cell::kHasCellState && p.c_n) p.c_n[b * H + j] = p.c[b * H + j];
      }
    });
  }
};

// ---- Backward -------------------------------------------------------------------------------

template <class T>
struct PersistentBackwardParams {
  StepMap map;
  int64_t B, H, steps;
  const T* saved;   // (T*B, S*H)
  const T* h_prev;  // (T*B, H)
  const T* dy;      // (T*B, ld_dy) or null
  int64_t ld_dy;
  const T* w_hh;    // (G*H, H)
  T* dh;            // (B, H): dh_n (or zeros) at launch; each block updates its columns
  T* dc;            // (B, H): dc_n (or zeros) at launch (LSTM), else null
  T* dstep;         // (2, B, G*H) exchange buffers
  T* dxp;           // (T*B, G*H)
  T* dhp;           // (T*B, G*H) (kSplitGrad), else null
  T* dh0;           // (B, H)
  T* dc0;           // (B, H) or null
};

template <class Cell, class T>
struct PersistentBackward {
  PersistentBackwardParams<T> p;

  template <class Ctx>
  FUSEDRNN_HOST_DEVICE void operator()(const Ctx& ctx) const {
    constexpr int G = Cell::kGates, S = Cell::kSaved;
    const int64_t B = p.B, H = p.H, GH = G * H, nt = ctx.threads();
    int64_t u0, u1;
    unit_range(H, ctx.blocks(), ctx.block(), u0, u1);
    const int64_t U = u1 - u0;
    const int64_t ws = odd_stride(GH);
    T *wt_s, *direct, *part;  // wt_s (U, ws): column u0 + jl of W_hh; direct (B, U)
    PersistentLayout::for_grid(G, B, H, ctx.blocks(), nt, int64_t(sizeof(T)), false)
        .carve(ctx.shared(), wt_s, direct, part);
    const int64_t ks = PersistentLayout::slices(nt, U, GH), klen = (int(GH) + int(ks) - 1) / int(ks);
    const int nti = int(nt), Ui = int(U), Bi = int(B), GHi = int(GH), ksi = int(ks);

    ctx.for_threads([&](int t) {
      for (int i = t; i < Ui * GHi; i += nti) {  // 32-bit: a 64-bit division is a call
        const int r = i % GHi, jl = i / GHi;
        wt_s[jl * ws + r] = p.w_hh[r * H + u0 + jl];
      }
    });
    ctx.sync_block();
    for (int64_t s = p.steps - 1; s >= 0; --s) {
      T* dstep = p.dstep + (s % 2) * B * GH;
      // The cell backward on unit (b, u0 + jl).
      ctx.for_threads([&](int t) {
        for (int task = t; task < Bi * Ui; task += nti) {
          const int64_t b = task / Ui, jl = task % Ui, j = u0 + jl;
          if (!p.map.active(s, b)) {
            const int64_t pad = s * B + b;
            for (int g = 0; g < G; ++g) {
              dstep[b * GH + g * H + j] = T(0);
              p.dxp[pad * GH + g * H + j] = T(0);
              if (Cell::kSplitGrad) p.dhp[pad * GH + g * H + j] = T(0);
            }
            direct[b * U + jl] = p.dh[b * H + j];  // the state passes through
            continue;
          }
          const int64_t row = p.map.time(s, b) * B + b;
          const T dout = p.dh[b * H + j] + (p.dy ? p.dy[row * p.ld_dy + j] : T(0));
          T dcj = Cell::kHasCellState ? p.dc[b * H + j] : T(0);
          T dax[G], dah[G], dir;
          Cell::backward(p.saved + row * S * H + j, H, dout, p.h_prev[row * H + j], dcj, dax,
                         dah, dir);
          if (Cell::kHasCellState) p.dc[b * H + j] = dcj;
          for (int g = 0; g < G; ++g) {
            p.dxp[row * GH + g * H + j] = dax[g];
            const T dr = Cell::kSplitGrad ? dah[g] : dax[g];
            if (Cell::kSplitGrad) p.dhp[row * GH + g * H + j] = dr;
            dstep[b * GH + g * H + j] = dr;
          }
          direct[b * U + jl] = dir;
        }
      });
      ctx.grid_sync();
      // dh[:, u0 + jl] = direct + dstep W_hh[:, u0 + jl], k-sliced over the G*H rows.
      ctx.for_threads([&](int t) {
        for (int task = t; task < Ui * ksi; task += nti) {
          const int jl = task % Ui, q = task / Ui;
          const int64_t r0 = q * klen, r1 = r0 + klen < GH ? r0 + klen : GH;
          dot_rows<true>(wt_s + jl * ws, dstep, GH, r0, r1, B, part + (q * U + jl) * B);
        }
      });
      ctx.sync_block();
      ctx.for_threads([&](int t) {
        for (int task = t; task < Bi * Ui; task += nti) {
          const int64_t b = task / Ui, jl = task % Ui;
          T acc = direct[b * U + jl];
          for (int64_t q = 0; q < ks; ++q) acc += part[(q * U + jl) * B + b];
          p.dh[b * H + u0 + jl] = acc;
        }
      });
      ctx.sync_block();
    }
    ctx.for_threads([&](int t) {
      for (int task = t; task < Bi * Ui; task += nti) {
        const int64_t b = task / Ui, j = u0 + task % Ui;
        p.dh0[b * H + j] = p.dh[b * H + j];
        if (Cell::kHasCellState && p.dc0) p.dc0[b * H + j] = p.dc[b * H + j];
      }
    });
  }
};

// Whether a cell has a persistent loop: one exchange per step (no second phase, no projection).
template <class Cell>
constexpr bool has_persistent_loop() {
  return !Cell::kTwoPhase;
}
// (and no projection: the caller checks P == 0)

}  // namespace device
}  // namespace fusedrnn
