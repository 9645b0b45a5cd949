#pragma once
// cuBLAS, loaded at run time (cublas.cu), behind the device backend's GEMM.
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <vector>

namespace fusedrnn {
namespace cuda {

// Row-major C(M,N) = alpha op(A) op(B) + beta C on `stream` through cuBLAS; false when cuBLAS
// is not available (or a size exceeds its 32-bit arguments): the caller runs its own kernel.
template <class T>
bool cublas_gemm(cudaStream_t stream, bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha,
                 const T* A, int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

}  // namespace cuda
}  // namespace fusedrnn
