#pragma once
// Scalar activations shared by every cell (host and device).
//
// float uses branch-free polynomial forms (Cephes expf / tanhf) so the pointwise loops
// vectorise (libm calls do not, and were a third of a B=16 LSTM step); double uses libm.
// Accuracy of the float forms against double libm (tests/test_activations.py, ~4.4M inputs):
// exp_fast <= 1 ulp on [-87, 88], sigmoid <= 2.5 ulp, tanh <= 1.3 ulp (bounds tested: 2, 3, 2).
// Outside: exp overflows to inf and underflows to 0, so sigmoid(-inf) = 0 and sigmoid(inf) = 1.
// No -ffast-math: NaN stays NaN, infinities saturate.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "fusedrnn/common.h"

namespace fusedrnn {
FUSEDRNN_ISA_BEGIN

FUSEDRNN_HOST_DEVICE float exp_fast(float x) {
  // Cephes expf: x = n ln2 + r, |r| <= ln2/2, e^r by a degree-6 polynomial, times 2^n.
  // Selects, not branches, so loops vectorise; NaN is replaced before the float -> int
  // conversion (undefined for NaN) and put back at the end.
  float xc = x == x ? x : 0.0f;
  xc = xc > 88.7228394f ? 88.7228394f : xc;  // ln(FLT_MAX)
  xc = xc < -87.3365447504f ? -87.3365447504f : xc;  // ln(FLT_MIN)
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  const float r2 = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r2 + r + 1.0f;
  // 2^n for n in [-126, 128] as 2^n1 * 2^n2 with n1, n2 in [-63, 64]: each an exact normal
  // float, so the product rounds once (to inf past FLT_MAX).
  const int32_t ni = static_cast<int32_t>(n);
  const int32_t n1 = ni / 2, n2 = ni - n1;
  const int32_t bits1 = (n1 + 127) << 23, bits2 = (n2 + 127) << 23, bits_inf = 0x7f800000;
#if defined(__CUDA_ARCH__)
  const float s1 = __int_as_float(bits1), s2 = __int_as_float(bits2);
  const float inf = __int_as_float(bits_inf);
#elif defined(__GNUC__)
  // a memcpy here blocks vectorisation
  const float s1 = __builtin_bit_cast(float, bits1), s2 = __builtin_bit_cast(float, bits2);
  const float inf = __builtin_bit_cast(float, bits_inf);
#else
  float s1, s2, inf;
  std::memcpy(&s1, &bits1, sizeof s1);
  std::memcpy(&s2, &bits2, sizeof s2);
  std::memcpy(&inf, &bits_inf, sizeof inf);
#endif
  float e = p * s1 * s2;
  // As libm: +inf above ln(FLT_MAX), 0 below the normal range (libm's denormals are flushed),
  // NaN stays NaN. So sigmoid(-inf) is exactly 0 and its gradient vanishes, as in the
  // reference, instead of a 4e-39 floor that huge states turned into large gradients.
  e = x > 88.7228394f ? inf : e;
  e = x < -87.3365447504f ? 0.0f : e;
  return x == x ? e : x;
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
