#include "bindings/arrays.h"

#include <pybind11/numpy.h>

#include "bindings/dlpack_abi.h"
#include "fusedrnn/build_config.h"
#include "fusedrnn/check.h"

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
    case 2: return t.bits == 32 ? DType::Float32 : t.bits == 64 ? DType::Float64 : DType::Other;
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

std::string describe_dtype(py::handle obj, const ArrayView& v) {
  if (v.dtype != DType::Other) return dtype_name(v.dtype);
  return py::str(obj.attr("dtype")).cast<std::string>();
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

Device dlpack_device(py::handle obj) {
  py::tuple dev = obj.attr("__dlpack_device__")();
  return Device{dev[0].cast<int>(), dev[1].cast<int>()};
}

}  // namespace

std::string type_name(py::handle obj) {
  return py::str(py::type::of(obj).attr("__name__")).cast<std::string>();
}

Arg array_arg(py::handle obj, const std::string& name) {
  if (py::isinstance<py::array>(obj)) return numpy_arg(py::reinterpret_borrow<py::array>(obj), name);
  FUSEDRNN_CHECK_TYPE(py::hasattr(obj, "__dlpack__") && py::hasattr(obj, "__dlpack_device__"),
                      name, " must be a numpy.ndarray or an array with __dlpack__ (e.g. a "
                      "torch tensor), got ", type_name(obj));
  const Device dev = dlpack_device(obj);
  if (!dev.is_cpu()) {
    FUSEDRNN_CHECK_TYPE(FUSEDRNN_WITH_CUDA, name, " is on ", dev.str(),
                        ", but this fusedrnn was built without CUDA: move the arrays to the "
                        "CPU, or install a build with the CUDA backend");
    FUSEDRNN_CHECK_TYPE(false, name, " is on ", dev.str(),
                        ": the CUDA backend does not run kernels yet in this version");
  }
  // torch refuses to export a tensor that requires grad; say what to do instead.
  if (py::hasattr(obj, "requires_grad") && py::bool_(obj.attr("requires_grad")))
    throw std::invalid_argument(name + " requires grad: fusedrnn.functional does not record "
                                "autograd; pass a detached tensor, or use fusedrnn.torch");
  py::capsule cap = obj.attr("__dlpack__")();
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
  int64_t compact = 1;
  for (int i = v.ndim - 1; i >= 0; --i) {
    v.shape[i] = t.shape[i];
    v.strides[i] = t.strides ? t.strides[i] : compact;
    compact *= t.shape[i];
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

std::optional<Arg> optional_array_arg(py::handle obj, const std::string& name) {
  if (obj.is_none()) return std::nullopt;
  return array_arg(obj, name);
}

DType first_float(const Arg& a, const std::string& name) {
  FUSEDRNN_CHECK_TYPE(a.view.dtype == DType::Float32 || a.view.dtype == DType::Float64, name,
                      " must have dtype float32 or float64, got ",
                      describe_dtype(a.object, a.view));
  return a.view.dtype;
}

void check_dtype(const Arg& a, const std::string& name, DType want, const char* why) {
  FUSEDRNN_CHECK_TYPE(a.view.dtype == want, name, " must have dtype ", dtype_name(want), why,
                      ", got ", describe_dtype(a.object, a.view));
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
    case DType::UInt8: return py::dtype::of<uint8_t>();
    default: throw std::invalid_argument(concat("cannot allocate ", dtype_name(dtype)));
  }
}

Arg allocate(py::handle alloc, const std::vector<int64_t>& shape, DType dtype) {
  if (alloc.is_none()) {  // NumPy, allocated here: a Python call per output costs more
    py::array out(numpy_dtype_of(dtype), std::vector<py::ssize_t>(shape.begin(), shape.end()));
    return array_arg(out, "an allocated output");
  }
  py::tuple sh(shape.size());
  for (size_t i = 0; i < shape.size(); ++i) sh[i] = py::int_(shape[i]);
  py::object out = alloc(sh, dtype_name(dtype));
  Arg a = array_arg(out, "an allocated output");
  bool ok = a.view.dtype == dtype && a.view.ndim == int(shape.size()) && a.view.writeable &&
            !a.copied;
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = a.view.shape[i] == shape[i];
  FUSEDRNN_CHECK_TYPE(ok, "the allocator returned a ", type_name(out), " that is not a writeable "
                      "C-contiguous ", dtype_name(dtype), " array of shape ", a.view.shape_str());
  return a;
}

}  // namespace bind
}  // namespace fusedrnn
