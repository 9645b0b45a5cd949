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

#include "fusedrnn/common.h"

namespace fusedrnn {
FUSEDRNN_ISA_BEGIN
namespace cpu {

constexpr int kLanes = 16;
// Below this many batch rows the step is a GEMV, which the BLAS does better from plain rows
// (measured: H=512, B=1 LSTM/GRU 15-45% slower on panels).
constexpr int64_t kPanelMinRows = 4;
// FUSEDRNN_PANEL_MIN_ROWS overrides it (for measuring the crossover on a new machine).
inline int64_t panel_min_rows() {
  static const int64_t v = [] {
    const char* e = std::getenv("FUSEDRNN_PANEL_MIN_ROWS");
    return e && *e ? std::max<int64_t>(1, std::atoll(e)) : kPanelMinRows;
  }();
  return v;
}

// Panels needed for n rows.
inline int64_t panel_count(int64_t n) { return (n + kLanes - 1) / kLanes; }

// Packs an n x K matrix given elementwise, value(i, k), into panels; pads with zeros.
template <class T, class ValueFn>
void pack_panels(T* dst, int64_t n, int64_t K, ValueFn value) {
  const int64_t np = panel_count(n);
  for (int64_t p = 0; p < np; ++p) {
    T* panel = dst + p * kLanes * K;
    for (int v = 0; v < kLanes; ++v) {
      const int64_t i = p * kLanes + v;
      for (int64_t k = 0; k < K; ++k) panel[k * kLanes + v] = i < n ? value(i, k) : T(0);
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

// MR rows of A times NP consecutive panels: MR*NP vector accumulators.
template <int MR, int NP, bool kAccumulate, class T>
inline void micro_tile(const T* __restrict a, int64_t lda, const T* __restrict panels,
                       int64_t K, T* __restrict c, int64_t ldc, int64_t ncols) {
  using V = PanelVec<T>;
  V acc[MR][NP];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
    for (int q = 0; q < NP; ++q) acc[r][q] = V{};
  const int64_t pstride = kLanes * K;
  for (int64_t k = 0; k < K; ++k) {
    V w[NP];
#pragma GCC unroll 8
    for (int q = 0; q < NP; ++q) std::memcpy(&w[q], panels + q * pstride + k * kLanes, sizeof(V));
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

// Every row of A against panels [p, p + NP): MR-row tiles, then the leftover rows (in one
// pass where the registers allow: each pass re-reads the panels, which stay in L1/L2 here).
template <int MR, int NP, bool kAccumulate, class T>
inline void panel_group(int64_t M, int64_t N, int64_t K, const T* a, int64_t lda,
                        const T* panels, int64_t p, T* c, int64_t ldc) {
  const T* w = panels + p * kLanes * K;
  T* cp = c + p * kLanes;
  const int64_t ncols = N - p * kLanes;
  int64_t m = 0;
  for (; m + MR <= M; m += MR)
    micro_tile<MR, NP, kAccumulate>(a + m * lda, lda, w, K, cp + m * ldc, ldc, ncols);
  const int64_t left = M - m;
  if (MR == 4 && left == 3)
    micro_tile<3, NP, kAccumulate>(a + m * lda, lda, w, K, cp + m * ldc, ldc, ncols);
  else if (MR == 4 && left == 2)
    micro_tile<2, NP, kAccumulate>(a + m * lda, lda, w, K, cp + m * ldc, ldc, ncols);
  else
    for (; m < M; ++m)
      micro_tile<1, NP, kAccumulate>(a + m * lda, lda, w, K, cp + m * ldc, ldc, ncols);
}

#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#elif defined(__AVX__)
constexpr int kVecBytes = 32;
#else
constexpr int kVecBytes = 16;
#endif

// C(M, N) = A(M, K) * W^T (or C += ... with kAccumulate), W packed by pack_panels (N rows). Tiles keep about 12 vector
// accumulators in registers (SSE and AVX2 have 16, AVX-512 32); a single row takes more
// panels at once so that enough independent accumulators hide the FMA latency.
template <bool kAccumulate = false, class T>
void packed_gemm(int64_t M, int64_t N, int64_t K, const T* a, int64_t lda, const T* panels,
                 T* c, int64_t ldc) {
  constexpr int rp = int(kLanes * sizeof(T)) / kVecBytes;  // registers per panel: 1, 2, 4, 8
  constexpr int MR = rp == 1 ? 4 : (rp == 2 ? 2 : 1);
  constexpr int NP = rp <= 4 ? 3 : 1;
  constexpr int NP1 = rp >= 8 ? 1 : 8 / rp;
  // Panel groups outside, rows inside: a group's panels (NP * 16 * K values) are read from
  // memory once per step and reused by every row tile from cache.
  const int64_t np = panel_count(N);
  if (M < MR) {  // a few rows: more panels per tile for enough independent accumulators
    int64_t p = 0;
    for (; p + NP1 <= np; p += NP1) panel_group<1, NP1, kAccumulate>(M, N, K, a, lda, panels, p, c, ldc);
    for (; p < np; ++p) panel_group<1, 1, kAccumulate>(M, N, K, a, lda, panels, p, c, ldc);
    return;
  }
  int64_t p = 0;
  for (; p + NP <= np; p += NP) panel_group<MR, NP, kAccumulate>(M, N, K, a, lda, panels, p, c, ldc);
  for (; p < np; ++p) panel_group<MR, 1, kAccumulate>(M, N, K, a, lda, panels, p, c, ldc);
}

}  // namespace cpu
FUSEDRNN_ISA_END
}  // namespace fusedrnn
