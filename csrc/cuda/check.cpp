#include "check.hpp"

#ifndef SPARKBATCH_CUDA_ARCHITECTURES
#error "CMake passes SPARKBATCH_CUDA_ARCHITECTURES (the CUDA_ARCHITECTURES of the module)"
#endif

namespace sparkbatch::cuda {

const char* compiled_architectures() { return SPARKBATCH_CUDA_ARCHITECTURES; }

void throw_cuda_error(cudaError_t status, const std::string& what) {
  (void)cudaGetLastError();  // clear a non-sticky error so the next launch check does not see it
  std::string message = what + ": " + cudaGetErrorName(status) + " (" +
                        cudaGetErrorString(status) + ")";
  switch (status) {
    case cudaErrorMemoryAllocation:
      throw DeviceMemoryError(message);
    case cudaErrorNoKernelImageForDevice:
    case cudaErrorUnsupportedPtxVersion:
    case cudaErrorInvalidKernelImage:
      message += "; this sparkbatch._cuda was compiled for CUDA architectures ";
      message += compiled_architectures();
      message += ": rebuild it for this GPU, e.g. CUDAARCHS=native pip install sparkbatch";
      break;
    case cudaErrorInsufficientDriver:
    case cudaErrorNoDevice:
      message += "; sparkbatch.nn.gpu.cuda_available() tells whether a GPU can be used";
      break;
    default:
      break;
  }
  throw CudaError(message);
}

}  // namespace sparkbatch::cuda
