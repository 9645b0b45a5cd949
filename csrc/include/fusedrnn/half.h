#pragma once
// 16-bit storage types: bfloat16 and IEEE float16 as bit patterns, with conversions written
// once for host and device in integer arithmetic, so the host emulation of the device backend
// rounds bit for bit as a GPU does (no FTZ, no fast-math contraction can change them).
// Narrowing rounds to nearest, ties to even; NaN stays NaN (quiet); float16 overflows to inf.
//
// The device backend stores such arrays but computes in float32 (compute_t): fp32 GEMM
// accumulation, fp32 cell and hidden state, fp32 training state (device/widened.h).
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "fusedrnn/common.h"

namespace fusedrnn {

struct bfloat16 {
  uint16_t bits;
};
struct float16 {
  uint16_t bits;
};

template <class T>
inline constexpr bool is_16bit_storage_v =
    std::is_same_v<T, bfloat16> || std::is_same_v<T, float16>;

// The type a backend computes in for storage type T: float for the 16-bit types, else T.
template <class T>
using compute_t = std::conditional_t<is_16bit_storage_v<T>, float, T>;

FUSEDRNN_HOST_DEVICE float float_from_bits(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

FUSEDRNN_HOST_DEVICE uint32_t bits_of_float(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

FUSEDRNN_HOST_DEVICE float widen(bfloat16 v) { return float_from_bits(uint32_t(v.bits) << 16); }

FUSEDRNN_HOST_DEVICE float widen(float16 v) {
  const uint32_t sign = uint32_t(v.bits & 0x8000u) << 16;
  const uint32_t e = (v.bits >> 10) & 0x1fu, m = v.bits & 0x3ffu;
  if (e == 0x1f) return float_from_bits(sign | 0x7f800000u | (m << 13));  // inf, NaN
  if (e != 0) return float_from_bits(sign | ((e + 112u) << 23) | (m << 13));
  // zero or subnormal: m * 2^-24, exact in float
  const float mag = float(m) * 5.9604644775390625e-8f;
  return sign ? -mag : mag;
}

template <class T>
FUSEDRNN_HOST_DEVICE T narrow(float f);

template <>
FUSEDRNN_HOST_DEVICE bfloat16 narrow<bfloat16>(float f) {
  uint32_t u = bits_of_float(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bfloat16{uint16_t((u >> 16) | 0x40u)};  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // ties to even; a carry rounds up into the exponent (inf)
  return bfloat16{uint16_t(u >> 16)};
}

template <>
FUSEDRNN_HOST_DEVICE float16 narrow<float16>(float f) {
  const uint32_t u = bits_of_float(f);
  const uint32_t sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return float16{uint16_t(sign | 0x7e00u | ((a >> 13) & 0x3ffu))};  // NaN
  if (a >= 0x477ff000u) return float16{uint16_t(sign | 0x7c00u)};  // >= 65520: inf
  uint32_t h, rem, half;
  if (a >= 0x38800000u) {  // a normal float16 (>= 2^-14)
    h = ((a >> 23) - 112u) << 10 | ((a >> 13) & 0x3ffu);
    rem = a & 0x1fffu;
    half = 0x1000u;
  } else {
    if (a < 0x33000000u) return float16{uint16_t(sign)};  // <= 2^-25 (the tie) rounds to 0
    // a subnormal float16: the value in units of 2^-24 is mant >> shift, shift in [14, 24]
    const uint32_t mant = (a & 0x7fffffu) | 0x800000u, shift = 126u - (a >> 23);
    h = mant >> shift;
    rem = mant & ((1u << shift) - 1u);
    half = 1u << (shift - 1u);
  }
  if (rem > half || (rem == half && (h & 1u))) ++h;  // a carry moves into the exponent
  return float16{uint16_t(sign | h)};
}

template <class T>
FUSEDRNN_HOST_DEVICE compute_t<T> to_compute(T v) {
  if constexpr (is_16bit_storage_v<T>) return widen(v);
  else return v;
}

}  // namespace fusedrnn
