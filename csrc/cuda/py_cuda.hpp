// Shared pieces of the _cuda bindings: each concern registers its functions from its own file.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "buffer.hpp"

namespace sparkbatch::cuda::bindings {

namespace py = pybind11;

// float32 or float64 from anything numpy.dtype() takes; TypeError otherwise.
DType dtype_of(const py::handle& obj);
py::dtype numpy_dtype(DType t);

void register_buffer(py::module_& m);   // bindings_buffer.cpp: DeviceBuffer, DLPack, copies
void register_kernels(py::module_& m);  // bindings_kernels.cpp: nn_* kernels and matmul

}  // namespace sparkbatch::cuda::bindings
