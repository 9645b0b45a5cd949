#!/usr/bin/env bash
# The one prepared device check of issues 11 (CUDA backend) and 12 (persistent kernels), for a
# fresh GPU machine: builds the package with CUDA, runs tests/cuda on both time loops,
# compute-sanitizer on a small case and the GPU benchmark (the barrier floor and the persistent
# rows first), and writes logs, JSON and a PNG to $OUT (else ./gpu-check-out). Run from anywhere:
#
#     bash bench/gpu_check.sh
#
# The machine (an NVIDIA H200 here) has Python 3.12 with torch (CUDA 13), CuPy, pybind11,
# scikit-build-core, cmake, ninja, nvcc and compute-sanitizer, but no PyPI and no
# scipy-openblas32. Bring that as a wheel in .whl/ at the repository root (ignored by git,
# named in the device run's `carry`), downloaded on a machine with PyPI:
#
#     echo /.whl/ >> .git/info/exclude
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#         --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
#         --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#         --platform manylinux1_x86_64 -d .whl scipy-openblas32==0.3.34.481.3
#
# (it has no dependencies; one version only). Stages, each under its own time limit, the whole
# within GPU_CHECK_TOTAL_S (default 470 s, under the issue's 8 minutes):
#
#   env        nvidia-smi, nvcc, Python and package versions              (summary.txt)
#   wheels     pip install .whl/*.whl --target $SITE                       (build.log)
#   build      pip install . with FUSEDRNN_CUDA=ON, sm_90 only, 16 jobs   (build.log)
#   import     fusedrnn.show_config(), fusedrnn.cuda.is_available()       (build.log)
#   -- then side by side on the one GPU (each its own process) --
#   tests      python -m pytest tests/cuda                                 (tests_cuda.log)
#   native     FUSEDRNN_TEST_BACKENDS=cuda pytest tests/test_native.py:
#              its backend-parametrised tests that tests/cuda does not run (tests_native.log)
#   owngemm    tests/cuda's sweep and stacks with FUSEDRNN_CUBLAS=0 (fusedrnn's own GEMM
#              kernel; the other stages use cuBLAS where torch's wheel brings it) (tests_native.log)
#   persistent tests/cuda again with FUSEDRNN_PERSISTENT=1: every layer that fits runs the
#              persistent time loop (issue 12; the other stages run the per-step path, except
#              tests/cuda/test_cuda_persistent.py, which sets the variable itself), -x
#                                                                          (tests_native.log)
#   memcheck   compute-sanitizer --tool memcheck  tests/cuda/sanitizer_case.py (sanitizer.log),
#              and memcheck_own: the same with FUSEDRNN_CUBLAS=0
#   racecheck  compute-sanitizer --tool racecheck tests/cuda/sanitizer_case.py (sanitizer.log)
#   racecheck_p, synccheck_p: racecheck and synccheck with FUSEDRNN_PERSISTENT=1 (the
#              persistent kernels' shared memory and barriers; required)        (sanitizer.log)
#   synccheck, initcheck: the same on the per-step path, advisory (reported, never fail the run)
#   -- then alone --
#   bench      bench/gpu_bench.py with the time left: the barrier floor, the persistent,
#              crossover and bfloat16 rows, then issue 11's rows   (bench.log, gpu_bench.json/.png)
#
# The run goes on past a failing stage (stages that need the build are skipped without it),
# prints a summary last (also $OUT/summary.txt) and exits 1 if any required stage failed or
# timed out. $OUT gets at most 8 files. Nothing here changes the GPU's settings. A stage's limit
# is cut to the time left (less a 30 s reserve for the summary), so the whole stays within
# GPU_CHECK_TOTAL_S plus that reserve even when the build is slow.
#
# Environment: PYTHON (default python3), GPU_CHECK_TOTAL_S (470), GPU_CHECK_ARCH (90: the
# H200's sm_90; the package's default is "80;90"), GPU_CHECK_JOBS (16), GPU_CHECK_BENCH_ARGS
# (extra gpu_bench.py arguments, e.g. --quick).
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
START=$SECONDS
PY=${PYTHON:-python3}
TOTAL=${GPU_CHECK_TOTAL_S:-470}
ARCH=${GPU_CHECK_ARCH:-90}
JOBS=${GPU_CHECK_JOBS:-16}
OUTDIR=${OUT:-$ROOT/gpu-check-out}
WORK=$(mktemp -d /tmp/gpu-check.XXXXXX)
SITE=$WORK/site
mkdir -p "$OUTDIR" "$SITE"
SUMMARY=$OUTDIR/summary.txt
BUILD_LOG=$OUTDIR/build.log
: >"$SUMMARY"
: >"$BUILD_LOG"
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
export CMAKE_BUILD_PARALLEL_LEVEL=$JOBS

STAGES=()   # "name|status|seconds|limit|log"
FAILED=0

say() { echo "$*" | tee -a "$SUMMARY"; }
left() { echo $((TOTAL - (SECONDS - START))); }
# lim SECONDS: a stage's limit, cut to the time left less 30 s (at least 30 s)
lim() {
  local l=$(($(left) - 30))
  ((l < 30)) && l=30
  ((l < $1)) && echo "$l" || echo "$1"
}

# the file in $OUTDIR that holds a stage's log (side-by-side stages log to $WORK first)
shown_log() {
  case $1 in
    native|owngemm|persistent) echo tests_native.log ;;
    memcheck|memcheck_own|racecheck|synccheck|initcheck|racecheck_p|synccheck_p) echo sanitizer.log ;;
    *) basename "$2" ;;
  esac
}

# record NAME RC SECONDS LIMIT LOG [advisory]
record() {
  local status
  case $2 in
    0) status=ok ;;
    124|137) status="TIMEOUT(${4}s)" ;;
    skip) status=skipped ;;
    *) status="FAIL(rc=$2)" ;;
  esac
  if [[ $2 != 0 && $2 != skip ]]; then
    if [[ ${6:-} == advisory ]]; then status="WARN:$status"; else FAILED=1; fi
  fi
  STAGES+=("$1|$status|$3|$4|$(shown_log "$1" "$5")")
  say "[$(date +%H:%M:%S)] stage $1: $status in $3 s (limit $4 s; log $(shown_log "$1" "$5"))"
}

# stage NAME LIMIT LOG CMD... : run in the foreground under a time limit
stage() {
  local name=$1 limit=$2 log=$3 t0=$SECONDS rc
  shift 3
  echo "=== $name: $* (limit ${limit}s)" >>"$log"
  timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
  rc=$?
  echo "=== $name: exit $rc after $((SECONDS - t0)) s" >>"$log"
  record "$name" "$rc" $((SECONDS - t0)) "$limit" "$log"
  return "$rc"
}

# background NAME LIMIT LOG CMD... : start in the background; `collect` waits and records
BG=()
background() {
  local name=$1 limit=$2 log=$3
  shift 3
  (
    t0=$SECONDS
    echo "=== $name: $* (limit ${limit}s)" >"$log"
    timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
    rc=$?
    echo "=== $name: exit $rc after $((SECONDS - t0)) s" >>"$log"
    echo "$rc $((SECONDS - t0))" >"$WORK/$name.rc"
  ) &
  BG+=("$name|$limit|$log|$!")
}
collect() {
  local entry name limit log pid rc dt adv
  for entry in "${BG[@]}"; do
    IFS='|' read -r name limit log pid <<<"$entry"
    wait "$pid"
    read -r rc dt <"$WORK/$name.rc" || { rc=1; dt=0; }
    adv=""
    [[ $name == synccheck || $name == initcheck ]] && adv=advisory
    record "$name" "$rc" "$dt" "$limit" "$log" $adv
  done
  BG=()
}

skip_stage() { record "$1" skip 0 0 "$2"; }

# ------------------------------------------------------------------------------------------
say "fusedrnn GPU check (issues 11, 12): $(date -Is), repository $ROOT, out $OUTDIR"
say "commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?') $(git -C "$ROOT" status --porcelain 2>/dev/null | wc -l | tr -d ' ') changed files"
{
  echo "--- nvidia-smi"
  timeout 20 nvidia-smi 2>&1 || echo "(nvidia-smi failed)"
  echo "--- nvcc"
  timeout 20 nvcc --version 2>&1 | tail -2 || echo "(no nvcc)"
  echo "--- compute-sanitizer"
  timeout 20 compute-sanitizer --version 2>&1 | head -3 || echo "(no compute-sanitizer)"
  echo "--- python"
  timeout 60 "$PY" - <<'EOF' 2>&1
import importlib, platform, sys
print(sys.executable, platform.python_version())
for name in ("numpy", "torch", "cupy", "pybind11", "scikit_build_core", "cmake", "ninja",
             "pytest", "xdist", "matplotlib"):
    try:
        m = importlib.import_module(name)
        print(f"{name} {getattr(m, '__version__', '?')}")
    except Exception as e:
        print(f"{name}: not importable ({type(e).__name__})")
try:
    import torch
    print("torch cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(),
          "available", torch.cuda.is_available(),
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
except Exception as e:
    print("torch: ", e)
EOF
  echo "--- cpus: $(nproc), memory: $(free -g 2>/dev/null | awk '/Mem:/ {print $2 " GiB"}')"
} >>"$SUMMARY" 2>&1
cat "$SUMMARY"

# ------------------------------------------------------------------------------------------
# build
BUILT=0
if compgen -G "$ROOT/.whl/*.whl" >/dev/null; then
  stage wheels 90 "$BUILD_LOG" "$PY" -m pip install --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target "$SITE" "$ROOT"/.whl/*.whl
else
  echo "no .whl/*.whl: scipy-openblas32 must be importable already" >>"$BUILD_LOG"
  "$PY" -c "import scipy_openblas32" >>"$BUILD_LOG" 2>&1
  record wheels $? 0 0 "$BUILD_LOG"
fi
if stage build "$(lim 260)" "$BUILD_LOG" env FUSEDRNN_CUDA=ON "$PY" -m pip install -v \
    --no-build-isolation --no-deps --no-index --no-cache-dir --target "$SITE" \
    -C cmake.define.FUSEDRNN_CUDA=ON -C "cmake.define.FUSEDRNN_CUDA_ARCHITECTURES=$ARCH" \
    "$ROOT"; then
  # from $WORK: the installed package, never a source tree's
  stage import "$(lim 60)" "$BUILD_LOG" env -C "$WORK" "$PY" -c '
import fusedrnn
print("fusedrnn from", fusedrnn.__file__)
fusedrnn.show_config()
import fusedrnn.cuda as c
n = c.device_count()
print("fusedrnn.cuda.is_available():", c.is_available(), "device_count:", n,
      [c.get_device_name(i) for i in range(n)])
assert fusedrnn.config()["cuda"] and c.is_available(), "no CUDA backend or no GPU"
import numpy as np, torch
from fusedrnn import functional as F
x = torch.randn(3, 2, 4, device="cuda")
y, h, cn, ctx = F.stack_forward("lstm", x, {"weight_ih_l0": torch.randn(8, 4, device="cuda"),
                                            "weight_hh_l0": torch.randn(8, 2, device="cuda")})
torch.cuda.synchronize()
print("first device call ok:", tuple(y.shape), y.device, "| cuBLAS:", c.cublas_status())
' && BUILT=1
else
  skip_stage import "$BUILD_LOG"
fi

# ------------------------------------------------------------------------------------------
# tests and sanitizers, side by side
if [[ $BUILT == 1 ]]; then
  # 4 workers (pytest-xdist); a test stuck past 120 s ends its worker, not the stage
  # (pytest-timeout), and xdist replaces the worker. Warnings are shown, not errors (the CPU
  # suite's filterwarnings=error would turn a library's import-time warning into failures).
  PYTEST=("$PY" -m pytest -q -p no:cacheprovider -W default -rfEs --durations=10)
  "$PY" -c "import pytest_timeout" 2>/dev/null && PYTEST+=(--timeout 120 --timeout-method thread)
  XDIST=()
  "$PY" -c "import xdist" 2>/dev/null && XDIST=(-n 4)
  background tests "$(lim 180)" "$OUTDIR/tests_cuda.log" "${PYTEST[@]}" ${XDIST[@]+"${XDIST[@]}"} \
    tests/cuda
  background native "$(lim 150)" "$WORK/native.log" env FUSEDRNN_TEST_BACKENDS=cuda "${PYTEST[@]}" \
    tests/test_native.py -k "inference or repeatable or none_output or thread_counts or release"
  # the persistent time loops wherever they fit (issue 12)
  background persistent "$(lim 180)" "$WORK/persistent.log" env FUSEDRNN_PERSISTENT=1 \
    "${PYTEST[@]}" ${XDIST[@]+"${XDIST[@]}"} -x tests/cuda
  SAN=(compute-sanitizer --error-exitcode 99 --print-limit 40)
  CASE=("$PY" tests/cuda/sanitizer_case.py)
  # fusedrnn's own GEMM kernel (FUSEDRNN_CUBLAS=0) where the runs above use cuBLAS
  background owngemm "$(lim 150)" "$WORK/owngemm.log" env FUSEDRNN_CUBLAS=0 "${PYTEST[@]}" \
    tests/cuda/test_cuda_native.py tests/cuda/test_cuda_stack.py -x
  background memcheck "$(lim 150)" "$WORK/memcheck.log" "${SAN[@]}" --tool memcheck "${CASE[@]}"
  background memcheck_own "$(lim 150)" "$WORK/memcheck_own.log" env FUSEDRNN_CUBLAS=0 "${SAN[@]}" \
    --tool memcheck "${CASE[@]}"
  background racecheck "$(lim 150)" "$WORK/racecheck.log" "${SAN[@]}" --tool racecheck "${CASE[@]}"
  background synccheck "$(lim 150)" "$WORK/synccheck.log" "${SAN[@]}" --tool synccheck "${CASE[@]}"
  background initcheck "$(lim 150)" "$WORK/initcheck.log" "${SAN[@]}" --tool initcheck "${CASE[@]}"
  # the persistent kernels (cooperative launches, shared-memory W_hh slices, grid barriers):
  # their racecheck and synccheck are required
  background racecheck_p "$(lim 150)" "$WORK/racecheck_p.log" env FUSEDRNN_PERSISTENT=1 \
    "${SAN[@]}" --tool racecheck "${CASE[@]}"
  background synccheck_p "$(lim 150)" "$WORK/synccheck_p.log" env FUSEDRNN_PERSISTENT=1 \
    "${SAN[@]}" --tool synccheck "${CASE[@]}"
  collect
  cat "$WORK/native.log" "$WORK/owngemm.log" "$WORK/persistent.log" >"$OUTDIR/tests_native.log"
  for t in memcheck memcheck_own racecheck synccheck initcheck racecheck_p synccheck_p; do
    cat "$WORK/$t.log"; echo
  done >"$OUTDIR/sanitizer.log"
else
  for s in tests native persistent owngemm memcheck memcheck_own racecheck synccheck initcheck \
      racecheck_p synccheck_p; do
    skip_stage "$s" "$BUILD_LOG"
  done
fi

# ------------------------------------------------------------------------------------------
# benchmark, alone on the GPU, with the time left
if [[ $BUILT == 1 ]]; then
  REMAIN=$(left)
  if ((REMAIN > 60)); then
    # shellcheck disable=SC2086
    stage bench "$((REMAIN - 10))" "$OUTDIR/bench.log" "$PY" bench/gpu_bench.py \
      --budget-s "$((REMAIN - 45))" --out "$OUTDIR/gpu_bench.json" \
      --png "$OUTDIR/gpu_bench.png" ${GPU_CHECK_BENCH_ARGS:-}
  else
    say "bench: only ${REMAIN} s left of ${TOTAL} s"
    record bench 124 0 "$REMAIN" "$OUTDIR/bench.log"
  fi
  timeout 20 nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw \
    --format=csv >>"$SUMMARY" 2>&1
else
  skip_stage bench "$BUILD_LOG"
fi

# ------------------------------------------------------------------------------------------
# summary (printed last: the device tool returns the end of the output)
{
  echo
  echo "================ fusedrnn GPU check summary ($((SECONDS - START)) s of ${TOTAL} s)"
  printf '%-12s %-16s %7s %7s  %s\n' stage status seconds limit log
  for entry in "${STAGES[@]}"; do
    IFS='|' read -r n st dt lm lg <<<"$entry"
    printf '%-12s %-16s %7s %7s  %s\n' "$n" "$st" "$dt" "$lm" "$lg"
  done
  echo "--- results"
  [[ -f $OUTDIR/tests_cuda.log ]] && echo "tests_cuda.log: $(grep -E '(passed|failed|error|skipped|no tests ran)' "$OUTDIR/tests_cuda.log" | tail -1)"
  for t in native owngemm persistent; do  # the three parts of tests_native.log
    [[ -f $WORK/$t.log ]] && echo "tests_native.log ($t): $(grep -E '(passed|failed|error|skipped|no tests ran)' "$WORK/$t.log" | tail -1)"
  done
  if [[ -f $OUTDIR/sanitizer.log ]]; then
    grep -E '^=== (memcheck|memcheck_own|racecheck|synccheck|initcheck|racecheck_p|synccheck_p): exit|ERROR SUMMARY|RACECHECK SUMMARY|sanitizer_case \(' \
      "$OUTDIR/sanitizer.log"
  fi
  if [[ -f $OUTDIR/bench.log ]]; then
    echo "--- gpu_bench.py (table)"
    sed -n '/^ *suite  *cell/,$p' "$OUTDIR/bench.log" | head -200
  fi
  echo "--- files in $OUTDIR: $(ls "$OUTDIR" | tr '\n' ' ')"
  if ((FAILED)); then echo "GPU CHECK: FAILED (see above)"; else echo "GPU CHECK: all required stages ok"; fi
} | tee -a "$SUMMARY"
rm -rf "$WORK"
exit "$FAILED"
