#!/usr/bin/env bash
# Where one configuration's time goes: builds fusedrnn._C with symbols (RelWithDebInfo at -O3,
# no LTO, not stripped) into a scratch directory, runs the configuration under `perf record`
# (cpu-clock sampling: this VM exposes no hardware counters) and prints the top symbols.
#   bash bench/tools/perf_profile.sh lstm 512 16 50 forward     # cell H B T forward|train
# Needs perf, cmake, ninja, pybind11 and an installed fusedrnn (for its Python files).
set -euo pipefail
cell=${1:-lstm}; H=${2:-512}; B=${3:-16}; T=${4:-50}; mode=${5:-forward}
root=$(cd "$(dirname "$0")/../.." && pwd)
work=${PERF_PROFILE_DIR:-/tmp/fusedrnn-perf}
mkdir -p "$work"
cmake -S "$root" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O3 -g -DNDEBUG" -DCMAKE_INTERPROCEDURAL_OPTIMIZATION=OFF \
  -Dpybind11_DIR="$(python -c 'import pybind11; print(pybind11.get_cmake_dir())')" > "$work/cmake.log"
ninja -C "$work/build" > "$work/ninja.log"
rm -rf "$work/pkg" && mkdir -p "$work/pkg/fusedrnn"
cp "$root"/python/fusedrnn/*.py "$work/pkg/fusedrnn/"
cp "$work"/build/_C*.so "$work/pkg/fusedrnn/"
cat > "$work/run.py" <<PY
import time, numpy as np, fusedrnn, fusedrnn.functional as F
assert fusedrnn.__file__.startswith("$work/pkg"), fusedrnn.__file__
cell, H, B, T, mode = "$cell", $H, $B, $T, "$mode"
G = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
rng = np.random.default_rng(0)
x = rng.standard_normal((T, B, H), dtype=np.float32)
w = (rng.standard_normal((G * H, H)) / np.sqrt(H)).astype(np.float32)
b = np.zeros(G * H, np.float32)
fwd = {"lstm": F.lstm_forward, "gru": F.gru_forward, "rnn": F.rnn_forward}[cell]
bwd = {"lstm": F.lstm_backward, "gru": F.gru_backward, "rnn": F.rnn_backward}[cell]
dy = np.ones((T, B, H), np.float32)
def call():
    out = fwd(x, w, w, b, b, training=mode == "train")
    if mode == "train":
        bwd(out[-1], dy)
for _ in range(3):
    call()
t0 = time.perf_counter(); n = 0
while time.perf_counter() - t0 < 3.0:
    call(); n += 1
print(f"{cell} H={H} B={B} T={T} {mode}: {n} calls, {(time.perf_counter() - t0) / n * 1e3:.3f} ms each")
PY
PYTHONPATH="$work/pkg" perf record -q -o "$work/perf.data" python "$work/run.py"
perf report -i "$work/perf.data" --no-children --sort dso,sym --percent-limit 1 2>/dev/null \
  | grep -v '^#' | grep -v '^$' | cut -c1-160
