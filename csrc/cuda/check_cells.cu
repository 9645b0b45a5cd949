// Compile check (no kernel runs yet): the cell headers and the backend-neutral core build as
// CUDA device code, for every cell and both float types, with warnings as errors. The CUDA
// backend's kernels will call exactly these functions.
#include "core/dropout.h"
#include "core/registry.h"

namespace fusedrnn {

template <class Cell, class T>
__global__ void cell_forward_backward(const T* ax, const T* ah, T* out, T* sv, int n) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= n) return;
  T c = T(0);
  const T h = Cell::forward(ax + j * Cell::kGates, ah + j * Cell::kGates, T(0), c, sv + j, n);
  T dax[Cell::kGates], dah[Cell::kGates], direct;
  Cell::backward(sv + j, n, h, T(0), c, dax, dah, direct);
  out[j] = h + dax[0] + direct + T(dropout_keep(dropout_stream(1, 0), j, 0.5));
}

template <class T>
void instantiate_all() {
  visit_cell(CellKind::Lstm, [](auto cell) {
    cell_forward_backward<decltype(cell), T><<<1, 1>>>(nullptr, nullptr, nullptr, nullptr, 0);
  });
}

template void instantiate_all<float>();
template void instantiate_all<double>();

}  // namespace fusedrnn
