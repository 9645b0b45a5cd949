// Compile check: the backend-neutral headers (csrc/core) and the cells build as CUDA device
// code. The kernel is the shape of a per-step pointwise kernel, one thread per (batch row, unit):
// step map, pre-activation gather, cell. Not linked into anything.
//   nvcc -std=c++17 -x cu -arch=sm_90 -Werror all-warnings -Icsrc -Icsrc/include -c <this file>
#include <cstdint>

#include "core/grad_recipe.h"
#include "core/registry.h"
#include "core/step_map.h"

namespace fusedrnn {

// xp: (T*B, G*H) input pre-activations (b_ih in); hp: (B, G*H) this step's recurrent ones;
// saved: (T*B, S*H); h, c: (B, H) state, updated in place by the cell.
template <class Cell, class T>
__global__ void pointwise_step(StepMap map, int64_t s, int64_t B, int64_t H, const T* xp,
                               const T* hp, const T* b_hh, T* saved, T* h, T* c) {
  const int64_t b = blockIdx.y, j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= B || j >= H || !map.active(s, b)) return;
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  const int64_t row = map.time(s, b) * B + b;
  T ax[G], ah[G];
  T* sv = saved + row * S * H;
  if constexpr (Cell::kTwoPhase) {
    gather_preactivations<Cell::kPhase1Gates>(ax, ah, xp + row * G * H, H, hp + b * G * H, H,
                                              b_hh, H, j);
    h[b * H + j] = Cell::gates(ax, ah, h[b * H + j], sv + j, H);
  } else {
    gather_preactivations<G>(ax, ah, xp + row * G * H, H, hp + b * G * H, H, b_hh, H, j);
    T cj = Cell::kHasCellState ? c[b * H + j] : T(0);
    h[b * H + j] = Cell::forward(ax, ah, h[b * H + j], cj, sv + j, H);
    if (Cell::kHasCellState) c[b * H + j] = cj;
  }
}

// Every cell, both types, through the one dispatch point.
template <class T>
void launch_pointwise_step(CellKind kind, StepMap map, int64_t s, int64_t B, int64_t H,
                           const T* xp, const T* hp, const T* b_hh, T* saved, T* h, T* c) {
  const int64_t steps = max_length(map.lengths, B, map.steps);
  if (s >= steps) return;
  visit_cell(kind, [&](auto cell) {
    pointwise_step<decltype(cell), T>
        <<<dim3(unsigned((H + 127) / 128), unsigned(B)), 128>>>(map, s, B, H, xp, hp, b_hh, saved,
                                                                 h, c);
  });
}

// The weight-gradient recipe with stand-ins where a CUDA driver passes its cuBLAS calls.
template <class T>
void weight_gradients_on_device(CellKind kind, const BackwardParams<T>& p,
                                const GradientSources<T>& src) {
  auto gemm = [](bool, bool, int64_t, int64_t, int64_t, T, const T*, int64_t, const T*, int64_t,
                 T, T*, int64_t) {};
  auto gemv_t = [](int64_t, int64_t, T, const T*, int64_t, const T*, T, T*) {};
  visit_cell(kind, [&](auto cell) { weight_gradients<decltype(cell)>(p, src, gemm, gemv_t); });
}

template void weight_gradients_on_device<float>(CellKind, const BackwardParams<float>&,
                                                const GradientSources<float>&);
template void launch_pointwise_step<float>(CellKind, StepMap, int64_t, int64_t, int64_t,
                                           const float*, const float*, const float*, float*,
                                           float*, float*);
template void launch_pointwise_step<double>(CellKind, StepMap, int64_t, int64_t, int64_t,
                                            const double*, const double*, const double*,
                                            double*, double*, double*);

}  // namespace fusedrnn
