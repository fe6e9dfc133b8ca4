// Bindings of the map files' record encoding (python/sparkbatch/storage/record_codec.py): the
// usual batch, records of Python floats only and of one width (CSV's), laid out at once.
#include <pybind11/numpy.h>

#include <cstring>

#include "bindings.hpp"

namespace sparkbatch::bindings {
namespace {

// Locks a list while in scope, on free-threaded builds (where this module runs without the
// GIL); nothing under the GIL. (pybind11's scoped_critical_section needs a newer pybind11.)
class ListLock {
 public:
  explicit ListLock(PyObject* obj) {
#ifdef Py_GIL_DISABLED
    PyCriticalSection_Begin(&section_, obj);
#else
    (void)obj;
#endif
  }
  ~ListLock() {
#ifdef Py_GIL_DISABLED
    PyCriticalSection_End(&section_);
#endif
  }
  ListLock(const ListLock&) = delete;
  ListLock& operator=(const ListLock&) = delete;

 private:
#ifdef Py_GIL_DISABLED
  PyCriticalSection section_;
#endif
};

// The items of `item` (borrowed; null for an empty list) and their count, where it is a list
// or tuple; else false.
bool items_of(PyObject* item, PyObject* const** items, Py_ssize_t* size) {
  if (PyList_CheckExact(item)) {
    *size = PyList_GET_SIZE(item);
    *items = reinterpret_cast<PyListObject*>(item)->ob_item;
    return true;
  }
  if (PyTuple_CheckExact(item)) {
    *size = PyTuple_GET_SIZE(item);
    *items = reinterpret_cast<PyTupleObject*>(item)->ob_item;
    return true;
  }
  return false;
}

// `records` (a list of lists or tuples) as one uint8 array of rows, each `head` then the
// record's values as little-endian float64 (the host's order: CMakeLists.txt refuses big-endian
// hosts); None unless every record is a list or tuple of exactly `float`s (not a subclass, not
// a numpy scalar: those take record_codec's general path), all of one width.
py::object pack_float_records(const py::list& records, const py::bytes& head) {
  char* head_data = nullptr;
  Py_ssize_t head_size = 0;
  if (PyBytes_AsStringAndSize(head.ptr(), &head_data, &head_size) != 0) throw py::error_already_set();
  // A copy of the list (its items held): the module runs without the GIL on free-threaded
  // builds, where another thread could change the caller's list while its items are read.
  const auto batch = py::reinterpret_steal<py::list>(
      PyList_GetSlice(records.ptr(), 0, PY_SSIZE_T_MAX));
  if (!batch) throw py::error_already_set();
  const Py_ssize_t n = PyList_GET_SIZE(batch.ptr());
  PyObject* const* values = nullptr;
  Py_ssize_t width = 0;
  if (n > 0) {
    const py::handle first = PyList_GET_ITEM(batch.ptr(), 0);
    const ListLock lock(first.ptr());
    if (!items_of(first.ptr(), &values, &width)) return py::none();
  }
  // One pass, checking as it copies (no Python code runs meanwhile; each record a list is
  // locked while read, on free-threaded builds); a batch found not to be all floats drops the
  // array and takes the general path.
  const Py_ssize_t row = head_size + 8 * width;
  py::array_t<uint8_t> out({n, row});
  auto* dst = static_cast<uint8_t*>(out.mutable_data());
  for (Py_ssize_t i = 0; i < n; ++i, dst += row) {
    const py::handle record = PyList_GET_ITEM(batch.ptr(), i);
    const ListLock lock(record.ptr());
    Py_ssize_t size = 0;
    if (!items_of(record.ptr(), &values, &size) || size != width) return py::none();
    std::memcpy(dst, head_data, static_cast<std::size_t>(head_size));
    uint8_t* slot = dst + head_size;
    for (Py_ssize_t j = 0; j < size; ++j, slot += 8) {
      if (!PyFloat_CheckExact(values[j])) return py::none();
      const double value = PyFloat_AS_DOUBLE(values[j]);
      std::memcpy(slot, &value, 8);
    }
  }
  return std::move(out);
}

}  // namespace

void register_records(py::module_& m) {
  m.def("pack_float_records", &pack_float_records, py::arg("records"), py::arg("head"),
        "Records of Python floats of one width as uint8 rows: head, then float64 values; None "
        "for any other batch.");
}

}  // namespace sparkbatch::bindings
