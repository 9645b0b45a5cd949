// fusedrnn._C._testing: private hooks for the test suite. Not a public API; may change freely.
//
// * Tuning knobs (cpu/tuning.h) and the kernels' instruction set, settable at run time, so the
//   tests force every kernel path inside one process (the environment variables
//   FUSEDRNN_PANEL_MIN_ROWS, FUSEDRNN_DOT_PROJ_ROWS, FUSEDRNN_POISON_WORKSPACE and FUSEDRNN_ISA
//   still give the initial values). Change them only while no call is running: each call reads
//   each knob once at its start (cpu/tuning.h).
// * The cells' math (cells/*.h), elementwise over arrays, through visit_cell so every kind is
//   reachable: tests/test_cells.py checks each header against fusedrnn.reference.
// * The float32 activations (cells/activations.h), elementwise: tests/test_activations.py.
// * Device emulation: host arrays run the CUDA backend's kernels (csrc/device) on the host
//   executor, so tests/test_device_emulation.py checks the device code without a GPU.
// The hooks run the generic (baseline) build of the cell code; the per-ISA copies compile the
// same source.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include <cblas.h>

#include "bindings/persistent_plan.h"
#include "device/blas_mapping.h"
#include "device/emulated.h"
#include "device/host_exec.h"
#include "device/layer.h"
#include "device/stamps.h"

#include "cells/activations.h"
#include "core/registry.h"
#include "cpu/tuning.h"
#include "fusedrnn/api.h"
#include "fusedrnn/check.h"
#include "fusedrnn/half.h"

namespace py = pybind11;

namespace fusedrnn {
namespace bind {
using fusedrnn::CellKind;

namespace {

fusedrnn::Tuning knob_of(const std::string& name) {
  for (int k = 0; k < int(fusedrnn::Tuning::kCount); ++k)
    if (name == fusedrnn::g_tuning[k].name) return fusedrnn::Tuning(k);
  std::string names;
  for (int k = 0; k < int(fusedrnn::Tuning::kCount); ++k)
    names += (k ? ", '" : "'") + std::string(fusedrnn::g_tuning[k].name) + "'";
  throw std::invalid_argument(fusedrnn::concat("unknown tuning knob '", name, "': expected ",
                                               names));
}

int64_t get_tuning(const std::string& name) { return fusedrnn::tuning(knob_of(name)); }

int64_t set_tuning(const std::string& name, int64_t value) {
  const fusedrnn::Tuning k = knob_of(name);
  fusedrnn::TuningKnob& t = fusedrnn::g_tuning[int(k)];
  FUSEDRNN_CHECK(value >= t.lo && value <= t.hi, "tuning knob '", name, "' must be in [", t.lo,
                 ", ", t.hi, "], got ", value);
  const int64_t old = fusedrnn::tuning(k);
  t.value.store(value, std::memory_order_relaxed);
  return old;
}

py::dict tuning_info() {
  py::dict d;
  for (int k = 0; k < int(fusedrnn::Tuning::kCount); ++k) {
    const fusedrnn::TuningKnob& t = fusedrnn::g_tuning[k];
    d[t.name] = py::dict(py::arg("value") = fusedrnn::tuning(fusedrnn::Tuning(k)),
                         py::arg("default") = t.fallback,
                         py::arg("env") = t.env,
                         py::arg("from_env") = fusedrnn::tuning_from_env(fusedrnn::Tuning(k)),
                         py::arg("min") = t.lo, py::arg("max") = t.hi);
  }
  return d;
}

// Test hook: the float activations the kernels use (generic build), elementwise.
py::array_t<float> activation(const std::string& name,
                              py::array_t<float, py::array::c_style | py::array::forcecast> x) {
  auto out = py::array_t<float>(x.size());
  const float* in = x.data();
  float* o = out.mutable_data();
  if (name == "exp") {
    for (py::ssize_t i = 0; i < x.size(); ++i) o[i] = fusedrnn::exp_fast(in[i]);
  } else if (name == "sigmoid") {
    for (py::ssize_t i = 0; i < x.size(); ++i) o[i] = fusedrnn::sigmoid(in[i]);
  } else if (name == "tanh") {
    for (py::ssize_t i = 0; i < x.size(); ++i) o[i] = fusedrnn::tanh_(in[i]);
  } else {
    throw std::invalid_argument("name must be 'exp', 'sigmoid' or 'tanh'");
  }
  return out;
}

// ---- Cells, elementwise ------------------------------------------------------------------

template <class T>
using Arr = py::array_t<T, py::array::c_style | py::array::forcecast>;

CellKind kind_arg(int kind) {
  FUSEDRNN_CHECK(fusedrnn::valid_cell_kind(kind), "unknown cell kind ", kind);
  return CellKind(kind);
}

// An (n,) array of T, or zeros when `obj` is None.
template <class T>
Arr<T> vec_arg(py::handle obj, py::ssize_t n, const char* name) {
  if (obj.is_none()) {
    Arr<T> z(n);
    std::fill(z.mutable_data(), z.mutable_data() + n, T(0));
    return z;
  }
  Arr<T> a = py::cast<Arr<T>>(obj);
  FUSEDRNN_CHECK(a.ndim() == 1 && a.shape(0) == n, name, " must have shape (", n, ",)");
  return a;
}

template <class T>
Arr<T> mat_arg(py::handle obj, py::ssize_t rows, py::ssize_t cols, const char* name) {
  Arr<T> a = py::cast<Arr<T>>(obj);
  FUSEDRNN_CHECK(a.ndim() == 2 && a.shape(0) == rows && a.shape(1) == cols, name,
                 " must have shape (", rows, ", ", cols, ")");
  return a;
}

// (out, c' (None without a cell state), saved (S, n): element i's saved value s at [s, i]
// (stride n, like the driver's stride H), r h as gates() returned it (None but for GruV1)). GruV1 runs both
// phases: gates(ax, ah, h_prev), then forward with ah[:, 2] as W_hn (r h) + b_hn.
template <class T>
py::tuple cell_forward_typed(CellKind kind, py::handle ax_, py::handle ah_, py::handle h_,
                             py::handle c_) {
  const auto info = fusedrnn::cell_info(kind);
  const int G = info.gates, S = info.saved;
  Arr<T> ax0 = py::cast<Arr<T>>(ax_);
  FUSEDRNN_CHECK(ax0.ndim() == 2, "ax must be (n, G)");
  const py::ssize_t n = ax0.shape(0);
  Arr<T> ax = mat_arg<T>(ax_, n, G, "ax"), ah = mat_arg<T>(ah_, n, G, "ah");
  Arr<T> hp = vec_arg<T>(h_, n, "h_prev"), c0 = vec_arg<T>(c_, n, "c");
  Arr<T> out(n), c(n), saved(std::vector<py::ssize_t>{S, n}), rh(n);
  // NaN first: a saved slot the cell does not write stays NaN, and the tests see it.
  std::fill(saved.mutable_data(), saved.mutable_data() + S * n,
            std::numeric_limits<T>::quiet_NaN());
  const T *pax = ax.data(), *pah = ah.data(), *php = hp.data(), *pc0 = c0.data();
  T *po = out.mutable_data(), *pc = c.mutable_data(), *psv = saved.mutable_data(),
    *prh = rh.mutable_data();
  fusedrnn::visit_cell(kind, [&](auto cell) {
    using Cell = decltype(cell);
    for (py::ssize_t i = 0; i < n; ++i) {
      T cj = pc0[i];
      if constexpr (Cell::kTwoPhase)
        prh[i] = Cell::gates(pax + i * G, pah + i * G, php[i], psv + i, long(n));
      po[i] = Cell::forward(pax + i * G, pah + i * G, php[i], cj, psv + i, long(n));
      pc[i] = cj;
    }
    return 0;
  });
  return py::make_tuple(out, info.cell_state ? py::object(c) : py::none(), saved,
                        kind == CellKind::GruV1 ? py::object(rh) : py::none());
}

// dax (n, G), dah (n, G): d(input pre-activations) and d(recurrent pre-activations) as the
// driver uses them (dah = dax for cells without a split gradient), dc_prev (n,), dh_direct
// (n,). GruV1 runs both phases: backward, then backward_reset with drh = d(r h) (zeros when
// None), which gives dax[:, 0] and adds the r h path to dh_direct.
template <class T>
py::tuple cell_backward_typed(CellKind kind, py::handle saved_, py::handle dout_, py::handle h_,
                              py::handle dc_, py::handle drh_) {
  const auto info = fusedrnn::cell_info(kind);
  const int G = info.gates, S = info.saved;
  Arr<T> dout0 = py::cast<Arr<T>>(dout_);
  FUSEDRNN_CHECK(dout0.ndim() == 1, "dout must be (n,)");
  const py::ssize_t n = dout0.shape(0);
  Arr<T> sv = mat_arg<T>(saved_, S, n, "saved");
  Arr<T> hp = vec_arg<T>(h_, n, "h_prev"), dc0 = vec_arg<T>(dc_, n, "dc"),
         drh = vec_arg<T>(drh_, n, "drh");
  Arr<T> dax(std::vector<py::ssize_t>{n, G}), dah(std::vector<py::ssize_t>{n, G}), dc(n),
      dh(n);
  const T nan = std::numeric_limits<T>::quiet_NaN();
  std::fill(dax.mutable_data(), dax.mutable_data() + n * G, nan);
  std::fill(dah.mutable_data(), dah.mutable_data() + n * G, nan);
  const T *psv = sv.data(), *pdo = dout0.data(), *php = hp.data(), *pdc0 = dc0.data(),
          *pdrh = drh.data();
  T *pdax = dax.mutable_data(), *pdah = dah.mutable_data(), *pdc = dc.mutable_data(),
    *pdh = dh.mutable_data();
  fusedrnn::visit_cell(kind, [&](auto cell) {
    using Cell = decltype(cell);
    for (py::ssize_t i = 0; i < n; ++i) {
      T dcj = pdc0[i], direct;
      T* dx = pdax + i * G;
      T* dr = pdah + i * G;
      Cell::backward(psv + i, long(n), pdo[i], php[i], dcj, dx, dr, direct);
      if constexpr (Cell::kTwoPhase)
        Cell::backward_reset(psv + i, long(n), pdrh[i], php[i], dx[0], direct);
      if constexpr (!Cell::kSplitGrad)
        for (int g = 0; g < G; ++g) dr[g] = dx[g];
      pdc[i] = dcj;
      pdh[i] = direct;
    }
    return 0;
  });
  return py::make_tuple(dax, dah, info.cell_state ? py::object(dc) : py::none(), dh);
}

bool is_float64(py::handle a) {
  py::array arr = py::array::ensure(a);
  FUSEDRNN_CHECK(arr, "expected an array");
  const py::dtype dt = arr.dtype();
  if (dt.equal(py::dtype::of<double>())) return true;
  FUSEDRNN_CHECK(dt.equal(py::dtype::of<float>()), "expected float32 or float64, got ",
                 py::str(dt).cast<std::string>());
  return false;
}

py::tuple cell_forward(int kind, py::handle ax, py::handle ah, py::handle h_prev, py::handle c) {
  const CellKind k = kind_arg(kind);
  return is_float64(ax) ? cell_forward_typed<double>(k, ax, ah, h_prev, c)
                        : cell_forward_typed<float>(k, ax, ah, h_prev, c);
}

py::tuple cell_backward(int kind, py::handle saved, py::handle dout, py::handle h_prev,
                        py::handle dc, py::handle drh) {
  const CellKind k = kind_arg(kind);
  return is_float64(dout) ? cell_backward_typed<double>(k, saved, dout, h_prev, dc, drh)
                          : cell_backward_typed<float>(k, saved, dout, h_prev, dc, drh);
}

// Row-major C = op(A) op(B) computed as the column-major call cuBLAS gets
// (device/blas_mapping.h), on the CPU's column-major BLAS: checks the mapping.
py::array_t<double> colmajor_gemm(bool ta, bool tb, py::array_t<double, py::array::c_style> a,
                                  py::array_t<double, py::array::c_style> b) {
  FUSEDRNN_CHECK(a.ndim() == 2 && b.ndim() == 2, "a and b must be 2-D");
  const int64_t M = ta ? a.shape(1) : a.shape(0), K = ta ? a.shape(0) : a.shape(1);
  const int64_t N = tb ? b.shape(0) : b.shape(1);
  FUSEDRNN_CHECK((tb ? b.shape(1) : b.shape(0)) == K, "inner dimensions differ");
  py::array_t<double> c({M, N});
  const device::ColMajorGemm m = device::to_col_major(ta, tb, M, N, K);
  scipy_cblas_dgemm(CblasColMajor, m.trans_first ? CblasTrans : CblasNoTrans,
                    m.trans_second ? CblasTrans : CblasNoTrans, int(m.m), int(m.n), int(m.k), 1.0,
                    b.data(), int(b.shape(1)), a.data(), int(a.shape(1)), 0.0, c.mutable_data(),
                    int(N));
  return c;
}

// c = alpha op(a) op(b) + beta c in place through the device backend's own GEMM (GemmBlock) on
// the host runner, in the given thread order.
template <class T>
void device_gemm_typed(bool ta, bool tb, py::array a, py::array b, py::array c, double alpha,
                       double beta, int order) {
  auto A = py::array_t<T, py::array::c_style>::ensure(a);
  auto Bm = py::array_t<T, py::array::c_style>::ensure(b);
  FUSEDRNN_CHECK(A && Bm && A.ndim() == 2 && Bm.ndim() == 2 && c.ndim() == 2,
                 "a, b, c must be 2-D");
  FUSEDRNN_CHECK(py::isinstance<py::array_t<T>>(c) && (c.flags() & py::array::c_style) &&
                     c.writeable(),
                 "c must be a writeable C-contiguous array of a's dtype");
  const int64_t M = c.shape(0), N = c.shape(1), K = ta ? A.shape(0) : A.shape(1);
  FUSEDRNN_CHECK((ta ? A.shape(1) : A.shape(0)) == M && (tb ? Bm.shape(0) : Bm.shape(1)) == N &&
                     (tb ? Bm.shape(1) : Bm.shape(0)) == K,
                 "shapes do not agree");
  device::HostExec ex;
  ex.order = order;
  device::gemm<T>(ex, ta, tb, M, N, K, T(alpha), A.data(), A.shape(1), Bm.data(), Bm.shape(1),
                  T(beta), static_cast<T*>(c.mutable_data()), N);
}

// The device stamps (device/stamps.h) of C-contiguous host arrays, on the host executor.
struct HostArrays {
  std::vector<py::array> keep;
  std::vector<const void*> data;
  std::vector<size_t> bytes;
  explicit HostArrays(const py::list& arrays) {
    for (auto item : arrays) {
      py::array a = py::array::ensure(item, py::array::c_style);
      FUSEDRNN_CHECK(a && a.itemsize() % 4 == 0, "arrays must have 4- or 8-byte elements");
      keep.push_back(a);
      data.push_back(a.data());
      bytes.push_back(size_t(a.nbytes()));
    }
  }
};

py::array_t<uint64_t> device_stamps(const py::list& arrays) {
  HostArrays h(arrays);
  py::array_t<uint64_t> out(py::ssize_t(h.data.size()));
  device::HostExec ex;
  device::device_stamps(ex, h.data.size(), h.data.data(), h.bytes.data(), out.mutable_data());
  return out;
}

int64_t device_changed_stamp(const py::list& arrays, py::array_t<uint64_t> stamps) {
  HostArrays h(arrays);
  FUSEDRNN_CHECK(size_t(stamps.size()) == h.data.size(), "one stamp per array");
  device::HostExec ex;
  return device::first_changed_stamp(ex, h.data.size(), h.data.data(), h.bytes.data(),
                                     stamps.data());
}

}  // namespace

void register_testing(py::module_& m) {
  py::module_ t = m.def_submodule(
      "_testing", "Private test hooks: tuning knobs, instruction set, cell math. Not an API.");
  t.def("get_tuning", &get_tuning, py::arg("name"),
        "The knob's current value ('panel_min_rows', 'dot_projection_max_rows', "
        "'poison_workspace').");
  t.def("set_tuning", &set_tuning, py::arg("name"), py::arg("value"),
        "Sets a knob for every later call; returns the old value. Only while no call runs.");
  t.def("tuning_info", &tuning_info, "Every knob: value, default, env variable and range.");
  t.def("get_isa", &fusedrnn::simd_path, "The kernels' instruction set now in use.");
  t.def("set_isa", &fusedrnn::set_simd_path, py::arg("name"),
        "Switches the kernels to 'generic', 'avx2' or 'avx512' (ValueError if unknown or "
        "not supported here); returns the path now in use. Only while no call runs.");
  t.def("supported_isas", &fusedrnn::simd_paths_supported,
        "The instruction sets this CPU and build support, best last.");
  t.def("activation", &activation, py::arg("name"), py::arg("x"),
        "The kernels' float32 exp/sigmoid/tanh (generic build), elementwise.");
  t.def("cell_forward", &cell_forward, py::arg("kind"), py::arg("ax"), py::arg("ah"),
        py::arg("h_prev") = py::none(), py::arg("c") = py::none(),
        "One cell header's forward over (n, G) pre-activations: (out, c' or None, "
        "saved (S, n), r h or None).");
  t.def("cell_backward", &cell_backward, py::arg("kind"), py::arg("saved"), py::arg("dout"),
        py::arg("h_prev") = py::none(), py::arg("dc") = py::none(), py::arg("drh") = py::none(),
        "One cell header's backward: (dax (n, G), dah (n, G), dc_prev or None, dh_direct).");
  t.def(
      "round_16bit",
      [](const std::string& storage, py::array_t<float, py::array::c_style | py::array::forcecast> v) {
        FUSEDRNN_CHECK(storage == "bfloat16" || storage == "float16",
                       "storage must be 'bfloat16' or 'float16'");
        py::array_t<uint16_t> bits(v.size());
        py::array_t<float> back(v.size());
        const float* in = v.data();
        uint16_t* b = bits.mutable_data();
        float* w = back.mutable_data();
        for (py::ssize_t i = 0; i < v.size(); ++i) {
          if (storage == "bfloat16") {
            const bfloat16 h = narrow<bfloat16>(in[i]);
            b[i] = h.bits;
            w[i] = widen(h);
          } else {
            const float16 h = narrow<float16>(in[i]);
            b[i] = h.bits;
            w[i] = widen(h);
          }
        }
        return py::make_tuple(bits, back);
      },
      py::arg("storage"), py::arg("values"),
      "fusedrnn/half.h's narrowing of float32 values (flat): (uint16 bits, the bits widened).");
  t.def(
      "widen_16bit",
      [](const std::string& storage, py::array_t<uint16_t, py::array::c_style | py::array::forcecast> v) {
        FUSEDRNN_CHECK(storage == "bfloat16" || storage == "float16",
                       "storage must be 'bfloat16' or 'float16'");
        py::array_t<float> out(v.size());
        for (py::ssize_t i = 0; i < v.size(); ++i)
          out.mutable_data()[i] = storage == "bfloat16" ? widen(bfloat16{v.data()[i]})
                                                        : widen(float16{v.data()[i]});
        return out;
      },
      py::arg("storage"), py::arg("bits"), "fusedrnn/half.h's widening of 16-bit patterns (flat).");
  t.def(
      "set_device_emulation",
      [](int order) {
        FUSEDRNN_CHECK(order >= -1 && order <= 2, "order must be -1 (off), 0, 1 or 2");
        const int old = device::emulation();
        device::set_emulation(order);
        return old;
      },
      py::arg("order"),
      "Host arrays run the device backend's kernels on the host: order 0/1/2 runs each "
      "launch's elements ascending/descending/permuted; -1 is off (the CPU backend). Returns "
      "the old value. Only while no call runs.");
  t.def(
      "set_persistent_emulation",
      [](int mode, int max_blocks, int threads) {
        FUSEDRNN_CHECK(mode >= 0 && mode <= 2 && max_blocks >= 1 && threads >= 1,
                       "mode must be 0 (off), 1 (on) or 2 (auto); max_blocks, threads >= 1");
        device::set_persistent_emulation(mode, max_blocks, threads);
      },
      py::arg("mode"), py::arg("max_blocks") = 3, py::arg("threads") = 32,
      "The device emulation's persistent loops: 0 off, 1 wherever they fit, 2 auto; run on a "
      "host grid of at most max_blocks blocks (std::threads) of `threads` threads.");
  t.def(
      "persistent_plan",
      [](int kind, int64_t batch, int64_t hidden, int64_t proj, int itemsize, bool forward) {
        FUSEDRNN_CHECK(valid_cell_kind(kind), "unknown cell kind ", kind);
        const device::PersistentPlan p = device::emulated_persistent_plan(
            kind, batch, hidden, proj, size_t(itemsize), forward);
        return persistent_plan_dict(p);
      },
      py::arg("kind"), py::arg("batch"), py::arg("hidden"), py::arg("proj"), py::arg("itemsize"),
      py::arg("forward"), "The plan the emulated device backend makes for a layer.");
  t.def(
      "unit_ranges",
      [](int64_t H, int64_t blocks) {
        py::list out;
        for (int64_t k = 0; k < blocks; ++k) {
          int64_t u0, u1;
          device::unit_range(H, blocks, k, u0, u1);
          out.append(py::make_tuple(u0, u1));
        }
        return out;
      },
      py::arg("hidden"), py::arg("blocks"), "The persistent kernels' units per block.");
  t.def(
      "plan_persistent",
      [](int mode, bool cell_ok, int64_t gates, int64_t batch, int64_t hidden, int itemsize,
         bool forward, int max_blocks, int threads, size_t shared_limit,
         int64_t auto_max_batch) {
        const device::PersistentPlan p = device::plan_persistent(
            device::PersistentMode(mode), cell_ok, gates, batch, hidden, size_t(itemsize),
            forward, max_blocks, threads, shared_limit, auto_max_batch);
        return persistent_plan_dict(p);
      },
      py::arg("mode"), py::arg("cell_ok"), py::arg("gates"), py::arg("batch"), py::arg("hidden"),
      py::arg("itemsize"), py::arg("forward"), py::arg("max_blocks"), py::arg("threads"),
      py::arg("shared_limit"), py::arg("auto_max_batch"),
      "device::plan_persistent for explicit device limits (the H200's, say).");
  t.def("device_stamps", &device_stamps, py::arg("arrays"),
        "The device backend's content stamps of host arrays, run on the host executor.");
  t.def("device_changed_stamp", &device_changed_stamp, py::arg("arrays"), py::arg("stamps"),
        "Index of the first array whose device stamp differs from stamps, or -1.");
  t.def(
      "device_gemm",
      [](bool ta, bool tb, py::array a, py::array b, py::array c, double alpha, double beta,
         int order) {
        if (c.dtype().equal(py::dtype::of<double>()))
          device_gemm_typed<double>(ta, tb, a, b, c, alpha, beta, order);
        else
          device_gemm_typed<float>(ta, tb, a, b, c, alpha, beta, order);
      },
      py::arg("trans_a"), py::arg("trans_b"), py::arg("a"), py::arg("b"), py::arg("c"),
      py::arg("alpha") = 1.0, py::arg("beta") = 0.0, py::arg("order") = 0,
      "The device backend's own GEMM (GemmBlock) on the host runner: c = alpha op(a) op(b) + "
      "beta c in place.");
  t.def("colmajor_gemm", &colmajor_gemm, py::arg("trans_a"), py::arg("trans_b"), py::arg("a"),
        py::arg("b"), "op(a) @ op(b) through the column-major mapping the cuBLAS call uses.");
}

}  // namespace bind
}  // namespace fusedrnn
