// The module sparkbatch._cuda: the device queries, then each concern's bindings. Users never
// import it directly: sparkbatch.nn.gpu wraps it.
//
// The CUDA runtime is linked statically and loads the driver (libcuda.so.1) on its first call,
// so importing this module needs no driver: device_count() and driver_version() answer 0 where
// there is none, and only an allocation or a kernel launch raises.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cuda_runtime_api.h>

#include <string>
#include <vector>

#include "check.hpp"
#include "cublas.hpp"
#include "py_cuda.hpp"

namespace py = pybind11;
using namespace sparkbatch::cuda;

namespace {

int device_count() {
  int count = 0;
  // No driver (cudaErrorInsufficientDriver), no device (cudaErrorNoDevice), a driver too old
  // for this runtime, CUDA_VISIBLE_DEVICES hiding every GPU: all mean "no GPU to use".
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return count;
}

int driver_version() {
  int version = 0;
  if (cudaDriverGetVersion(&version) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return version;
}

int runtime_version() {
  int version = 0;
  check(cudaRuntimeGetVersion(&version), "cudaRuntimeGetVersion");
  return version;
}

void check_ordinal(int device) {
  const int count = device_count();
  if (device < 0 || device >= count)
    throw py::index_error("no CUDA device " + std::to_string(device) + " (" +
                          std::to_string(count) + " visible)");
}

std::string device_name(int device) {
  check_ordinal(device);
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  return prop.name;
}

std::pair<int, int> device_capability(int device) {
  check_ordinal(device);
  int major = 0, minor = 0;
  check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device),
        "cudaDeviceGetAttribute");
  check(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device),
        "cudaDeviceGetAttribute");
  return {major, minor};
}

std::vector<std::string> architectures() {
  std::vector<std::string> out;
  std::string item;
  for (const char* p = compiled_architectures();; ++p) {
    if (*p == ',' || *p == '\0') {
      if (!item.empty()) out.push_back(item);
      item.clear();
      if (*p == '\0') break;
    } else {
      item += *p;
    }
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_cuda, m, py::mod_gil_not_used()) {
  using namespace pybind11::literals;
  m.doc() = "sparkbatch's CUDA kernels and device memory (see sparkbatch.nn.gpu).";

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const DeviceMemoryError& e) {
      PyErr_SetString(PyExc_MemoryError, e.what());
    }
  });

  m.def("device_count", &device_count,
        "Number of visible CUDA devices; 0 without a driver or a device (never raises).");
  m.def("architectures", &architectures,
        "The CUDA architectures this module was compiled for (CMake's CUDA_ARCHITECTURES).");
  m.def("runtime_version", &runtime_version,
        "Version of the CUDA runtime linked in, as 1000 * major + 10 * minor.");
  m.def("driver_version", &driver_version,
        "Latest CUDA version the installed driver supports (1000 * major + 10 * minor); 0 "
        "without a driver.");
  m.def("device_name", &device_name, "device"_a, "The name of CUDA device `device`.");
  m.def("device_capability", &device_capability, "device"_a,
        "Compute capability (major, minor) of CUDA device `device`.");
  m.def(
      "current_device",
      [] {
        int device = 0;
        check(cudaGetDevice(&device), "cudaGetDevice");
        return device;
      },
      "The calling thread's current CUDA device.");
  m.def(
      "set_device",
      [](int device) {
        check_ordinal(device);
        check(cudaSetDevice(device), "cudaSetDevice");
      },
      "device"_a, "Make `device` the calling thread's current CUDA device.");
  m.def(
      "synchronize",
      [] {
        py::gil_scoped_release release;
        check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
      },
      "Wait for all work queued on the current device.");
  m.def(
      "load_cublas",
      [](const std::vector<std::string>& candidates) {
        py::gil_scoped_release release;
        return load_cublas(candidates.empty() ? default_cublas_names() : candidates);
      },
      "candidates"_a = std::vector<std::string>(),
      "Load cuBLAS from the first of `candidates` (sonames or paths; default: libcublas.so.13, "
      ".so.12, .so) unless it is loaded already; returns what was loaded. RuntimeError naming "
      "each candidate tried when none loads.");
  m.def(
      "cublas_library",
      []() -> py::object {
        const std::string name = loaded_cublas();
        if (name.empty()) return py::none();
        return py::str(name);
      },
      "What load_cublas loaded, or None.");

  sparkbatch::cuda::bindings::register_buffer(m);
  sparkbatch::cuda::bindings::register_kernels(m);
}
