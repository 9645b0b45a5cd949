// The caller-owned training state of a stack (fusedrnn/stack.h StateLayout): one function
// sizes it for every backend, so NumPy, torch's allocator or device memory can hold it.
#include "core/registry.h"
#include "fusedrnn/stack.h"

namespace fusedrnn {

StateLayout stack_state_layout(const StackConfig& cfg, size_t elem_size) {
  StateLayout lay;
  if (!cfg.training) return lay;
  const size_t T = size_t(cfg.steps), B = size_t(cfg.batch), H = size_t(cfg.hidden);
  const size_t R = size_t(cfg.recurrent()), DR = size_t(cfg.dirs) * R;
  const size_t S = size_t(cell_info(cfg.kind).saved);
  const size_t LD = size_t(cfg.layers * cfg.dirs), L = size_t(cfg.layers);
  auto take = [&](size_t bytes) {  // 64-byte aligned pieces: whole cache lines per piece
    const size_t off = lay.bytes, padded = (bytes + 63) / 64 * 64;
    if (padded > bytes) lay.padding.emplace_back(off + bytes, padded - bytes);
    lay.bytes += padded;
    return off;
  };
  for (size_t k = 0; k < LD; ++k) {
    lay.saved.push_back(take(T * B * S * H * elem_size));
    lay.h_prev.push_back(take(T * B * R * elem_size));
    lay.proj_in.push_back(cfg.proj > 0 ? take(T * B * H * elem_size) : StateLayout::kNone);
  }
  for (size_t l = 0; l + 1 < L; ++l) {
    lay.layer_out.push_back(take(T * B * DR * elem_size));
    lay.keep.push_back(cfg.has_dropout() ? take(T * B * DR) : StateLayout::kNone);
  }
  if (cfg.batch_first) lay.x_tb = take(T * B * size_t(cfg.input) * elem_size);
  return lay;
}

}  // namespace fusedrnn
