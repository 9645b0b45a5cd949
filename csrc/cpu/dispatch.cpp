// Picks the instruction set of the CPU kernels at run time: the package may be built on one
// x86-64 machine and run on another. FUSEDRNN_ISA=generic|avx2|avx512 in the environment
// forces a path the CPU supports (the tests run every path this way).
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "core/registry.h"
#include "fusedrnn/api.h"
#include "fusedrnn/build_config.h"
#include "fusedrnn/check.h"

namespace fusedrnn {

#define FUSEDRNN_DECLARE_ISA(NS)                                               \
  namespace NS {                                                               \
  template <class T>                                                           \
  void layer_forward_isa(CellKind kind, const ForwardParams<T>& p);            \
  template <class T>                                                           \
  void layer_backward_isa(CellKind kind, const BackwardParams<T>& p);          \
  uint64_t stamp_chunk_isa(const void* data, size_t bytes);                   \
  }
FUSEDRNN_DECLARE_ISA(isa_generic)
#if FUSEDRNN_X86_ISAS
FUSEDRNN_DECLARE_ISA(isa_avx2)
FUSEDRNN_DECLARE_ISA(isa_avx512)
#endif

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

namespace {
uint64_t stamp_chunk(const void* data, size_t bytes) {
#if FUSEDRNN_X86_ISAS
  if (g_isa == Isa::Avx512) return isa_avx512::stamp_chunk_isa(data, bytes);
  if (g_isa == Isa::Avx2) return isa_avx2::stamp_chunk_isa(data, bytes);
#endif
  return isa_generic::stamp_chunk_isa(data, bytes);
}
}  // namespace

void content_stamps(size_t n, const void* const* data, const size_t* bytes, uint64_t* out) {
  // Fixed 256 KiB chunks, hashed independently and combined in order: the stamp does not
  // depend on the thread count (forward and backward may run on different teams).
  constexpr size_t kChunk = size_t(256) << 10;
  std::vector<std::pair<size_t, size_t>> chunks;  // (array, offset)
  for (size_t a = 0; a < n; ++a)
    for (size_t off = 0; off == 0 || off < bytes[a]; off += kChunk) chunks.push_back({a, off});
  const int64_t nc = int64_t(chunks.size());
  std::vector<uint64_t> hashes(nc);
  run_parallel_work([&] {
#pragma omp parallel for num_threads(get_num_threads()) schedule(static) if (nc > 1)
    for (int64_t c = 0; c < nc; ++c) {
      const size_t a = chunks[c].first, off = chunks[c].second;
      const size_t len = std::min(kChunk, bytes[a] - off);
      hashes[c] = stamp_chunk(static_cast<const unsigned char*>(data[a]) + off, len);
    }
  });
  for (size_t a = 0; a < n; ++a) out[a] = 0;
  for (size_t c = 0; c < chunks.size(); ++c) {
    uint64_t& h = out[chunks[c].first];
    h = h * 0x100000001B3ull ^ hashes[c];  // ordered: chunk c's place matters
  }
}

template void layer_forward<float>(CellKind, const ForwardParams<float>&);
template void layer_forward<double>(CellKind, const ForwardParams<double>&);
template void layer_backward<float>(CellKind, const BackwardParams<float>&);
template void layer_backward<double>(CellKind, const BackwardParams<double>&);

}  // namespace fusedrnn
