// Runtime and build facts: threads, workspaces, config(), CUDA devices, and the package's GEMM
// door.
#include <omp.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <climits>
#include <string>
#include <vector>

#include "bindings/arrays.h"
#include "cpu/gemm.h"
#include "fusedrnn/api.h"
#include "fusedrnn/build_config.h"
#include "fusedrnn/check.h"
#if FUSEDRNN_WITH_CUDA
#include "fusedrnn/cuda.h"
#include "fusedrnn/cuda_floor.h"
#endif

namespace fusedrnn {
namespace bind {

namespace {

// C = alpha op(A) op(B) + beta C on 2-D arrays, through the package's BLAS door (cpu/gemm.h):
// fusedrnn.nn uses it so a model's heads run on the same threads as its RNNs (NumPy's own BLAS
// pool, left spinning after a matmul, was measured to halve the speed of the next RNN call).
template <class T>
void gemm_typed(const Arg& a, const Arg& b, const Arg& c, bool ta, bool tb, double alpha,
                double beta) {
  const ArrayView &av = a.view, &bv = b.view, &cv = c.view;
  const int64_t M = cv.shape[0], N = cv.shape[1], K = ta ? av.shape[0] : av.shape[1];
  FUSEDRNN_CHECK((ta ? av.shape[1] : av.shape[0]) == M && (tb ? bv.shape[0] : bv.shape[1]) == N &&
                     (tb ? bv.shape[1] : bv.shape[0]) == K,
                 "gemm: shapes do not match: op(a) ", av.shape_str(), ta ? "^T" : "", ", op(b) ",
                 bv.shape_str(), tb ? "^T" : "", ", c ", cv.shape_str());
  FUSEDRNN_CHECK(M <= INT_MAX && N <= INT_MAX && K <= INT_MAX, "gemm: sizes must be < 2^31");
  const T* A = a.ptr<const T>();
  const T* B = b.ptr<const T>();
  T* C = c.ptr<T>();
  const int64_t lda = av.shape[1], ldb = bv.shape[1];
  py::gil_scoped_release nogil;
  gemm_par<T>(ta, tb, M, N, K, T(alpha), A, lda, B, ldb, T(beta), C, N);
}

void gemm(py::handle a_, py::handle b_, py::handle c_, bool trans_a, bool trans_b, double alpha,
          double beta) {
  FUSEDRNN_CHECK_TYPE(py::isinstance<py::array>(c_), "c must be a numpy.ndarray, got ",
                      type_name(c_));
  Arg c = array_arg(c_, "c");
  const DType dt = first_float(c, "c");
  FUSEDRNN_CHECK(!c.copied && c.view.writeable,
                 "c must be a writeable, aligned, C-contiguous array");
  Arg a = array_arg(a_, "a");
  Arg b = array_arg(b_, "b");
  check_dtype(a, "a", dt, " (the dtype of c)");
  check_dtype(b, "b", dt, " (the dtype of c)");
  check_same_device(a, "a", c.view.device);
  check_same_device(b, "b", c.view.device);
  FUSEDRNN_CHECK(a.view.ndim == 2 && b.view.ndim == 2 && c.view.ndim == 2,
                 "gemm: a, b, c must be 2-D");
  if (dt == DType::Float32) gemm_typed<float>(a, b, c, trans_a, trans_b, alpha, beta);
  else gemm_typed<double>(a, b, c, trans_a, trans_b, alpha, beta);
}

// CUDA devices usable now: 0 without the CUDA backend, and with no GPU or no driver; another
// CUDA error raises RuntimeError.
int cuda_device_count() {
#if FUSEDRNN_WITH_CUDA
  return cuda::device_count();
#else
  return 0;
#endif
}

std::string cuda_device_name(int device) {
#if FUSEDRNN_WITH_CUDA
  const int n = cuda::device_count();
  FUSEDRNN_CHECK(device >= 0 && device < n, "device must lie in [0, ", n, "), got ", device,
                 n == 0 ? " (no CUDA device is usable: no GPU, or no driver)" : "");
  return cuda::device_name(device);
#else
  throw std::runtime_error("cuda_device_name: this fusedrnn was built without CUDA");
#endif
}

// The CUDA runtime the backend was built with and the driver's CUDA version (as 13000 for
// 13.0); zeros without the CUDA backend, driver 0 without a driver.
py::dict cuda_versions() {
  py::dict d;
#if FUSEDRNN_WITH_CUDA
  d["runtime"] = cuda::runtime_version();
  d["driver"] = cuda::driver_version();
#else
  d["runtime"] = 0;
  d["driver"] = 0;
#endif
  return d;
}

// Where the CUDA backend looks for cuBLAS (fusedrnn/cuda.h), and what it found.
void cuda_set_cublas_candidates(const std::vector<std::string>& paths) {
#if FUSEDRNN_WITH_CUDA
  cuda::set_cublas_candidates(paths);
#else
  (void)paths;
#endif
}

std::string cuda_cublas_status() {
#if FUSEDRNN_WITH_CUDA
  return cuda::cublas_status();
#else
  return "built without CUDA";
#endif
}

// The persistent kernels' floor (fusedrnn/cuda_floor.h): microseconds per step of an empty
// persistent loop with barrier `kind` ("grid_sync" or "flag"), optionally exchanging h_floats
// floats per step. blocks 0: one per multiprocessor.
double cuda_barrier_floor(const std::string& kind, int blocks, int threads, int steps,
                          int h_floats, int device) {
  FUSEDRNN_CHECK(kind == "grid_sync" || kind == "flag",
                 "cuda_barrier_floor: kind must be 'grid_sync' or 'flag', got '", kind, "'");
#if FUSEDRNN_WITH_CUDA
  const int k = kind == "grid_sync" ? cuda::kFloorGridSync : cuda::kFloorFlag;
  py::gil_scoped_release nogil;
  return cuda::barrier_floor_us(k, blocks, threads, steps, h_floats, device);
#else
  (void)blocks;
  (void)threads;
  (void)steps;
  (void)h_floats;
  (void)device;
  throw std::runtime_error("cuda_barrier_floor: this fusedrnn was built without CUDA");
#endif
}

py::dict config() {
  py::dict d;
  d["version"] = FUSEDRNN_VERSION;
  d["compiler"] = FUSEDRNN_CXX_COMPILER;
  d["blas"] = blas_name();
  d["blas_config"] = blas_config();
  d["blas_core"] = blas_core();
  d["openmp"] = std::to_string(_OPENMP);
  d["num_threads"] = get_num_threads();
  d["cuda"] = bool(FUSEDRNN_WITH_CUDA);  // built with the CUDA backend
  d["cuda_architectures"] = FUSEDRNN_CUDA_ARCHITECTURES_STR;
  // config() never raises: an unexpected CUDA error is reported as text, with 0 devices.
  std::string cuda_error;
  int devices = 0;
  try {
    devices = cuda_device_count();
  } catch (const std::exception& e) {
    cuda_error = e.what();
  }
  d["cuda_devices"] = devices;
  d["cuda_error"] = cuda_error;
  d["simd_compiled"] = simd_compiled();
  d["simd_cpu"] = simd_cpu();
  d["simd_path"] = simd_path();
  return d;
}

}  // namespace

void register_runtime(py::module_& m) {
  get_num_threads();  // reads OMP_NUM_THREADS once and makes the BLAS single-threaded
  m.def("set_num_threads", &set_num_threads, py::arg("n"));
  m.def("get_num_threads", &get_num_threads);
  m.def("release_workspaces", &workspace_trim,
        "Frees the workspace buffers kept between calls (up to 8 buffers, 512 MiB).");
  m.def("config", &config);
  m.def("cuda_device_count", &cuda_device_count,
        "CUDA devices usable now (0 without the CUDA backend, a GPU or a driver).");
  m.def("cuda_device_name", &cuda_device_name, py::arg("device") = 0);
  m.def("cuda_versions", &cuda_versions,
        "{'runtime': CUDA runtime version, 'driver': driver's CUDA version} (as 13000 for "
        "13.0; zeros without the CUDA backend, driver 0 without a driver).");
  m.def("cuda_set_cublas_candidates", &cuda_set_cublas_candidates, py::arg("paths"),
        "Paths of libcublas.so.13 to try, in order, before the dynamic linker's search.");
  m.def("cuda_cublas_status", &cuda_cublas_status,
        "Which cuBLAS the CUDA backend's GEMMs use, or why they run its own kernel.");
  m.def("cuda_barrier_floor", &cuda_barrier_floor, py::arg("kind"), py::arg("blocks") = 0,
        py::arg("threads") = 256, py::arg("steps") = 10000, py::arg("h_floats") = 0,
        py::arg("device") = 0,
        "Microseconds per step of an empty persistent loop (cooperative launch, blocks x "
        "threads; blocks 0: one per multiprocessor) meeting at barrier `kind` ('grid_sync': "
        "cooperative_groups grid.sync(); 'flag': an own counter/epoch barrier) once per step, "
        "exchanging an h vector of h_floats floats through global memory when > 0 (issue 12's "
        "floor). CUDA events around one launch after a warm-up launch, on a private stream.");
  m.attr("WITH_CUDA") = bool(FUSEDRNN_WITH_CUDA);
  m.def("gemm", &gemm, py::arg("a"), py::arg("b"), py::arg("c"), py::arg("trans_a") = false,
        py::arg("trans_b") = false, py::arg("alpha") = 1.0, py::arg("beta") = 0.0,
        "c = alpha op(a) op(b) + beta c in place, on fusedrnn's threads and BLAS.");
  m.attr("MAX_THREADS") = kMaxThreads;
}

}  // namespace bind
}  // namespace fusedrnn
