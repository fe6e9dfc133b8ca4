// DeviceBuffer: device memory as Python sees it, with host copies and zero-copy export through
// __cuda_array_interface__ (version 3) and __dlpack__ / __dlpack_device__.
//
// NOTE(stream): every sparkbatch kernel, copy and cuBLAS call runs on the legacy default stream
// of the buffer's device. Exports say so: the array interface gives stream 1 (the legacy default
// stream, which consumers synchronise with), and __dlpack__(stream=s) makes a consumer's stream s
// wait for the work queued so far.
#include <pybind11/stl.h>

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "check.hpp"
#include "dlpack.hpp"
#include "py_cuda.hpp"

namespace sparkbatch::cuda::bindings {

DType dtype_of(const py::handle& obj) {
  const py::dtype dt = py::dtype::from_args(py::reinterpret_borrow<py::object>(obj));
  const char order = dt.byteorder();  // by value: an unpickled dtype is an equal, other object
  if (dt.kind() == 'f' && (order == '=' || order == '<')) {
    if (dt.itemsize() == 4) return DType::f32;
    if (dt.itemsize() == 8) return DType::f64;
  }
  throw py::type_error("a DeviceBuffer holds float32 or float64, got " +
                       py::str(dt).cast<std::string>());
}

py::dtype numpy_dtype(DType t) {
  return t == DType::f32 ? py::dtype::of<float>() : py::dtype::of<double>();
}

namespace {

std::vector<int64_t> shape_of(const py::handle& obj) {
  if (PyIndex_Check(obj.ptr())) return {obj.cast<int64_t>()};
  std::vector<int64_t> shape;
  for (const py::handle item : py::iter(obj)) shape.push_back(item.cast<int64_t>());
  return shape;
}

py::tuple shape_tuple(const DeviceBuffer& b) {
  py::tuple t(b.shape().size());
  for (std::size_t i = 0; i < b.shape().size(); ++i) t[i] = py::int_(b.shape()[i]);
  return t;
}

const char* dtype_name(DType t) { return t == DType::f32 ? "float32" : "float64"; }

DeviceBuffer make_buffer(const py::handle& shape, const py::handle& dtype,
                         std::optional<int> device) {
  const std::vector<int64_t> dims = shape_of(shape);
  const DType t = dtype_of(dtype);
  if (!device) return DeviceBuffer(dims, t);
  const DeviceGuard guard(*device);
  return DeviceBuffer(dims, t);
}

// The C-contiguous array of this buffer's dtype that `obj` is, or converts to (numpy rules).
py::array host_array(const DeviceBuffer& b, const py::handle& obj) {
  constexpr int flags = py::array::c_style | py::array::forcecast;
  py::array a;
  if (b.dtype() == DType::f32)
    a = py::array_t<float, flags>::ensure(obj);
  else
    a = py::array_t<double, flags>::ensure(obj);
  if (!a)
    throw py::type_error("cannot convert " + py::str(py::type::of(obj)).cast<std::string>() +
                         " to a " + dtype_name(b.dtype()) + " array");
  return a;
}

void copy_from_host(const DeviceBuffer& self, const py::handle& obj) {
  const py::array a = host_array(self, obj);
  if (static_cast<std::size_t>(a.size()) != self.size())
    throw py::value_error("the host array has " + std::to_string(a.size()) +
                          " values, the buffer " + std::to_string(self.size()));
  const void* src = a.data();
  py::gil_scoped_release release;  // `a` keeps the host memory alive
  const DeviceGuard guard(self.device());
  if (self.nbytes() > 0)
    check(cudaMemcpy(self.data(), src, self.nbytes(), cudaMemcpyHostToDevice),
          "cudaMemcpy host to device");
}

py::array to_host(const DeviceBuffer& self, const std::optional<py::array>& out) {
  py::array result;
  if (out) {
    result = *out;
    bool same_dtype = false;
    try {
      same_dtype = dtype_of(result.dtype()) == self.dtype();
    } catch (const py::type_error&) {
    }
    if (!same_dtype)
      throw py::type_error("out must be " + std::string(dtype_name(self.dtype())) + ", got " +
                           py::str(result.dtype()).cast<std::string>());
    if (!(result.flags() & py::array::c_style) || !result.writeable())
      throw py::value_error("out must be a writeable C-contiguous array");
    if (static_cast<std::size_t>(result.size()) != self.size())
      throw py::value_error("out has " + std::to_string(result.size()) + " values, the buffer " +
                            std::to_string(self.size()));
  } else {
    std::vector<py::ssize_t> dims(self.shape().begin(), self.shape().end());
    result = py::array(numpy_dtype(self.dtype()), dims);
  }
  void* dst = result.mutable_data();
  {
    py::gil_scoped_release release;
    const DeviceGuard guard(self.device());
    if (self.nbytes() > 0)
      check(cudaMemcpy(dst, self.data(), self.nbytes(), cudaMemcpyDeviceToHost),
            "cudaMemcpy device to host");
  }
  return result;
}

void copy_from_device(const DeviceBuffer& self, const DeviceBuffer& other) {
  if (other.dtype() != self.dtype())
    throw py::type_error(std::string("cannot copy a ") + dtype_name(other.dtype()) +
                         " buffer into a " + dtype_name(self.dtype()) + " one");
  if (other.size() != self.size())
    throw py::value_error("the source has " + std::to_string(other.size()) +
                          " values, the buffer " + std::to_string(self.size()));
  py::gil_scoped_release release;
  const DeviceGuard guard(self.device());
  if (self.nbytes() > 0)
    check(cudaMemcpyAsync(self.data(), other.data(), self.nbytes(), cudaMemcpyDefault, nullptr),
          "cudaMemcpyAsync device to device");
}

void zero(const DeviceBuffer& self) {
  const DeviceGuard guard(self.device());
  if (self.nbytes() > 0)
    check(cudaMemsetAsync(self.data(), 0, self.nbytes(), nullptr), "cudaMemsetAsync");
}

py::dict cuda_array_interface(const DeviceBuffer& self) {
  py::dict d;
  d["shape"] = shape_tuple(self);
  d["typestr"] = self.dtype() == DType::f32 ? "<f4" : "<f8";
  d["data"] = py::make_tuple(reinterpret_cast<std::uintptr_t>(self.data()), false);
  d["version"] = 3;
  d["strides"] = py::none();
  d["stream"] = 1;  // NOTE(stream)
  return d;
}

// DLPack -------------------------------------------------------------------------------------

struct DLPackContext {
  dlpack::ManagedTensor managed{};
  std::shared_ptr<Allocation> keep;  // the memory lives until the consumer calls the deleter
  std::vector<int64_t> shape;
};

void dlpack_deleter(dlpack::ManagedTensor* self) {
  delete static_cast<DLPackContext*>(self->manager_ctx);  // may run without the GIL: no Python
}

// Frees an export nobody consumed (a consumer renames the capsule "used_dltensor").
void dlpack_capsule_destructor(PyObject* capsule) {
  if (PyCapsule_IsValid(capsule, "used_dltensor")) return;
  PyObject *type, *value, *traceback;
  PyErr_Fetch(&type, &value, &traceback);
  auto* managed = static_cast<dlpack::ManagedTensor*>(PyCapsule_GetPointer(capsule, "dltensor"));
  if (managed != nullptr) {
    if (managed->deleter != nullptr) managed->deleter(managed);
  } else {
    PyErr_WriteUnraisable(capsule);
  }
  PyErr_Restore(type, value, traceback);
}

// Makes the consumer's stream wait for the work queued on the legacy default stream.
void order_for_consumer(const DeviceBuffer& self, const py::handle& stream) {
  if (stream.is_none()) return;  // the consumer uses the legacy default stream
  const auto s = stream.cast<int64_t>();
  // -1: the consumer asks for no synchronisation; 0 (ambiguous, taken as) and 1: the legacy
  // default stream; 2: the per-thread default stream, which synchronises with the legacy one.
  if (s == -1 || s == 0 || s == 1 || s == 2) return;
  py::gil_scoped_release release;
  const DeviceGuard guard(self.device());
  cudaEvent_t event = nullptr;
  check(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "cudaEventCreate");
  cudaError_t status = cudaEventRecord(event, nullptr);
  if (status == cudaSuccess)
    status = cudaStreamWaitEvent(reinterpret_cast<cudaStream_t>(static_cast<intptr_t>(s)), event,
                                 0);
  (void)cudaEventDestroy(event);  // released once the wait is done
  check(status, "ordering the consumer's stream after sparkbatch's work");
}

py::object dlpack(const DeviceBuffer& self, const py::handle& stream,
                  const py::handle& max_version, const py::handle& dl_device,
                  const py::handle& copy) {
  (void)max_version;  // this exporter makes unversioned ("dltensor") capsules, which the
                      // protocol lets a producer return whatever version the consumer accepts
  if (!copy.is_none() && copy.cast<bool>())
    throw py::buffer_error("DeviceBuffer.__dlpack__ shares memory; it cannot copy (copy=True)");
  if (!dl_device.is_none()) {
    const auto wanted = dl_device.cast<std::pair<int, int>>();
    if (wanted.first != dlpack::kDLCUDA || wanted.second != self.device())
      throw py::buffer_error("DeviceBuffer lives on CUDA device " +
                             std::to_string(self.device()) + "; it cannot be exported to (" +
                             std::to_string(wanted.first) + ", " + std::to_string(wanted.second) +
                             ")");
  }
  order_for_consumer(self, stream);
  auto context = std::make_unique<DLPackContext>();
  context->keep = self.allocation();
  context->shape = self.shape();
  dlpack::Tensor& t = context->managed.dl_tensor;
  t.data = self.data();
  t.device = {dlpack::kDLCUDA, self.device()};
  t.ndim = static_cast<int32_t>(context->shape.size());
  t.dtype = {dlpack::kDLFloat, static_cast<uint8_t>(8 * itemsize(self.dtype())), 1};
  t.shape = context->shape.data();
  t.strides = nullptr;
  t.byte_offset = 0;
  context->managed.manager_ctx = context.get();
  context->managed.deleter = dlpack_deleter;
  PyObject* capsule = PyCapsule_New(&context->managed, "dltensor", dlpack_capsule_destructor);
  if (capsule == nullptr) throw py::error_already_set();
  context.release();  // owned by the capsule now, then by the consumer
  return py::reinterpret_steal<py::object>(capsule);
}

std::string repr(const DeviceBuffer& self) {
  return "DeviceBuffer(shape=" + py::repr(shape_tuple(self)).cast<std::string>() +
         ", dtype=" + dtype_name(self.dtype()) + ", device=" + std::to_string(self.device()) +
         ")";
}

}  // namespace

void register_buffer(py::module_& m) {
  using namespace pybind11::literals;
  py::class_<DeviceBuffer>(m, "DeviceBuffer",
                           "A C-contiguous float32 or float64 array in GPU memory.\n\n"
                           "Copies and views share the memory, which is freed when the last of "
                           "them (and of the DLPack exports) is gone.")
      .def(py::init(&make_buffer), "shape"_a, "dtype"_a = "float32", "device"_a = py::none(),
           "Allocate (uninitialised) memory for `shape` elements of `dtype` on `device` "
           "(default: the current device).")
      .def_property_readonly("shape", &shape_tuple)
      .def_property_readonly("dtype", [](const DeviceBuffer& b) { return numpy_dtype(b.dtype()); })
      .def_property_readonly("size", &DeviceBuffer::size, "Number of elements.")
      .def_property_readonly("nbytes", &DeviceBuffer::nbytes)
      .def_property_readonly("ndim", [](const DeviceBuffer& b) { return b.shape().size(); })
      .def_property_readonly(
          "ptr", [](const DeviceBuffer& b) { return reinterpret_cast<std::uintptr_t>(b.data()); },
          "Device address of the first element.")
      .def_property_readonly("device", &DeviceBuffer::device, "CUDA device ordinal.")
      .def(
          "view",
          [](const DeviceBuffer& b, std::size_t offset, const py::handle& shape) {
            return b.view(offset, shape_of(shape));
          },
          "offset"_a, "shape"_a,
          "The `shape`d window starting `offset` elements into this buffer, sharing its memory.")
      .def("copy_from_host", &copy_from_host, "array"_a,
           "Copy a host array of the same number of elements into the buffer (converted to the "
           "buffer's dtype as numpy would).")
      .def("to_host", &to_host, "out"_a = py::none(),
           "Copy the buffer to a new host array of its shape, or into `out` (C-contiguous, same "
           "dtype and size); returns the array.")
      .def("copy_from", &copy_from_device, "other"_a,
           "Copy another buffer of the same dtype and size into this one (device to device).")
      .def("zero", &zero, "Set every element to 0.")
      .def_property_readonly("__cuda_array_interface__", &cuda_array_interface)
      .def("__dlpack__", &dlpack, "stream"_a = py::none(), "max_version"_a = py::none(),
           "dl_device"_a = py::none(), "copy"_a = py::none(),
           "Export the memory, without a copy, as a DLPack capsule.")
      .def("__dlpack_device__",
           [](const DeviceBuffer& b) { return py::make_tuple(int(dlpack::kDLCUDA), b.device()); })
      .def("__repr__", &repr);

  m.def(
      "to_device",
      [](const py::handle& obj, std::optional<int> device) {
        const py::array a = py::array::ensure(obj, py::array::c_style);
        if (!a) throw py::type_error("to_device needs an array-like of float32 or float64");
        const DType t = dtype_of(a.dtype());
        std::vector<int64_t> dims(a.shape(), a.shape() + a.ndim());
        std::optional<DeviceGuard> guard;
        if (device) guard.emplace(*device);
        DeviceBuffer b(dims, t);
        copy_from_host(b, a);
        return b;
      },
      "array"_a, "device"_a = py::none(),
      "A new DeviceBuffer holding a copy of a float32 or float64 host array.");
}

}  // namespace sparkbatch::cuda::bindings
