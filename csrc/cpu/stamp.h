#pragma once
// The content stamp of one chunk of bytes (api.h content_stamps): Fletcher-style sums over
// 64-bit words in 32 independent lanes, GCC vector types so each instruction set's copy uses
// its widest registers; memory bound. Any change to one word changes the first sums; a swap
// or a cancelling pair changes the second. Not cryptographic: it catches modifications.
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "fusedrnn/common.h"

namespace fusedrnn {
FUSEDRNN_ISA_BEGIN
namespace cpu {

inline uint64_t stamp_mix(uint64_t h, uint64_t v) {
  h ^= v + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2);
  h *= 0xBF58476D1CE4E5B9ull;
  return h ^ (h >> 31);
}

inline uint64_t stamp_chunk(const unsigned char* p, size_t bytes) {
  typedef uint64_t V __attribute__((vector_size(64)));
  constexpr int kAcc = 4;  // independent chains: 4 x 8 lanes
  V s1[kAcc] = {}, s2[kAcc] = {};
  const size_t step = kAcc * sizeof(V);
  size_t i = 0;
  for (; i + step <= bytes; i += step) {
#pragma GCC unroll 4
    for (int a = 0; a < kAcc; ++a) {
      V w;
      std::memcpy(&w, p + i + a * sizeof(V), sizeof(V));
      s1[a] += w;
      s2[a] += s1[a];
    }
  }
  uint64_t h = stamp_mix(0x243F6A8885A308D3ull, bytes);
  for (int a = 0; a < kAcc; ++a)
    for (int l = 0; l < 8; ++l) h = stamp_mix(stamp_mix(h, s1[a][l]), s2[a][l]);
  for (; i < bytes; i += 8) {  // the last < 256 bytes, word by word (zero-padded)
    uint64_t w = 0;
    std::memcpy(&w, p + i, bytes - i < 8 ? bytes - i : 8);
    h = stamp_mix(h, w);
  }
  return h;
}

}  // namespace cpu
FUSEDRNN_ISA_END
}  // namespace fusedrnn
