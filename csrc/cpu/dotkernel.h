#pragma once
// C(M, N) = A(M, K) * W(N, K)^T on the operands as stored: both row-major with K contiguous,
// so nothing is packed. Each accumulator is a kLanes-wide partial dot product of one row of A
// with one row of W; a tile's accumulators are summed across lanes at the end by a shuffle
// tree. Used where packing W would cost as much as the product itself: the recurrent step at
// B < 4 (a GEMV per step, bound by reading W_hh) and the input projection over few T*B rows.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "cpu/microkernel.h"

namespace fusedrnn {
FUSEDRNN_ISA_BEGIN
namespace cpu {

template <class T>
struct LaneIndexOf;
template <>
struct LaneIndexOf<float> {
  typedef int32_t type __attribute__((vector_size(kLanes * sizeof(int32_t))));
};
template <>
struct LaneIndexOf<double> {
  typedef int64_t type __attribute__((vector_size(kLanes * sizeof(int64_t))));
};

// x and y each hold kLanes/P sources with P partial sums (source s in lanes [s*P, s*P + P));
// returns the 2*kLanes/P sources, x's then y's, with P/2 partial sums each.
template <int P, class T>
__attribute__((always_inline)) inline PanelVec<T> combine_partials(PanelVec<T> x, PanelVec<T> y) {
  using IV = typename LaneIndexOf<T>::type;
  constexpr int S = kLanes / P, Q = P / 2;
  IV lo, hi;
#pragma GCC unroll 16
  for (int i = 0; i < kLanes; ++i) {
    const int s = i / Q, q = i % Q;
    const int base = s < S ? s * P : kLanes + (s - S) * P;
    lo[i] = base + q;
    hi[i] = base + q + Q;
  }
  return __builtin_shuffle(x, y, lo) + __builtin_shuffle(x, y, hi);
}

// The next power of two from n (n <= 16): the room reduce_lanes needs.
constexpr int pow2_at_least(int n) { return n <= 1 ? 1 : n <= 2 ? 2 : n <= 4 ? 4 : n <= 8 ? 8 : 16; }

// Sums each of v[0..N) across its lanes; out[i] = sum of v[i]. N <= kLanes. v is clobbered
// and must have room for pow2_at_least(N) vectors: the tree zero-fills up to that many.
template <int N, class T>
inline void reduce_lanes(PanelVec<T>* v, T* out) {
  using V = PanelVec<T>;
  constexpr int NP2 = pow2_at_least(N);
  static_assert(N <= kLanes, "at most kLanes accumulators");
#pragma GCC unroll 16
  for (int i = N; i < NP2; ++i) v[i] = V{};
  // Level by level: n vectors with P partials each -> n/2 with P/2.
  if constexpr (NP2 >= 2) {
#pragma GCC unroll 8
    for (int i = 0; i < NP2 / 2; ++i) v[i] = combine_partials<16, T>(v[2 * i], v[2 * i + 1]);
  }
  if constexpr (NP2 >= 4) {
#pragma GCC unroll 4
    for (int i = 0; i < NP2 / 4; ++i) v[i] = combine_partials<8, T>(v[2 * i], v[2 * i + 1]);
  }
  if constexpr (NP2 >= 8) {
#pragma GCC unroll 2
    for (int i = 0; i < NP2 / 8; ++i) v[i] = combine_partials<4, T>(v[2 * i], v[2 * i + 1]);
  }
  if constexpr (NP2 >= 16) v[0] = combine_partials<2, T>(v[0], v[1]);
  // One vector, sources 0..NP2-1 with kLanes/NP2 partials each: halve until one partial.
  if constexpr (NP2 <= 8) v[0] = combine_partials<kLanes / NP2, T>(v[0], V{});
  if constexpr (NP2 <= 4) v[0] = combine_partials<kLanes / NP2 / 2, T>(v[0], V{});
  if constexpr (NP2 <= 2) v[0] = combine_partials<kLanes / NP2 / 4, T>(v[0], V{});
  if constexpr (NP2 <= 1) v[0] = combine_partials<2, T>(v[0], V{});
  T tmp[kLanes];
  std::memcpy(tmp, &v[0], sizeof(V));
#pragma GCC unroll 16
  for (int i = 0; i < N; ++i) out[i] = tmp[i];
}

// One MR x NR tile of C: rows [0, MR) of a against rows [0, NR) of w.
template <int MR, int NR, bool kAccumulate, class T>
inline void dot_tile(const T* __restrict a, int64_t lda, const T* __restrict w, int64_t ldw,
                     int64_t K, T* __restrict c, int64_t ldc) {
  using V = PanelVec<T>;
  V acc[pow2_at_least(MR * NR)];  // reduce_lanes pads to a power of two in place
#pragma GCC unroll 16
  for (int i = 0; i < MR * NR; ++i) acc[i] = V{};
  int64_t k = 0;
  for (; k + kLanes <= K; k += kLanes) {
    V wv[NR], av[MR];
#pragma GCC unroll 8
    for (int q = 0; q < NR; ++q) {
      std::memcpy(&wv[q], w + q * ldw + k, sizeof(V));
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) std::memcpy(&av[r], a + r * lda + k, sizeof(V));
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
      for (int q = 0; q < NR; ++q) acc[r * NR + q] += av[r] * wv[q];
  }
  if (k < K) {  // the last K % kLanes columns, zero-padded
    const size_t tail = sizeof(T) * size_t(K - k);
    V wv[NR], av[MR];
#pragma GCC unroll 8
    for (int q = 0; q < NR; ++q) {
      wv[q] = V{};
      std::memcpy(&wv[q], w + q * ldw + k, tail);
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      av[r] = V{};
      std::memcpy(&av[r], a + r * lda + k, tail);
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
      for (int q = 0; q < NR; ++q) acc[r * NR + q] += av[r] * wv[q];
  }
  T sums[MR * NR];
  reduce_lanes<MR * NR, T>(acc, sums);
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
    for (int q = 0; q < NR; ++q) {
      T* dst = c + r * ldc + q;
      *dst = kAccumulate ? *dst + sums[r * NR + q] : sums[r * NR + q];
    }
}

// Rows [0, MR) of A against all N rows of W: NR at a time, then one at a time.
template <int MR, int NR, bool kAccumulate, class T>
inline void dot_row_block(int64_t N, int64_t K, const T* a, int64_t lda, const T* w,
                          int64_t ldw, T* c, int64_t ldc) {
  int64_t n = 0;
  for (; n + NR <= N; n += NR)
    dot_tile<MR, NR, kAccumulate>(a, lda, w + n * ldw, ldw, K, c + n, ldc);
  for (; n < N; ++n) dot_tile<MR, 1, kAccumulate>(a, lda, w + n * ldw, ldw, K, c + n, ldc);
}

// Rows [0, M) of A against rows [0, N) of W, one row block of A after another.
template <bool kAccumulate, class T>
inline void dot_rows(int64_t M, int64_t N, int64_t K, const T* a, int64_t lda, const T* w,
                     int64_t ldw, T* c, int64_t ldc) {
  constexpr bool wide = sizeof(T) * kLanes <= kVecBytes;  // one register per accumulator
  int64_t m = 0;
  if constexpr (wide) {
    for (; m + 4 <= M; m += 4)
      dot_row_block<4, 4, kAccumulate>(N, K, a + m * lda, lda, w, ldw, c + m * ldc, ldc);
  } else {
    for (; m + 2 <= M; m += 2)
      dot_row_block<2, 2, kAccumulate>(N, K, a + m * lda, lda, w, ldw, c + m * ldc, ldc);
  }
  const int64_t left = M - m;
  a += m * lda;
  c += m * ldc;
  if (left == 3)
    dot_row_block<3, wide ? 4 : 1, kAccumulate>(N, K, a, lda, w, ldw, c, ldc);
  else if (left == 2)
    dot_row_block<2, wide ? 4 : 2, kAccumulate>(N, K, a, lda, w, ldw, c, ldc);
  else if (left == 1)
    dot_row_block<1, wide ? 8 : 4, kAccumulate>(N, K, a, lda, w, ldw, c, ldc);
}

// C(M, N) = A(M, K) * W(N, K)^T (or C += with kAccumulate). A tile keeps at most 16 vector
// accumulators; with fewer than 4 rows of A it takes more rows of W (8 chains in flight).
// W in chunks of about 128 KiB, each against every row of A: a chunk is read from memory
// once and reused from L2 by every row block.
template <bool kAccumulate = false, class T>
void dot_gemm(int64_t M, int64_t N, int64_t K, const T* a, int64_t lda, const T* w,
              int64_t ldw, T* c, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (M < 4) {  // one pass over W whatever its size
    dot_rows<kAccumulate>(M, N, K, a, lda, w, ldw, c, ldc);
    return;
  }
  const int64_t chunk = std::max<int64_t>(8, (int64_t(128) << 10) / (sizeof(T) * std::max<int64_t>(K, 1)) / 8 * 8);
  for (int64_t n = 0; n < N; n += chunk)
    dot_rows<kAccumulate>(M, std::min(chunk, N - n), K, a, lda, w + n * ldw, ldw, c + n, ldc);
}

}  // namespace cpu
FUSEDRNN_ISA_END
}  // namespace fusedrnn
