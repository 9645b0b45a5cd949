#pragma once
// The recurrent step's small GEMM, C(B, N) = A(B, K) * W(N, K)^T, on weights packed once per
// call into panels of kLanes rows stored k-major (panel[k][lane]), so each k step is one
// contiguous vector load of W and a broadcast of A per row. Plain C++ with fixed-size inner
// loops: compiled per instruction set (kernels.inc), the accumulators become SIMD registers
// (kLanes floats = one AVX-512 register, two AVX2, four SSE). Replaces a BLAS call per step,
// which re-packed the weights on every call (measured: a third of a B=16 LSTM step).
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "cpu/tuning.h"
#include "fusedrnn/common.h"

namespace fusedrnn {
FUSEDRNN_ISA_BEGIN
namespace cpu {

constexpr int kLanes = 16;

// From this many batch rows the step runs on packed panels; below, it is a GEMV bound by
// reading W_hh, done in place by dot_gemm (dotkernel.h) with nothing packed. Default 4; the
// knob panel_min_rows (FUSEDRNN_PANEL_MIN_ROWS, or set at run time: cpu/tuning.h). Callers
// read it once per call and plan from that value.
inline int64_t panel_min_rows() { return tuning(Tuning::PanelMinRows); }

// Up to this many T*B rows the forward's input projection runs on dot_gemm rather than the
// BLAS. Default 256; the knob dot_projection_max_rows (FUSEDRNN_DOT_PROJ_ROWS: cpu/tuning.h).
inline int64_t dot_projection_max_rows() { return tuning(Tuning::DotProjMaxRows); }

// Panels needed for n rows.
inline int64_t panel_count(int64_t n) { return (n + kLanes - 1) / kLanes; }

// Packs n rows of length K, row(i) -> pointer to row i, into panels (a transpose: panel[k][v]
// = row(p * kLanes + v)[k]); pads with zeros. Blocked by kLanes x kLanes tiles so reads and
// writes both stay in L1 (unblocked, each row's pass over a panel evicts the last one's lines).
template <class T, class RowFn>
void pack_rows_to_panels(T* dst, int64_t n, int64_t K, RowFn row) {
  const int64_t np = panel_count(n);
  for (int64_t p = 0; p < np; ++p) {
    T* panel = dst + p * kLanes * K;
    const T* src[kLanes];
    int nv = 0;
    for (int v = 0; v < kLanes; ++v)
      if (p * kLanes + v < n) src[nv++] = row(p * kLanes + v);
    for (int64_t k0 = 0; k0 < K; k0 += kLanes) {
      const int64_t kn = std::min<int64_t>(kLanes, K - k0);
      for (int v = 0; v < nv; ++v)
        for (int64_t k = 0; k < kn; ++k) panel[(k0 + k) * kLanes + v] = src[v][k0 + k];
      for (int v = nv; v < kLanes; ++v)
        for (int64_t k = 0; k < kn; ++k) panel[(k0 + k) * kLanes + v] = T(0);
    }
  }
}

// Packs the n x K matrix whose element (i, k) is src[k * ld + i] (columns of a row-major
// matrix) into panels: each panel row is kLanes contiguous source values.
template <class T>
void pack_cols_to_panels(T* dst, int64_t n, int64_t K, const T* src, int64_t ld) {
  const int64_t np = panel_count(n);
  for (int64_t p = 0; p < np; ++p) {
    T* panel = dst + p * kLanes * K;
    const int64_t nv = std::min<int64_t>(kLanes, n - p * kLanes);
    for (int64_t k = 0; k < K; ++k) {
      std::memcpy(panel + k * kLanes, src + k * ld + p * kLanes, sizeof(T) * nv);
      for (int64_t v = nv; v < kLanes; ++v) panel[k * kLanes + v] = T(0);
    }
  }
}

// One panel row (kLanes values) as a GCC vector: one register on AVX-512 (float), two on AVX2,
// four on SSE; the compiler keeps MR*NP of them as accumulators in registers.
template <class T>
struct PanelVecOf;
template <>
struct PanelVecOf<float> {
  typedef float type __attribute__((vector_size(kLanes * sizeof(float))));
};
template <>
struct PanelVecOf<double> {
  typedef double type __attribute__((vector_size(kLanes * sizeof(double))));
};
template <class T>
using PanelVec = typename PanelVecOf<T>::type;

// MR rows of A times NP consecutive panels: MR*NP vector accumulators. Panel q's row k is at
// panels + q * pstride + k * kstride: packed panels have pstride = kLanes * K and kstride =
// kLanes; a row-major K x N matrix read in place has pstride = kLanes and kstride = its ld.
template <int MR, int NP, bool kAccumulate, class T>
inline void micro_tile(const T* __restrict a, int64_t lda, const T* __restrict panels,
                       int64_t K, T* __restrict c, int64_t ldc, int64_t ncols,
                       int64_t pstride, int64_t kstride) {
  using V = PanelVec<T>;
  V acc[MR][NP];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
    for (int q = 0; q < NP; ++q) acc[r][q] = V{};
  for (int64_t k = 0; k < K; ++k) {
    V w[NP];
#pragma GCC unroll 8
    for (int q = 0; q < NP; ++q) std::memcpy(&w[q], panels + q * pstride + k * kstride, sizeof(V));
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const T av = a[r * lda + k];
#pragma GCC unroll 8
      for (int q = 0; q < NP; ++q) acc[r][q] += av * w[q];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
    for (int q = 0; q < NP; ++q) {
      const int64_t n0 = q * kLanes;
      const int64_t nv = std::min<int64_t>(kLanes, ncols - n0);
      T* dst = c + r * ldc + n0;
      if (nv == kLanes) {
        if (kAccumulate) {
          V old;
          std::memcpy(&old, dst, sizeof(V));
          acc[r][q] += old;
        }
        std::memcpy(dst, &acc[r][q], sizeof(V));
      } else if (nv > 0) {
        T tmp[kLanes];
        std::memcpy(tmp, &acc[r][q], sizeof(V));
        for (int64_t v = 0; v < nv; ++v) dst[v] = kAccumulate ? dst[v] + tmp[v] : tmp[v];
      }
    }
}

#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#elif defined(__AVX__)
constexpr int kVecBytes = 32;
#else
constexpr int kVecBytes = 16;
#endif

// Every row of A against panels [p, p + NP): MR-row tiles, then the leftover rows (in one
// pass where the registers allow: each pass re-reads the panels, which stay in L1/L2 here).
template <int MR, int NP, bool kAccumulate, class T>
inline void panel_group(int64_t M, int64_t N, int64_t K, const T* a, int64_t lda,
                        const T* panels, int64_t p, T* c, int64_t ldc) {
  const T* w = panels + p * kLanes * K;
  T* cp = c + p * kLanes;
  const int64_t ncols = N - p * kLanes;
  const int64_t ps = kLanes * K;
  int64_t m = 0;
  for (; m + MR <= M; m += MR)
    micro_tile<MR, NP, kAccumulate>(a + m * lda, lda, w, K, cp + m * ldc, ldc, ncols, ps, kLanes);
  const int64_t left = M - m;
  if (MR == 4 && left == 3)
    micro_tile<3, NP, kAccumulate>(a + m * lda, lda, w, K, cp + m * ldc, ldc, ncols, ps, kLanes);
  else if (MR == 4 && left == 2)
    micro_tile<2, NP, kAccumulate>(a + m * lda, lda, w, K, cp + m * ldc, ldc, ncols, ps, kLanes);
  else
    for (; m < M; ++m)
      micro_tile<1, NP, kAccumulate>(a + m * lda, lda, w, K, cp + m * ldc, ldc, ncols, ps, kLanes);
}


// C(M, N) (+)= A(M, K) * W(K, N) with W row-major as stored (ldw), for M < 4: the
// backward's dG W_hh at small batches, where packing W_hh (a copy of all of it) would cost
// as much as the product. Each k step reads NP * kLanes contiguous values of one row of W.
// Columns past the last full panel (N % kLanes) by a scalar loop: a vector load there could
// run past the end of W.
template <int M, bool kAccumulate, class T>
void direct_small_gemm_block(int64_t N, int64_t K, const T* a, int64_t lda, const T* w,
                             int64_t ldw, T* c, int64_t ldc) {
  constexpr int rp = int(kLanes * sizeof(T)) / kVecBytes;  // registers per panel
  constexpr int NP = std::max(1, std::min(8, 12 / (M * rp)));
  const int64_t full = N / kLanes;
  int64_t p = 0;
  for (; p + NP <= full; p += NP)
    micro_tile<M, NP, kAccumulate>(a, lda, w + p * kLanes, K, c + p * kLanes, ldc, NP * kLanes,
                                   kLanes, ldw);
  for (; p < full; ++p)
    micro_tile<M, 1, kAccumulate>(a, lda, w + p * kLanes, K, c + p * kLanes, ldc, kLanes,
                                  kLanes, ldw);
  for (int64_t n = full * kLanes; n < N; ++n)
    for (int r = 0; r < M; ++r) {
      T sum = 0;
      for (int64_t k = 0; k < K; ++k) sum += a[r * lda + k] * w[k * ldw + n];
      c[r * ldc + n] = kAccumulate ? c[r * ldc + n] + sum : sum;
    }
}

// Blocks of kDirectRows rows of W, each against all N columns: the rows of a block (their
// pages) stay in the TLB and L2 while every panel group reads its part of them. Unblocked,
// each panel group walked all K rows, one 4 KiB page per row at H=1024: a page walk per
// load (perf: the B=1 LSTM H=1024 backward step ran at half the forward step's bandwidth).
constexpr int64_t kDirectRows = 64;

template <int M, bool kAccumulate, class T>
void direct_small_gemm(int64_t N, int64_t K, const T* a, int64_t lda, const T* w, int64_t ldw,
                       T* c, int64_t ldc) {
  for (int64_t k0 = 0; k0 < K; k0 += kDirectRows) {
    const int64_t kn = std::min(kDirectRows, K - k0);
    if (k0 == 0)
      direct_small_gemm_block<M, kAccumulate>(N, kn, a, lda, w, ldw, c, ldc);
    else
      direct_small_gemm_block<M, true>(N, kn, a + k0, lda, w + k0 * ldw, ldw, c, ldc);
  }
}

template <bool kAccumulate = false, class T>
void direct_gemm_small(int64_t M, int64_t N, int64_t K, const T* a, int64_t lda, const T* w,
                       int64_t ldw, T* c, int64_t ldc) {
  if (M == 1) direct_small_gemm<1, kAccumulate>(N, K, a, lda, w, ldw, c, ldc);
  else if (M == 2) direct_small_gemm<2, kAccumulate>(N, K, a, lda, w, ldw, c, ldc);
  else if (M == 3) direct_small_gemm<3, kAccumulate>(N, K, a, lda, w, ldw, c, ldc);
  else
    for (int64_t m = 0; m < M; m += 3)
      direct_gemm_small<kAccumulate>(std::min<int64_t>(3, M - m), N, K, a + m * lda, lda, w,
                                     ldw, c + m * ldc, ldc);
}

// C(M, N) = A(M, K) * W^T (or C += ... with kAccumulate), W packed into panels (N rows).
// Tiles keep about 12 vector accumulators in registers (SSE and AVX2 have 16, AVX-512 32).
// Used from B = 4 (panel_min_rows); fewer rows still work, on thinner tiles.
template <bool kAccumulate = false, class T>
void packed_gemm(int64_t M, int64_t N, int64_t K, const T* a, int64_t lda, const T* panels,
                 T* c, int64_t ldc) {
  constexpr int rp = int(kLanes * sizeof(T)) / kVecBytes;  // registers per panel: 1, 2, 4, 8
  constexpr int MR = rp == 1 ? 4 : (rp == 2 ? 2 : 1);
  constexpr int NP = rp <= 4 ? 3 : 1;
  // Panel groups outside, rows inside: a group's panels (NP * 16 * K values) are read from
  // memory once per step and reused by every row tile from cache.
  const int64_t np = panel_count(N);
  int64_t p = 0;
  for (; p + NP <= np; p += NP) panel_group<MR, NP, kAccumulate>(M, N, K, a, lda, panels, p, c, ldc);
  for (; p < np; ++p) panel_group<MR, 1, kAccumulate>(M, N, K, a, lda, panels, p, c, ldc);
}

}  // namespace cpu
FUSEDRNN_ISA_END
}  // namespace fusedrnn
