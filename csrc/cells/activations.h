#pragma once
// Scalar activations shared by every cell (host and device).
//
// float uses branch-free polynomial forms (Cephes expf / tanhf) so the pointwise loops
// vectorise (libm calls do not, and were a third of a B=16 LSTM step); double uses libm.
// Accuracy of the float forms against double libm (tests/test_activations.py, ~4.4M inputs):
// exp_fast <= 1 ulp on [-87, 88], sigmoid <= 2.5 ulp, tanh <= 1.3 ulp (bounds tested: 2, 3, 2).
// exp_fast is +inf from 88.38 (so sigmoid(-inf) and sigmoid(-100) are exactly 0, as in the
// float32 reference, and sigmoid(inf) = 1) and ~1.2e-38 below ln(FLT_MIN).
// No -ffast-math: NaN stays NaN, infinities saturate.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "fusedrnn/common.h"

namespace fusedrnn {
FUSEDRNN_ISA_BEGIN

FUSEDRNN_HOST_DEVICE float exp_fast(float x) {
  // Cephes expf: x = n ln2 + r, |r| <= ln2/2, e^r by a degree-6 polynomial, times 2^n.
  // n is read from the bits of x log2(e) + 1.5 * 2^23 (the float rounds to an integer there)
  // in unsigned arithmetic: no float -> int conversion, which is undefined for NaN, and no
  // shift of a negative value. NaN passes the clamps (comparisons with NaN are false), makes
  // r and so the result NaN. Above 88.38 n is 128, whose exponent bits are those of inf: the
  // result is +inf there (float32 exp is within 1.42x of FLT_MAX; sigmoid and tanh, the only
  // callers, are exact there: sigmoid(-88.4) is 0 in float32 and tanh(44.2) is 1). Below
  // ln(FLT_MIN) the result stays at FLT_MIN's order (1.2e-38), which no caller can see.
  x = x > 89.0f ? 89.0f : x;
  x = x < -87.3365447504f ? -87.3365447504f : x;
  const float t = x * 1.44269504088896341f + 12582912.0f;  // 12582912 = 1.5 * 2^23
  const float n = t - 12582912.0f;  // round to nearest
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  const float r2 = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r2 + r + 1.0f;
  // 2^n, n in [-126, 128]: the exponent bits n + 127 (255 at n = 128: inf).
#if defined(__CUDA_ARCH__)
  const uint32_t n_bits = __float_as_uint(t) - 0x4B400000u;
  const float scale = __uint_as_float((n_bits + 127u) << 23);
#elif defined(__GNUC__)
  // bit casts, not memcpy: a memcpy here blocks vectorisation
  const uint32_t n_bits = __builtin_bit_cast(uint32_t, t) - 0x4B400000u;
  const float scale = __builtin_bit_cast(float, (n_bits + 127u) << 23);
#else
  uint32_t t_bits;
  std::memcpy(&t_bits, &t, sizeof t_bits);
  const uint32_t scale_bits = (t_bits - 0x4B400000u + 127u) << 23;
  float scale;
  std::memcpy(&scale, &scale_bits, sizeof scale);
#endif
  return p * scale;
}

template <class T>
FUSEDRNN_HOST_DEVICE T sigmoid(T v) {
  // exp(-v) overflows to inf for very negative v, giving exactly 0: no NaN, no branch.
  return T(1) / (T(1) + std::exp(-v));
}
template <>
FUSEDRNN_HOST_DEVICE float sigmoid<float>(float v) {
  return 1.0f / (1.0f + exp_fast(-v));
}

template <class T>
FUSEDRNN_HOST_DEVICE T tanh_(T v) {
  return std::tanh(v);
}
template <>
FUSEDRNN_HOST_DEVICE float tanh_<float>(float v) {
  // Cephes tanhf: an odd polynomial below 0.625, 1 - 2/(e^{2|v|} + 1) above; both computed
  // and blended so the loop has no branch.
  const float a = std::fabs(v);
  const float z = v * v;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const float small = p * z * v + v;
  float large = 1.0f - 2.0f / (exp_fast(2.0f * a) + 1.0f);
  large = v < 0.0f ? -large : large;
  return a < 0.625f ? small : large;  // NaN: a < 0.625 is false, large is NaN
}

template <class T>
FUSEDRNN_HOST_DEVICE T relu(T v) {
  return v < T(0) ? T(0) : v;  // NaN stays NaN
}

FUSEDRNN_ISA_END
}  // namespace fusedrnn
