// cuBLAS, loaded with dlopen at run time.
//
// NOTE(cuBLAS at run time): the module links only the CUDA runtime, statically, and opens
// libcublas on the first matrix product. The toolkits that build sparkbatch (and the CI machines)
// often ship nvcc without cuBLAS, and a wheel that linked it would refuse to import wherever
// libcublas is missing, CPU-only machines included. Loaded lazily, the module builds wherever nvcc
// exists, imports everywhere, and only GPU training needs cuBLAS installed: from the CUDA
// toolkit, or from the nvidia-cublas-cu12 / nvidia-cublas (CUDA 13) wheels, whose directories
// sparkbatch.nn.gpu adds to the candidates. The few functions used are declared below from
// cuBLAS's documented C ABI (cublas_api.h), which is stable across cuBLAS 12 and 13: handles are
// opaque pointers, cublasStatus_t and cublasOperation_t are C enums (int).
#include "cublas.hpp"

#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <algorithm>
#include <climits>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "check.hpp"

namespace sparkbatch::cuda {
namespace {

using Handle = void*;  // cublasHandle_t: struct cublasContext*
using Status = int;    // cublasStatus_t
constexpr Status kSuccess = 0;  // CUBLAS_STATUS_SUCCESS
constexpr int kOpN = 0;         // CUBLAS_OP_N
constexpr int kOpT = 1;         // CUBLAS_OP_T

using CreateFn = Status (*)(Handle*);
using DestroyFn = Status (*)(Handle);
using SetStreamFn = Status (*)(Handle, cudaStream_t);
using SgemmFn = Status (*)(Handle, int, int, int, int, int, const float*, const float*, int,
                           const float*, int, const float*, float*, int);
using DgemmFn = Status (*)(Handle, int, int, int, int, int, const double*, const double*, int,
                           const double*, int, const double*, double*, int);

struct Library {
  std::string name;
  CreateFn create = nullptr;
  DestroyFn destroy = nullptr;
  SetStreamFn set_stream = nullptr;
  SgemmFn sgemm = nullptr;
  DgemmFn dgemm = nullptr;
  std::map<int, Handle> handles;  // one per device, kept for the life of the process
};

std::mutex mutex;
Library* library = nullptr;  // set once, never freed (handles must outlive every caller)

const char* status_name(Status s) {
  switch (s) {
    case 0: return "CUBLAS_STATUS_SUCCESS";
    case 1: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case 3: return "CUBLAS_STATUS_ALLOC_FAILED";
    case 7: return "CUBLAS_STATUS_INVALID_VALUE";
    case 8: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case 11: return "CUBLAS_STATUS_MAPPING_ERROR";
    case 13: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case 14: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case 15: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case 16: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "unknown cuBLAS status";
  }
}

void check_status(Status s, const char* what) {
  if (s != kSuccess)
    throw CudaError(std::string(what) + " failed: " + status_name(s) + " (" + std::to_string(s) +
                    ")");
}

template <typename F>
F symbol(void* dl, const char* name, const std::string& file) {
  void* p = dlsym(dl, name);
  if (p == nullptr) throw std::runtime_error(file + " has no symbol " + name);
  return reinterpret_cast<F>(p);
}

Library* open_library(const std::vector<std::string>& candidates) {
  std::string tried;
  for (const std::string& name : candidates) {
    void* dl = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (dl == nullptr) {
      const char* why = dlerror();
      tried += "\n  " + (why != nullptr ? std::string(why) : name + ": not found");
      continue;
    }
    auto lib = std::make_unique<Library>();
    lib->name = name;
    try {
      lib->create = symbol<CreateFn>(dl, "cublasCreate_v2", name);
      lib->destroy = symbol<DestroyFn>(dl, "cublasDestroy_v2", name);
      lib->set_stream = symbol<SetStreamFn>(dl, "cublasSetStream_v2", name);
      lib->sgemm = symbol<SgemmFn>(dl, "cublasSgemm_v2", name);
      lib->dgemm = symbol<DgemmFn>(dl, "cublasDgemm_v2", name);
    } catch (const std::runtime_error& e) {
      dlclose(dl);
      tried += "\n  " + std::string(e.what());
      continue;
    }
    return lib.release();  // the library stays open for the life of the process
  }
  throw std::runtime_error(
      "cuBLAS is needed for matrix products on the GPU, but none of these could be loaded:" +
      tried +
      "\ninstall it with the CUDA toolkit or from pip (pip install nvidia-cublas-cu12, or "
      "nvidia-cublas for CUDA 13), or put its directory on LD_LIBRARY_PATH");
}

// The handle of the current device, created on first use and bound to the legacy default
// stream, where every sparkbatch kernel runs.
Handle handle_of_current_device(Library& lib) {
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  auto found = lib.handles.find(device);
  if (found != lib.handles.end()) return found->second;
  Handle h = nullptr;
  check_status(lib.create(&h), "cublasCreate");
  const Status s = lib.set_stream(h, nullptr);
  if (s != kSuccess) {
    (void)lib.destroy(h);
    check_status(s, "cublasSetStream");
  }
  lib.handles.emplace(device, h);
  return h;
}

int as_int(long v, const char* what) {
  if (v < 0 || v > INT_MAX)
    throw std::invalid_argument(std::string(what) + " = " + std::to_string(v) +
                                " is beyond what one cuBLAS call takes (" +
                                std::to_string(INT_MAX) + ")");
  return static_cast<int>(v);
}

}  // namespace

std::vector<std::string> default_cublas_names() {
  return {"libcublas.so.13", "libcublas.so.12", "libcublas.so"};
}

std::string load_cublas(const std::vector<std::string>& candidates) {
  const std::lock_guard<std::mutex> lock(mutex);
  if (library == nullptr) library = open_library(candidates);
  return library->name;
}

std::string loaded_cublas() {
  const std::lock_guard<std::mutex> lock(mutex);
  return library != nullptr ? library->name : std::string();
}

template <typename T>
void gemm(bool trans_a, bool trans_b, long m, long n, long k, T alpha, const T* a, const T* b,
          T beta, T* c) {
  const int mi = as_int(m, "rows of the product");
  const int ni = as_int(n, "columns of the product");
  const int ki = as_int(k, "inner dimension of the product");
  if (mi == 0 || ni == 0) return;
  Handle h = nullptr;
  Library* lib = nullptr;
  {
    const std::lock_guard<std::mutex> lock(mutex);
    if (library == nullptr) library = open_library(default_cublas_names());
    lib = library;
    h = handle_of_current_device(*lib);
  }
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T, and a row-major matrix is
  // its transpose in column-major: so call gemm with B first, dimensions (n, m, k), and each
  // operand's leading dimension its stored row length.
  const int lda = std::max(1, trans_a ? mi : ki);  // A stored [M, K], or [K, M] with trans_a
  const int ldb = std::max(1, trans_b ? ki : ni);  // B stored [K, N], or [N, K] with trans_b
  const int op_a = trans_a ? kOpT : kOpN;
  const int op_b = trans_b ? kOpT : kOpN;
  Status s;
  if constexpr (std::is_same_v<T, float>)
    s = lib->sgemm(h, op_b, op_a, ni, mi, ki, &alpha, b, ldb, a, lda, &beta, c, ni);
  else
    s = lib->dgemm(h, op_b, op_a, ni, mi, ki, &alpha, b, ldb, a, lda, &beta, c, ni);
  check_status(s, std::is_same_v<T, float> ? "cublasSgemm" : "cublasDgemm");
}

template void gemm<float>(bool, bool, long, long, long, float, const float*, const float*, float,
                          float*);
template void gemm<double>(bool, bool, long, long, long, double, const double*, const double*,
                           double, double*);

}  // namespace sparkbatch::cuda
