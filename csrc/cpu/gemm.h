#pragma once
// The one door to the BLAS (docs/design.md §4): swap the implementation here to change BLAS.
// Row-major. Sizes must fit the BLAS integer (checked by the bindings).
#include <cstdint>

namespace fusedrnn {

// Threading: the BLAS always runs single-threaded inside the calling thread; parallelism is
// ours (OpenMP), so one runtime owns the cores and nothing oversubscribes (OpenBLAS's pthread
// pool waking next to spinning OpenMP threads cost a scheduler tick per call here).
//   gemm:        one call in the calling thread (use inside parallel regions).
//   gemm_par:    splits C into row or column blocks over get_num_threads() OpenMP threads.

// C(M,N) = alpha * op(A) * op(B) + beta * C;  op(A) is (M,K), op(B) is (K,N).
template <class T>
void gemm_par(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
              int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc);
template <class T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
          int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

// y(N) = alpha * A(M,N)^T x(M) + beta * y: column sums of a row-major matrix when x is ones.
template <class T>
void gemv_t_par(int64_t M, int64_t N, T alpha, const T* A, int64_t lda, const T* x, T beta, T* y);
template <class T>
void gemv_t(int64_t M, int64_t N, T alpha, const T* A, int64_t lda, const T* x, T beta, T* y);

}  // namespace fusedrnn
