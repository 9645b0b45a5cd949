#include "bindings/arrays.h"

#include <pybind11/numpy.h>

#include <atomic>

#include "bindings/dlpack_abi.h"
#include "fusedrnn/build_config.h"
#include "fusedrnn/check.h"
#if FUSEDRNN_WITH_CUDA
#include "fusedrnn/cuda.h"
#endif

namespace fusedrnn {
namespace bind {

namespace {

// NumPy arrays the kernels may read in place: C-contiguous and aligned for their dtype (a view
// at a 1-byte offset is valid NumPy but not a valid float* to dereference).
constexpr int kInPlace = py::array::c_style | py::detail::npy_api::NPY_ARRAY_ALIGNED_;

DType numpy_dtype(const py::array& a) {
  const py::dtype dt = a.dtype();
  if (dt.equal(py::dtype::of<float>())) return DType::Float32;
  if (dt.equal(py::dtype::of<double>())) return DType::Float64;
  if (dt.kind() == 'f' && dt.itemsize() == 2) return DType::Float16;
  if (dt.itemsize() == 2 && py::str(dt).cast<std::string>() == "bfloat16") return DType::BFloat16;
  if (dt.equal(py::dtype::of<int64_t>())) return DType::Int64;
  if (dt.equal(py::dtype::of<int32_t>())) return DType::Int32;
  if (dt.equal(py::dtype::of<uint64_t>())) return DType::UInt64;
  if (dt.equal(py::dtype::of<uint32_t>())) return DType::UInt32;
  if (dt.equal(py::dtype::of<uint8_t>())) return DType::UInt8;
  if (dt.equal(py::dtype::of<bool>())) return DType::Bool;
  return DType::Other;
}

DType dlpack_dtype(const dlpack::DLDataType& t) {
  if (t.lanes != 1) return DType::Other;
  switch (t.code) {
    case 2:
      return t.bits == 32   ? DType::Float32
             : t.bits == 64 ? DType::Float64
             : t.bits == 16 ? DType::Float16
                            : DType::Other;
    case 4: return t.bits == 16 ? DType::BFloat16 : DType::Other;  // kDLBfloat
    case 0: return t.bits == 64 ? DType::Int64 : t.bits == 32 ? DType::Int32 : DType::Other;
    case 1:
      return t.bits == 64 ? DType::UInt64
             : t.bits == 32 ? DType::UInt32
             : t.bits == 8  ? DType::UInt8
                            : DType::Other;
    case 6: return t.bits == 8 ? DType::Bool : DType::Other;
    default: return DType::Other;
  }
}

std::string describe_dtype(const Arg& a) {
  if (a.view.dtype != DType::Other) return dtype_name(a.view.dtype);
  if (!a.dtype_text.empty()) return a.dtype_text;
  return py::str(a.object.attr("dtype")).cast<std::string>();
}

Arg numpy_arg(const py::array& given, const std::string& name) {
  py::array a = given;
  if ((a.flags() & kInPlace) != kInPlace) a = py::array::ensure(given, kInPlace);
  FUSEDRNN_CHECK(a, name, ": could not make a C-contiguous copy");
  FUSEDRNN_CHECK(a.ndim() <= ArrayView::kMaxDims, name, " has ", a.ndim(), " dimensions");
  Arg arg;
  arg.object = given;
  arg.keep_alive = a;
  arg.copied = !a.is(given);
  ArrayView& v = arg.view;
  v.data = const_cast<void*>(a.data());
  v.dtype = numpy_dtype(a);
  v.itemsize = int(a.itemsize());
  v.ndim = int(a.ndim());
  for (int i = 0; i < v.ndim; ++i) {
    v.shape[i] = a.shape(i);
    v.strides[i] = a.strides(i) / a.itemsize();
  }
  v.writeable = a.writeable();
  return arg;
}

// An empty tensor may carry a null data pointer (torch's do); the kernels pass their pointers to
// memcpy even for zero bytes, where null is undefined behaviour: point empties here instead.
alignas(64) char g_empty_array[64];

bool is_cuda_kind(int kind) {
  return kind == int(DeviceKind::Cuda) || kind == int(DeviceKind::CudaManaged);
}

// DLPack's device of obj, CUDA managed memory taken as CUDA (the kernels read it like device
// memory, and a managed x with cudaMalloc'd weights is one device).
Device dlpack_device(py::handle obj) {
  py::tuple dev = obj.attr("__dlpack_device__")();
  Device d{dev[0].cast<int>(), dev[1].cast<int>()};
  if (d.kind == int(DeviceKind::CudaManaged)) d.kind = int(DeviceKind::Cuda);
  return d;
}

#if FUSEDRNN_WITH_CUDA
// cuda::device_count(), once per process (CUDA fixes the visible devices when it initialises):
// a device call checks every array, and this spares a runtime call per array.
int usable_devices() {
  static std::atomic<int> cached{-1};
  int n = cached.load(std::memory_order_relaxed);
  if (n < 0) {
    n = cuda::device_count();
    cached.store(n, std::memory_order_relaxed);
  }
  return n;
}
#endif

// Refuses a device array this build or this call cannot take, before anything is exported.
// `where` says where the array is ("is on cuda:0").
void check_device_usable(const Device& dev, const std::string& name, const std::string& where,
                         const CallDevice* call) {
  if (dev.is_cpu()) return;
  FUSEDRNN_CHECK_TYPE(FUSEDRNN_WITH_CUDA, name, where, ", but this fusedrnn was built without "
                      "CUDA: move the arrays to the CPU, or install a build with the CUDA "
                      "backend");
  FUSEDRNN_CHECK_TYPE(is_cuda_kind(dev.kind), name, where,
                      ": fusedrnn takes CPU and CUDA arrays only");
  FUSEDRNN_CHECK_TYPE(call != nullptr, name, where, ": this function takes CPU arrays only");
#if FUSEDRNN_WITH_CUDA
  const int n = usable_devices();
  if (n == 0)
    throw std::runtime_error(concat(name, where, ", but no CUDA device is usable in this "
                                    "process (no GPU, or no driver)"));
  FUSEDRNN_CHECK(dev.id < n, name, where, ", but this process sees ", n, " CUDA device",
                 n == 1 ? "" : "s");
#endif
}

// DLPack's `stream` for a CUDA array used on the call's stream: 1 is the legacy default stream,
// 2 the per-thread default stream, larger values a cudaStream_t; 0 is not allowed, so the legacy
// default stream's null handle is passed as 1. The producer orders its pending work before it.
py::int_ dlpack_stream(uint64_t stream) {
  return py::int_(stream == 0 ? uint64_t(1) : stream);
}

[[noreturn]] void not_contiguous(const std::string& name, const Device& dev) {
  throw std::invalid_argument(concat(
      name, " is a non-contiguous (or misaligned) array on ", dev.str(), ": make it contiguous "
      "first (torch: .contiguous(), CuPy: cupy.ascontiguousarray); fusedrnn makes no implicit "
      "device copies"));
}

#if FUSEDRNN_WITH_CUDA
// numpy's typestr ('<f4', '|u1', ...) as a DType; Other for anything else (a big-endian
// multi-byte type included).
DType typestr_dtype(const std::string& t, int* itemsize) {
  *itemsize = 0;
  if (t.size() < 3 || (t[0] != '<' && t[0] != '|' && t[0] != '=' && t[0] != '>'))
    return DType::Other;
  int bytes = 0;
  for (size_t i = 2; i < t.size(); ++i) {
    if (t[i] < '0' || t[i] > '9' || bytes > 1000) return DType::Other;
    bytes = bytes * 10 + (t[i] - '0');
  }
  *itemsize = bytes;
  if (t[0] == '>' && bytes > 1) return DType::Other;
  switch (t[1]) {
    case 'f':
      return bytes == 4   ? DType::Float32
             : bytes == 8 ? DType::Float64
             : bytes == 2 ? DType::Float16
                          : DType::Other;
    case 'i': return bytes == 8 ? DType::Int64 : bytes == 4 ? DType::Int32 : DType::Other;
    case 'u':
      return bytes == 8   ? DType::UInt64
             : bytes == 4 ? DType::UInt32
             : bytes == 1 ? DType::UInt8
                          : DType::Other;
    case 'b': return bytes == 1 ? DType::Bool : DType::Other;
    default: return DType::Other;
  }
}
#endif

// An object with __cuda_array_interface__ (v2/v3) and no __dlpack__ (Numba's device arrays):
// that protocol names no device, so the array is taken to be on x's device (call->device), or,
// for x itself, on the only device there is. A producer stream named by v3's 'stream' is made
// to precede the call's stream (cuda::stream_wait: an event, no host wait).
Arg cai_arg(py::handle obj, const std::string& name, const CallDevice* call) {
  const std::string where = " is a CUDA array (__cuda_array_interface__)";
  check_device_usable(Device{int(DeviceKind::Cuda), 0}, name, where, call);
  Arg arg;
#if FUSEDRNN_WITH_CUDA
  int device = call->device;
  if (device < 0) {
    const int n = usable_devices();
    FUSEDRNN_CHECK(n == 1, name, where, ", which names no device, and this process sees ", n,
                   " CUDA devices: pass it as an array with __dlpack__ (a torch tensor, a CuPy "
                   "array)");
    device = 0;
  }
  const Device dev{int(DeviceKind::Cuda), device};
  py::object cai_obj = obj.attr("__cuda_array_interface__");
  FUSEDRNN_CHECK_TYPE(py::isinstance<py::dict>(cai_obj), name,
                      ".__cuda_array_interface__ is not a dict");
  py::dict cai = py::reinterpret_borrow<py::dict>(cai_obj);
  auto item = [&](const char* key) -> py::object {
    return cai.contains(key) ? py::object(cai[key]) : py::object(py::none());
  };
  const py::object shape = item("shape"), typestr = item("typestr"), data = item("data"),
                   strides = item("strides");
  FUSEDRNN_CHECK_TYPE(py::isinstance<py::tuple>(shape) && py::isinstance<py::str>(typestr) &&
                          py::isinstance<py::tuple>(data) && py::len(data) == 2 &&
                          (strides.is_none() || py::isinstance<py::tuple>(strides)),
                      name, ".__cuda_array_interface__ is malformed: it needs 'shape' (a tuple), "
                      "'typestr' (a str), 'data' (a (pointer, read-only) tuple) and 'strides' "
                      "(None or a tuple)");
  FUSEDRNN_CHECK(item("mask").is_none(), name, ".__cuda_array_interface__ has a mask: masked "
                 "arrays are not supported");
  const py::tuple sh = shape, dt = data;
  FUSEDRNN_CHECK(py::len(sh) <= size_t(ArrayView::kMaxDims), name, " has ", py::len(sh),
                 " dimensions");
  FUSEDRNN_CHECK(strides.is_none() || py::len(strides) == py::len(sh), name,
                 ".__cuda_array_interface__ has ", py::len(strides), " strides for ",
                 py::len(sh), " dimensions");
  arg.object = py::reinterpret_borrow<py::object>(obj);
  arg.keep_alive = arg.object;  // the producer's object owns the memory
  arg.dtype_text = typestr.cast<std::string>();
  ArrayView& v = arg.view;
  v.dtype = typestr_dtype(arg.dtype_text, &v.itemsize);
  v.ndim = int(py::len(sh));
  v.device = dev;
  v.data = reinterpret_cast<void*>(dt[0].cast<uintptr_t>());
  v.writeable = !dt[1].cast<bool>();
  bool strided_ok = true;
  int64_t compact = 1;
  for (int i = v.ndim - 1; i >= 0; --i) {
    v.shape[i] = sh[size_t(i)].cast<int64_t>();
    FUSEDRNN_CHECK(v.shape[i] >= 0, name, " has a negative extent in its shape");
    if (strides.is_none()) {
      v.strides[i] = compact;
    } else {
      const int64_t bytes = py::tuple(strides)[size_t(i)].cast<int64_t>();
      strided_ok = strided_ok && v.itemsize > 0 && bytes % v.itemsize == 0;
      v.strides[i] = v.itemsize > 0 ? bytes / v.itemsize : 0;
    }
    compact *= v.shape[i];
  }
  if (v.dtype != DType::Other && !(strided_ok && v.c_contiguous())) not_contiguous(name, dev);
  // v3: the stream the producer queued its work on (None or absent: nothing to wait for).
  const py::object stream = item("stream");
  if (!stream.is_none() && item("version").cast<int>() >= 3) {
    uint64_t producer = stream.cast<uint64_t>();
    // 1 is the legacy default stream (a spec-breaking 0 is taken as that too), 2 the
    // per-thread one, else a cudaStream_t; the call's 0 is the legacy default stream.
    if (producer == 0) producer = 1;
    const uint64_t consumer = call->stream == 0 ? 1 : call->stream;
    if (producer != consumer)
      cuda::stream_wait(device, reinterpret_cast<void*>(producer),
                        reinterpret_cast<void*>(call->stream));
  }
#endif
  return arg;
}

}  // namespace

std::string type_name(py::handle obj) {
  return py::str(py::type::of(obj).attr("__name__")).cast<std::string>();
}

Device device_of(py::handle obj) {
  if (py::isinstance<py::array>(obj)) return Device{};
  if (py::hasattr(obj, "__dlpack_device__")) return dlpack_device(obj);
  if (py::hasattr(obj, "__cuda_array_interface__")) return Device{int(DeviceKind::Cuda), -1};
  return Device{};
}

Arg array_arg(py::handle obj, const std::string& name, const CallDevice* call) {
  if (py::isinstance<py::array>(obj)) return numpy_arg(py::reinterpret_borrow<py::array>(obj), name);
  const bool dlpack = py::hasattr(obj, "__dlpack__") && py::hasattr(obj, "__dlpack_device__");
  if (!dlpack && py::hasattr(obj, "__cuda_array_interface__")) return cai_arg(obj, name, call);
  FUSEDRNN_CHECK_TYPE(dlpack, name, " must be a numpy.ndarray or an array with __dlpack__ (e.g. "
                      "a torch tensor), got ", type_name(obj));
  const Device dev = dlpack_device(obj);
  check_device_usable(dev, name, " is on " + dev.str(), call);
  // torch refuses to export a tensor that requires grad; say what to do instead.
  if (py::hasattr(obj, "requires_grad") && py::bool_(obj.attr("requires_grad")))
    throw std::invalid_argument(name + " requires grad: fusedrnn.functional does not record "
                                "autograd; pass a detached tensor, or use fusedrnn.torch");
  // A host array is exported with no stream (DLPack allows only None there); a CUDA one for
  // the call's stream, so that its producer orders pending work before the kernels.
  py::capsule cap = dev.is_cpu()
                        ? py::capsule(obj.attr("__dlpack__")())
                        : py::capsule(obj.attr("__dlpack__")(
                              py::arg("stream") = dlpack_stream(call->stream)));
  FUSEDRNN_CHECK(std::string(cap.name() ? cap.name() : "") == "dltensor", name,
                 ".__dlpack__() did not return a 'dltensor' capsule");
  auto* managed = static_cast<dlpack::DLManagedTensor*>(cap.get_pointer());
  const dlpack::DLTensor& t = managed->dl_tensor;
  FUSEDRNN_CHECK(t.ndim >= 0 && t.ndim <= ArrayView::kMaxDims, name, " has ", t.ndim,
                 " dimensions");
  Arg arg;
  arg.object = py::reinterpret_borrow<py::object>(obj);
  arg.keep_alive = cap;  // unconsumed: its destructor calls the producer's deleter
  ArrayView& v = arg.view;
  v.data = static_cast<char*>(t.data) + t.byte_offset;
  v.dtype = dlpack_dtype(t.dtype);
  v.itemsize = (t.dtype.bits * t.dtype.lanes + 7) / 8;
  v.ndim = t.ndim;
  v.device = Device{t.device.device_type, t.device.device_id};
  if (v.device.kind == int(DeviceKind::CudaManaged)) v.device.kind = int(DeviceKind::Cuda);
  int64_t compact = 1;
  for (int i = v.ndim - 1; i >= 0; --i) {
    v.shape[i] = t.shape[i];
    v.strides[i] = t.strides ? t.strides[i] : compact;
    compact *= t.shape[i];
  }
  if (!v.device.is_cpu()) {
    // Device memory is never copied here: a strided view is the caller's to make contiguous.
    // (An empty device array keeps its pointer, null or not: nothing reads it.)
    if (v.dtype != DType::Other && !v.c_contiguous()) not_contiguous(name, v.device);
    return arg;
  }
  if (v.data == nullptr && v.size() == 0) v.data = g_empty_array;
  if (v.dtype != DType::Other && !v.c_contiguous()) {
    // A strided host view (a transposed tensor, a slice): one C-contiguous copy, as NumPy's.
    py::module_ np = py::module_::import("numpy");
    Arg copy = numpy_arg(py::array::ensure(np.attr("from_dlpack")(obj), kInPlace), name);
    copy.object = arg.object;
    copy.copied = true;
    return copy;
  }
  return arg;
}

std::optional<Arg> optional_array_arg(py::handle obj, const std::string& name,
                                      const CallDevice* call) {
  if (obj.is_none()) return std::nullopt;
  return array_arg(obj, name, call);
}

DType first_float(const Arg& a, const std::string& name) {
  FUSEDRNN_CHECK_TYPE(a.view.dtype == DType::Float32 || a.view.dtype == DType::Float64, name,
                      " must have dtype float32 or float64, got ",
                      describe_dtype(a));
  return a.view.dtype;
}

void check_dtype(const Arg& a, const std::string& name, DType want, const char* why) {
  FUSEDRNN_CHECK_TYPE(a.view.dtype == want, name, " must have dtype ", dtype_name(want), why,
                      ", got ", describe_dtype(a));
}

void check_same_device(const Arg& a, const std::string& name, const Device& want) {
  FUSEDRNN_CHECK(a.view.device.kind == want.kind && a.view.device.id == want.id, name, " is on ",
                 a.view.device.str(), " but x is on ", want.str(),
                 ": every array of a call must be on one device");
}

void check_shape(const Arg& a, const std::string& name, const std::vector<int64_t>& want,
                 const std::string& meaning) {
  const ArrayView& v = a.view;
  bool ok = v.ndim == int(want.size());
  for (size_t i = 0; ok && i < want.size(); ++i) ok = v.shape[i] == want[i];
  if (ok) return;
  std::string w = "(";
  for (size_t i = 0; i < want.size(); ++i) w += (i ? ", " : "") + std::to_string(want[i]);
  w += want.size() == 1 ? ",)" : ")";
  throw std::invalid_argument(
      concat(name, " must have shape ", meaning, " = ", w, ", got ", v.shape_str()));
}

void check_writeable(const Arg& a, const std::string& name) {
  FUSEDRNN_CHECK(a.view.writeable && !a.copied, name,
                 " must be C-contiguous, aligned and writeable");
}

py::dtype numpy_dtype_of(DType dtype) {
  switch (dtype) {
    case DType::Float32: return py::dtype::of<float>();
    case DType::Float64: return py::dtype::of<double>();
    case DType::Float16: return py::dtype("float16");
    case DType::UInt8: return py::dtype::of<uint8_t>();
    default: throw std::invalid_argument(concat("cannot allocate ", dtype_name(dtype)));
  }
}

Arg allocate(py::handle alloc, const std::vector<int64_t>& shape, DType dtype,
             const Device& device, const CallDevice* call) {
  if (alloc.is_none()) {  // NumPy, allocated here: a Python call per output costs more
    FUSEDRNN_CHECK(device.is_cpu(), "x is on ", device.str(), ", but no allocator was given "
                   "for the outputs: device outputs come from the array library of x "
                   "(fusedrnn.functional allocates them for torch tensors and CuPy arrays)");
    py::array out(numpy_dtype_of(dtype), std::vector<py::ssize_t>(shape.begin(), shape.end()));
    return array_arg(out, "an allocated output");
  }
  py::tuple sh(shape.size());
  for (size_t i = 0; i < shape.size(); ++i) sh[i] = py::int_(shape[i]);
  py::object out = alloc(sh, dtype_name(dtype));
  Arg a = array_arg(out, "an allocated output", call);
  bool ok = a.view.dtype == dtype && a.view.ndim == int(shape.size()) && a.view.writeable &&
            !a.copied;
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = a.view.shape[i] == shape[i];
  FUSEDRNN_CHECK_TYPE(ok, "the allocator returned a ", type_name(out), " that is not a writeable "
                      "C-contiguous ", dtype_name(dtype), " array of shape ", a.view.shape_str());
  FUSEDRNN_CHECK(a.view.device.kind == device.kind && a.view.device.id == device.id,
                 "the allocator returned an array on ", a.view.device.str(), ", but x is on ",
                 device.str(), ": outputs must be on x's device");
  return a;
}

}  // namespace bind
}  // namespace fusedrnn
