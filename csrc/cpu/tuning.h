#pragma once
// Process-wide tuning knobs of the CPU kernels, settable at run time.
//
// Each knob starts from its environment variable (read on first use, as before: the variables
// keep working) and can be changed by fusedrnn._C._testing.set_tuning (csrc/bindings/
// testing.cpp), which the tests use to force every kernel path inside one process.
//
// Safety: a knob is one std::atomic, and every user reads it once per call into a local
// (the driver's plan: use_panels and dot_proj in driver.h's forward/backward, each layer pass
// sizing its workspace from the same read; workspace_acquire reads poison once per buffer).
// Changing a knob while no call is running is therefore always safe. A change racing a running
// call is memory-safe too (each pass sizes and uses what it read), but that call may mix the
// old and new paths between layers; every path computes the same function, so only rounding
// can differ. The knobs are tuning and test aids, not a public API.
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "fusedrnn/common.h"

namespace fusedrnn {

enum class Tuning : int { PanelMinRows = 0, DotProjMaxRows = 1, PoisonWorkspace = 2, kCount = 3 };

// The knobs' state, outside the per-ISA namespace so that every instruction set's kernels
// share one copy. Data only, constant-initialised: no code is emitted here, so no function
// compiled with one ISA's -m flags can be picked by the linker for another's callers.
struct TuningKnob {
  const char* name;     // as set_tuning / get_tuning name it
  const char* env;      // environment variable giving the initial value
  int64_t fallback;     // value when the variable is unset or empty
  int64_t lo, hi;       // valid range (the environment value is clamped into it)
  std::atomic<int64_t> value;  // kTuningUnset until first read or set
};
constexpr int64_t kTuningUnset = INT64_MIN;
inline TuningKnob g_tuning[int(Tuning::kCount)] = {
    // From this many batch rows the recurrent step runs on packed panels (microkernel.h).
    {"panel_min_rows", "FUSEDRNN_PANEL_MIN_ROWS", 4, 1, INT64_MAX, {kTuningUnset}},
    // Up to this many T*B rows the input projection runs on dot_gemm, above on the BLAS.
    {"dot_projection_max_rows", "FUSEDRNN_DOT_PROJ_ROWS", 256, 0, INT64_MAX, {kTuningUnset}},
    // 1: fill every workspace with NaN bit patterns before use (runtime.cpp).
    {"poison_workspace", "FUSEDRNN_POISON_WORKSPACE", 0, 0, 1, {kTuningUnset}},
};

// The kernels' instruction set (cpu/dispatch.cpp, beside simd_path() of api.h): the paths this
// CPU supports, best last ("generic", then "avx2", "avx512" as available), and a setter that
// switches every later call to `name`; throws std::invalid_argument for an unknown name or a
// path the CPU lacks. Returns the path now in use. Same safety rule as the knobs: each layer
// pass reads the choice once.
std::vector<std::string> simd_paths_supported();
std::string set_simd_path(const std::string& name);

FUSEDRNN_ISA_BEGIN

// The environment's value of knob k: an integer clamped into [lo, hi]; poison_workspace keeps
// its old reading (set and not starting with '0' means on).
inline int64_t tuning_from_env(Tuning k) {
  const TuningKnob& t = g_tuning[int(k)];
  const char* e = std::getenv(t.env);
  if (!e || !*e) return t.fallback;
  if (k == Tuning::PoisonWorkspace) return *e != '0';
  const int64_t v = std::atoll(e);
  return v < t.lo ? t.lo : (v > t.hi ? t.hi : v);
}

// The current value of knob k: read it once per call.
inline int64_t tuning(Tuning k) {
  std::atomic<int64_t>& a = g_tuning[int(k)].value;
  int64_t v = a.load(std::memory_order_relaxed);
  if (v != kTuningUnset) return v;
  const int64_t env = tuning_from_env(k);
  // The first reader publishes the environment's value; a set that got there first wins.
  if (a.compare_exchange_strong(v, env, std::memory_order_relaxed)) return env;
  return v;
}

FUSEDRNN_ISA_END
}  // namespace fusedrnn
