// Picks the instruction set of the CPU kernels at run time: the package may be built on one
// x86-64 machine and run on another. FUSEDRNN_ISA=generic|avx2|avx512 in the environment
// forces a path the CPU supports; set_simd_path (fusedrnn._C._testing.set_isa) switches it at
// run time (the tests run every path this way).
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "core/registry.h"
#include "cpu/tuning.h"
#include "fusedrnn/api.h"
#include "fusedrnn/build_config.h"
#include "fusedrnn/check.h"
#include "fusedrnn/regularised.h"

namespace fusedrnn {

#define FUSEDRNN_DECLARE_ISA(NS)                                               \
  namespace NS {                                                               \
  template <class T>                                                           \
  void layer_forward_isa(CellKind kind, const ForwardParams<T>& p);            \
  template <class T>                                                           \
  void layer_backward_isa(CellKind kind, const BackwardParams<T>& p);          \
  uint64_t stamp_chunk_isa(const void* data, size_t bytes);                   \
  void draw_bits_chunk_isa(uint8_t* out, int64_t i0, int64_t n, uint64_t stream, \
                           uint64_t thr, bool keep);                           \
  template <class T>                                                           \
  void draw_scaled_chunk_isa(T* out, int64_t i0, int64_t n, uint64_t stream,   \
                             uint64_t thr, T scale);                           \
  template <class T>                                                           \
  void reg_layer_forward_isa(const RegForwardParams<T>& p);                    \
  template <class T>                                                           \
  void reg_layer_backward_isa(const RegBackwardParams<T>& p);                  \
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

Isa parse_isa(const char* name, bool& known) {
  known = true;
  if (!std::strcmp(name, "avx512")) return Isa::Avx512;
  if (!std::strcmp(name, "avx2")) return Isa::Avx2;
  if (!std::strcmp(name, "generic")) return Isa::Generic;
  known = false;
  return Isa::Generic;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    default: return "generic";
  }
}

Isa choose() {
  const Isa best = best_supported();
  const char* env = std::getenv("FUSEDRNN_ISA");
  if (!env || !*env) return best;
  bool known;
  const Isa want = parse_isa(env, known);
  if (!known) return best;                // unknown value: ignore
  return want <= best ? want : best;      // never a path the CPU lacks
}

// The path in use: FUSEDRNN_ISA or the best, then set_simd_path (tests). Each layer pass
// reads it once (cpu/tuning.h has the safety rule).
std::atomic<Isa> g_isa{choose()};

Isa current_isa() { return g_isa.load(std::memory_order_relaxed); }

}  // namespace

std::string simd_path() { return isa_name(current_isa()); }

std::vector<std::string> simd_paths_supported() {
  std::vector<std::string> out;
  for (Isa i = Isa::Generic; i <= best_supported(); i = Isa(int(i) + 1)) out.push_back(isa_name(i));
  return out;
}

std::string set_simd_path(const std::string& name) {
  bool known;
  const Isa want = parse_isa(name.c_str(), known);
  if (!known)
    throw std::invalid_argument(concat("unknown instruction set '", name,
                                       "': expected 'generic', 'avx2' or 'avx512'"));
  if (want > best_supported())
    throw std::invalid_argument(concat("this CPU (or this build) has no '", name,
                                       "' path; best is '", isa_name(best_supported()), "'"));
  g_isa.store(want, std::memory_order_relaxed);
  return simd_path();
}

template <class T>
void layer_forward(CellKind kind, const ForwardParams<T>& p) {
  const Isa isa = current_isa();
  run_parallel_work([&] {
#if FUSEDRNN_X86_ISAS
    if (isa == Isa::Avx512) return isa_avx512::layer_forward_isa<T>(kind, p);
    if (isa == Isa::Avx2) return isa_avx2::layer_forward_isa<T>(kind, p);
#endif
    return isa_generic::layer_forward_isa<T>(kind, p);
  });
}

template <class T>
void layer_backward(CellKind kind, const BackwardParams<T>& p) {
  const Isa isa = current_isa();
  run_parallel_work([&] {
#if FUSEDRNN_X86_ISAS
    if (isa == Isa::Avx512) return isa_avx512::layer_backward_isa<T>(kind, p);
    if (isa == Isa::Avx2) return isa_avx2::layer_backward_isa<T>(kind, p);
#endif
    return isa_generic::layer_backward_isa<T>(kind, p);
  });
}

namespace {
uint64_t stamp_chunk(Isa isa, const void* data, size_t bytes) {
#if FUSEDRNN_X86_ISAS
  if (isa == Isa::Avx512) return isa_avx512::stamp_chunk_isa(data, bytes);
  if (isa == Isa::Avx2) return isa_avx2::stamp_chunk_isa(data, bytes);
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
  const Isa isa = current_isa();
  run_parallel_work([&] {
#pragma omp parallel for num_threads(get_num_threads()) schedule(static) if (nc > 1)
    for (int64_t c = 0; c < nc; ++c) {
      const size_t a = chunks[c].first, off = chunks[c].second;
      const size_t len = std::min(kChunk, bytes[a] - off);
      hashes[c] = stamp_chunk(isa, static_cast<const unsigned char*>(data[a]) + off, len);
    }
  });
  for (size_t a = 0; a < n; ++a) out[a] = 0;
  for (size_t c = 0; c < chunks.size(); ++c) {
    uint64_t& h = out[chunks[c].first];
    h = h * 0x100000001B3ull ^ hashes[c];  // ordered: chunk c's place matters
  }
}

template <class T>
void reg_layer_forward(const RegForwardParams<T>& p) {
  const Isa isa = current_isa();
  run_parallel_work([&] {
#if FUSEDRNN_X86_ISAS
    if (isa == Isa::Avx512) return isa_avx512::reg_layer_forward_isa<T>(p);
    if (isa == Isa::Avx2) return isa_avx2::reg_layer_forward_isa<T>(p);
#endif
    return isa_generic::reg_layer_forward_isa<T>(p);
  });
}

template <class T>
void reg_layer_backward(const RegBackwardParams<T>& p) {
  const Isa isa = current_isa();
  run_parallel_work([&] {
#if FUSEDRNN_X86_ISAS
    if (isa == Isa::Avx512) return isa_avx512::reg_layer_backward_isa<T>(p);
    if (isa == Isa::Avx2) return isa_avx2::reg_layer_backward_isa<T>(p);
#endif
    return isa_generic::reg_layer_backward_isa<T>(p);
  });
}

// Masks of the counter-based generator, in parallel over 64 KiB-element chunks (each element a
// pure function of its index: any split draws the same mask).
template <class F>
void for_mask_chunks(int64_t n, F&& chunk) {
  constexpr int64_t kChunk = 65536;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  run_parallel_work([&] {
#pragma omp parallel for num_threads(get_num_threads()) schedule(static) if (chunks > 1)
    for (int64_t c = 0; c < chunks; ++c)
      chunk(c * kChunk, std::min(kChunk, n - c * kChunk));
  });
}

void draw_mask_bits(uint8_t* out, int64_t n, uint64_t stream, uint64_t threshold, bool keep) {
  const Isa isa = current_isa();
  for_mask_chunks(n, [&](int64_t i0, int64_t len) {
#if FUSEDRNN_X86_ISAS
    if (isa == Isa::Avx512)
      return isa_avx512::draw_bits_chunk_isa(out + i0, i0, len, stream, threshold, keep);
    if (isa == Isa::Avx2)
      return isa_avx2::draw_bits_chunk_isa(out + i0, i0, len, stream, threshold, keep);
#endif
    isa_generic::draw_bits_chunk_isa(out + i0, i0, len, stream, threshold, keep);
  });
}

template <class T>
void draw_mask_scaled(T* out, int64_t n, uint64_t stream, uint64_t threshold, T scale) {
  const Isa isa = current_isa();
  for_mask_chunks(n, [&](int64_t i0, int64_t len) {
#if FUSEDRNN_X86_ISAS
    if (isa == Isa::Avx512)
      return isa_avx512::draw_scaled_chunk_isa<T>(out + i0, i0, len, stream, threshold, scale);
    if (isa == Isa::Avx2)
      return isa_avx2::draw_scaled_chunk_isa<T>(out + i0, i0, len, stream, threshold, scale);
#endif
    isa_generic::draw_scaled_chunk_isa<T>(out + i0, i0, len, stream, threshold, scale);
  });
}
template void draw_mask_scaled<float>(float*, int64_t, uint64_t, uint64_t, float);
template void draw_mask_scaled<double>(double*, int64_t, uint64_t, uint64_t, double);

template void reg_layer_forward<float>(const RegForwardParams<float>&);
template void reg_layer_forward<double>(const RegForwardParams<double>&);
template void reg_layer_backward<float>(const RegBackwardParams<float>&);
template void reg_layer_backward<double>(const RegBackwardParams<double>&);
template void layer_forward<float>(CellKind, const ForwardParams<float>&);
template void layer_forward<double>(CellKind, const ForwardParams<double>&);
template void layer_backward<float>(CellKind, const BackwardParams<float>&);
template void layer_backward<double>(CellKind, const BackwardParams<double>&);

}  // namespace fusedrnn
