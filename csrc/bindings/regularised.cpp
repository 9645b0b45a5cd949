// The regularised layer's entry points (fusedrnn/regularised.h): validate every array and
// option, allocate the outputs and the training state, release the GIL, call the CPU kernels.
// Also the counter-based masks the options draw (core/dropout.h's generator).
#include <pybind11/numpy.h>
#include <pybind11/stl.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "bindings/arrays.h"
#include "core/dropout.h"
#include "core/registry.h"
#include "fusedrnn/api.h"
#include "fusedrnn/check.h"
#include "fusedrnn/regularised.h"

namespace fusedrnn {
namespace bind {

namespace {

// A validated call: sizes, dtype and every array (kept alive here).
struct RegCall {
  CellKind kind = CellKind::Lstm;
  DType dtype = DType::Float32;
  int64_t T = 0, B = 0, I = 0, H = 0, P = 0, G = 0;
  int64_t R() const { return P > 0 ? P : H; }
  Arg x, w_ih, w_hh;
  std::optional<Arg> b_ih, b_hh, w_hr, h0, c0;
  std::optional<py::array> lengths;
  bool reverse = false;
  // options
  std::optional<Arg> ln_ih, ln_hh, ln_c, ln_bc, peep, zh_mask, zc_mask, rd, dc;
  double ln_eps = 1e-5, zoneout_h = 0, zoneout_c = 0;
  bool gate_clip = false, cell_clip = false;
  double gate_lo = 0, gate_hi = 0, cell_lo = 0, cell_hi = 0;

  bool lstm() const { return kind == CellKind::Lstm; }
  bool layer_norm() const { return ln_ih.has_value(); }
  RegLayout layout() const {
    return reg_layout(kind, T, B, H, P, layer_norm(), rd.has_value(), gate_clip, cell_clip);
  }
};

std::string mode_name(CellKind k) { return cell_info(k).name; }

Arg float_arg(py::handle obj, const std::string& name, const RegCall& c,
              const std::vector<int64_t>& shape, const std::string& meaning) {
  Arg a = array_arg(obj, name);
  check_dtype(a, name, c.dtype, " (x's dtype)");
  check_shape(a, name, shape, meaning);
  return a;
}

std::optional<Arg> opt_float(py::handle obj, const std::string& name, const RegCall& c,
                             const std::vector<int64_t>& shape, const std::string& meaning) {
  if (obj.is_none()) return std::nullopt;
  return float_arg(obj, name, c, shape, meaning);
}

std::optional<Arg> opt_mask(py::handle obj, const std::string& name,
                            const std::vector<int64_t>& shape, const std::string& meaning) {
  if (obj.is_none()) return std::nullopt;
  Arg a = array_arg(obj, name);
  FUSEDRNN_CHECK_TYPE(a.view.dtype == DType::UInt8 || a.view.dtype == DType::Bool, name,
                      " must have dtype uint8 or bool (1: keep the previous value), got ",
                      dtype_name(a.view.dtype));
  check_shape(a, name, shape, meaning);
  const uint8_t* m = a.ptr<uint8_t>();
  for (int64_t k = 0, n = a.view.size(); k < n; ++k)
    FUSEDRNN_CHECK(m[k] <= 1, name, " must be binary (0 or 1 in every entry), got ", int(m[k]),
                   " at flat index ", k);
  return a;
}

double rate_arg(py::handle opts, const char* key) {
  py::object v = py::reinterpret_borrow<py::dict>(opts).contains(key)
                     ? py::object(py::reinterpret_borrow<py::dict>(opts)[key])
                     : py::object(py::none());
  if (v.is_none()) return 0.0;
  const double r = v.cast<double>();
  FUSEDRNN_CHECK(r >= 0.0 && r <= 1.0, key, " must be a rate in [0, 1], got ", r);
  return r;
}

// (lo, hi) from a pair; none: off.
bool bounds_arg(py::dict opts, const char* key, double& lo, double& hi) {
  if (!opts.contains(key) || opts[key].is_none()) return false;
  py::tuple t = py::reinterpret_borrow<py::object>(opts[key]).cast<py::tuple>();
  FUSEDRNN_CHECK(t.size() == 2, key, " must be a pair (lo, hi)");
  lo = t[0].cast<double>();
  hi = t[1].cast<double>();
  FUSEDRNN_CHECK(lo <= hi, key, ": lo must be <= hi, got (", lo, ", ", hi, ")");
  return true;
}

py::handle opt(py::dict opts, const char* key) {
  return opts.contains(key) ? py::handle(opts[key]) : py::handle(py::none());
}

const char* const kOptionKeys[] = {
    "ln_weight_ih", "ln_weight_hh", "ln_weight_c", "ln_bias_c", "ln_eps", "weight_peephole",
    "gate_clip", "cell_clip", "zoneout_h", "zoneout_c", "zoneout_h_mask", "zoneout_c_mask",
    "recurrent_dropout_mask", "dropconnect_mask"};

RegCall validate(int kind_int, py::handle x_, py::handle w_ih_, py::handle w_hh_,
                 py::handle b_ih_, py::handle b_hh_, py::handle w_hr_, py::handle h0_,
                 py::handle c0_, py::handle lengths_, bool reverse, py::dict opts) {
  FUSEDRNN_CHECK(valid_cell_kind(kind_int), "unknown cell kind ", kind_int);
  for (auto item : opts) {
    const std::string k = py::str(item.first);
    bool known = false;
    for (const char* o : kOptionKeys) known = known || k == o;
    FUSEDRNN_CHECK(known, "unknown option '", k, "'");
  }
  RegCall c;
  c.kind = CellKind(kind_int);
  c.G = reg_gates(c.kind);
  c.reverse = reverse;
  const std::string mode = mode_name(c.kind);
  c.x = array_arg(x_, "x");
  c.dtype = first_float(c.x, "x");
  FUSEDRNN_CHECK(c.x.view.ndim == 3, "x must be 3-D with shape (T, B, input_size), got shape ",
                 c.x.view.shape_str());
  c.T = c.x.view.shape[0], c.B = c.x.view.shape[1], c.I = c.x.view.shape[2];
  FUSEDRNN_CHECK(c.T >= 1, "x must have at least one time step, got shape ", c.x.view.shape_str());
  c.w_ih = array_arg(w_ih_, "w_ih");
  check_dtype(c.w_ih, "w_ih", c.dtype, " (x's dtype)");
  FUSEDRNN_CHECK(c.w_ih.view.ndim == 2 && c.w_ih.view.shape[0] % c.G == 0 &&
                     c.w_ih.view.shape[0] > 0 && c.w_ih.view.shape[1] == c.I,
                 "w_ih must have shape (", c.G, "*hidden_size, input_size=", c.I, "), got ",
                 c.w_ih.view.shape_str());
  c.H = c.w_ih.view.shape[0] / c.G;
  if (!w_hr_.is_none()) {
    FUSEDRNN_CHECK(c.lstm(), "w_hr (a projection) is for the LSTM only, not mode '", mode, "'");
    Arg w = array_arg(w_hr_, "w_hr");
    check_dtype(w, "w_hr", c.dtype, " (x's dtype)");
    FUSEDRNN_CHECK(w.view.ndim == 2 && w.view.shape[1] == c.H && w.view.shape[0] >= 1 &&
                       w.view.shape[0] < c.H,
                   "w_hr must have shape (proj_size, hidden_size=", c.H,
                   ") with 0 < proj_size < hidden_size, got ", w.view.shape_str());
    c.P = w.view.shape[0];
    c.w_hr = std::move(w);
  }
  const int64_t G = c.G, H = c.H, R = c.R(), B = c.B, T = c.T;
  c.w_hh = float_arg(w_hh_, "w_hh", c, {G * H, R}, "(G*hidden_size, recurrent size)");
  c.b_ih = opt_float(b_ih_, "b_ih", c, {G * H}, "(G*hidden_size,)");
  c.b_hh = opt_float(b_hh_, "b_hh", c, {G * H}, "(G*hidden_size,)");
  FUSEDRNN_CHECK(c.b_ih.has_value() == c.b_hh.has_value(), "b_ih and b_hh: both or neither");
  c.h0 = opt_float(h0_, "h0", c, {B, R}, "(batch, recurrent size)");
  if (!c0_.is_none()) {
    FUSEDRNN_CHECK(c.lstm(), "c0 is for the LSTM only, not mode '", mode, "'");
    c.c0 = float_arg(c0_, "c0", c, {B, H}, "(batch, hidden_size)");
  }
  if (!lengths_.is_none()) {
    py::array l = py::array::ensure(lengths_);
    FUSEDRNN_CHECK_TYPE(l && (l.dtype().kind() == 'i' || l.dtype().kind() == 'u'),
                        "lengths must be an integer array");
    FUSEDRNN_CHECK(l.ndim() == 1 && l.shape(0) == B, "lengths must have shape (batch,) = (", B,
                   ",)");
    constexpr int kFlags = py::array::c_style | py::array::forcecast;
    auto l64 = py::array_t<int64_t, kFlags>::ensure(l);
    auto acc = l64.unchecked<1>();
    for (int64_t b = 0; b < B; ++b)
      FUSEDRNN_CHECK(acc(b) >= 1 && acc(b) <= T, "lengths must lie in [1, T] = [1, ", T,
                     "], got lengths[", b, "] = ", acc(b));
    c.lengths = l64;
  }

  // The options.
  c.ln_ih = opt_float(opt(opts, "ln_weight_ih"), "ln_weight_ih", c, {G * H}, "(G*hidden_size,)");
  c.ln_hh = opt_float(opt(opts, "ln_weight_hh"), "ln_weight_hh", c, {G * H}, "(G*hidden_size,)");
  c.ln_c = opt_float(opt(opts, "ln_weight_c"), "ln_weight_c", c, {H}, "(hidden_size,)");
  c.ln_bc = opt_float(opt(opts, "ln_bias_c"), "ln_bias_c", c, {H}, "(hidden_size,)");
  const bool any_ln = c.ln_ih || c.ln_hh || c.ln_c || c.ln_bc;
  if (any_ln) {
    FUSEDRNN_CHECK(c.kind != CellKind::GruV1,
                   "layer normalisation of the GRU with reset_after=False is not supported (W_hn "
                   "acts on r*h): use reset_after=True");
    FUSEDRNN_CHECK(c.ln_ih && c.ln_hh, "layer normalisation takes ln_weight_ih and ln_weight_hh");
    if (c.lstm())
      FUSEDRNN_CHECK(c.ln_c && c.ln_bc,
                     "the layer-normalised LSTM also takes ln_weight_c and ln_bias_c");
    else
      FUSEDRNN_CHECK(!c.ln_c && !c.ln_bc, "ln_weight_c/ln_bias_c: only the LSTM normalises a "
                     "cell state, not mode '", mode, "'");
  }
  if (opts.contains("ln_eps") && !opts["ln_eps"].is_none()) {
    c.ln_eps = opts["ln_eps"].cast<double>();
    FUSEDRNN_CHECK(c.ln_eps > 0, "ln_eps must be > 0, got ", c.ln_eps);
  }
  c.peep = opt_float(opt(opts, "weight_peephole"), "weight_peephole", c, {3 * H},
                     "(3*hidden_size,)");
  c.gate_clip = bounds_arg(opts, "gate_clip", c.gate_lo, c.gate_hi);
  c.cell_clip = bounds_arg(opts, "cell_clip", c.cell_lo, c.cell_hi);
  FUSEDRNN_CHECK(c.lstm() || (!c.peep && !c.gate_clip && !c.cell_clip),
                 "weight_peephole, gate_clip and cell_clip are defined for the LSTM only, not "
                 "mode '", mode, "'");
  c.zoneout_h = rate_arg(opts, "zoneout_h");
  c.zoneout_c = rate_arg(opts, "zoneout_c");
  c.zh_mask = opt_mask(opt(opts, "zoneout_h_mask"), "zoneout_h_mask", {T, B, R},
                       "(T, batch, recurrent size)");
  c.zc_mask = opt_mask(opt(opts, "zoneout_c_mask"), "zoneout_c_mask", {T, B, H},
                       "(T, batch, hidden_size)");
  FUSEDRNN_CHECK(!(c.zh_mask && c.zoneout_h != 0),
                 "zoneout_h (inference) and zoneout_h_mask (training) are exclusive");
  FUSEDRNN_CHECK(!(c.zc_mask && c.zoneout_c != 0),
                 "zoneout_c (inference) and zoneout_c_mask (training) are exclusive");
  FUSEDRNN_CHECK(c.lstm() || (!c.zc_mask && c.zoneout_c == 0),
                 "zoneout_c: only the LSTM has a cell state to zone out, not mode '", mode, "'");
  c.rd = opt_float(opt(opts, "recurrent_dropout_mask"), "recurrent_dropout_mask", c, {B, R},
                   "(batch, recurrent size)");
  c.dc = opt_float(opt(opts, "dropconnect_mask"), "dropconnect_mask", c, {G * H, R},
                   "(G*hidden_size, recurrent size)");
  return c;
}

template <class T>
const T* ptr(const std::optional<Arg>& a) {
  return a ? a->ptr<T>() : nullptr;
}

template <class T>
void fill_shape(LayerShape<T>& p, const RegCall& c) {
  p.steps = c.T, p.batch = c.B, p.input = c.I, p.hidden = c.H, p.proj = c.P;
  p.x = c.x.ptr<T>();
  p.w_ih = c.w_ih.ptr<T>();
  p.w_hh = c.w_hh.ptr<T>();
  p.b_ih = ptr<T>(c.b_ih);
  p.b_hh = ptr<T>(c.b_hh);
  p.w_hr = ptr<T>(c.w_hr);
  p.lengths = c.lengths ? static_cast<const int64_t*>(c.lengths->data()) : nullptr;
  p.reverse = c.reverse;
}

template <class T>
RegOptions<T> options(const RegCall& c) {
  RegOptions<T> o;
  o.ln_weight_ih = ptr<T>(c.ln_ih);
  o.ln_weight_hh = ptr<T>(c.ln_hh);
  o.ln_weight_c = ptr<T>(c.ln_c);
  o.ln_bias_c = ptr<T>(c.ln_bc);
  o.ln_eps = T(c.ln_eps);
  o.peephole = ptr<T>(c.peep);
  o.gate_clip = c.gate_clip, o.gate_lo = T(c.gate_lo), o.gate_hi = T(c.gate_hi);
  o.cell_clip = c.cell_clip, o.cell_lo = T(c.cell_lo), o.cell_hi = T(c.cell_hi);
  o.zoneout_h_mask = c.zh_mask ? c.zh_mask->ptr<uint8_t>() : nullptr;
  o.zoneout_c_mask = c.zc_mask ? c.zc_mask->ptr<uint8_t>() : nullptr;
  o.zoneout_h = T(c.zoneout_h);
  o.zoneout_c = T(c.zoneout_c);
  o.recurrent_dropout = ptr<T>(c.rd);
  o.dropconnect = ptr<T>(c.dc);
  return o;
}

// Touches fresh memory (the training state: tens of MiB with layer norm) on every thread of the
// team, so the kernel's page zeroing is split over the threads instead of falling on whichever
// thread writes a page first, inside the time loop, while the others wait at its barriers.
void first_touch(void* data, size_t bytes) {
  constexpr size_t kChunk = size_t(1) << 20;
  const int64_t chunks = int64_t((bytes + kChunk - 1) / kChunk);
  char* base = static_cast<char*>(data);
  run_parallel_work([&] {
#pragma omp parallel for num_threads(get_num_threads()) schedule(static) if (chunks > 1)
    for (int64_t i = 0; i < chunks; ++i) {
      const size_t off = size_t(i) * kChunk;
      std::memset(base + off, 0, std::min(kChunk, bytes - off));
    }
  });
}

// What a backward reads besides its reserve, to stamp (fusedrnn::content_stamps): a training
// forward stamps these, backward checks them, so an in-place change in between (an optimizer
// step, a reused input buffer) raises instead of mixing old activations with new values.
struct Stamped {
  std::vector<std::string> names;
  std::vector<const void*> data;
  std::vector<size_t> bytes;
  explicit Stamped(const RegCall& c) {
    auto add = [&](const char* name, const std::optional<Arg>& a) {
      if (a) add_arg(name, *a);
    };
    add_arg("x", c.x);
    add_arg("w_ih", c.w_ih);
    add_arg("w_hh", c.w_hh);
    add("w_hr", c.w_hr);
    add("ln_weight_ih", c.ln_ih);
    add("ln_weight_hh", c.ln_hh);
    add("ln_weight_c", c.ln_c);
    add("ln_bias_c", c.ln_bc);
    add("weight_peephole", c.peep);
    add("zoneout_h_mask", c.zh_mask);
    add("zoneout_c_mask", c.zc_mask);
    add("recurrent_dropout_mask", c.rd);
    add("dropconnect_mask", c.dc);
  }
  void add_arg(const char* name, const Arg& a) {
    names.emplace_back(name);
    data.push_back(a.view.data);
    bytes.push_back(a.view.nbytes());
  }
  std::vector<uint64_t> compute() const {
    std::vector<uint64_t> out(data.size());
    content_stamps(data.size(), data.data(), bytes.data(), out.data());
    return out;
  }
};

py::array new_array(DType t, std::vector<int64_t> shape) {
  return allocate(py::none(), shape, t).object;
}

template <class T>
py::tuple forward_t(const RegCall& c, bool training, bool check_inplace) {
  const int64_t B = c.B, H = c.H, R = c.R();
  py::array y = new_array(c.dtype, {c.T, B, R}), h_n = new_array(c.dtype, {B, R});
  py::object c_n = py::none(), reserve = py::none();
  RegForwardParams<T> p;
  fill_shape(p, c);
  p.kind = c.kind;
  p.opt = options<T>(c);
  p.y = static_cast<T*>(y.mutable_data());
  p.h0 = ptr<T>(c.h0);
  p.c0 = ptr<T>(c.c0);
  p.h_n = static_cast<T*>(h_n.mutable_data());
  if (c.lstm()) {
    py::array cn = new_array(c.dtype, {B, H});
    p.c_n = static_cast<T*>(cn.mutable_data());
    c_n = cn;
  }
  if (training) {
    py::array rs = new_array(c.dtype, {c.layout().total});
    p.reserve = static_cast<T*>(rs.mutable_data());
    reserve = rs;
  }
  py::object stamps = py::none();
  if (training && check_inplace) {
    const Stamped st(c);
    py::array_t<uint64_t> out(py::ssize_t(st.data.size()));
    uint64_t* dst = out.mutable_data();
    {
      py::gil_scoped_release nogil;
      const std::vector<uint64_t> v = st.compute();
      std::copy(v.begin(), v.end(), dst);
    }
    stamps = out;
  }
  {
    py::gil_scoped_release nogil;
    // (only where it pays: a smaller state's zeroing pass costs more than its faults, measured)
    const size_t reserve_bytes = sizeof(T) * size_t(c.layout().total);
    if (p.reserve && reserve_bytes >= (size_t(32) << 20)) first_touch(p.reserve, reserve_bytes);
    reg_layer_forward<T>(p);
  }
  return py::make_tuple(y, h_n, c_n, reserve, stamps);
}

template <class T>
py::dict backward_t(const RegCall& c, py::handle reserve_, py::handle stamps_, py::handle dy_,
                    py::handle dh_n_, py::handle dc_n_) {
  const int64_t B = c.B, H = c.H, R = c.R(), G = c.G;
  if (!stamps_.is_none()) {
    const Stamped st(c);
    auto want = py::array_t<uint64_t, py::array::c_style | py::array::forcecast>::ensure(stamps_);
    FUSEDRNN_CHECK(want && want.ndim() == 1 && size_t(want.shape(0)) == st.data.size(),
                   "stamps: not the training forward's for these arrays and options");
    std::vector<uint64_t> got;
    {
      py::gil_scoped_release nogil;
      got = st.compute();
    }
    for (size_t i = 0; i < got.size(); ++i)
      if (got[i] != want.data()[i])
        throw std::runtime_error(concat(
            st.names[i], " was modified in place between the training forward and this "
            "backward (an optimizer step, a reused buffer?): backward would combine the "
            "forward's activations with the new values; run the forward again"));
  }
  Arg rs = array_arg(reserve_, "reserve");
  check_dtype(rs, "reserve", c.dtype, " (x's dtype)");
  check_shape(rs, "reserve", {c.layout().total},
              "(the training forward's, for these sizes and options)");
  std::optional<Arg> dy = opt_float(dy_, "dy", c, {c.T, B, R}, "(T, batch, recurrent size)");
  std::optional<Arg> dh_n = opt_float(dh_n_, "dh_n", c, {B, R}, "(batch, recurrent size)");
  std::optional<Arg> dc_n;
  if (!dc_n_.is_none()) {
    FUSEDRNN_CHECK(c.lstm(), "dc_n is for the LSTM only");
    dc_n = float_arg(dc_n_, "dc_n", c, {B, H}, "(batch, hidden_size)");
  }
  py::dict out;
  auto grad = [&](const char* name, std::vector<int64_t> shape) {
    py::array a = new_array(c.dtype, shape);
    out[name] = a;
    return static_cast<T*>(a.mutable_data());
  };
  RegBackwardParams<T> p;
  fill_shape(p, c);
  p.kind = c.kind;
  p.opt = options<T>(c);
  p.reserve = rs.ptr<T>();
  p.dy = ptr<T>(dy);
  p.dh_n = ptr<T>(dh_n);
  p.dc_n = ptr<T>(dc_n);
  p.dx = grad("x", {c.T, B, c.I});
  p.dh0 = grad("h0", {B, R});
  if (c.lstm()) p.dc0 = grad("c0", {B, H});
  p.dw_ih = grad("weight_ih", {G * H, c.I});
  p.dw_hh = grad("weight_hh", {G * H, R});
  if (c.b_ih) {
    p.db_ih = grad("bias_ih", {G * H});
    p.db_hh = grad("bias_hh", {G * H});
  }
  if (c.P) p.dw_hr = grad("weight_hr", {c.P, H});
  if (c.layer_norm()) {
    p.d_ln_weight_ih = grad("ln_weight_ih", {G * H});
    p.d_ln_weight_hh = grad("ln_weight_hh", {G * H});
    if (c.lstm()) {
      p.d_ln_weight_c = grad("ln_weight_c", {H});
      p.d_ln_bias_c = grad("ln_bias_c", {H});
    }
  }
  if (c.peep) p.d_peephole = grad("weight_peephole", {3 * H});
  {
    py::gil_scoped_release nogil;
    reg_layer_backward<T>(p);
  }
  return out;
}

py::tuple py_reg_forward(int kind, py::handle x, py::handle w_ih, py::handle w_hh,
                         py::handle b_ih, py::handle b_hh, py::handle w_hr, py::handle h0,
                         py::handle c0, py::handle lengths, bool reverse, bool training,
                         py::dict opts, bool check_inplace) {
  const RegCall c = validate(kind, x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse,
                             opts);
  return c.dtype == DType::Float64 ? forward_t<double>(c, training, check_inplace)
                                   : forward_t<float>(c, training, check_inplace);
}

py::dict py_reg_backward(int kind, py::handle x, py::handle w_ih, py::handle w_hh,
                         py::handle b_ih, py::handle b_hh, py::handle w_hr, py::handle lengths,
                         bool reverse, py::dict opts, py::handle reserve, py::handle stamps,
                         py::handle dy, py::handle dh_n, py::handle dc_n) {
  const RegCall c = validate(kind, x, w_ih, w_hh, b_ih, b_hh, w_hr, py::none(), py::none(),
                             lengths, reverse, opts);
  return c.dtype == DType::Float64 ? backward_t<double>(c, reserve, stamps, dy, dh_n, dc_n)
                                   : backward_t<float>(c, reserve, stamps, dy, dh_n, dc_n);
}

// Bernoulli draws from the shared counter-based generator: element i is kept iff
// U(stream, i) >= p (dropout_keep), stream = dropout_stream(splitmix64(seed ^ purpose), index);
// drawn by cpu/dispatch.cpp in parallel, per instruction set.
int64_t element_count(const std::vector<int64_t>& shape, double p) {
  FUSEDRNN_CHECK(p >= 0.0 && p <= 1.0, "p must lie in [0, 1], got ", p);
  int64_t n = 1;
  for (int64_t d : shape) {
    FUSEDRNN_CHECK(d >= 0, "shape must be non-negative");
    n *= d;
  }
  return n;
}

// uint8: 1 where kept (keep=True) or where dropped (keep=False: zoneout's "keep the previous
// value" bit, probability p).
py::array py_draw_bits(std::vector<int64_t> shape, double p, uint64_t seed, uint64_t purpose,
                       int64_t index, bool keep) {
  const int64_t n = element_count(shape, p);
  py::array_t<uint8_t> out(std::vector<py::ssize_t>(shape.begin(), shape.end()));
  uint8_t* o = out.mutable_data();
  const uint64_t stream = dropout_stream(splitmix64(seed ^ purpose), index);
  const uint64_t thr = dropout_threshold(p);
  {
    py::gil_scoped_release nogil;  // scoped: the return below touches a Python object
    draw_mask_bits(o, n, stream, thr, keep);
  }
  return out;
}

// A dropout mask already scaled: keep / (1 - p) (p < 1), float32 or float64.
template <class T>
py::array scaled_mask(const std::vector<int64_t>& shape, double p, uint64_t seed,
                      uint64_t purpose, int64_t index) {
  const int64_t n = element_count(shape, p);
  FUSEDRNN_CHECK(p < 1.0, "a scaled mask needs p < 1, got ", p);
  py::array_t<T> out(std::vector<py::ssize_t>(shape.begin(), shape.end()));
  T* o = out.mutable_data();
  const uint64_t stream = dropout_stream(splitmix64(seed ^ purpose), index);
  const T scale = T(1.0 / (1.0 - p));
  const uint64_t thr = dropout_threshold(p);
  {
    py::gil_scoped_release nogil;
    draw_mask_scaled<T>(o, n, stream, thr, scale);
  }
  return out;
}

py::array py_draw_scaled(std::vector<int64_t> shape, double p, uint64_t seed, uint64_t purpose,
                         int64_t index, bool float64) {
  return float64 ? scaled_mask<double>(shape, p, seed, purpose, index)
                 : scaled_mask<float>(shape, p, seed, purpose, index);
}

}  // namespace

void register_regularised(py::module_& m) {
  m.def("reg_layer_forward", &py_reg_forward, py::arg("kind"), py::arg("x"), py::arg("w_ih"),
        py::arg("w_hh"), py::arg("b_ih"), py::arg("b_hh"), py::arg("w_hr"), py::arg("h0"),
        py::arg("c0"), py::arg("lengths"), py::arg("reverse"), py::arg("training"),
        py::arg("options"), py::arg("check_inplace") = true,
        "One regularised layer, one direction, on the CPU. Returns (y, h_n, c_n or None, "
        "reserve or None, stamps or None): a training call with check_inplace stamps the "
        "contents of what backward reads.");
  m.def("reg_layer_backward", &py_reg_backward, py::arg("kind"), py::arg("x"), py::arg("w_ih"),
        py::arg("w_hh"), py::arg("b_ih"), py::arg("b_hh"), py::arg("w_hr"), py::arg("lengths"),
        py::arg("reverse"), py::arg("options"), py::arg("reserve"), py::arg("stamps"),
        py::arg("dy"), py::arg("dh_n"), py::arg("dc_n"),
        "BPTT through a training reg_layer_forward with the same arguments. Returns the "
        "gradients by name (x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr and "
        "the options' parameters).");
  m.def("draw_bits", &py_draw_bits, py::arg("shape"), py::arg("p"), py::arg("seed"),
        py::arg("purpose"), py::arg("index"), py::arg("keep"),
        "uint8 Bernoulli bits of the counter-based generator (core/dropout.h): 1 where kept "
        "(keep=True) or where dropped (keep=False).");
  m.def("draw_scaled_mask", &py_draw_scaled, py::arg("shape"), py::arg("p"), py::arg("seed"),
        py::arg("purpose"), py::arg("index"), py::arg("float64"),
        "The same generator's keep bits as a dropout mask scaled by 1/(1-p).");
}

}  // namespace bind
}  // namespace fusedrnn
