#pragma once
// The device backend's kernels, written once as element functors: `f(i)` for every i in
// [0, n), with no order between elements and nothing shared but what the functor's pointers
// reach. A CUDA launch runs them one element per thread (csrc/cuda/exec.cuh); the host
// executor (host_exec.h) runs the very same functors in a loop, which is how the CPU suite
// checks this code against the reference on a machine without a GPU (docs/design.md §7).
//
// Index conventions as in core/step_map.h: arrays by time use row te*B + b; at step s a
// sequence b is active iff s < L_b. An inactive (b, s) writes the zeros of padding row s*B + b
// (s >= L_b is past b's length in either direction), so each by-time row is written exactly
// once by the step loop and nothing is memset twice.
#include <cstdint>

#include "core/dropout.h"
#include "core/step_map.h"
#include "device/index.h"
#include "fusedrnn/common.h"

namespace fusedrnn {
namespace device {

// ---- GEMM ---------------------------------------------------------------------------------------

// Row-major C(M,N) = alpha op(A) op(B) + beta C, op(A) (M,K), op(B) (K,N); beta == 0 does not
// read C (it may hold NaN). A block program (grid.h): one 64x64 tile of C per block of 256 threads,
// each thread a 4x4 sub-tile: K is walked in chunks of 16 staged in shared memory (A's chunk
// k-major, so a thread reads its 4 rows and 4 columns as neighbours), each global element read
// once per tile; loads are mapped so neighbouring threads read neighbouring addresses of
// whichever axis is contiguous. Blocks are independent: no grid barrier.
template <class T>
struct GemmBlock {
  static constexpr int kBM = 64, kBN = 64, kBK = 16, kThreads = 256, kPad = 4;
  bool trans_a, trans_b;
  int64_t M, N, K;
  T alpha;
  const T* A;
  int64_t lda;
  const T* B;
  int64_t ldb;
  T beta;
  T* C;
  int64_t ldc;
  int64_t tiles_n;

  static int64_t blocks(int64_t M, int64_t N) {
    return ((M + kBM - 1) / kBM) * ((N + kBN - 1) / kBN);
  }
  static size_t shared_bytes() { return sizeof(T) * size_t(kBK) * (kBM + kPad + kBN + kPad); }

  FUSEDRNN_HOST_DEVICE T a_at(int64_t m, int64_t k) const {
    return trans_a ? A[k * lda + m] : A[m * lda + k];
  }
  FUSEDRNN_HOST_DEVICE T b_at(int64_t k, int64_t n) const {
    return trans_b ? B[n * ldb + k] : B[k * ldb + n];
  }

  template <class Ctx>
  FUSEDRNN_HOST_DEVICE void operator()(const Ctx& ctx) const {
    int64_t bm, bn;
    divmod(ctx.block(), tiles_n, bm, bn);
    const int64_t m0 = bm * kBM, n0 = bn * kBN;
    T* as = reinterpret_cast<T*>(ctx.shared());  // (kBK, kBM + kPad): as[k][m]
    T* bs = as + kBK * (kBM + kPad);             // (kBK, kBN + kPad): bs[k][n]
    constexpr int la = kBM + kPad, lb = kBN + kPad;
    // Each thread's 4x4 accumulators live across the phases: registers on a device, a slot per
    // thread on the host runner (grid.h's Private).
    typename Ctx::template Private<T, 16> acc_store(ctx);
    ctx.for_threads([&](int t) {
      T* acc = acc_store.at(t);
      for (int e = 0; e < 16; ++e) acc[e] = T(0);
    });
    for (int64_t k0 = 0; k0 < K; k0 += kBK) {
      ctx.sync_block();  // the previous chunk's reads are done
      ctx.for_threads([&](int t) {
        for (int e = t; e < kBM * kBK; e += kThreads) {
          // A: m fastest when A is stored k-major (trans_a), else k fastest
          const int mi = trans_a ? e % kBM : e / kBK, ki = trans_a ? e / kBM : e % kBK;
          const int64_t m = m0 + mi, k = k0 + ki;
          as[ki * la + mi] = m < M && k < K ? a_at(m, k) : T(0);
        }
        for (int e = t; e < kBN * kBK; e += kThreads) {
          const int ni = trans_b ? e / kBK : e % kBN, ki = trans_b ? e % kBK : e / kBN;
          const int64_t n = n0 + ni, k = k0 + ki;
          bs[ki * lb + ni] = n < N && k < K ? b_at(k, n) : T(0);
        }
      });
      ctx.sync_block();
      ctx.for_threads([&](int t) {
        const int ty = t / 16, tx = t % 16;
        T* acc = acc_store.at(t);
        for (int k = 0; k < kBK; ++k) {
          T a[4], b[4];
          for (int r = 0; r < 4; ++r) a[r] = as[k * la + ty * 4 + r];
          for (int c = 0; c < 4; ++c) b[c] = bs[k * lb + tx * 4 + c];
          for (int r = 0; r < 4; ++r)
            for (int c = 0; c < 4; ++c) acc[r * 4 + c] += a[r] * b[c];
        }
      });
    }
    ctx.for_threads([&](int t) {
      const int ty = t / 16, tx = t % 16;
      const T* acc = acc_store.at(t);
      for (int r = 0; r < 4; ++r) {
        const int64_t m = m0 + ty * 4 + r;
        if (m >= M) break;
        for (int c = 0; c < 4; ++c) {
          const int64_t n = n0 + tx * 4 + c;
          if (n >= N) break;
          const T v = alpha * acc[r * 4 + c];
          C[m * ldc + n] = beta == T(0) ? v : v + beta * C[m * ldc + n];
        }
      }
    });
  }
};

// y(N) = alpha A(M,N)^T x(M) + beta y, one column per element (neighbours read neighbouring
// columns of each row). beta == 0 does not read y.
template <class T>
struct GemvT {
  int64_t M, N;
  T alpha;
  const T* A;
  int64_t lda;
  const T* x;
  T beta;
  T* y;
  FUSEDRNN_HOST_DEVICE void operator()(int64_t n) const {
    T acc = T(0);
    for (int64_t m = 0; m < M; ++m) acc += A[m * lda + n] * x[m];
    y[n] = beta == T(0) ? alpha * acc : alpha * acc + beta * y[n];
  }
};

// ---- Copies and fills -------------------------------------------------------------------------

template <class T>
struct Fill {
  T* a;
  T value;
  FUSEDRNN_HOST_DEVICE void operator()(int64_t i) const { a[i] = value; }
};

// a = b: n elements (the state copies of the layer loop; a device-to-device memcpy elsewhere).
template <class T>
struct Copy {
  T* dst;
  const T* src;
  FUSEDRNN_HOST_DEVICE void operator()(int64_t i) const { dst[i] = src[i]; }
};

// XP rows start as b_ih (or zeros), then the input GEMM adds X W_ih^T: (rows, width).
template <class T>
struct BiasRows {
  T* xp;
  const T* bias;  // (width) or null
  int64_t width;
  FUSEDRNN_HOST_DEVICE void operator()(int64_t i) const {
    int64_t r, c;
    divmod(i, width, r, c);
    xp[i] = bias ? bias[c] : T(0);
  }
};

// Zeros of rows [first_row, first_row + rows) of a (., ld) array, columns [0, width): the
// rows of the times no sequence reaches (>= the longest length), which the step loop never
// visits. Element i is (first_row + i / width, i % width).
template <class T>
struct ZeroRows {
  T* a;
  int64_t first_row, width, ld;
  FUSEDRNN_HOST_DEVICE void operator()(int64_t i) const {
    int64_t r, c;
    divmod(i, width, r, c);
    a[(first_row + r) * ld + c] = T(0);
  }
};

// A contiguous copy of x (T*B rows of ld_x) with the padding rows zeroed: dW_ih = dXP^T X
// must not see NaN/inf padding (0 * NaN = NaN). Element i is (row i / I, column i % I).
template <class T>
struct MaskedRows {
  T* dst;
  const T* src;
  int64_t ld_src, I, B;
  StepMap map;  // reverse does not matter: row te*B + b is valid iff te < L_b
  FUSEDRNN_HOST_DEVICE void operator()(int64_t i) const {
    int64_t r, k, te, b;
    divmod(i, I, r, k);
    divmod(r, B, te, b);
    dst[i] = te < map.len(b) ? src[r * ld_src + k] : T(0);
  }
};

// (a, b, c) -> (b, a, c): batch-first <-> time-major. Element i is the source index.
template <class T>
struct SwapLeadingAxes {
  const T* src;
  T* dst;
  int64_t a, b, c;
  FUSEDRNN_HOST_DEVICE void operator()(int64_t i) const {
    int64_t q, k, ii, j;
    divmod(i, c, q, k);
    divmod(q, b, ii, j);
    dst[(j * a + ii) * c + k] = src[i];
  }
};

// Up to kMax pieces of work in one launch: piece k owns launch indices [first[k], first[k] +
// its size); `find` turns a launch index into (piece, index within it) by a linear scan (a
// launch carries few pieces). Used where many small arrays are handled in one launch.
template <int kMax>
struct Segments {
  static constexpr int kCapacity = kMax;
  int64_t first[kMax] = {};
  int count = 0;
  int64_t total = 0;
  bool full() const { return count == kMax; }
  void add(int64_t n) {
    first[count++] = total;
    total += n;
  }
  FUSEDRNN_HOST_DEVICE int find(int64_t& i) const {
    int k = 0;
    while (k + 1 < count && i >= first[k + 1]) ++k;
    i -= first[k];
    return k;
  }
};

// Zeros of byte ranges of one buffer (the reserve's alignment padding), up to 16 per launch.
struct ZeroByteRanges {
  uint8_t* base;
  int64_t offset[16];
  Segments<16> seg;
  FUSEDRNN_HOST_DEVICE void operator()(int64_t i) const {
    const int k = seg.find(i);
    base[offset[k] + i] = 0;
  }
};

// ---- Dropout (core/dropout.h: the same keep-bits as the CPU for a seed) -----------------------

struct DropoutDraw {
  uint8_t* keep;
  uint64_t stream;
  double p;
  FUSEDRNN_HOST_DEVICE void operator()(int64_t i) const {
    keep[i] = dropout_keep(stream, i, p) ? 1 : 0;
  }
};

// a *= keep / (1 - p): a multiplication, so a dropped NaN/inf stays NaN as in torch.
template <class T>
struct DropoutScale {
  T* a;
  const uint8_t* keep;
  T scale;
  FUSEDRNN_HOST_DEVICE void operator()(int64_t i) const { a[i] *= keep[i] ? scale : T(0); }
};

// ---- Forward step -----------------------------------------------------------------------------

// The shape and state of one layer's step, shared by the step functors.
template <class T>
struct StepShape {
  StepMap map;
  int64_t s;        // the step
  int64_t B, H, R;  // batch, hidden, recurrent width (P with a projection)
  bool proj;
  bool training;
};

// Two-phase GRU (GruV1Cell), phase 1 of step s: r and z from the phase-1 gate blocks, and
// r h for the n block's GEMM. Element i is (b, j) = (i / H, i % H).
template <class Cell, class T>
struct ResetGatesStep {
  StepShape<T> sh;
  const T* xp;     // (T*B, G*H) input pre-activations, b_ih in
  const T* hp;     // (B, G*H) this step's h W_hh^T, blocks [0, kPhase1Gates)
  const T* b_hh;   // (G*H), zeros without bias
  const T* h_cur;  // (B, R)
  T* rh;           // (B, H) out
  T* saved;        // training: (T*B, S*H); inference: (B, S*H) per-step scratch
  FUSEDRNN_HOST_DEVICE void operator()(int64_t i) const {
    constexpr int G = Cell::kGates, S = Cell::kSaved;
    const int64_t H = sh.H, B = sh.B;
    int64_t b, j;
    divmod(i, H, b, j);
    if (!sh.map.active(sh.s, b)) {
      rh[i] = T(0);
      return;
    }
    const int64_t row = sh.map.time(sh.s, b) * B + b;
    T* sv = saved + (sh.training ? row : b) * S * H;
    T ax[G], ah[G];
    gather_preactivations<Cell::kPhase1Gates>(ax, ah, xp + row * G * H, H, hp + b * G * H, H,
                                              b_hh, H, j);
    rh[i] = Cell::gates(ax, ah, h_cur[b * sh.R + j], sv + j, H);
  }
};

// The cell of step s on unit (b, j) = (i / H, i % H): new state (or, with a projection, the
// cell output before W_hr), c, saved values; an inactive sequence keeps its state and writes
// its padding row's zeros. Without a projection (R == H) the unit also commits y and h_prev;
// with one, ProjectionCommit does that per projected column.
template <class Cell, class T>
struct ForwardStep {
  StepShape<T> sh;
  const T* xp;     // (T*B, G*H)
  const T* hp;     // (B, G*H) recurrent pre-activations of this step (b_hh not in)
  const T* b_hh;   // (G*H), zeros without bias
  const T* h_cur;  // (B, R)
  T* h_next;       // (B, R) out (no projection)
  T* c;            // (B, H) in/out (LSTM), else null
  T* out;          // (B, H) out: cell output before W_hr (projection), else null
  T* y;            // (T*B, ld_y)
  int64_t ld_y;
  T* saved;        // training: (T*B, S*H); inference: (B, S*H) per-step scratch
  T* h_prev;       // training: (T*B, R), else null
  T* proj_in;      // training with projection: (T*B, H), else null
  FUSEDRNN_HOST_DEVICE void operator()(int64_t i) const {
    constexpr int G = Cell::kGates, S = Cell::kSaved;
    const int64_t H = sh.H, B = sh.B, R = sh.R;
    int64_t b, j;
    divmod(i, H, b, j);
    if (!sh.map.active(sh.s, b)) {
      const int64_t pad = sh.s * B + b;
      if (!sh.proj) {
        h_next[b * R + j] = h_cur[b * R + j];
        y[pad * ld_y + j] = T(0);
      }
      if (sh.training) {
        for (int k = 0; k < S; ++k) saved[pad * S * H + k * H + j] = T(0);
        if (!sh.proj) h_prev[pad * R + j] = T(0);
        else proj_in[pad * H + j] = T(0);
      }
      return;
    }
    const int64_t row = sh.map.time(sh.s, b) * B + b;
    T* sv = saved + (sh.training ? row : b) * S * H;
    T ax[G], ah[G];
    gather_preactivations<G>(ax, ah, xp + row * G * H, H, hp + b * G * H, H, b_hh, H, j);
    T cj = Cell::kHasCellState ? c[b * H + j] : T(0);
    // h_prev of the same unit exists only without a projection (R == H): GRU's z h path.
    const T hprev = sh.proj ? T(0) : h_cur[b * R + j];
    const T v = Cell::forward(ax, ah, hprev, cj, sv + j, H);
    if (Cell::kHasCellState) c[b * H + j] = cj;
    if (!sh.proj) {
      h_next[b * R + j] = v;
      y[row * ld_y + j] = v;
      if (sh.training) h_prev[row * R + j] = hprev;
    } else {
      out[b * H + j] = v;
      if (sh.training) proj_in[row * H + j] = v;
    }
  }
};

// With a projection, after h_next = out W_hr^T for every row: commit column q of (b, q) =
// (i / R, i % R): y and h_prev for an active sequence; an inactive one keeps its state and
// writes its padding row's zeros.
template <class T>
struct ProjectionCommit {
  StepShape<T> sh;
  const T* h_cur;  // (B, R)
  T* h_next;       // (B, R)
  T* y;
  int64_t ld_y;
  T* h_prev;  // training, else null
  FUSEDRNN_HOST_DEVICE void operator()(int64_t i) const {
    const int64_t B = sh.B, R = sh.R;
    int64_t b, q;
    divmod(i, R, b, q);
    if (!sh.map.active(sh.s, b)) {
      const int64_t pad = sh.s * B + b;
      h_next[i] = h_cur[i];
      y[pad * ld_y + q] = T(0);
      if (sh.training) h_prev[pad * R + q] = T(0);
      return;
    }
    const int64_t row = sh.map.time(sh.s, b) * B + b;
    y[row * ld_y + q] = h_next[i];
    if (sh.training) h_prev[row * R + q] = h_cur[i];
  }
};

// ---- Backward step ----------------------------------------------------------------------------

// The total gradient reaching the state entering step s+1, column q of (b, q) = (i / R, i % R):
// dy added for an active sequence; an inactive one passes it through. With a projection the
// total is d(projection output), kept by time for dW_hr, and dh_next starts at 0 (the cell has
// no direct path then).
template <class T>
struct GatherDh {
  StepShape<T> sh;
  const T* dy;  // (T*B, ld_dy) or null
  int64_t ld_dy;
  T* dh_cur;   // (B, R) in/out
  T* dh_next;  // (B, R)
  T* dproj;    // (T*B, R) by time (projection), else null
  FUSEDRNN_HOST_DEVICE void operator()(int64_t i) const {
    const int64_t B = sh.B, R = sh.R;
    int64_t b, q;
    divmod(i, R, b, q);
    if (!sh.map.active(sh.s, b)) {
      dh_next[i] = dh_cur[i];
      if (sh.proj) dproj[(sh.s * B + b) * R + q] = T(0);
      return;
    }
    const int64_t row = sh.map.time(sh.s, b) * B + b;
    const T v = dh_cur[i] + (dy ? dy[row * ld_dy + q] : T(0));
    dh_cur[i] = v;
    if (sh.proj) {
      dproj[row * R + q] = v;
      dh_next[i] = T(0);
    }
  }
};

// The cell backward of step s on unit (b, j) = (i / H, i % H): d(pre-activations) by time
// (dxp; dhp for a cell whose recurrent part differs), this step's rows for the recurrent GEMM
// (dstep), dc, and the direct path to dh_prev. The two-phase GRU's d(a_r) waits for
// ResetGradStep. An inactive sequence writes zeros: its dstep row and its padding rows.
template <class Cell, class T>
struct BackwardStep {
  StepShape<T> sh;
  const T* saved;   // (T*B, S*H)
  const T* h_prev;  // (T*B, R)
  const T* dsrc;    // d(cell output): dh_cur (B, R), or dout (B, H) with a projection
  T* dc;            // (B, H) in/out (LSTM), else null
  T* dxp;           // (T*B, G*H)
  T* dhp;           // (T*B, G*H) (kSplitGrad), else null
  T* dstep;         // (B, G*H)
  T* dh_next;       // (B, R): the direct path (no projection)
  // Without a projection the step also gathers dh (GatherDh's work, one launch fewer): d_out
  // is dsrc + dy, and an inactive sequence passes dsrc through to dh_next.
  const T* dy;      // (T*B, ld_dy) or null; read only without a projection
  int64_t ld_dy;
  FUSEDRNN_HOST_DEVICE void operator()(int64_t i) const {
    constexpr int G = Cell::kGates, S = Cell::kSaved;
    const int64_t H = sh.H, B = sh.B, R = sh.R, GH = G * H;
    int64_t b, j;
    divmod(i, H, b, j);
    if (!sh.map.active(sh.s, b)) {
      const int64_t pad = sh.s * B + b;
      for (int g = 0; g < G; ++g) {
        dstep[b * GH + g * H + j] = T(0);
        dxp[pad * GH + g * H + j] = T(0);
        if (Cell::kSplitGrad) dhp[pad * GH + g * H + j] = T(0);
      }
      if (!sh.proj) dh_next[b * R + j] = dsrc[b * R + j];
      return;
    }
    const int64_t row = sh.map.time(sh.s, b) * B + b;
    const T* sv = saved + row * S * H;
    const T hprev = sh.proj ? T(0) : h_prev[row * R + j];
    const T d_out = sh.proj ? dsrc[b * H + j]
                            : dsrc[b * R + j] + (dy ? dy[row * ld_dy + j] : T(0));
    T dcj = Cell::kHasCellState ? dc[b * H + j] : T(0);
    T dax[G], dah[G], direct;
    Cell::backward(sv + j, H, d_out, hprev, dcj, dax, dah, direct);
    if (Cell::kHasCellState) dc[b * H + j] = dcj;
    constexpr int g0 = Cell::kTwoPhase ? 1 : 0;  // d(a_r) of the two-phase GRU: phase 2
    for (int g = g0; g < G; ++g) {
      dxp[row * GH + g * H + j] = dax[g];
      const T dr = Cell::kSplitGrad ? dah[g] : dax[g];
      if (Cell::kSplitGrad) dhp[row * GH + g * H + j] = dr;
      dstep[b * GH + g * H + j] = dr;
    }
    if (!sh.proj) dh_next[b * R + j] = direct;
  }
};

// Two-phase GRU, after drh = d(a_n) W_hn: d(a_r) and the path through r h to h_prev.
template <class Cell, class T>
struct ResetGradStep {
  StepShape<T> sh;
  const T* saved;   // (T*B, S*H)
  const T* h_prev;  // (T*B, R)
  const T* drh;     // (B, H)
  T* dxp;           // (T*B, G*H)
  T* dstep;         // (B, G*H)
  T* dh_next;       // (B, R)
  FUSEDRNN_HOST_DEVICE void operator()(int64_t i) const {
    constexpr int G = Cell::kGates, S = Cell::kSaved;
    const int64_t H = sh.H, B = sh.B, R = sh.R, GH = G * H;
    int64_t b, j;
    divmod(i, H, b, j);
    if (!sh.map.active(sh.s, b)) return;  // BackwardStep zeroed its rows
    const int64_t row = sh.map.time(sh.s, b) * B + b;
    T dar, direct = dh_next[b * R + j];
    Cell::backward_reset(saved + row * S * H + j, H, drh[i], h_prev[row * R + j], dar, direct);
    dxp[row * GH + j] = dar;
    dstep[b * GH + j] = dar;
    dh_next[b * R + j] = direct;
  }
};

}  // namespace device
}  // namespace fusedrnn
