#include "cpu/gemm.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>

#include "fusedrnn/api.h"

namespace fusedrnn {
namespace {

inline CBLAS_TRANSPOSE tr(bool t) { return t ? CblasTrans : CblasNoTrans; }

void blas_gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, blasint M, blasint N, blasint K, float alpha,
               const float* A, blasint lda, const float* B, blasint ldb, float beta, float* C,
               blasint ldc) {
  scipy_cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
void blas_gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, blasint M, blasint N, blasint K,
               double alpha, const double* A, blasint lda, const double* B, blasint ldb,
               double beta, double* C, blasint ldc) {
  scipy_cblas_dgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
void blas_gemv(CBLAS_TRANSPOSE t, blasint M, blasint N, float alpha, const float* A, blasint lda,
               const float* x, float beta, float* y) {
  scipy_cblas_sgemv(CblasRowMajor, t, M, N, alpha, A, lda, x, 1, beta, y, 1);
}
void blas_gemv(CBLAS_TRANSPOSE t, blasint M, blasint N, double alpha, const double* A,
               blasint lda, const double* x, double beta, double* y) {
  scipy_cblas_dgemv(CblasRowMajor, t, M, N, alpha, A, lda, x, 1, beta, y, 1);
}

}  // namespace

template <class T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
          int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {  // C = beta C, defined without the BLAS (and 0 C is 0 even where C is garbage)
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == T(0) ? T(0) : beta * C[i * ldc + j];
    return;
  }
  if (M == 1) {
    // A single row: C = alpha * op(B)^T a + beta * C as a GEMV, which OpenBLAS runs much
    // faster than a 1-row GEMM (the B = 1 recurrent step).
    const int64_t inc_a = trans_a ? lda : 1;
    if (inc_a == 1) {
      // op(B) is (K,N). Stored (K,N) row-major when !trans_b, (N,K) when trans_b.
      if (trans_b) {
        blas_gemv(CblasNoTrans, (blasint)N, (blasint)K, alpha, B, (blasint)ldb, A, beta, C);
      } else {
        blas_gemv(CblasTrans, (blasint)K, (blasint)N, alpha, B, (blasint)ldb, A, beta, C);
      }
      return;
    }
  }
  blas_gemm(tr(trans_a), tr(trans_b), (blasint)M, (blasint)N, (blasint)K, alpha, A, (blasint)lda,
            B, (blasint)ldb, beta, C, (blasint)ldc);
}

template <class T>
void gemv_t(int64_t M, int64_t N, T alpha, const T* A, int64_t lda, const T* x, T beta, T* y) {
  if (N == 0) return;
  if (M == 0) {
    for (int64_t j = 0; j < N; ++j) y[j] = beta == T(0) ? T(0) : beta * y[j];
    return;
  }
  blas_gemv(CblasTrans, (blasint)M, (blasint)N, alpha, A, (blasint)lda, x, beta, y);
}

namespace {
inline void split(int64_t n, int parts, int idx, int64_t& lo, int64_t& hi) {
  const int64_t base = n / parts, rem = n % parts;
  lo = idx * base + std::min<int64_t>(idx, rem);
  hi = lo + base + (idx < rem ? 1 : 0);
}
// Below this many multiply-adds a fork/join costs more than it saves.
constexpr double kParallelMacs = 1 << 18;
}  // namespace

template <class T>
void gemm_par(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
              int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  const int nt = omp_in_parallel() ? 1 : get_num_threads();
  if (nt == 1 || double(M) * N * K < kParallelMacs) {
    gemm<T>(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  const bool by_rows = M >= N;
  run_parallel_work([&] {
#pragma omp parallel num_threads(nt)
    {
      int64_t lo, hi;  // over the team granted, which may be smaller than nt
      split(by_rows ? M : N, omp_get_num_threads(), omp_get_thread_num(), lo, hi);
      if (hi > lo) {
        if (by_rows) {
          const T* a = trans_a ? A + lo : A + lo * lda;
          gemm<T>(trans_a, trans_b, hi - lo, N, K, alpha, a, lda, B, ldb, beta, C + lo * ldc,
                  ldc);
        } else {
          const T* b = trans_b ? B + lo * ldb : B + lo;
          gemm<T>(trans_a, trans_b, M, hi - lo, K, alpha, A, lda, b, ldb, beta, C + lo, ldc);
        }
      }
    }
  });
}

template <class T>
void gemv_t_par(int64_t M, int64_t N, T alpha, const T* A, int64_t lda, const T* x, T beta,
                T* y) {
  const int nt = omp_in_parallel() ? 1 : get_num_threads();
  if (nt == 1 || double(M) * N < kParallelMacs) {
    gemv_t<T>(M, N, alpha, A, lda, x, beta, y);
    return;
  }
  run_parallel_work([&] {
#pragma omp parallel num_threads(nt)
    {
      int64_t lo, hi;
      split(N, omp_get_num_threads(), omp_get_thread_num(), lo, hi);
      if (hi > lo) gemv_t<T>(M, hi - lo, alpha, A + lo, lda, x, beta, y + lo);
    }
  });
}

template void gemm_par<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*,
                              int64_t, const float*, int64_t, float, float*, int64_t);
template void gemm_par<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*,
                               int64_t, const double*, int64_t, double, double*, int64_t);
template void gemv_t_par<float>(int64_t, int64_t, float, const float*, int64_t, const float*,
                                float, float*);
template void gemv_t_par<double>(int64_t, int64_t, double, const double*, int64_t,
                                 const double*, double, double*);
template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t,
                          const float*, int64_t, float, float*, int64_t);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t,
                           const double*, int64_t, double, double*, int64_t);
template void gemv_t<float>(int64_t, int64_t, float, const float*, int64_t, const float*, float,
                            float*);
template void gemv_t<double>(int64_t, int64_t, double, const double*, int64_t, const double*,
                             double, double*);

}  // namespace fusedrnn
