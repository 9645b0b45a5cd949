// Picks the instruction set of the CPU kernels at run time: the package may be built on one
// x86-64 machine and run on another. FUSEDRNN_ISA=generic|avx2|avx512 in the environment
// forces a path the CPU supports (the tests run every path this way).
#include <cstdlib>
#include <cstring>
#include <string>

#include "cells/gru.h"
#include "cells/lstm.h"
#include "cells/rnn.h"
#include "fusedrnn/api.h"
#include "fusedrnn/check.h"

namespace fusedrnn {

#define FUSEDRNN_DECLARE_ISA(NS)                                               \
  namespace NS {                                                               \
  template <class T>                                                           \
  void layer_forward_isa(CellKind kind, const ForwardParams<T>& p);            \
  template <class T>                                                           \
  void layer_backward_isa(CellKind kind, const BackwardParams<T>& p);          \
  }
FUSEDRNN_DECLARE_ISA(isa_generic)
#if FUSEDRNN_X86_ISAS
FUSEDRNN_DECLARE_ISA(isa_avx2)
FUSEDRNN_DECLARE_ISA(isa_avx512)
#endif

int cell_gates(CellKind kind) {
  switch (kind) {
    case CellKind::RnnTanh: return RnnTanhCell::kGates;
    case CellKind::RnnRelu: return RnnReluCell::kGates;
    case CellKind::Lstm: return LstmCell::kGates;
    case CellKind::Gru: return GruCell::kGates;
    case CellKind::GruV1: return GruV1Cell::kGates;
  }
  throw std::invalid_argument("unknown cell kind");
}

int cell_saved(CellKind kind) {
  switch (kind) {
    case CellKind::RnnTanh: return RnnTanhCell::kSaved;
    case CellKind::RnnRelu: return RnnReluCell::kSaved;
    case CellKind::Lstm: return LstmCell::kSaved;
    case CellKind::Gru: return GruCell::kSaved;
    case CellKind::GruV1: return GruV1Cell::kSaved;
  }
  throw std::invalid_argument("unknown cell kind");
}

// GruV1's bulk dW_hh reads r h as saved value 3.
static_assert(GruV1Cell::kSaved == 4, "GruV1Cell saves [r, z, n, r h]");

namespace {

enum class Isa { Generic, Avx2, Avx512 };

Isa best_supported() {
#if FUSEDRNN_X86_ISAS
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw"))
    return Isa::Avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::Avx2;
#endif
  return Isa::Generic;
}

Isa choose() {
  const Isa best = best_supported();
  const char* env = std::getenv("FUSEDRNN_ISA");
  if (!env || !*env) return best;
  Isa want = Isa::Generic;
  if (!std::strcmp(env, "avx512")) want = Isa::Avx512;
  else if (!std::strcmp(env, "avx2")) want = Isa::Avx2;
  else if (std::strcmp(env, "generic")) return best;  // unknown value: ignore
  return want <= best ? want : best;                  // never a path the CPU lacks
}

const Isa g_isa = choose();

}  // namespace

std::string simd_path() {
  switch (g_isa) {
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    default: return "generic";
  }
}

template <class T>
void layer_forward(CellKind kind, const ForwardParams<T>& p) {
  run_parallel_work([&] {
#if FUSEDRNN_X86_ISAS
    if (g_isa == Isa::Avx512) return isa_avx512::layer_forward_isa<T>(kind, p);
    if (g_isa == Isa::Avx2) return isa_avx2::layer_forward_isa<T>(kind, p);
#endif
    return isa_generic::layer_forward_isa<T>(kind, p);
  });
}

template <class T>
void layer_backward(CellKind kind, const BackwardParams<T>& p) {
  run_parallel_work([&] {
#if FUSEDRNN_X86_ISAS
    if (g_isa == Isa::Avx512) return isa_avx512::layer_backward_isa<T>(kind, p);
    if (g_isa == Isa::Avx2) return isa_avx2::layer_backward_isa<T>(kind, p);
#endif
    return isa_generic::layer_backward_isa<T>(kind, p);
  });
}

template void layer_forward<float>(CellKind, const ForwardParams<float>&);
template void layer_forward<double>(CellKind, const ForwardParams<double>&);
template void layer_backward<float>(CellKind, const BackwardParams<float>&);
template void layer_backward<double>(CellKind, const BackwardParams<double>&);

}  // namespace fusedrnn
