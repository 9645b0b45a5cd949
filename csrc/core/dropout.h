#pragma once
// The dropout keep-bit generator every backend shares, so the CPU and a GPU draw identical
// masks for one seed: counter-based (splitmix64 of the element index), independent of thread
// count, launch shape and order.
#include <cmath>
#include <cstdint>

#include "fusedrnn/common.h"

namespace fusedrnn {
FUSEDRNN_ISA_BEGIN

FUSEDRNN_HOST_DEVICE uint64_t splitmix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The stream of layer boundary `layer` (after layer `layer`) for `seed`.
FUSEDRNN_HOST_DEVICE uint64_t dropout_stream(uint64_t seed, int64_t layer) {
  return splitmix64(seed ^ splitmix64(0xD1B54A32D192ED03ull + uint64_t(layer)));
}

// Element i is kept iff U(stream, i) >= p, U uniform on [0, 1) with 53 bits.
FUSEDRNN_HOST_DEVICE bool dropout_keep(uint64_t stream, int64_t i, double p) {
  return double(splitmix64(stream + uint64_t(i)) >> 11) * 0x1.0p-53 >= p;
}

// The same test in integers, for loops over many elements: U = k 2^-53 with k the top 53 bits,
// so U >= p iff k >= ceil(p 2^53) (p 2^53 is exact; k an integer). No int-to-float conversion,
// which baseline x86-64 code does in many instructions.
FUSEDRNN_HOST_DEVICE uint64_t dropout_threshold(double p) {
  return uint64_t(std::ceil(p * 0x1.0p53));
}
FUSEDRNN_HOST_DEVICE bool dropout_keep_at(uint64_t stream, int64_t i, uint64_t threshold) {
  return (splitmix64(stream + uint64_t(i)) >> 11) >= threshold;
}

FUSEDRNN_ISA_END
}  // namespace fusedrnn
