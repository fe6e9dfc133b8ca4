// Error handling of the CUDA module: every CUDA runtime call and every kernel launch is checked,
// and a failure becomes a C++ exception that pybind11 turns into a Python one (RuntimeError, or
// MemoryError when device memory runs out) carrying the CUDA error's name and text.
#pragma once

#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

namespace sparkbatch::cuda {

// A CUDA runtime error; becomes RuntimeError.
struct CudaError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// cudaMalloc could not find the memory; becomes MemoryError.
struct DeviceMemoryError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Throws the exception for `status`, raised while doing `what` (e.g. "cudaMalloc of 4096 bytes").
[[noreturn]] void throw_cuda_error(cudaError_t status, const std::string& what);

inline void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw_cuda_error(status, what);
}

// After a kernel launch: a bad launch configuration or a missing kernel image shows up here.
// (Faults inside a kernel surface at the next synchronising call, which is checked too.)
inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

// The CUDA architectures this module was compiled for, as CMake's CUDA_ARCHITECTURES list
// joined by commas (e.g. "80-real,90-real,90-virtual").
const char* compiled_architectures();

}  // namespace sparkbatch::cuda
