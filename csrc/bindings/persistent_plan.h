#pragma once
// A persistent-loop plan (device/persistent.h) as Python sees it, in fusedrnn.cuda and the
// test hooks alike: {'persistent', 'blocks', 'threads', 'shared_bytes', 'why'}.
#include <pybind11/pybind11.h>

#include "device/persistent.h"

namespace fusedrnn {
namespace bind {

inline pybind11::dict persistent_plan_dict(const device::PersistentPlan& p) {
  pybind11::dict d;
  d["persistent"] = p.use;
  d["blocks"] = p.blocks;
  d["threads"] = p.threads;
  d["shared_bytes"] = p.shared_bytes;
  d["why"] = p.why;
  return d;
}

}  // namespace bind
}  // namespace fusedrnn
