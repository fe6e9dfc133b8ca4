// Shared pieces of the Python bindings: each concern registers its functions from its own file.
#pragma once

#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>
#include <stdexcept>

namespace sparkbatch::bindings {

namespace py = pybind11;

// A FormatError with the file's name already in front of the message; becomes
// sparkbatch.errors.FormatError in Python.
struct NamedFormatError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A C-contiguous read-only view of any object with the buffer protocol, released on scope exit
// (which must happen with the GIL held).
class ByteView {
 public:
  explicit ByteView(py::handle obj) {
    if (PyObject_GetBuffer(obj.ptr(), &view_, PyBUF_C_CONTIGUOUS) != 0) throw py::error_already_set();
  }
  ~ByteView() { PyBuffer_Release(&view_); }
  ByteView(const ByteView&) = delete;
  ByteView& operator=(const ByteView&) = delete;

  const uint8_t* data() const { return static_cast<const uint8_t*>(view_.buf); }
  std::size_t size() const { return static_cast<std::size_t>(view_.len); }
  const Py_buffer& view() const { return view_; }

 private:
  Py_buffer view_{};
};

// Each registers its part of the module.
void register_format(py::module_& m);  // bindings_format.cpp: file format, CRC32C, one-hot
void register_csv(py::module_& m);
void register_nn(py::module_& m);  // bindings_nn.cpp: the built-in network's kernels
void register_conv(py::module_& m);  // bindings_conv.cpp: the convolutional layers' kernels
void register_normalize(py::module_& m);  // bindings_normalize.cpp: the fitted normalizers
void register_records(py::module_& m);  // bindings_records.cpp: map files' record encoding
void register_ring(py::module_& m);  // bindings_ring.cpp: the ring all-reduce's passes

}  // namespace sparkbatch::bindings
