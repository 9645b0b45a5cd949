#pragma once
// Scalar activations shared by every cell (host and device). Exact library calls for now:
// a fast vectorised approximation with a stated error bound is a later, measured change.
#include <cmath>

#include "fusedrnn/common.h"

namespace fusedrnn {

template <class T>
FUSEDRNN_HOST_DEVICE T sigmoid(T v) {
  // exp(-v) overflows to inf for very negative v, giving exactly 0: no NaN, no branch.
  return T(1) / (T(1) + std::exp(-v));
}

template <class T>
FUSEDRNN_HOST_DEVICE T tanh_(T v) {
  return std::tanh(v);
}

template <class T>
FUSEDRNN_HOST_DEVICE T relu(T v) {
  return v < T(0) ? T(0) : v;  // NaN stays NaN
}

}  // namespace fusedrnn
