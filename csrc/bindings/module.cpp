// pybind11 module fusedrnn._C: validate arguments, allocate outputs, release the GIL, fill a
// params struct, dispatch. No math here.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <climits>
#include <cstring>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "cells/activations.h"
#include "core/registry.h"
#include "cpu/gemm.h"
#include "fusedrnn/api.h"
#include "fusedrnn/check.h"

namespace py = pybind11;
using fusedrnn::CellKind;
using fusedrnn::concat;

namespace {

const char* kind_name(CellKind k) {
  switch (k) {
    case CellKind::RnnTanh: return "rnn_tanh";
    case CellKind::RnnRelu: return "rnn_relu";
    case CellKind::Lstm: return "lstm";
    case CellKind::Gru: return "gru";
    case CellKind::GruV1: return "gru_v1";
  }
  return "?";
}

std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

std::string type_name(py::handle obj) {
  return py::str(py::type::of(obj).attr("__name__")).cast<std::string>();
}

// NumPy arrays the kernels may read in place: C-contiguous and aligned for their dtype (a view
// at a 1-byte offset is valid NumPy but not a valid float* to dereference).
constexpr int kInPlace = py::array::c_style | py::detail::npy_api::NPY_ARRAY_ALIGNED_;

bool usable_in_place(const py::array& a) {
  return (a.flags() & kInPlace) == kInPlace;
}

// A float array argument: must be a numpy.ndarray of exactly `dtype`; returned C-contiguous
// and aligned (other layouts are copied once, the only copy the bindings make).
py::array float_arg(py::handle obj, const char* name, const py::dtype& dtype, bool first = false) {
  FUSEDRNN_CHECK_TYPE(py::isinstance<py::array>(obj), name, " must be a numpy.ndarray, got ",
                      type_name(obj));
  auto a = py::reinterpret_borrow<py::array>(obj);
  if (first) {
    FUSEDRNN_CHECK_TYPE(a.dtype().is(py::dtype::of<float>()) || a.dtype().is(py::dtype::of<double>()) ||
                            a.dtype().equal(py::dtype::of<float>()) ||
                            a.dtype().equal(py::dtype::of<double>()),
                        name, " must have dtype float32 or float64, got ", dtype_str(a));
  } else {
    FUSEDRNN_CHECK_TYPE(a.dtype().equal(dtype), name, " must have dtype ",
                        py::str(dtype).cast<std::string>(), " (the dtype of x), got ",
                        dtype_str(a));
  }
  return py::array::ensure(a, kInPlace);
}

std::optional<py::array> optional_float_arg(py::handle obj, const char* name, const py::dtype& dt) {
  if (obj.is_none()) return std::nullopt;
  return float_arg(obj, name, dt);
}

void check_shape(const py::array& a, const char* name, std::vector<int64_t> want,
                 const char* meaning) {
  bool ok = a.ndim() == (py::ssize_t)want.size();
  for (size_t i = 0; ok && i < want.size(); ++i) ok = a.shape(i) == want[i];
  if (ok) return;
  std::string w = "(";
  for (size_t i = 0; i < want.size(); ++i) w += (i ? ", " : "") + std::to_string(want[i]);
  w += want.size() == 1 ? ",)" : ")";
  throw std::invalid_argument(
      concat(name, " must have shape ", meaning, " = ", w, ", got ", shape_str(a)));
}

// lengths: None, or B integers in [1, T] (any integer dtype or a list); returned as int64.
std::optional<py::array> lengths_arg(py::handle obj, int64_t B, int64_t T) {
  if (obj.is_none()) return std::nullopt;
  py::array l = py::array::ensure(obj);
  // An empty list (an empty batch's lengths) arrives as float64: no values, nothing to cast.
  FUSEDRNN_CHECK_TYPE(l && (l.dtype().kind() == 'i' || l.dtype().kind() == 'u' ||
                            (l.size() == 0 && l.dtype().kind() == 'f')),
                      "lengths must be an integer array, got ",
                      l ? dtype_str(l) : type_name(obj));
  check_shape(l, "lengths", {B}, "(batch,)");
  // Checked in the signedness given, so that 2^63 + k is not reported as negative.
  auto check = [&](auto typed) {
    auto acc = typed.template unchecked<1>();
    for (int64_t b = 0; b < B; ++b)
      FUSEDRNN_CHECK(acc(b) >= 1 && uint64_t(acc(b)) <= uint64_t(T),
                     "lengths must lie in [1, T] = [1, ", T, "], got lengths[", b, "] = ", acc(b));
  };
  if (l.dtype().kind() == 'u') check(py::array_t<uint64_t, kInPlace | py::array::forcecast>::ensure(l));
  auto l64 = py::array_t<int64_t, kInPlace | py::array::forcecast>::ensure(l);
  if (l.dtype().kind() != 'u') check(l64);
  return l64;
}

template <class T>
py::array_t<T> empty(std::vector<py::ssize_t> shape) {
  return py::array_t<T>(shape);
}

template <class T>
T* ptr(std::optional<py::array>& a) {
  return a ? static_cast<T*>(a->mutable_data()) : nullptr;
}
template <class T>
const T* cptr(const std::optional<py::array>& a) {
  return a ? static_cast<const T*>(a->data()) : nullptr;
}

// The arrays a backward will read, stamped by the training forward (fusedrnn::content_stamps)
// and checked by backward: changing one in place in between (an optimizer step, a
// load_state_dict, reusing an input buffer) raises instead of mixing old activations with
// new values. Pointers and sizes are taken with the GIL held; the stamps are computed
// without it (the owning context keeps the arrays alive).
struct Stamps {
  std::vector<std::string> names;
  std::vector<const void*> data;
  std::vector<size_t> bytes;
  std::vector<uint64_t> values;
  void add(const std::string& name, const py::array& a) {
    names.push_back(name);
    data.push_back(a.data());
    bytes.push_back(size_t(a.nbytes()));
  }
  void add(const std::string& name, const std::optional<py::array>& a) {
    if (a) add(name, *a);
  }
  void stamp() {  // without the GIL
    values.resize(data.size());
    fusedrnn::content_stamps(data.size(), data.data(), bytes.data(), values.data());
  }
  void check(const char* fn) const {  // without the GIL
    std::vector<uint64_t> now(data.size());
    fusedrnn::content_stamps(data.size(), data.data(), bytes.data(), now.data());
    for (size_t i = 0; i < data.size(); ++i)
      if (now[i] != values[i])
        throw std::runtime_error(concat(
            fn, ": '", names[i], "' was modified (by an inplace operation) after the training "
            "forward call; backward would combine that call's saved activations with the new "
            "values. Run the forward again after changing an input or a parameter."));
  }
};

// Everything the backward pass needs from a training forward. Opaque to Python.
struct Context {
  CellKind kind;
  int64_t T = 0, B = 0, I = 0, H = 0, P = 0;
  bool reverse = false;
  py::dtype dtype;
  py::array x, w_ih, w_hh;
  std::optional<py::array> b_ih, b_hh, w_hr, lengths;
  std::optional<py::array> h0, c0;
  py::array saved, h_prev;
  std::optional<py::array> proj_in;
  Stamps stamps;
  int64_t R() const { return P > 0 ? P : H; }
};

struct Validated {
  CellKind kind;
  py::dtype dtype;
  int64_t T, B, I, H, P, G;
  py::array x, w_ih, w_hh;
  std::optional<py::array> b_ih, b_hh, h0, c0, w_hr, lengths;
};

Validated validate_forward(int kind_int, py::handle x_, py::handle w_ih_, py::handle w_hh_,
                           py::handle b_ih_, py::handle b_hh_, py::handle h0_, py::handle c0_,
                           py::handle w_hr_, py::handle lengths_) {
  FUSEDRNN_CHECK(kind_int >= 0 && kind_int <= 4, "unknown cell kind ", kind_int);
  Validated v{};
  v.kind = static_cast<CellKind>(kind_int);
  const bool lstm = v.kind == CellKind::Lstm;
  v.G = fusedrnn::cell_info(v.kind).gates;

  v.x = float_arg(x_, "x", py::dtype::of<float>(), /*first=*/true);
  v.dtype = v.x.dtype();
  FUSEDRNN_CHECK(v.x.ndim() == 3, "x must be 3-D with shape (T, B, input_size), got shape ",
                 shape_str(v.x));
  v.T = v.x.shape(0);
  v.B = v.x.shape(1);
  v.I = v.x.shape(2);
  FUSEDRNN_CHECK(v.T >= 1 && v.B >= 0 && v.I >= 1,
                 "x must have shape (T, B, input_size) with T >= 1, B >= 0 and input_size >= 1, "
                 "got ", shape_str(v.x));

  v.w_ih = float_arg(w_ih_, "w_ih", v.dtype);
  FUSEDRNN_CHECK(v.w_ih.ndim() == 2 && v.w_ih.shape(0) >= v.G && v.w_ih.shape(0) % v.G == 0,
                 "w_ih must be 2-D with shape (", v.G, "*hidden_size, input_size) for ",
                 kind_name(v.kind), ", got ", shape_str(v.w_ih));
  v.H = v.w_ih.shape(0) / v.G;
  check_shape(v.w_ih, "w_ih", {v.G * v.H, v.I}, "(G*hidden_size, input_size) with input_size = x.shape[2]");

  v.w_hr = optional_float_arg(w_hr_, "w_hr", v.dtype);
  FUSEDRNN_CHECK(!v.w_hr || lstm, "w_hr (projection) is only defined for the LSTM");
  if (v.w_hr) {
    FUSEDRNN_CHECK(v.w_hr->ndim() == 2 && v.w_hr->shape(0) >= 1,
                   "w_hr must be 2-D with shape (proj_size, hidden_size), got ",
                   shape_str(*v.w_hr));
    v.P = v.w_hr->shape(0);
    check_shape(*v.w_hr, "w_hr", {v.P, v.H}, "(proj_size, hidden_size)");
  }
  const int64_t R = v.P > 0 ? v.P : v.H;

  v.w_hh = float_arg(w_hh_, "w_hh", v.dtype);
  check_shape(v.w_hh, "w_hh", {v.G * v.H, R},
              v.P > 0 ? "(G*hidden_size, proj_size)" : "(G*hidden_size, hidden_size)");

  v.b_ih = optional_float_arg(b_ih_, "b_ih", v.dtype);
  v.b_hh = optional_float_arg(b_hh_, "b_hh", v.dtype);
  FUSEDRNN_CHECK(v.b_ih.has_value() == v.b_hh.has_value(),
                 "b_ih and b_hh must be given together or both be None");
  if (v.b_ih) check_shape(*v.b_ih, "b_ih", {v.G * v.H}, "(G*hidden_size,)");
  if (v.b_hh) check_shape(*v.b_hh, "b_hh", {v.G * v.H}, "(G*hidden_size,)");

  v.h0 = optional_float_arg(h0_, "h0", v.dtype);
  if (v.h0) check_shape(*v.h0, "h0", {v.B, R}, v.P > 0 ? "(batch, proj_size)" : "(batch, hidden_size)");
  v.c0 = optional_float_arg(c0_, "c0", v.dtype);
  FUSEDRNN_CHECK(!v.c0 || lstm, "c0 is only defined for the LSTM");
  if (v.c0) check_shape(*v.c0, "c0", {v.B, v.H}, "(batch, hidden_size)");

  v.lengths = lengths_arg(lengths_, v.B, v.T);
  // The BLAS takes 32-bit sizes.
  FUSEDRNN_CHECK(v.T * v.B <= INT_MAX && v.G * v.H <= INT_MAX && v.I <= INT_MAX,
                 "sizes too large for the 32-bit BLAS: T*B and G*hidden_size must be < 2^31");
  return v;
}

template <class T>
py::tuple forward_typed(Validated& v, bool reverse, bool training) {
  const int64_t R = v.P > 0 ? v.P : v.H;
  const int64_t S = fusedrnn::cell_info(v.kind).saved;
  const bool lstm = v.kind == CellKind::Lstm;
  auto y = empty<T>({v.T, v.B, R});
  auto h_n = empty<T>({v.B, R});
  std::optional<py::array> c_n;
  if (lstm) c_n = empty<T>({v.B, v.H});

  auto ctx = std::make_shared<Context>();
  fusedrnn::ForwardParams<T> p;
  p.steps = v.T;
  p.batch = v.B;
  p.input = v.I;
  p.hidden = v.H;
  p.proj = v.P;
  p.x = static_cast<const T*>(v.x.data());
  p.w_ih = static_cast<const T*>(v.w_ih.data());
  p.w_hh = static_cast<const T*>(v.w_hh.data());
  p.b_ih = cptr<T>(v.b_ih);
  p.b_hh = cptr<T>(v.b_hh);
  p.w_hr = cptr<T>(v.w_hr);
  p.h0 = cptr<T>(v.h0);
  p.c0 = cptr<T>(v.c0);
  p.lengths = v.lengths ? static_cast<const int64_t*>(v.lengths->data()) : nullptr;
  p.reverse = reverse;
  p.y = y.mutable_data();
  p.h_n = h_n.mutable_data();
  p.c_n = ptr<T>(c_n);
  if (training) {
    ctx->saved = empty<T>({v.T, v.B, S * v.H});
    ctx->h_prev = empty<T>({v.T, v.B, R});
    if (v.P > 0) ctx->proj_in = empty<T>({v.T, v.B, v.H});
    p.saved = static_cast<T*>(ctx->saved.mutable_data());
    p.h_prev = static_cast<T*>(ctx->h_prev.mutable_data());
    p.proj_in = ptr<T>(ctx->proj_in);
    ctx->stamps.add("x", v.x);
    ctx->stamps.add("w_ih", v.w_ih);
    ctx->stamps.add("w_hh", v.w_hh);
    ctx->stamps.add("b_ih", v.b_ih);
    ctx->stamps.add("b_hh", v.b_hh);
    ctx->stamps.add("w_hr", v.w_hr);
    ctx->stamps.add("h0", v.h0);
    ctx->stamps.add("c0", v.c0);
  }
  {
    py::gil_scoped_release nogil;
    if (training) ctx->stamps.stamp();
    fusedrnn::layer_forward<T>(v.kind, p);
  }
  py::object ctx_obj = py::none();
  if (training) {
    ctx->kind = v.kind;
    ctx->T = v.T;
    ctx->B = v.B;
    ctx->I = v.I;
    ctx->H = v.H;
    ctx->P = v.P;
    ctx->reverse = reverse;
    ctx->dtype = v.dtype;
    ctx->x = v.x;
    ctx->w_ih = v.w_ih;
    ctx->w_hh = v.w_hh;
    ctx->b_ih = v.b_ih;
    ctx->b_hh = v.b_hh;
    ctx->w_hr = v.w_hr;
    ctx->h0 = v.h0;
    ctx->c0 = v.c0;
    ctx->lengths = v.lengths;
    ctx_obj = py::cast(ctx);
  }
  py::object c_obj = c_n ? py::object(*c_n) : py::object(py::none());
  return py::make_tuple(y, h_n, c_obj, ctx_obj);
}

py::tuple forward(int kind, py::handle x, py::handle w_ih, py::handle w_hh, py::handle b_ih,
                  py::handle b_hh, py::handle h0, py::handle c0, py::handle w_hr,
                  py::handle lengths, bool reverse, bool training) {
  Validated v = validate_forward(kind, x, w_ih, w_hh, b_ih, b_hh, h0, c0, w_hr, lengths);
  if (v.dtype.equal(py::dtype::of<float>())) return forward_typed<float>(v, reverse, training);
  return forward_typed<double>(v, reverse, training);
}

template <class T>
py::dict backward_typed(Context& c, std::optional<py::array>& dy, std::optional<py::array>& dh_n,
                        std::optional<py::array>& dc_n) {
  const int64_t R = c.R();
  const int64_t G = fusedrnn::cell_info(c.kind).gates;
  auto dx = empty<T>({c.T, c.B, c.I});
  auto dh0 = empty<T>({c.B, R});
  auto dw_ih = empty<T>({G * c.H, c.I});
  auto dw_hh = empty<T>({G * c.H, R});
  std::optional<py::array> dc0, db_ih, db_hh, dw_hr;
  if (c.kind == CellKind::Lstm) dc0 = empty<T>({c.B, c.H});
  if (c.b_ih) {
    db_ih = empty<T>({G * c.H});
    db_hh = empty<T>({G * c.H});
  }
  if (c.P > 0) dw_hr = empty<T>({c.P, c.H});

  fusedrnn::BackwardParams<T> p;
  p.steps = c.T;
  p.batch = c.B;
  p.input = c.I;
  p.hidden = c.H;
  p.proj = c.P;
  p.x = static_cast<const T*>(c.x.data());
  p.w_ih = static_cast<const T*>(c.w_ih.data());
  p.w_hh = static_cast<const T*>(c.w_hh.data());
  p.b_ih = cptr<T>(c.b_ih);
  p.b_hh = cptr<T>(c.b_hh);
  p.w_hr = cptr<T>(c.w_hr);
  p.lengths = c.lengths ? static_cast<const int64_t*>(c.lengths->data()) : nullptr;
  p.reverse = c.reverse;
  p.saved = static_cast<const T*>(c.saved.data());
  p.h_prev = static_cast<const T*>(c.h_prev.data());
  p.proj_in = cptr<T>(c.proj_in);
  p.dy = cptr<T>(dy);
  p.dh_n = cptr<T>(dh_n);
  p.dc_n = cptr<T>(dc_n);
  p.dx = dx.mutable_data();
  p.dh0 = dh0.mutable_data();
  p.dc0 = ptr<T>(dc0);
  p.dw_ih = dw_ih.mutable_data();
  p.dw_hh = dw_hh.mutable_data();
  p.db_ih = ptr<T>(db_ih);
  p.db_hh = ptr<T>(db_hh);
  p.dw_hr = ptr<T>(dw_hr);
  {
    py::gil_scoped_release nogil;
    c.stamps.check("backward");
    fusedrnn::layer_backward<T>(c.kind, p);
  }
  py::dict g;
  g["x"] = dx;
  g["h0"] = dh0;
  if (dc0) g["c0"] = *dc0;
  g["weight_ih"] = dw_ih;
  g["weight_hh"] = dw_hh;
  if (db_ih) {
    g["bias_ih"] = *db_ih;
    g["bias_hh"] = *db_hh;
  }
  if (dw_hr) g["weight_hr"] = *dw_hr;
  return g;
}

py::dict backward(py::handle ctx_, py::handle dy_, py::handle dh_n_, py::handle dc_n_) {
  FUSEDRNN_CHECK_TYPE(!ctx_.is_none() && py::isinstance<Context>(ctx_),
                      "ctx must be the context returned by a forward call with training=True, got ",
                      type_name(ctx_));
  Context& c = *ctx_.cast<std::shared_ptr<Context>>();
  const int64_t R = c.R();
  auto dy = optional_float_arg(dy_, "dy", c.dtype);
  if (dy) check_shape(*dy, "dy", {c.T, c.B, R}, "(T, batch, output_size) like y");
  auto dh_n = optional_float_arg(dh_n_, "dh_n", c.dtype);
  if (dh_n) check_shape(*dh_n, "dh_n", {c.B, R}, "(batch, output_size) like h_n");
  std::optional<py::array> dc_n;
  if (!dc_n_.is_none()) {
    FUSEDRNN_CHECK(c.kind == CellKind::Lstm, "dc_n is only defined for the LSTM");
    dc_n = float_arg(dc_n_, "dc_n", c.dtype);
    check_shape(*dc_n, "dc_n", {c.B, c.H}, "(batch, hidden_size) like c_n");
  }
  if (c.dtype.equal(py::dtype::of<float>())) return backward_typed<float>(c, dy, dh_n, dc_n);
  return backward_typed<double>(c, dy, dh_n, dc_n);
}

// ---------------------------------------------------------------------------------------------
// Whole stacks.

std::string param_name(const char* base, int64_t l, int64_t d) {
  return concat(base, "_l", l, d ? "_reverse" : "");
}

struct StackContext {
  fusedrnn::StackConfig cfg;
  py::dtype dtype;
  bool has_bias = false;
  py::array x;                      // kept alive: the state points into it
  std::vector<py::array> weights;   // flattened per layer/direction, as in StackArgs::names
  std::vector<std::string> names;
  std::optional<py::array> lengths;
  std::optional<py::array> h0, c0;
  std::shared_ptr<void> state;      // StackState<float or double>
  Stamps stamps;
  int64_t R() const { return cfg.recurrent(); }
};

struct StackArgs {
  fusedrnn::StackConfig cfg;
  py::dtype dtype;
  bool has_bias = false;
  py::array x;
  std::optional<py::array> h0, c0, lengths;
  std::vector<py::array> weights;  // per (l, d): w_ih, w_hh, [b_ih, b_hh], [w_hr]
  std::vector<std::string> names;
  int per_layer() const { return 2 + (has_bias ? 2 : 0) + (cfg.proj > 0 ? 1 : 0); }
};

const char* kParamBases[] = {"weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr"};

template <class T>
std::vector<fusedrnn::StackWeights<T>> weight_ptrs(const std::vector<py::array>& w,
                                                   const fusedrnn::StackConfig& cfg,
                                                   bool has_bias) {
  std::vector<fusedrnn::StackWeights<T>> out(cfg.layers * cfg.dirs);
  size_t i = 0;
  for (auto& lw : out) {
    lw.w_ih = static_cast<const T*>(w[i++].data());
    lw.w_hh = static_cast<const T*>(w[i++].data());
    if (has_bias) {
      lw.b_ih = static_cast<const T*>(w[i++].data());
      lw.b_hh = static_cast<const T*>(w[i++].data());
    }
    if (cfg.proj > 0) lw.w_hr = static_cast<const T*>(w[i++].data());
  }
  return out;
}

StackArgs validate_stack(int kind_int, py::handle x_, py::dict params, int64_t num_layers,
                         bool bidirectional, py::handle h0_, py::handle c0_, py::handle lengths_,
                         bool batch_first, double dropout, uint64_t seed) {
  FUSEDRNN_CHECK(kind_int >= 0 && kind_int <= 4, "unknown cell kind ", kind_int);
  StackArgs a;
  auto& cfg = a.cfg;
  cfg.kind = static_cast<CellKind>(kind_int);
  const bool lstm = cfg.kind == CellKind::Lstm;
  const int64_t G = fusedrnn::cell_info(cfg.kind).gates;
  FUSEDRNN_CHECK(num_layers >= 1, "num_layers must be >= 1, got ", num_layers);
  FUSEDRNN_CHECK(dropout >= 0.0 && dropout < 1.0, "dropout must lie in [0, 1), got ", dropout);
  cfg.layers = num_layers;
  cfg.dirs = bidirectional ? 2 : 1;
  cfg.batch_first = batch_first;
  cfg.dropout = dropout;
  cfg.seed = seed;

  a.x = float_arg(x_, "x", py::dtype::of<float>(), /*first=*/true);
  a.dtype = a.x.dtype();
  FUSEDRNN_CHECK(a.x.ndim() == 3, "x must be 3-D with shape ",
                 batch_first ? "(batch, T, input_size)" : "(T, batch, input_size)",
                 ", got shape ", shape_str(a.x));
  cfg.steps = a.x.shape(batch_first ? 1 : 0);
  cfg.batch = a.x.shape(batch_first ? 0 : 1);
  cfg.input = a.x.shape(2);
  FUSEDRNN_CHECK(cfg.steps >= 1 && cfg.input >= 1,
                 "x must have at least one time step and input_size >= 1 (batch may be 0), "
                 "got shape ", shape_str(a.x));

  auto get = [&](const std::string& name) -> std::optional<py::array> {
    if (!params.contains(name)) return std::nullopt;
    return float_arg(params[name.c_str()], name.c_str(), a.dtype);
  };
  auto w0 = get("weight_ih_l0");
  FUSEDRNN_CHECK(w0.has_value(), "params is missing 'weight_ih_l0'");
  FUSEDRNN_CHECK(w0->ndim() == 2 && w0->shape(0) >= G && w0->shape(0) % G == 0,
                 "weight_ih_l0 must be 2-D with shape (", G, "*hidden_size, input_size), got ",
                 shape_str(*w0));
  cfg.hidden = w0->shape(0) / G;
  a.has_bias = params.contains("bias_ih_l0") || params.contains("bias_hh_l0");
  if (params.contains("weight_hr_l0")) {
    FUSEDRNN_CHECK(lstm, "weight_hr_l0: projections are only defined for the LSTM");
    auto whr = get("weight_hr_l0");
    FUSEDRNN_CHECK(whr->ndim() == 2 && whr->shape(0) >= 1,
                   "weight_hr_l0 must be 2-D with shape (proj_size, hidden_size), got ",
                   shape_str(*whr));
    cfg.proj = whr->shape(0);
  }
  const int64_t H = cfg.hidden, R = cfg.recurrent(), GH = G * H;
  size_t expected = 0;
  for (int64_t l = 0; l < cfg.layers; ++l) {
    for (int64_t d = 0; d < cfg.dirs; ++d) {
      for (int i = 0; i < 5; ++i) {
        if ((i == 2 || i == 3) && !a.has_bias) continue;
        if (i == 4 && cfg.proj == 0) continue;
        const std::string name = param_name(kParamBases[i], l, d);
        auto arr = get(name);
        FUSEDRNN_CHECK(arr.has_value(), "params is missing '", name, "'");
        const int64_t in = cfg.layer_input(l);
        switch (i) {
          case 0: check_shape(*arr, name.c_str(), {GH, in}, l == 0 ? "(G*hidden_size, input_size)" : "(G*hidden_size, num_directions*output_size)"); break;
          case 1: check_shape(*arr, name.c_str(), {GH, R}, cfg.proj ? "(G*hidden_size, proj_size)" : "(G*hidden_size, hidden_size)"); break;
          case 2:
          case 3: check_shape(*arr, name.c_str(), {GH}, "(G*hidden_size,)"); break;
          case 4: check_shape(*arr, name.c_str(), {cfg.proj, H}, "(proj_size, hidden_size)"); break;
        }
        a.weights.push_back(*arr);
        a.names.push_back(name);
        ++expected;
      }
    }
  }
  if ((size_t)py::len(params) != expected) {
    for (auto item : params) {
      const std::string key = py::str(item.first).cast<std::string>();
      bool known = false;
      for (auto& n : a.names) known = known || n == key;
      FUSEDRNN_CHECK(known, "params has an unexpected key '", key, "' for a ", cfg.layers,
                     "-layer", cfg.dirs == 2 ? " bidirectional " : " ", kind_name(cfg.kind),
                     a.has_bias ? " with" : " without", " bias",
                     cfg.proj ? " and projection" : "");
    }
  }
  const int64_t LD = cfg.layers * cfg.dirs;
  a.h0 = optional_float_arg(h0_, "h0", a.dtype);
  if (a.h0) check_shape(*a.h0, "h0", {LD, cfg.batch, R}, "(num_layers*num_directions, batch, output_size)");
  a.c0 = optional_float_arg(c0_, "c0", a.dtype);
  FUSEDRNN_CHECK(!a.c0 || lstm, "c0 is only defined for the LSTM");
  if (a.c0) check_shape(*a.c0, "c0", {LD, cfg.batch, H}, "(num_layers*num_directions, batch, hidden_size)");
  a.lengths = lengths_arg(lengths_, cfg.batch, cfg.steps);
  FUSEDRNN_CHECK(cfg.steps * cfg.batch <= INT_MAX && GH <= INT_MAX,
                 "sizes too large for the 32-bit BLAS: T*B and G*hidden_size must be < 2^31");
  return a;
}

template <class T>
py::tuple stack_forward_typed(StackArgs& a, bool training, bool check_inplace) {
  const auto& cfg = a.cfg;
  const int64_t LD = cfg.layers * cfg.dirs, R = cfg.recurrent();
  std::vector<py::ssize_t> yshape = cfg.batch_first
      ? std::vector<py::ssize_t>{cfg.batch, cfg.steps, cfg.dirs * R}
      : std::vector<py::ssize_t>{cfg.steps, cfg.batch, cfg.dirs * R};
  auto y = empty<T>(yshape);
  auto h_n = empty<T>({LD, cfg.batch, R});
  std::optional<py::array> c_n;
  if (cfg.kind == CellKind::Lstm) c_n = empty<T>({LD, cfg.batch, cfg.hidden});
  auto w = weight_ptrs<T>(a.weights, cfg, a.has_bias);
  const int64_t* lens = a.lengths ? static_cast<const int64_t*>(a.lengths->data()) : nullptr;
  fusedrnn::StackStatePtr<T> state;
  std::shared_ptr<StackContext> c;
  if (training) c = std::make_shared<StackContext>();
  if (training && check_inplace) {
    c->stamps.add("x", a.x);
    for (size_t i = 0; i < a.weights.size(); ++i) c->stamps.add(a.names[i], a.weights[i]);
    c->stamps.add("h0", a.h0);
    c->stamps.add("c0", a.c0);
  }
  {
    py::gil_scoped_release nogil;
    if (c) c->stamps.stamp();
    state = fusedrnn::stack_forward<T>(cfg, w, lens, static_cast<const T*>(a.x.data()),
                                       cptr<T>(a.h0), cptr<T>(a.c0), y.mutable_data(),
                                       h_n.mutable_data(), ptr<T>(c_n), training);
  }
  py::object ctx = py::none();
  if (training) {
    c->cfg = cfg;
    c->dtype = a.dtype;
    c->has_bias = a.has_bias;
    c->x = a.x;
    c->weights = a.weights;
    c->names = a.names;
    c->lengths = a.lengths;
    c->h0 = a.h0;
    c->c0 = a.c0;
    c->state = std::shared_ptr<fusedrnn::StackState<T>>(state.release(),
                                                        fusedrnn::StackStateDeleter<T>());
    ctx = py::cast(c);
  }
  return py::make_tuple(y, h_n, c_n ? py::object(*c_n) : py::object(py::none()), ctx);
}

py::tuple stack_forward(int kind, py::handle x, py::dict params, int64_t num_layers,
                        bool bidirectional, py::handle h0, py::handle c0, py::handle lengths,
                        bool batch_first, double dropout, uint64_t seed, bool training,
                        bool check_inplace) {
  StackArgs a = validate_stack(kind, x, params, num_layers, bidirectional, h0, c0, lengths,
                               batch_first, dropout, seed);
  if (a.dtype.equal(py::dtype::of<float>()))
    return stack_forward_typed<float>(a, training, check_inplace);
  return stack_forward_typed<double>(a, training, check_inplace);
}

template <class T>
py::tuple stack_backward_typed(StackContext& c, std::optional<py::array>& dy,
                               std::optional<py::array>& dh_n, std::optional<py::array>& dc_n,
                               py::object grads_in) {
  const auto& cfg = c.cfg;
  const int64_t LD = cfg.layers * cfg.dirs, R = c.R();
  auto dx = empty<T>(std::vector<py::ssize_t>(c.x.shape(), c.x.shape() + 3));
  auto dh0 = empty<T>({LD, cfg.batch, R});
  std::optional<py::array> dc0;
  if (cfg.kind == CellKind::Lstm) dc0 = empty<T>({LD, cfg.batch, cfg.hidden});
  const bool accumulate = !grads_in.is_none();
  py::dict grads;
  if (accumulate) {
    FUSEDRNN_CHECK_TYPE(py::isinstance<py::dict>(grads_in), "grads must be a dict, got ",
                        type_name(grads_in));
    grads = grads_in;
  }
  std::vector<T*> gptr;
  for (size_t i = 0; i < c.names.size(); ++i) {
    const auto& name = c.names[i];
    const py::array& wt = c.weights[i];
    if (accumulate) {
      FUSEDRNN_CHECK(grads.contains(name), "grads is missing '", name, "'");
      py::object g = grads[name.c_str()];
      FUSEDRNN_CHECK_TYPE(py::isinstance<py::array>(g), "grads['", name, "'] must be a numpy.ndarray");
      auto ga = py::reinterpret_borrow<py::array>(g);
      FUSEDRNN_CHECK_TYPE(ga.dtype().equal(c.dtype), "grads['", name, "'] must have dtype ",
                          py::str(c.dtype).cast<std::string>());
      std::vector<int64_t> want(wt.shape(), wt.shape() + wt.ndim());
      check_shape(ga, ("grads['" + name + "']").c_str(), want, "like the parameter");
      FUSEDRNN_CHECK(usable_in_place(ga) && ga.writeable(),
                     "grads['", name, "'] must be C-contiguous, aligned and writeable");
      gptr.push_back(static_cast<T*>(ga.mutable_data()));
    } else {
      auto ga = empty<T>(std::vector<py::ssize_t>(wt.shape(), wt.shape() + wt.ndim()));
      gptr.push_back(ga.mutable_data());
      grads[name.c_str()] = ga;
    }
  }
  std::vector<fusedrnn::StackGrads<T>> g(LD);
  size_t i = 0;
  for (auto& lg : g) {
    lg.w_ih = gptr[i++];
    lg.w_hh = gptr[i++];
    if (c.has_bias) {
      lg.b_ih = gptr[i++];
      lg.b_hh = gptr[i++];
    }
    if (cfg.proj > 0) lg.w_hr = gptr[i++];
  }
  auto w = weight_ptrs<T>(c.weights, cfg, c.has_bias);
  auto* state = static_cast<fusedrnn::StackState<T>*>(c.state.get());
  {
    py::gil_scoped_release nogil;
    c.stamps.check("stack_backward");
    fusedrnn::stack_backward<T>(*state, w, cptr<T>(dy), cptr<T>(dh_n), cptr<T>(dc_n),
                                dx.mutable_data(), dh0.mutable_data(), ptr<T>(dc0), g,
                                accumulate);
  }
  return py::make_tuple(dx, dh0, dc0 ? py::object(*dc0) : py::object(py::none()), grads);
}

py::tuple stack_backward(py::handle ctx_, py::handle dy_, py::handle dh_n_, py::handle dc_n_,
                         py::object grads) {
  FUSEDRNN_CHECK_TYPE(!ctx_.is_none() && py::isinstance<StackContext>(ctx_),
                      "ctx must be the context returned by stack_forward with training=True, "
                      "got ", type_name(ctx_));
  StackContext& c = *ctx_.cast<std::shared_ptr<StackContext>>();
  const auto& cfg = c.cfg;
  const int64_t LD = cfg.layers * cfg.dirs, R = c.R();
  auto dy = optional_float_arg(dy_, "dy", c.dtype);
  if (dy) {
    std::vector<int64_t> want = cfg.batch_first
        ? std::vector<int64_t>{cfg.batch, cfg.steps, cfg.dirs * R}
        : std::vector<int64_t>{cfg.steps, cfg.batch, cfg.dirs * R};
    check_shape(*dy, "dy", want, "like y");
  }
  auto dh_n = optional_float_arg(dh_n_, "dh_n", c.dtype);
  if (dh_n) check_shape(*dh_n, "dh_n", {LD, cfg.batch, R}, "like h_n");
  std::optional<py::array> dc_n;
  if (!dc_n_.is_none()) {
    FUSEDRNN_CHECK(cfg.kind == CellKind::Lstm, "dc_n is only defined for the LSTM");
    dc_n = float_arg(dc_n_, "dc_n", c.dtype);
    check_shape(*dc_n, "dc_n", {LD, cfg.batch, cfg.hidden}, "like c_n");
  }
  if (c.dtype.equal(py::dtype::of<float>()))
    return stack_backward_typed<float>(c, dy, dh_n, dc_n, grads);
  return stack_backward_typed<double>(c, dy, dh_n, dc_n, grads);
}

template <class T>
py::list keep_masks_typed(const StackContext& c) {
  py::list out;
  auto* st = static_cast<fusedrnn::StackState<T>*>(c.state.get());
  const auto& cfg = c.cfg;
  const int64_t n = cfg.steps * cfg.batch * cfg.dirs * c.R();
  for (int64_t l = 0; l + 1 < cfg.layers; ++l) {
    const uint8_t* keep = fusedrnn::stack_keep_mask<T>(*st, l);
    if (!keep) {
      out.append(py::none());
      continue;
    }
    py::array_t<bool> m({cfg.steps, cfg.batch, cfg.dirs * c.R()});
    std::memcpy(m.mutable_data(), keep, n);
    out.append(m);
  }
  return out;
}

// C = alpha op(A) op(B) + beta C on 2-D arrays, through the package's BLAS door (cpu/gemm.h):
// fusedrnn.nn uses it so a model's heads run on the same threads as its RNNs (NumPy's own BLAS
// pool, left spinning after a matmul, was measured to halve the speed of the next RNN call).
template <class T>
void gemm_typed(const py::array& a, const py::array& b, py::array& c, bool ta, bool tb,
                double alpha, double beta) {
  const int64_t M = c.shape(0), N = c.shape(1), K = ta ? a.shape(0) : a.shape(1);
  FUSEDRNN_CHECK((ta ? a.shape(1) : a.shape(0)) == M && (tb ? b.shape(0) : b.shape(1)) == N &&
                     (tb ? b.shape(1) : b.shape(0)) == K,
                 "gemm: shapes do not match: op(a) ", shape_str(a), ta ? "^T" : "", ", op(b) ",
                 shape_str(b), tb ? "^T" : "", ", c ", shape_str(c));
  FUSEDRNN_CHECK(M <= INT_MAX && N <= INT_MAX && K <= INT_MAX, "gemm: sizes must be < 2^31");
  const T* A = static_cast<const T*>(a.data());
  const T* B = static_cast<const T*>(b.data());
  T* C = static_cast<T*>(c.mutable_data());
  py::gil_scoped_release nogil;
  fusedrnn::gemm_par<T>(ta, tb, M, N, K, T(alpha), A, a.shape(1), B, b.shape(1), T(beta), C, N);
}

void gemm(py::handle a_, py::handle b_, py::handle c_, bool trans_a, bool trans_b,
          double alpha, double beta) {
  py::array c = float_arg(c_, "c", py::dtype::of<float>(), /*first=*/true);
  FUSEDRNN_CHECK(c.is(c_) && c.writeable(), "c must be a writeable, aligned, C-contiguous array");
  py::array a = float_arg(a_, "a", c.dtype());
  py::array b = float_arg(b_, "b", c.dtype());
  FUSEDRNN_CHECK(a.ndim() == 2 && b.ndim() == 2 && c.ndim() == 2, "gemm: a, b, c must be 2-D");
  if (c.dtype().equal(py::dtype::of<float>())) gemm_typed<float>(a, b, c, trans_a, trans_b, alpha, beta);
  else gemm_typed<double>(a, b, c, trans_a, trans_b, alpha, beta);
}

// Test hook: the float activations the kernels use (generic build), elementwise.
py::array_t<float> activation(const std::string& name, py::array_t<float, kInPlace | py::array::forcecast> x) {
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

py::dict config() {
  py::dict d;
  d["version"] = FUSEDRNN_VERSION;
  d["compiler"] = FUSEDRNN_CXX_COMPILER;
  d["blas"] = fusedrnn::blas_name();
  d["blas_config"] = fusedrnn::blas_config();
  d["blas_core"] = fusedrnn::blas_core();
  d["openmp"] = std::to_string(_OPENMP);
  d["num_threads"] = fusedrnn::get_num_threads();
  d["cuda"] = bool(FUSEDRNN_WITH_CUDA);
  d["simd_compiled"] = fusedrnn::simd_compiled();
  d["simd_cpu"] = fusedrnn::simd_cpu();
  d["simd_path"] = fusedrnn::simd_path();
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fusedrnn native kernels (CPU). Use fusedrnn.functional, not this module.";
  fusedrnn::get_num_threads();  // reads OMP_NUM_THREADS once and makes the BLAS single-threaded
  py::register_exception<fusedrnn::TypeError>(m, "NativeTypeError", PyExc_TypeError);

  py::class_<Context, std::shared_ptr<Context>>(m, "Context",
                                                "What backward needs from a training forward.")
      .def_property_readonly("kind", [](const Context& c) { return kind_name(c.kind); })
      .def_property_readonly("dtype", [](const Context& c) { return c.dtype; })
      .def_property_readonly("shape", [](const Context& c) {
        return py::make_tuple(c.T, c.B, c.I, c.H, c.P);
      })
      .def_property_readonly("reverse", [](const Context& c) { return c.reverse; })
      .def("__repr__", [](const Context& c) {
        return concat("<fusedrnn Context ", kind_name(c.kind), " T=", c.T, " B=", c.B,
                      " I=", c.I, " H=", c.H, c.P ? concat(" P=", c.P) : std::string(),
                      c.reverse ? " reverse" : "", ">");
      });

  m.def("forward", &forward, py::arg("kind"), py::arg("x"), py::arg("w_ih"), py::arg("w_hh"),
        py::arg("b_ih"), py::arg("b_hh"), py::arg("h0"), py::arg("c0"), py::arg("w_hr"),
        py::arg("lengths"), py::arg("reverse"), py::arg("training"),
        "One layer, one direction. Returns (y, h_n, c_n or None, ctx or None).");
  m.def("backward", &backward, py::arg("ctx"), py::arg("dy"), py::arg("dh_n"), py::arg("dc_n"),
        "BPTT for a training forward. Returns a dict of gradients.");
  py::class_<StackContext, std::shared_ptr<StackContext>>(
      m, "StackContext", "What stack_backward needs from a training stack_forward.")
      .def_property_readonly("kind", [](const StackContext& c) { return kind_name(c.cfg.kind); })
      .def_property_readonly("dtype", [](const StackContext& c) { return c.dtype; })
      .def_property_readonly("num_layers", [](const StackContext& c) { return c.cfg.layers; })
      .def_property_readonly("bidirectional", [](const StackContext& c) { return c.cfg.dirs == 2; })
      .def_property_readonly("batch_first", [](const StackContext& c) { return c.cfg.batch_first; })
      .def_property_readonly("param_names", [](const StackContext& c) { return c.names; })
      .def_property_readonly(
          "keep_masks",
          [](const StackContext& c) {
            return c.dtype.equal(py::dtype::of<float>()) ? keep_masks_typed<float>(c)
                                                        : keep_masks_typed<double>(c);
          },
          "Dropout keep-masks after each layer but the last, (T, B, D*R) time-major bools "
          "(None where no dropout was applied).");
  m.def("stack_forward", &stack_forward, py::arg("kind"), py::arg("x"), py::arg("params"),
        py::arg("num_layers"), py::arg("bidirectional"), py::arg("h0"), py::arg("c0"),
        py::arg("lengths"), py::arg("batch_first"), py::arg("dropout"), py::arg("seed"),
        py::arg("training"), py::arg("check_inplace") = true,
        "Whole stack. Returns (y, h_n, c_n or None, ctx or None).");
  m.def("stack_backward", &stack_backward, py::arg("ctx"), py::arg("dy"), py::arg("dh_n"),
        py::arg("dc_n"), py::arg("grads"),
        "BPTT through a stack. Returns (dx, dh0, dc0 or None, grads by PyTorch name).");
  m.def("set_num_threads", &fusedrnn::set_num_threads, py::arg("n"));
  m.def("release_workspaces", &fusedrnn::workspace_trim,
        "Frees the workspace buffers kept between calls (up to 8 buffers, 512 MiB).");
  m.def("get_num_threads", &fusedrnn::get_num_threads);
  m.def("config", &config);
  m.def("gemm", &gemm, py::arg("a"), py::arg("b"), py::arg("c"), py::arg("trans_a") = false,
        py::arg("trans_b") = false, py::arg("alpha") = 1.0, py::arg("beta") = 0.0,
        "c = alpha op(a) op(b) + beta c in place, on fusedrnn's threads and BLAS.");
  m.def("_activation", &activation, py::arg("name"), py::arg("x"),
        "Test hook: the kernels' float32 exp/sigmoid/tanh, elementwise.");
  m.attr("MAX_THREADS") = fusedrnn::kMaxThreads;
  m.attr("KIND_RNN_TANH") = int(CellKind::RnnTanh);
  m.attr("KIND_RNN_RELU") = int(CellKind::RnnRelu);
  m.attr("KIND_LSTM") = int(CellKind::Lstm);
  m.attr("KIND_GRU") = int(CellKind::Gru);
  m.attr("KIND_GRU_V1") = int(CellKind::GruV1);
  void register_testing(py::module_&); register_testing(m);  // bindings/testing.cpp: _C._testing
}
