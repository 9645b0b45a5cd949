#!/usr/bin/env bash
# Sanitizer job: builds fusedrnn._C with AddressSanitizer + UndefinedBehaviorSanitizer into a
# scratch directory, checks that the set-up reports what it must (self-check, below), and runs
# a short subset of the suite against the instrumented extension, covering every native entry
# point and the bad-input paths (and 20 s of the public-API fuzzer), with LeakSanitizer at the
# exit of every process. Exits
# non-zero on a test failure or on any ASan, UBSan or LSan report, from pytest or from a
# process it starts, and prints the reports. Run by .ci/run after the test suite. Standalone,
# from any directory (pytest arguments replace the CI subset; paths relative to the repo root):
#   bash tests/run_sanitizers.sh
#   bash tests/run_sanitizers.sh tests/test_native.py -k gru
# Needs g++ (with its libasan and libubsan), cmake, ninja, and numpy, pytest, pybind11 and
# scipy-openblas32 in the current python; torch is optional (its adapter tests run when it
# imports). Environment: SAN_DIR (scratch directory, default build/sanitizers; the build there
# is incremental), SAN_JOBS (build jobs, default 2), SAN_TORCH=0 (leave the torch tests out),
# SAN_MALLOC_CONTEXT (below).
#
# The set-up, and why:
# * Only the extension is instrumented (-O1 -g, ASan + UBSan, no LTO); Python, NumPy, OpenBLAS
#   and torch are not. libasan must come first in the process, so it is LD_PRELOADed, with
#   libubsan and libstdc++: the python executable does not link libstdc++, and ASan's
#   __cxa_throw interceptor, resolved when libasan starts, would otherwise stay null and crash
#   the first C++ exception (every bad-input test throws one through pybind11).
# * UB is fatal (-fno-sanitize-recover=undefined): the process exits 1 at the first report.
#   UBSan writes to stderr whatever its log_path (GCC's separate libubsan sets its report path
#   through an exported function, which the preloaded libasan's copy interposes), so pytest
#   runs with --capture=sys (fd 2 is not redirected, where a report would be lost with a
#   process that dies mid-test), its output is kept in logs/pytest.txt, and any UBSan report in
#   it fails the run; a subprocess's report reaches it in the failure of the test that ran it.
# * ASan and LSan write to logs/san.<exe>.<pid>, one file per reporting process.
# * PYTHONMALLOC=malloc: Python objects come from malloc, not from pymalloc's mmap'ed arenas,
#   which LeakSanitizer does not scan (a buffer referenced only from a Python object would
#   look leaked); ASan also sees use-after-free of Python objects this way.
# * Leaks: CPython and the libraries it loads leave memory at exit by design. tests/lsan.supp
#   suppresses leaks by the module that allocated them, and malloc_context_size=3 keeps each
#   recorded allocation stack to the allocator, the allocating function and its caller: a
#   leak allocated in fusedrnn._C (top frames in _C, libgomp or libstdc++) shows no frame of
#   the suppressed modules, however deep below Python it happens (in a binding's own body,
#   the shallowest case, libpython's first frame is the 6th, after pybind11's dispatch; any
#   context up to 5 works, and the self-check fails from 6 on). Blind spots: memory allocated
#   in the body of the module's init function (libpython's frame is the 3rd;
#   SAN_MALLOC_CONTEXT=2 covers it, with one frame less in every report), and reference leaks
#   of Python objects (a missing Py_DECREF: that memory is allocated in libpython or NumPy).
# * intercept_tls_get_addr=0: GCC <= 13's runtime guesses a pre-2.25 glibc header before a
#   dynamic TLS block whenever its address is 16 mod 4096, which a malloc'ed block can be by
#   chance; LSan's tracer then scans a garbage range and dies ("Tracer caught signal 11",
#   seen once here, at the exit of a forced-kernel-path child). Dynamic TLS stays scanned as
#   heap (glibc >= 2.25 mallocs it).
# * OMP_WAIT_POLICY=passive: OpenMP workers spinning between regions took cores from the
#   instrumented, slower, mostly single-threaded runs (a subprocess test: 55 s -> 16 s on 2
#   busy cores).
# * Self-check, on every run: a scratch pybind11 module built with the same flags leaks from a
#   binding (the shallowest call path) and from an OpenMP worker thread, after NumPy, fusedrnn
#   and torch calls in the same process (those include the Context and StackContext properties
#   and repr, which no test reads): exactly those two leaks must be reported. It also checks
#   that a signed overflow and a heap overflow end the process with a report.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=${SAN_DIR:-$root/build/sanitizers}
mkdir -p "$work" && work=$(cd "$work" && pwd)
jobs=${SAN_JOBS:-2}
context=${SAN_MALLOC_CONTEXT:-3}
start=$(date +%s)
say() { echo "[sanitizers] $*"; }
since() { echo "$(( $(date +%s) - $1 )) s"; }

# ---- prerequisites
for tool in g++ cmake ninja python; do
  command -v "$tool" > /dev/null || { say "needs $tool on PATH"; exit 2; }
done
python -c 'import numpy, pytest, pybind11, scipy_openblas32' 2> /dev/null || {
  say "needs numpy, pytest, pybind11 and scipy-openblas32 in $(command -v python)"; exit 2; }
preload=""
for lib in libasan.so libubsan.so libstdc++.so; do
  path=$(readlink -f "$(g++ -print-file-name=$lib)")
  if ! head -c 4 "$path" 2> /dev/null | grep -q ELF; then
    say "g++ -print-file-name=$lib gives no shared library ($path)"; exit 2
  fi
  preload+="${preload:+ }$path"
done

# ---- build: the extension as pyproject's build makes it, instrumented
t=$(date +%s)
flags="-O1 -g -fsanitize=address,undefined,float-cast-overflow -fno-omit-frame-pointer -fno-sanitize-recover=undefined,float-cast-overflow"
version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$root/pyproject.toml" | head -n 1)
key="$root|$(command -v python)|$flags"
# A build directory configured for another checkout, python or flags is started afresh.
if [[ -e $work/build && $(cat "$work/build/.san-key" 2> /dev/null) != "$key" ]]; then
  rm -rf "$work/build"
fi
mkdir -p "$work/build" && echo "$key" > "$work/build/.san-key"
cmake -S "$root" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="$flags" \
  -DCMAKE_MODULE_LINKER_FLAGS="-fsanitize=address,undefined" \
  -DCMAKE_INTERPROCEDURAL_OPTIMIZATION=OFF -DSKBUILD_PROJECT_VERSION="$version" -DFUSEDRNN_CUDA=OFF \
  -Dpybind11_DIR="$(python -c 'import pybind11; print(pybind11.get_cmake_dir())')" \
  > "$work/cmake.log" 2>&1 || { cat "$work/cmake.log"; say "cmake failed"; exit 1; }
ninja -C "$work/build" -j "$jobs" > "$work/ninja.log" 2>&1 || {
  tail -n 60 "$work/ninja.log"; say "build failed (log: $work/ninja.log)"; exit 1; }
selfcheck=$work/build/selfcheck
mkdir -p "$selfcheck"
cat > "$selfcheck/san_selfcheck.cpp.new" <<'EOF'
// Built by tests/run_sanitizers.sh with the extension's flags: bugs its set-up must report.
#include <pybind11/pybind11.h>
#include <omp.h>
#include <climits>
#include <cstdlib>
static void* volatile sink;  // overwritten at once: what was stored in it is unreachable
static char* volatile buffer;
PYBIND11_MODULE(_san_selfcheck, m) {
  m.def("leak_in_binding", [] { sink = new char[1001]; sink = nullptr; });
  m.def("leak_in_worker", [] {
#pragma omp parallel num_threads(2)
    if (omp_get_thread_num() == 1) { sink = std::malloc(2002); sink = nullptr; }
  });
  m.def("signed_overflow", [](int x) { return x + INT_MAX; });
  m.def("heap_overflow", [](int i) {
    buffer = new char[8]();
    int c = buffer[i];
    delete[] buffer;
    return c;
  });
}
EOF
ext=$(python -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
if ! cmp -s "$selfcheck/san_selfcheck.cpp.new" "$selfcheck/san_selfcheck.cpp" \
    || [[ ! -f $selfcheck/_san_selfcheck$ext ]]; then
  mv "$selfcheck/san_selfcheck.cpp.new" "$selfcheck/san_selfcheck.cpp"
  # shellcheck disable=SC2086
  g++ $flags -std=c++17 -fPIC -shared -fopenmp -fvisibility=hidden $(python -m pybind11 --includes) \
    "$selfcheck/san_selfcheck.cpp" -o "$selfcheck/_san_selfcheck$ext"
fi
say "build: $(since "$t")"

# ---- the package under test: the sources' Python files beside the instrumented extension
rm -rf "$work/pkg" "$work/logs" && mkdir -p "$work/pkg/fusedrnn" "$work/logs"
cp -r "$root/python/fusedrnn/." "$work/pkg/fusedrnn/"
find "$work/pkg" \( -name '*.so' -o -name __pycache__ \) -prune -exec rm -rf {} +  # in-place builds
cp "$work"/build/_C*.so "$work/pkg/fusedrnn/"
cat > "$work/pkg/_san_select.py" <<'EOF'
"""pytest plugin of tests/run_sanitizers.sh: deselects the tests parametrized with
FUSEDRNN_POISON_WORKSPACE (the poisoned-workspace re-runs of the forced kernel paths). Poison
is a memset of each workspace: the kernels' memory accesses are those of the unpoisoned
re-runs, which stay, so ASan learns nothing new from them; the main CI suite runs them."""


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        env = getattr(getattr(item, "callspec", None), "params", {}).get("env")
        poisoned = isinstance(env, dict) and "FUSEDRNN_POISON_WORKSPACE" in env
        (drop if poisoned else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
EOF
torch=0
if [[ ${SAN_TORCH:-1} != 0 ]] && python -c 'import torch' 2> /dev/null; then torch=1; fi

sanitized() {  # sanitized LOGDIR PRINT_SUPPRESSIONS COMMAND...: ASan/LSan reports in LOGDIR/san.*
  local logdir=$1 supp=$2; shift 2
  env PYTHONPATH="$work/pkg${PYTHONPATH:+:$PYTHONPATH}" PYTHONMALLOC=malloc \
    OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}" LD_PRELOAD="$preload${LD_PRELOAD:+ $LD_PRELOAD}" \
    ASAN_OPTIONS="detect_leaks=1:malloc_context_size=$context:intercept_tls_get_addr=0:detect_stack_use_after_return=1:check_initialization_order=1:strict_init_order=1:log_path=$logdir/san:log_exe_name=1" \
    LSAN_OPTIONS="suppressions=$root/tests/lsan.supp:print_suppressions=$supp" \
    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
    "$@"
}
ubsan_report=': runtime error: '

# ---- self-check
t=$(date +%s)
sc=$work/logs/selfcheck
mkdir -p "$sc/leak" "$sc/signed_overflow" "$sc/heap_overflow"
rc=0
sanitized "$sc/leak" 1 python -c "
import sys
sys.path.insert(0, '$selfcheck')
import numpy as np, fusedrnn, _san_selfcheck as sc
from fusedrnn import functional as F
assert fusedrnn._C.__file__.startswith('$work/pkg/'), fusedrnn._C.__file__
x = np.ones((3, 2, 4), np.float32)
w = np.full((8, 4), 0.1, np.float32)
y, h, c, ctx = F.lstm_forward(x, w, w[:, :2].copy())
F.lstm_backward(ctx, np.ones_like(y))
*_, sctx = F.stack_forward('lstm', x, {'weight_ih_l0': w, 'weight_hh_l0': w[:, :2].copy()})
F.stack_backward(sctx)
for obj in (ctx, sctx):  # the contexts' properties and repr, which no test reads
    repr(obj)
    [getattr(obj, k) for k, v in vars(type(obj)).items() if isinstance(v, property)]
if $torch:
    import torch, fusedrnn.torch as ft
    ft.LSTM(4, 2)(torch.ones(3, 2, 4))[0].sum().backward()
sc.leak_in_binding()
sc.leak_in_worker()
" > "$sc/leak/out.txt" 2>&1 || rc=$?
# Leak reports, and those with a frame in san_selfcheck.cpp.
read -r leaks ours < <(cat "$sc"/leak/san.* 2> /dev/null | awk '
  /^(Direct|Indirect) leak of/ { n++; inblk = 1; hit = 0 }
  inblk && !hit && /san_selfcheck\.cpp/ { ours++; hit = 1 }
  /^$/ { inblk = 0 }
  END { print n + 0, ours + 0 }')
if [[ $rc == 0 || $ours != 2 ]] || ! grep -q "Direct leak of 1001 byte" "$sc"/leak/san.* \
    || ! grep -q "Direct leak of 2002 byte" "$sc"/leak/san.*; then
  cat "$sc/leak/out.txt" "$sc"/leak/san.* 2> /dev/null || true
  say "self-check FAILED: the 2 injected leaks were not both reported (exit $rc; $ours of" \
      "$leaks leak reports in san_selfcheck.cpp; malloc_context_size=$context): set-up broken"
  exit 1
fi
failed=0
if [[ $leaks != 2 ]]; then
  cat "$sc"/leak/san.*
  say "FAILED: $((leaks - 2)) leak report(s) in the self-check besides the 2 injected ones: a" \
      "leak of fusedrnn (_C frames on top) or of a library that tests/lsan.supp does not cover"
  failed=1
fi
for bug in "signed_overflow(1)|$ubsan_report" \
           "heap_overflow(8)|ERROR: AddressSanitizer: heap-buffer-overflow"; do
  name=${bug%%(*}
  rc=0
  sanitized "$sc/$name" 0 python -c "
import sys
sys.path.insert(0, '$selfcheck')
import _san_selfcheck as sc
sc.${bug%%|*}
print('not stopped')" > "$sc/$name/out.txt" 2>&1 || rc=$?
  if [[ $rc == 0 ]] || ! cat "$sc/$name"/* | grep -q "${bug#*|}"; then
    cat "$sc/$name"/*
    say "self-check FAILED: ${bug%%|*} did not end the process with a report (exit $rc)"
    exit 1
  fi
done
say "self-check: the 2 injected leaks are reported$([[ $failed == 0 ]] && echo ", the libraries'" \
    "suppressed"); injected UB and heap overflow are fatal and reported ($(since "$t"))"

# ---- the tests
plugin=()
if [[ $# -gt 0 ]]; then
  args=("$@")
else
  # Every native entry point (forward and backward of each cell, stack forward and backward,
  # gemm, activations, threads, workspaces, config) and the bad-input paths, plus 20 s of the
  # fuzzer of the public API (its driver runs in a subprocess, which inherits the set-up). The
  # native sweep runs its T=7 half (all cells, batch and hidden sizes, dtypes, ragged lengths,
  # directions); the threaded, long-sequence, forced-kernel-path and other-instruction-set
  # tests run whole (in process, through the test hooks), but for the poisoned re-runs. The
  # reliability tests run but for two that measure the process itself: resident memory
  # (ASan's quarantine of freed memory inflates it) and a 1024-thread team.
  args=(tests/test_native.py tests/test_bad_input.py tests/test_activations.py
        tests/test_boundary.py tests/test_cells.py tests/test_threads.py
        tests/test_modules.py tests/test_nn_optim.py tests/test_reliability.py
        tests/test_fuzz.py tests/test_device_emulation.py tests/test_half_storage.py
        tests/test_regularised_native.py)
  if [[ $torch == 1 ]]; then args+=(tests/test_torch_adapter.py tests/test_torch_regularised.py); fi
  args+=(-k "(not test_native_matches_reference or -7-) and not idle_cap and not capped")
  plugin=(-p _san_select)
  export FUSEDRNN_FUZZ_SECONDS=${FUSEDRNN_FUZZ_SECONDS:-20}
fi
t=$(date +%s)
cd "$root"
set +e
sanitized "$work/logs" 0 python -m pytest -q -p no:cacheprovider --capture=sys "${plugin[@]}" \
  "${args[@]}" 2>&1 | tee "$work/logs/pytest.txt"
rc=${PIPESTATUS[0]}
set -e
say "tests: $(since "$t") (pytest exit $rc$([[ $torch == 1 ]] || echo '; torch tests left out'))"

reports=$(find "$work/logs" -maxdepth 1 -name 'san.*' | sort)
if [[ -n $reports ]]; then
  for f in $reports; do echo "==== $f"; cat "$f"; done
  if cat "$work"/logs/san.* | grep -q "LeakSanitizer has encountered a fatal error"; then
    say "note: 'LeakSanitizer has encountered a fatal error' is the sanitizer runtime failing," \
        "not a leak found"
  fi
  say "FAILED: ASan/LSan reports from $(echo "$reports" | wc -l) process(es): above, and in $work/logs"
  failed=1
fi
if grep -q -e "$ubsan_report" "$work/logs/pytest.txt"; then
  grep -e "$ubsan_report" -A 12 "$work/logs/pytest.txt" || true
  say "FAILED: UBSan reports: above, and in $work/logs/pytest.txt"
  failed=1
fi
if [[ $rc != 0 ]]; then say "FAILED: pytest exit $rc"; failed=1; fi
if [[ $failed != 0 ]]; then exit 1; fi
say "passed: no ASan, UBSan or LSan reports; total $(since "$start")"
