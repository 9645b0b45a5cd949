#pragma once
// The one door to the BLAS (DESIGN.md §4): swap the implementation here to change BLAS.
// Row-major. Sizes must fit the BLAS integer (checked by the bindings).
#include <cstdint>

namespace fusedrnn {

// C(M,N) = alpha * op(A) * op(B) + beta * C;  op(A) is (M,K), op(B) is (K,N).
template <class T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
          int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

// y(N) = alpha * A(M,N)^T x(M) + beta * y: column sums of a row-major matrix when x is ones.
template <class T>
void gemv_t(int64_t M, int64_t N, T alpha, const T* A, int64_t lda, const T* x, T beta, T* y);

}  // namespace fusedrnn
