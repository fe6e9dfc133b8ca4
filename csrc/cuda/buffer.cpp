#include "buffer.hpp"

#include <cuda_runtime_api.h>

#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>

#include "check.hpp"

namespace sparkbatch::cuda {

Allocation::Allocation(std::size_t bytes) : bytes_(bytes) {
  check(cudaGetDevice(&device_), "cudaGetDevice");
  if (bytes == 0) return;
  const cudaError_t status = cudaMalloc(&data_, bytes);
  if (status != cudaSuccess) {
    data_ = nullptr;
    throw_cuda_error(status, "cudaMalloc of " + std::to_string(bytes) + " bytes on device " +
                                 std::to_string(device_));
  }
}

Allocation::~Allocation() {
  if (data_ != nullptr) (void)cudaFree(data_);  // errors here (driver shut down) cannot be reported
}

std::size_t checked_size(const std::vector<int64_t>& shape, std::size_t limit) {
  std::size_t size = 1;
  for (const int64_t extent : shape) {
    if (extent < 0) throw std::invalid_argument("negative extent " + std::to_string(extent));
    const auto e = static_cast<std::size_t>(extent);
    if (e != 0 && size > limit / e)
      throw std::invalid_argument("shape of more than " + std::to_string(limit) + " elements");
    size *= e;
  }
  return size;
}

namespace {
// Largest element count whose byte size fits in a signed 64-bit integer for both dtypes.
constexpr std::size_t kMaxElements = static_cast<std::size_t>(std::numeric_limits<int64_t>::max()) / 8;
}  // namespace

DeviceBuffer::DeviceBuffer(std::vector<int64_t> shape, DType dtype)
    : shape_(std::move(shape)), dtype_(dtype) {
  size_ = checked_size(shape_, kMaxElements);
  allocation_ = std::make_shared<Allocation>(size_ * itemsize(dtype_));
}

DeviceBuffer::DeviceBuffer(std::shared_ptr<Allocation> allocation, std::size_t offset,
                           std::vector<int64_t> shape, DType dtype)
    : allocation_(std::move(allocation)), offset_(offset), shape_(std::move(shape)), dtype_(dtype) {
  size_ = checked_size(shape_, kMaxElements);
}

DeviceBuffer DeviceBuffer::view(std::size_t offset, std::vector<int64_t> shape) const {
  const std::size_t count = checked_size(shape, kMaxElements);
  if (offset > size_ || count > size_ - offset)
    throw std::invalid_argument("a view of " + std::to_string(count) + " elements at offset " +
                            std::to_string(offset) + " does not fit in a buffer of " +
                            std::to_string(size_) + " elements");
  return DeviceBuffer(allocation_, offset_ + offset, std::move(shape), dtype_);
}

DeviceGuard::DeviceGuard(int device) {
  int current = 0;
  check(cudaGetDevice(&current), "cudaGetDevice");
  if (current != device) {
    check(cudaSetDevice(device), "cudaSetDevice");
    previous_ = current;
  }
}

DeviceGuard::~DeviceGuard() {
  if (previous_ >= 0) (void)cudaSetDevice(previous_);
}

namespace {
struct Scratch {
  std::mutex mutex;
  double* data = nullptr;
  std::size_t doubles = 0;
};

Scratch& scratch_of(int device) {
  static std::mutex registry_mutex;
  static auto* registry = new std::map<int, Scratch*>();  // leaked on purpose, as the memory
  const std::lock_guard<std::mutex> lock(registry_mutex);
  Scratch*& s = (*registry)[device];
  if (s == nullptr) s = new Scratch();
  return *s;
}
}  // namespace

ScratchLock::ScratchLock(std::size_t doubles) {
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  Scratch& s = scratch_of(device);
  lock_ = std::unique_lock<std::mutex>(s.mutex);
  if (s.doubles < doubles) {
    std::size_t grown = s.doubles == 0 ? 4096 : s.doubles;
    while (grown < doubles) grown *= 2;
    if (s.data != nullptr) {
      // Work queued by earlier holders may still read the old block: wait before freeing it.
      check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
      (void)cudaFree(s.data);
      s.data = nullptr;
      s.doubles = 0;
    }
    void* p = nullptr;
    const cudaError_t status = cudaMalloc(&p, grown * sizeof(double));
    if (status != cudaSuccess)
      throw_cuda_error(status, "cudaMalloc of " + std::to_string(grown * sizeof(double)) +
                                   " bytes of reduction scratch");
    s.data = static_cast<double*>(p);
    s.doubles = grown;
  }
  data_ = s.data;
}

}  // namespace sparkbatch::cuda
