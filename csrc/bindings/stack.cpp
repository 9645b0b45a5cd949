// The stack entry point: validate the arrays, allocate outputs and the training state with the
// caller's allocator, stamp what backward will read, release the GIL, call
// fusedrnn/stack.h (x on the CPU) or fusedrnn/cuda.h (x on a CUDA device, on the call's stream).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <climits>
#include <optional>
#include <string>
#include <vector>

#include "bindings/arrays.h"
#include "bindings/persistent_plan.h"
#include "core/registry.h"
#include "device/emulated.h"
#include "fusedrnn/api.h"
#include "fusedrnn/build_config.h"
#include "fusedrnn/check.h"
#include "fusedrnn/half.h"
#include "fusedrnn/stack.h"
#if FUSEDRNN_WITH_CUDA
#include "fusedrnn/cuda.h"
#endif

namespace fusedrnn {
namespace bind {

namespace {

const char* const kParamBases[] = {"weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr"};

std::string param_name(const char* base, int64_t l, int64_t d) {
  // Plain string arithmetic: this runs per parameter on every call (an ostringstream per name
  // was measured at a third of a tiny call's time).
  std::string name(base);
  name += "_l";
  name += std::to_string(l);
  if (d) name += "_reverse";
  return name;
}

// A validated call: its configuration and every array, checked against it.
struct StackCall {
  StackConfig cfg;
  // A one-layer call of the single-layer API (functional.lstm_forward ...): its arguments are
  // named w_ih, w_hh, b_ih, b_hh, w_hr in messages, and states are (B, .) rather than
  // (1, B, .) (the same memory).
  bool layer = false;
  DType dtype = DType::Float32;
  bool has_bias = false;
  CallDevice call;  // the stream, and x's device once x is read
  Arg x;
  std::optional<Arg> h0, c0;
  std::optional<py::array> lengths;     // int64, host (a device call: the host copy)
  std::optional<Arg> device_lengths;    // a device call's lengths, what the kernels read
  std::vector<Arg> weights;             // per (l, d): w_ih, w_hh, [b_ih, b_hh], [w_hr]
  std::vector<std::string> names;
  bool on_device() const { return !x.view.device.is_cpu(); }
  int64_t R() const { return cfg.recurrent(); }
  int64_t LD() const { return cfg.layers * cfg.dirs; }
  std::vector<int64_t> state_shape(int64_t width) const {
    return layer ? std::vector<int64_t>{cfg.batch, width}
                 : std::vector<int64_t>{LD(), cfg.batch, width};
  }
  std::vector<int64_t> seq_shape(int64_t features) const {
    return cfg.batch_first ? std::vector<int64_t>{cfg.batch, cfg.steps, features}
                           : std::vector<int64_t>{cfg.steps, cfg.batch, features};
  }
};

// Each of B lengths in [1, T], checked in the signedness given (2^63 + k is not negative).
template <class Acc>
void check_length_values(const Acc& acc, int64_t B, int64_t T) {
  for (int64_t b = 0; b < B; ++b)
    FUSEDRNN_CHECK(acc(b) >= 1 && uint64_t(acc(b)) <= uint64_t(T),
                   "lengths must lie in [1, T] = [1, ", T, "], got lengths[", b, "] = ", acc(b));
}

// A host call's lengths: B integers in [1, T] (any integer dtype, a list, a CPU tensor); int64.
py::array host_lengths_arg(py::handle obj, int64_t B, int64_t T) {
  py::array l = py::array::ensure(obj);
  // An empty list (an empty batch's lengths) arrives as float64: no values, nothing to cast.
  FUSEDRNN_CHECK_TYPE(l && (l.dtype().kind() == 'i' || l.dtype().kind() == 'u' ||
                            (l.size() == 0 && l.dtype().kind() == 'f')),
                      "lengths must be an integer array, got ",
                      l ? py::str(l.dtype()).cast<std::string>() : type_name(obj));
  FUSEDRNN_CHECK(l.ndim() == 1 && l.shape(0) == B, "lengths must have shape (batch,) = (", B,
                 ",), got ", array_arg(l, "lengths").view.shape_str());
  // C-contiguous and aligned (a view at a byte offset is copied): the kernels read int64s.
  constexpr int kFlags =
      py::array::c_style | py::array::forcecast | py::detail::npy_api::NPY_ARRAY_ALIGNED_;
  if (l.dtype().kind() == 'u')
    check_length_values(py::array_t<uint64_t, kFlags>::ensure(l).unchecked<1>(), B, T);
  auto l64 = py::array_t<int64_t, kFlags>::ensure(l);
  if (l.dtype().kind() != 'u') check_length_values(l64.unchecked<1>(), B, T);
  return l64;
}

std::string device_text(const Device& d) {  // an id of -1: a __cuda_array_interface__ array
  return d.id < 0 && !d.is_cpu() ? "cuda (__cuda_array_interface__)" : d.str();
}

// lengths: None, or B integers in [1, T], on x's device. A host call takes any integer array
// (host_lengths_arg). A device call takes an int64 device array, C-contiguous, shape (B,): it is
// copied to the host (the host bounds the time loop by the maximum, cfg.host_lengths) and checked
// there; the kernels read the device array.
void lengths_arg(StackCall& a, py::handle obj) {
  if (obj.is_none()) return;
  const int64_t B = a.cfg.batch, T = a.cfg.steps;
  const Device xdev = a.x.view.device;
  const Device ldev = device_of(obj);
  FUSEDRNN_CHECK(ldev.is_cpu() == xdev.is_cpu(), "lengths is on ", device_text(ldev),
                 " but x is on ", xdev.str(), ": lengths must be on x's device",
                 xdev.is_cpu() ? "" : " (an int64 array there)");
  if (xdev.is_cpu()) {
    a.lengths = host_lengths_arg(obj, B, T);
    return;
  }
  Arg l = array_arg(obj, "lengths", &a.call);
  check_same_device(l, "lengths", xdev);
  check_dtype(l, "lengths", DType::Int64, " (the lengths of a device call)");
  FUSEDRNN_CHECK(l.view.ndim == 1 && l.view.shape[0] == B, "lengths must have shape (batch,) = (",
                 B, ",), got ", l.view.shape_str());
  py::array_t<int64_t> host(static_cast<py::ssize_t>(B));
#if FUSEDRNN_WITH_CUDA
  if (B > 0) {
    int64_t* dst = host.mutable_data();
    py::gil_scoped_release nogil;
    cuda::copy_to_host(dst, l.view.data, size_t(B) * sizeof(int64_t), xdev.id, a.cfg.stream);
  }
#endif
  check_length_values(host.unchecked<1>(), B, T);
  a.cfg.host_lengths = host.data();  // host's buffer, kept alive by a.lengths
  a.lengths = std::move(host);
  a.device_lengths = std::move(l);
}

// How the single-layer API names a parameter.
std::string layer_name(const std::string& name) {
  static const char* const longs[] = {"weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
                                      "weight_hr_l0"};
  static const char* const shorts[] = {"w_ih", "w_hh", "b_ih", "b_hh", "w_hr"};
  for (int i = 0; i < 5; ++i)
    if (name == longs[i]) return shorts[i];
  return name;
}

// The call's dtype, from x: float32 or float64 anywhere; the 16-bit storage types (computed in
// float32, device/widened.h) on a CUDA device, and on the host only under the device
// emulation (tests).
DType stack_dtype(const Arg& x) {
  const DType t = x.view.dtype;
  if (t != DType::Float16 && t != DType::BFloat16) return first_float(x, "x");
  FUSEDRNN_CHECK_TYPE(!x.view.device.is_cpu() || device::emulation() >= 0, "x has dtype ",
                      dtype_name(t), ", and 16-bit storage (float16, bfloat16) runs on CUDA "
                      "devices only: on the CPU use float32 or float64");
  return t;
}

// The bytes of one element of the training state: 16-bit storage keeps it in float32.
size_t state_elem_bytes(DType t) { return t == DType::Float64 ? 8 : 4; }

StackCall validate(int kind_int, py::handle x_, py::dict params, int64_t num_layers,
                   bool bidirectional, bool reverse, py::handle h0_, py::handle c0_,
                   py::handle lengths_, bool batch_first, double dropout, uint64_t seed,
                   bool training, bool layer, uint64_t stream) {
  FUSEDRNN_CHECK(valid_cell_kind(kind_int), "unknown cell kind ", kind_int);
  FUSEDRNN_CHECK(!layer || (num_layers == 1 && !bidirectional && !batch_first),
                 "a single-layer call is one layer, one direction, time-major");
  StackCall a;
  a.layer = layer;
  auto shown = [&](const std::string& name) { return layer ? layer_name(name) : name; };
  StackConfig& cfg = a.cfg;
  cfg.kind = static_cast<CellKind>(kind_int);
  const CellInfo cell = cell_info(cfg.kind);
  const bool lstm = cell.cell_state;
  const int64_t G = cell.gates;
  FUSEDRNN_CHECK(num_layers >= 1, "num_layers must be >= 1, got ", num_layers);
  // p = 1 drops everything (as torch.nn: the next layer sees zeros, NaN * 0 stays NaN)
  FUSEDRNN_CHECK(dropout >= 0.0 && dropout <= 1.0, "dropout must lie in [0, 1], got ", dropout);
  FUSEDRNN_CHECK(!(reverse && bidirectional), "reverse applies to a unidirectional stack only");
  cfg.layers = num_layers;
  cfg.dirs = bidirectional ? 2 : 1;
  cfg.reverse = reverse;
  cfg.batch_first = batch_first;
  cfg.dropout = dropout;
  cfg.seed = seed;
  cfg.training = training;
  cfg.stream = reinterpret_cast<void*>(static_cast<uintptr_t>(stream));
  a.call.stream = stream;

  a.x = array_arg(x_, "x", &a.call);
  a.dtype = stack_dtype(a.x);
  const ArrayView& xv = a.x.view;
  FUSEDRNN_CHECK(xv.ndim == 3, "x must be 3-D with shape ",
                 layer ? "(T, B, input_size)"
                 : batch_first ? "(batch, T, input_size)" : "(T, batch, input_size)",
                 ", got shape ", xv.shape_str());
  cfg.steps = xv.shape[batch_first ? 1 : 0];
  cfg.batch = xv.shape[batch_first ? 0 : 1];
  cfg.input = xv.shape[2];
  FUSEDRNN_CHECK(cfg.steps >= 1 && cfg.input >= 1,
                 layer ? "x must have shape (T, B, input_size) with T >= 1, B >= 0 and "
                         "input_size >= 1, got "
                       : "x must have at least one time step and input_size >= 1 (batch may be "
                         "0), got shape ",
                 xv.shape_str());
  const Device dev = xv.device;
  if (!dev.is_cpu()) a.call.device = dev.id;  // __cuda_array_interface__ arrays: x's device

  auto get = [&](const std::string& name) -> std::optional<Arg> {
    if (!params.contains(name)) return std::nullopt;
    Arg w = array_arg(params[name.c_str()], shown(name), &a.call);
    check_dtype(w, shown(name), a.dtype, " (the dtype of x)");
    check_same_device(w, shown(name), dev);
    return w;
  };
  auto w0 = get("weight_ih_l0");
  FUSEDRNN_CHECK(w0.has_value(), "params is missing 'weight_ih_l0'");
  FUSEDRNN_CHECK(w0->view.ndim == 2 && w0->view.shape[0] >= G && w0->view.shape[0] % G == 0,
                 shown("weight_ih_l0"), " must be 2-D with shape (", G,
                 "*hidden_size, input_size) for ", cell.name, ", got ", w0->view.shape_str());
  cfg.hidden = w0->view.shape[0] / G;
  a.has_bias = params.contains("bias_ih_l0") || params.contains("bias_hh_l0");
  if (params.contains("weight_hr_l0")) {
    FUSEDRNN_CHECK(lstm, shown("weight_hr_l0"), " (projection) is only defined for the LSTM");
    auto whr = get("weight_hr_l0");
    FUSEDRNN_CHECK(whr->view.ndim == 2 && whr->view.shape[0] >= 1, shown("weight_hr_l0"),
                   " must be 2-D with shape (proj_size, hidden_size), got ",
                   whr->view.shape_str());
    cfg.proj = whr->view.shape[0];
  }
  const int64_t H = cfg.hidden, R = cfg.recurrent(), GH = G * H;
  for (int64_t l = 0; l < cfg.layers; ++l) {
    for (int64_t d = 0; d < cfg.dirs; ++d) {
      for (int i = 0; i < 5; ++i) {
        if ((i == 2 || i == 3) && !a.has_bias) continue;
        if (i == 4 && cfg.proj == 0) continue;
        const std::string name = param_name(kParamBases[i], l, d);
        auto arr = get(name);
        FUSEDRNN_CHECK(arr.has_value(), "params is missing '", name, "'");
        const int64_t in = cfg.layer_input(l);
        const std::string label = shown(name);
        switch (i) {
          case 0: check_shape(*arr, label, {GH, in}, l > 0 ? "(G*hidden_size, num_directions*output_size)" : layer ? "(G*hidden_size, input_size) with input_size = x.shape[2]" : "(G*hidden_size, input_size)"); break;
          case 1: check_shape(*arr, label, {GH, R}, cfg.proj ? "(G*hidden_size, proj_size)" : "(G*hidden_size, hidden_size)"); break;
          case 2:
          case 3: check_shape(*arr, label, {GH}, "(G*hidden_size,)"); break;
          case 4: check_shape(*arr, label, {cfg.proj, H}, "(proj_size, hidden_size)"); break;
        }
        a.weights.push_back(std::move(*arr));
        a.names.push_back(name);
      }
    }
  }
  if (size_t(py::len(params)) != a.names.size()) {
    for (auto item : params) {
      const std::string key = py::str(item.first).cast<std::string>();
      bool known = false;
      for (auto& n : a.names) known = known || n == key;
      FUSEDRNN_CHECK(known, "params has an unexpected key '", key, "' for a ", cfg.layers,
                     "-layer", cfg.dirs == 2 ? " bidirectional " : " ", cell.name,
                     a.has_bias ? " with" : " without", " bias",
                     cfg.proj ? " and projection" : "");
    }
  }
  a.h0 = optional_array_arg(h0_, "h0", &a.call);
  if (a.h0) {
    check_dtype(*a.h0, "h0", a.dtype, " (the dtype of x)");
    check_same_device(*a.h0, "h0", dev);
    check_shape(*a.h0, "h0", a.state_shape(R),
                layer ? (cfg.proj ? "(batch, proj_size)" : "(batch, hidden_size)")
                      : "(num_layers*num_directions, batch, output_size)");
  }
  a.c0 = optional_array_arg(c0_, "c0", &a.call);
  FUSEDRNN_CHECK(!a.c0 || lstm, "c0 is only defined for the LSTM");
  if (a.c0) {
    check_dtype(*a.c0, "c0", a.dtype, " (the dtype of x)");
    check_same_device(*a.c0, "c0", dev);
    check_shape(*a.c0, "c0", a.state_shape(H),
                layer ? "(batch, hidden_size)" : "(num_layers*num_directions, batch, hidden_size)");
  }
  lengths_arg(a, lengths_);
  // The BLAS takes 32-bit sizes.
  FUSEDRNN_CHECK(cfg.steps * cfg.batch <= INT_MAX && GH <= INT_MAX,
                 "sizes too large for the 32-bit BLAS: T*B and G*hidden_size must be < 2^31");
  return a;
}

// Per layer and direction, the pointers of `arrays` (one per parameter, in StackCall::names'
// order: w_ih, w_hh, [b_ih, b_hh], [w_hr]) as StackWeights<T> or StackGrads<T>.
template <class Slots, class Ptr>
std::vector<Slots> per_layer(const StackCall& a, const std::vector<Arg>& arrays) {
  std::vector<Slots> out(static_cast<size_t>(a.LD()));
  size_t i = 0;
  auto next = [&] { return arrays[i++].ptr<Ptr>(); };
  for (auto& s : out) {
    s.w_ih = next();
    s.w_hh = next();
    if (a.has_bias) {
      s.b_ih = next();
      s.b_hh = next();
    }
    if (a.cfg.proj > 0) s.w_hr = next();
  }
  return out;
}

template <class T>
std::vector<StackWeights<T>> weight_ptrs(const StackCall& a) {
  return per_layer<StackWeights<T>, const T>(a, a.weights);
}

template <class T>
const T* cptr(const std::optional<Arg>& a) {
  return a ? a->ptr<const T>() : nullptr;
}
template <class T>
T* ptr(const std::optional<Arg>& a) {
  return a ? a->ptr<T>() : nullptr;
}
py::object object_or_none(const std::optional<Arg>& a) {
  return a ? a->object : py::none();
}
const int64_t* lengths_ptr(const StackCall& a) {
  if (a.device_lengths) return a.device_lengths->ptr<const int64_t>();
  return a.lengths ? static_cast<const int64_t*>(a.lengths->data()) : nullptr;
}

// fusedrnn/stack.h on the CPU, fusedrnn/cuda.h on x's CUDA device (without the GIL).
template <class T>
void run_forward(const StackCall& a, const StackWeights<T>* w, T* y, T* h_n, T* c_n,
                 void* reserve) {
  if constexpr (is_16bit_storage_v<T>) {
    if (!a.on_device()) {  // stack_dtype let it through: the device emulation is on
      device::emulated_stack_forward<T>(a.cfg, w, lengths_ptr(a), a.x.ptr<const T>(),
                                        cptr<T>(a.h0), cptr<T>(a.c0), y, h_n, c_n, reserve);
      return;
    }
  } else if (!a.on_device()) {
    stack_forward<T>(a.cfg, w, lengths_ptr(a), a.x.ptr<const T>(), cptr<T>(a.h0),
                     cptr<T>(a.c0), y, h_n, c_n, reserve);
    return;
  }
#if FUSEDRNN_WITH_CUDA
  cuda::stack_forward<T>(a.cfg, w, lengths_ptr(a), a.x.ptr<const T>(), cptr<T>(a.h0),
                         cptr<T>(a.c0), y, h_n, c_n, reserve, a.x.view.device.id);
#else
  throw std::logic_error("a device array reached the kernels of a build without CUDA");
#endif
}

template <class T>
void run_backward(const StackCall& a, const StackWeights<T>* w, const void* reserve,
                  const T* dy, const T* dh_n, const T* dc_n, T* dx, T* dh0, T* dc0,
                  const StackGrads<T>* g, bool accumulate) {
  if constexpr (is_16bit_storage_v<T>) {
    if (!a.on_device()) {  // the device emulation (stack_dtype)
      device::emulated_stack_backward<T>(a.cfg, w, lengths_ptr(a), a.x.ptr<const T>(), reserve,
                                         dy, dh_n, dc_n, dx, dh0, dc0, g, accumulate);
      return;
    }
  } else if (!a.on_device()) {
    stack_backward<T>(a.cfg, w, lengths_ptr(a), a.x.ptr<const T>(), reserve, dy, dh_n, dc_n,
                      dx, dh0, dc0, g, accumulate);
    return;
  }
#if FUSEDRNN_WITH_CUDA
  cuda::stack_backward<T>(a.cfg, w, lengths_ptr(a), a.x.ptr<const T>(), reserve, dy, dh_n,
                          dc_n, dx, dh0, dc0, g, accumulate, a.x.view.device.id);
#else
  throw std::logic_error("a device array reached the kernels of a build without CUDA");
#endif
}

// Content stamps (fusedrnn::content_stamps) of what backward reads besides the reserve: a
// training forward stamps them, backward checks them, so an in-place change in between (an
// optimizer step, load_state_dict, a reused input buffer) raises instead of mixing old
// activations with new values. Host calls stamp on the host into a NumPy uint64 array; device
// calls stamp on the device (device/stamps.h) into a uint8 device array of 8 bytes per stamp,
// and backward reads one integer back (it waits for the call's stream once).
struct Stamped {
  std::vector<std::string> names;
  std::vector<const void*> data;
  std::vector<size_t> bytes;
  explicit Stamped(const StackCall& a) {
    add("x", a.x);
    for (size_t i = 0; i < a.weights.size(); ++i)
      add(a.layer ? layer_name(a.names[i]) : a.names[i], a.weights[i]);
    if (a.h0) add("h0", *a.h0);
    if (a.c0) add("c0", *a.c0);
  }
  void add(const std::string& name, const Arg& arg) {
    names.push_back(name);
    data.push_back(arg.view.data);
    bytes.push_back(arg.view.nbytes());
  }
  void compute(uint64_t* out) const {  // without the GIL
    content_stamps(data.size(), data.data(), bytes.data(), out);
  }
  [[noreturn]] void changed(size_t k) const {
    throw std::runtime_error(concat(
        "stack_backward: '", names[k], "' was modified (by an inplace operation) after the "
        "training forward call; backward would combine that call's saved activations with the "
        "new values. Run the forward again after changing an input or a parameter."));
  }
};

template <class T>
py::tuple forward_typed(StackCall& a, bool check_inplace, py::handle alloc) {
  const StackConfig& cfg = a.cfg;
  const int64_t R = a.R();
  const Device& dev = a.x.view.device;
  auto out = [&](const std::vector<int64_t>& shape, DType dtype) {
    return allocate(alloc, shape, dtype, dev, &a.call);
  };
  Arg y = out(a.seq_shape(cfg.dirs * R), a.dtype);
  Arg h_n = out(a.state_shape(R), a.dtype);
  std::optional<Arg> c_n;
  if (cell_info(cfg.kind).cell_state) c_n = out(a.state_shape(cfg.hidden), a.dtype);
  std::optional<Arg> reserve;
  const StateLayout layout = stack_state_layout(cfg, sizeof(compute_t<T>));
  if (cfg.training) reserve = out({int64_t(layout.bytes)}, DType::UInt8);
  std::optional<Stamped> stamped;
  std::optional<py::array_t<uint64_t>> stamps;
  std::optional<Arg> device_stamps;
  if (cfg.training && check_inplace) {
    stamped.emplace(a);
    const int64_t n = int64_t(stamped->data.size());
    if (a.on_device()) device_stamps = out({8 * n}, DType::UInt8);
    else stamps = py::array_t<uint64_t>(py::ssize_t(n));
  }
  auto w = weight_ptrs<T>(a);
  uint64_t* stamp_out = stamps ? stamps->mutable_data()
                        : device_stamps ? static_cast<uint64_t*>(device_stamps->view.data)
                                        : nullptr;
  FUSEDRNN_CHECK(reinterpret_cast<uintptr_t>(stamp_out) % 8 == 0,
                 "the allocator returned stamps not aligned to 8 bytes");
  {
    py::gil_scoped_release nogil;
#if FUSEDRNN_WITH_CUDA
    if (stamped && device_stamps)
      cuda::content_stamps(stamped->data.size(), stamped->data.data(), stamped->bytes.data(),
                           stamp_out, a.x.view.device.id, a.cfg.stream);
#endif
    if (stamped && stamps) stamped->compute(stamp_out);
    run_forward<T>(a, w.data(), y.ptr<T>(), h_n.ptr<T>(), ptr<T>(c_n),
                   reserve ? reserve->view.data : nullptr);
  }
  // A NumPy reserve is handed back read-only: it is backward's input, and a change to it in
  // between would go unnoticed (a torch reserve is guarded by autograd's saved tensors).
  if (reserve && py::isinstance<py::array>(reserve->object))
    py::detail::array_proxy(reserve->object.ptr())->flags &=
        ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
  return py::make_tuple(y.object, h_n.object, object_or_none(c_n), object_or_none(reserve),
                        stamps          ? py::object(*stamps)
                        : device_stamps ? device_stamps->object
                                        : py::object(py::none()));
}

py::tuple py_stack_forward(int kind, py::handle x, py::dict params, int64_t num_layers,
                           bool bidirectional, bool reverse, py::handle h0, py::handle c0,
                           py::handle lengths, bool batch_first, double dropout, uint64_t seed,
                           bool training, bool check_inplace, py::handle alloc, bool layer,
                           uint64_t stream) {
  StackCall a = validate(kind, x, params, num_layers, bidirectional, reverse, h0, c0, lengths,
                         batch_first, dropout, seed, training, layer, stream);
  switch (a.dtype) {
    case DType::Float32: return forward_typed<float>(a, check_inplace, alloc);
    case DType::Float16: return forward_typed<float16>(a, check_inplace, alloc);
    case DType::BFloat16: return forward_typed<bfloat16>(a, check_inplace, alloc);
    default: return forward_typed<double>(a, check_inplace, alloc);
  }
}

template <class T>
py::tuple backward_typed(StackCall& a, const Arg& reserve, std::optional<py::array> stamps,
                         const std::optional<Arg>& device_stamps,
                         const std::optional<Arg>& dy, const std::optional<Arg>& dh_n,
                         const std::optional<Arg>& dc_n, py::object grads_in, py::handle alloc) {
  const StackConfig& cfg = a.cfg;
  const int64_t R = a.R();
  const Device& dev = a.x.view.device;
  auto out = [&](const std::vector<int64_t>& shape, DType dtype) {
    return allocate(alloc, shape, dtype, dev, &a.call);
  };
  Arg dx = out(a.seq_shape(cfg.input), a.dtype);
  Arg dh0 = out(a.state_shape(R), a.dtype);
  std::optional<Arg> dc0;
  if (cell_info(cfg.kind).cell_state) dc0 = out(a.state_shape(cfg.hidden), a.dtype);
  const bool accumulate = !grads_in.is_none();
  py::dict grads;
  std::vector<Arg> gargs;
  if (accumulate) {
    FUSEDRNN_CHECK_TYPE(py::isinstance<py::dict>(grads_in), "grads must be a dict, got ",
                        type_name(grads_in));
    grads = grads_in;
  }
  for (size_t i = 0; i < a.names.size(); ++i) {
    const std::string& name = a.names[i];
    const ArrayView& wv = a.weights[i].view;
    std::vector<int64_t> shape(wv.shape, wv.shape + wv.ndim);
    if (accumulate) {
      FUSEDRNN_CHECK(grads.contains(name), "grads is missing '", name, "'");
      const std::string label = "grads['" + name + "']";
      Arg g = array_arg(grads[name.c_str()], label, &a.call);
      check_dtype(g, label, a.dtype, " (the dtype of x)");
      check_same_device(g, label, dev);
      check_shape(g, label, shape, "like the parameter");
      check_writeable(g, label);
      gargs.push_back(std::move(g));
    } else {
      gargs.push_back(out(shape, a.dtype));
      grads[name.c_str()] = gargs.back().object;
    }
  }
  const auto g = per_layer<StackGrads<T>, T>(a, gargs);
  auto w = weight_ptrs<T>(a);
  std::optional<Stamped> stamped;
  std::vector<uint64_t> before, now;
  if (device_stamps) {
    stamped.emplace(a);
    check_shape(*device_stamps, "stamps", {8 * int64_t(stamped->data.size())},
                "(8 bytes per stamped array,): the context's own");
    FUSEDRNN_CHECK(reinterpret_cast<uintptr_t>(device_stamps->view.data) % 8 == 0,
                   "stamps must be aligned to 8 bytes");
  }
  if (stamps) {
    stamped.emplace(a);
    FUSEDRNN_CHECK(stamps->ndim() == 1 && size_t(stamps->shape(0)) == stamped->data.size(),
                   "stamps do not match this call's arrays: pass the context's own");
    auto acc = py::array_t<uint64_t, py::array::c_style | py::array::forcecast>::ensure(*stamps);
    before.assign(acc.data(), acc.data() + acc.size());
    now.resize(before.size());
  }
  {
    py::gil_scoped_release nogil;
    if (stamped && stamps) {
      stamped->compute(now.data());
      for (size_t k = 0; k < now.size(); ++k)
        if (now[k] != before[k]) stamped->changed(k);
    }
#if FUSEDRNN_WITH_CUDA
    if (stamped && device_stamps) {
      const int64_t k = cuda::changed_stamp(
          stamped->data.size(), stamped->data.data(), stamped->bytes.data(),
          static_cast<const uint64_t*>(device_stamps->view.data), a.x.view.device.id,
          a.cfg.stream);
      if (k >= 0) stamped->changed(size_t(k));
    }
#endif
    run_backward<T>(a, w.data(), reserve.view.data, cptr<T>(dy), cptr<T>(dh_n), cptr<T>(dc_n),
                    dx.ptr<T>(), dh0.ptr<T>(), ptr<T>(dc0), g.data(), accumulate);
  }
  return py::make_tuple(dx.object, dh0.object, object_or_none(dc0), grads);
}

py::tuple py_stack_backward(int kind, py::handle x, py::dict params, int64_t num_layers,
                            bool bidirectional, bool reverse, py::handle h0, py::handle c0,
                            py::handle lengths, bool batch_first, double dropout, uint64_t seed,
                            py::handle reserve_, py::handle stamps_, py::handle dy_,
                            py::handle dh_n_, py::handle dc_n_, py::object grads,
                            py::handle alloc, bool layer, uint64_t stream) {
  StackCall a = validate(kind, x, params, num_layers, bidirectional, reverse, h0, c0, lengths,
                         batch_first, dropout, seed, /*training=*/true, layer, stream);
  const StackConfig& cfg = a.cfg;
  const Device dev = a.x.view.device;
  const int64_t R = a.R();
  const size_t elem = state_elem_bytes(a.dtype);
  Arg reserve = array_arg(reserve_, "reserve", &a.call);
  check_dtype(reserve, "reserve", DType::UInt8, " (the training state of the forward call)");
  check_same_device(reserve, "reserve", dev);
  check_shape(reserve, "reserve", {int64_t(stack_state_layout(cfg, elem).bytes)},
              "(state bytes of this call,)");
  FUSEDRNN_CHECK(reinterpret_cast<uintptr_t>(reserve.view.data) % elem == 0,
                 "reserve must be aligned to ", elem, " bytes");
  std::optional<py::array> stamps;
  std::optional<Arg> device_stamps;
  if (!stamps_.is_none() && a.on_device()) {
    device_stamps = array_arg(stamps_, "stamps", &a.call);
    check_dtype(*device_stamps, "stamps", DType::UInt8, " (the device stamps of the forward call)");
    check_same_device(*device_stamps, "stamps", dev);
  } else if (!stamps_.is_none()) {
    stamps = py::array::ensure(stamps_);
  }
  auto opt = [&](py::handle obj, const char* name, std::vector<int64_t> shape,
                 const char* meaning) -> std::optional<Arg> {
    std::optional<Arg> v = optional_array_arg(obj, name, &a.call);
    if (v) {
      check_dtype(*v, name, a.dtype, " (the dtype of x)");
      check_same_device(*v, name, dev);
      check_shape(*v, name, shape, meaning);
    }
    return v;
  };
  auto dy = opt(dy_, "dy", a.seq_shape(cfg.dirs * R),
                layer ? "(T, batch, output_size) like y" : "like y");
  auto dh_n = opt(dh_n_, "dh_n", a.state_shape(R),
                  layer ? "(batch, output_size) like h_n" : "like h_n");
  FUSEDRNN_CHECK(dc_n_.is_none() || cell_info(cfg.kind).cell_state,
                 "dc_n is only defined for the LSTM");
  auto dc_n = opt(dc_n_, "dc_n", a.state_shape(cfg.hidden),
                  layer ? "(batch, hidden_size) like c_n" : "like c_n");
  switch (a.dtype) {
    case DType::Float32:
      return backward_typed<float>(a, reserve, stamps, device_stamps, dy, dh_n, dc_n, grads,
                                   alloc);
    case DType::Float16:
      return backward_typed<float16>(a, reserve, stamps, device_stamps, dy, dh_n, dc_n, grads,
                                     alloc);
    case DType::BFloat16:
      return backward_typed<bfloat16>(a, reserve, stamps, device_stamps, dy, dh_n, dc_n, grads,
                                      alloc);
    default:
      return backward_typed<double>(a, reserve, stamps, device_stamps, dy, dh_n, dc_n, grads,
                                    alloc);
  }
}

// Where each piece of the training state lies in the reserve (byte offsets; -1: absent).
py::dict py_state_layout(int kind, int64_t steps, int64_t batch, int64_t input, int64_t hidden,
                         int64_t proj, int64_t num_layers, bool bidirectional, bool batch_first,
                         double dropout, int64_t itemsize) {
  FUSEDRNN_CHECK(valid_cell_kind(kind), "unknown cell kind ", kind);
  FUSEDRNN_CHECK(itemsize == 2 || itemsize == 4 || itemsize == 8, "itemsize must be 2, 4 or 8");
  if (itemsize == 2) itemsize = 4;  // 16-bit storage keeps its training state in float32
  StackConfig cfg;
  cfg.kind = static_cast<CellKind>(kind);
  cfg.steps = steps, cfg.batch = batch, cfg.input = input, cfg.hidden = hidden, cfg.proj = proj;
  cfg.layers = num_layers, cfg.dirs = bidirectional ? 2 : 1, cfg.batch_first = batch_first;
  cfg.dropout = dropout, cfg.training = true;
  const StateLayout lay = stack_state_layout(cfg, size_t(itemsize));
  auto offsets = [](const std::vector<size_t>& v) {
    py::list out;
    for (size_t o : v) out.append(o == StateLayout::kNone ? py::int_(-1) : py::int_(o));
    return out;
  };
  py::dict d;
  d["bytes"] = lay.bytes;
  d["saved"] = offsets(lay.saved);
  d["h_prev"] = offsets(lay.h_prev);
  d["proj_in"] = offsets(lay.proj_in);
  d["layer_out"] = offsets(lay.layer_out);
  d["keep"] = offsets(lay.keep);
  d["x_tb"] = lay.x_tb == StateLayout::kNone ? py::int_(-1) : py::int_(lay.x_tb);
  return d;
}

// The time loop a layer would run on a CUDA device now (fusedrnn.cuda.persistent_plan).
py::dict py_cuda_persistent_plan(int kind, int64_t batch, int64_t hidden, int64_t proj,
                                 int64_t itemsize, bool forward, int device) {
  FUSEDRNN_CHECK(valid_cell_kind(kind), "unknown cell kind ", kind);
  FUSEDRNN_CHECK(itemsize == 2 || itemsize == 4 || itemsize == 8, "itemsize must be 2, 4 or 8");
  if (itemsize == 2) itemsize = 4;  // 16-bit storage keeps its training state in float32
  FUSEDRNN_CHECK(batch >= 0 && hidden >= 1 && proj >= 0, "batch >= 0, hidden >= 1, proj >= 0");
#if FUSEDRNN_WITH_CUDA
  return persistent_plan_dict(cuda::persistent_choice(
      static_cast<CellKind>(kind), batch, hidden, proj, size_t(itemsize), forward, device));
#else
  (void)forward;
  (void)device;
  throw std::runtime_error("cuda_persistent_plan: this fusedrnn was built without CUDA");
#endif
}

}  // namespace

void register_stack(py::module_& m) {
  m.def("stack_forward", &py_stack_forward, py::arg("kind"), py::arg("x"), py::arg("params"),
        py::arg("num_layers"), py::arg("bidirectional"), py::arg("reverse"), py::arg("h0"),
        py::arg("c0"), py::arg("lengths"), py::arg("batch_first"), py::arg("dropout"),
        py::arg("seed"), py::arg("training"), py::arg("check_inplace"), py::arg("alloc"),
        py::arg("layer") = false, py::arg("stream") = 0,
        "Whole stack. Returns (y, h_n, c_n or None, reserve or None, stamps or None); outputs "
        "and the training state come from alloc(shape, dtype_name), on x's device. x on a CUDA "
        "device runs there, on `stream` (a cudaStream_t as an int; 0: the legacy default "
        "stream), with lengths an int64 array on that device; its stamps are a uint8 array "
        "there (8 bytes per stamped array).");
  m.def("stack_backward", &py_stack_backward, py::arg("kind"), py::arg("x"), py::arg("params"),
        py::arg("num_layers"), py::arg("bidirectional"), py::arg("reverse"), py::arg("h0"),
        py::arg("c0"), py::arg("lengths"), py::arg("batch_first"), py::arg("dropout"),
        py::arg("seed"), py::arg("reserve"), py::arg("stamps"), py::arg("dy"), py::arg("dh_n"),
        py::arg("dc_n"), py::arg("grads"), py::arg("alloc"), py::arg("layer") = false,
        py::arg("stream") = 0,
        "BPTT through a training stack_forward with the same arguments and its reserve, on "
        "`stream` for a device call (the current stream at backward time, which need not be "
        "the forward's). Returns (dx, dh0, dc0 or None, grads by PyTorch name).");
  m.def("cuda_persistent_plan", &py_cuda_persistent_plan, py::arg("kind"), py::arg("batch"),
        py::arg("hidden"), py::arg("proj"), py::arg("itemsize"), py::arg("forward"),
        py::arg("device") = 0,
        "The time loop a layer would run on CUDA device `device` now: {'persistent', "
        "'blocks', 'threads', 'shared_bytes', 'why'}.");
  m.def(
      "cuda_persistent_counts",
      []() {
        py::dict d;
#if FUSEDRNN_WITH_CUDA
        const cuda::PersistentCounts c = cuda::persistent_counts();
        d["launched"] = c.launched;
        d["declined"] = c.declined;
#else
        d["launched"] = 0;
        d["declined"] = 0;
#endif
        return d;
      },
      "Persistent time loops launched, and declined at launch (not co-resident), so far.");
  m.def("state_layout", &py_state_layout, py::arg("kind"), py::arg("steps"), py::arg("batch"),
        py::arg("input"), py::arg("hidden"), py::arg("proj"), py::arg("num_layers"),
        py::arg("bidirectional"), py::arg("batch_first"), py::arg("dropout"),
        py::arg("itemsize"), "Byte offsets of the training state's pieces in the reserve.");
  py::dict cells;
  for (int k = 0; valid_cell_kind(k); ++k) {
    const CellInfo c = cell_info(static_cast<CellKind>(k));
    py::dict d;
    d["kind"] = k;
    d["gates"] = c.gates;
    d["saved"] = c.saved;
    d["cell_state"] = c.cell_state;
    cells[c.name] = d;
  }
  m.attr("CELLS") = cells;
}

}  // namespace bind
}  // namespace fusedrnn
