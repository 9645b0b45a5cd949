#pragma once
// Index arithmetic for device code (host and device).
#include <cstdint>

#include "fusedrnn/common.h"

namespace fusedrnn {
namespace device {

// q = i / n, r = i % n for i, n >= 0: in 32 bits where both fit, since a 64-bit division is a
// subroutine call on a GPU (slow, and the register save around it can make a kernel spill).
FUSEDRNN_HOST_DEVICE void divmod(int64_t i, int64_t n, int64_t& q, int64_t& r) {
  if (((i | n) >> 31) == 0) {
    const uint32_t a = uint32_t(i), d = uint32_t(n), qq = a / d;
    q = qq;
    r = a - qq * d;
  } else {
    q = i / n;
    r = i - q * n;
  }
}

}  // namespace device
}  // namespace fusedrnn
