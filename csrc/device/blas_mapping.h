#pragma once
// A row-major GEMM as the column-major call a vendor BLAS (cuBLAS) takes: row-major C (M, N)
// is column-major C^T (N, M) with the same leading dimension, and C^T = op(B)^T op(A)^T, so the
// call multiplies B's storage by A's with m = N, n = M and each operand transposed iff the
// row-major call transposed it. Host code, tested against a column-major BLAS on the CPU
// (tests/test_device_emulation.py).
#include <cstdint>

namespace fusedrnn {
namespace device {

struct ColMajorGemm {
  bool trans_first, trans_second;  // op of the first operand (row-major B), second (A)
  int64_t m, n, k;
};

inline ColMajorGemm to_col_major(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K) {
  return ColMajorGemm{trans_b, trans_a, N, M, K};
}

}  // namespace device
}  // namespace fusedrnn
