// The DLPack structures (https://github.com/dmlc/dlpack, include/dlpack/dlpack.h, v0.8), declared
// here rather than vendored: the layout below is the stable C ABI that PyTorch, CuPy, JAX and
// numpy read from a "dltensor" capsule. Only the members sparkbatch fills are commented.
#pragma once

#include <cstdint>

namespace sparkbatch::cuda::dlpack {

enum DeviceType : int32_t {
  kDLCPU = 1,
  kDLCUDA = 2,  // memory from cudaMalloc
  kDLCUDAHost = 3,
  kDLOpenCL = 4,
  kDLVulkan = 7,
  kDLMetal = 8,
  kDLVPI = 9,
  kDLROCM = 10,
  kDLROCMHost = 11,
  kDLExtDev = 12,
  kDLCUDAManaged = 13,
  kDLOneAPI = 14,
  kDLWebGPU = 15,
  kDLHexagon = 16,
};

struct Device {
  DeviceType device_type;
  int32_t device_id;  // the CUDA device ordinal
};

enum DataTypeCode : uint8_t {
  kDLInt = 0,
  kDLUInt = 1,
  kDLFloat = 2,
  kDLOpaqueHandle = 3,
  kDLBfloat = 4,
  kDLComplex = 5,
  kDLBool = 6,
};

struct DataType {
  uint8_t code;   // kDLFloat
  uint8_t bits;   // 32 or 64
  uint16_t lanes; // 1
};

struct Tensor {
  void* data;  // first element (byte_offset stays 0, as PyTorch and CuPy export)
  Device device;
  int32_t ndim;
  DataType dtype;
  int64_t* shape;
  int64_t* strides;  // null: compact row-major (C-contiguous)
  uint64_t byte_offset;
};

struct ManagedTensor {
  Tensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(ManagedTensor* self);
};

}  // namespace sparkbatch::cuda::dlpack
