// The module sparkbatch._native: error translation, then each concern's bindings. Users never
// import it directly: sparkbatch.data and friends wrap it with names and checks.
#include <pybind11/pybind11.h>

#include <cerrno>
#include <system_error>

#include "bindings.hpp"
#include "one_hot.hpp"
#include "ring.hpp"

namespace py = pybind11;

namespace {
PyObject* format_error_type = nullptr;  // sparkbatch.errors.FormatError, set at import
}  // namespace

PYBIND11_MODULE(_native, m, py::mod_gil_not_used()) {
  m.doc() = "sparkbatch's native core.";

  format_error_type = py::module_::import("sparkbatch.errors").attr("FormatError").ptr();
  Py_INCREF(format_error_type);  // lives as long as the interpreter
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const sparkbatch::bindings::NamedFormatError& e) {
      PyErr_SetString(format_error_type, e.what());
    } catch (const sparkbatch::ring::ConnectionLost& e) {
      PyErr_SetString(PyExc_ConnectionError, e.what());
    } catch (const sparkbatch::LabelRangeError& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const std::system_error& e) {
      errno = e.code().value();
      PyErr_SetFromErrno(PyExc_OSError);
    }
  });

  sparkbatch::bindings::register_format(m);
  sparkbatch::bindings::register_csv(m);
  sparkbatch::bindings::register_nn(m);
  sparkbatch::bindings::register_conv(m);
  sparkbatch::bindings::register_normalize(m);
  sparkbatch::bindings::register_records(m);
  sparkbatch::bindings::register_ring(m);
}
