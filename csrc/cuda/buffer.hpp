// Device memory: an Allocation (one cudaMalloc, freed when its last owner goes), the DeviceBuffer
// that Python sees (a typed, shaped window on an allocation: the whole of it, or a view such as
// one layer's weights inside the flat parameter buffer), and the scratch space that reductions
// use for their partial sums.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

namespace sparkbatch::cuda {

enum class DType { f32, f64 };

inline std::size_t itemsize(DType t) { return t == DType::f32 ? 4 : 8; }

// One cudaMalloc on the device that was current when it was made. Zero bytes allocate nothing.
class Allocation {
 public:
  explicit Allocation(std::size_t bytes);
  ~Allocation();
  Allocation(const Allocation&) = delete;
  Allocation& operator=(const Allocation&) = delete;

  void* data() const { return data_; }
  std::size_t bytes() const { return bytes_; }
  int device() const { return device_; }

 private:
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
  int device_ = 0;
};

// Number of elements of `shape`, checked: no negative extent, no overflow of `limit`.
std::size_t checked_size(const std::vector<int64_t>& shape, std::size_t limit);

// A C-contiguous array of float32 or float64 in device memory. Copies share the allocation (they
// are handles, as numpy views are): memory is freed when the last buffer or DLPack export using
// it is gone.
class DeviceBuffer {
 public:
  DeviceBuffer(std::vector<int64_t> shape, DType dtype);

  // The `shape`d window starting `offset` elements into this one; shares the allocation.
  DeviceBuffer view(std::size_t offset, std::vector<int64_t> shape) const;

  void* data() const {
    return static_cast<char*>(allocation_->data()) + offset_ * itemsize(dtype_);
  }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data());
  }
  DType dtype() const { return dtype_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  std::size_t size() const { return size_; }
  std::size_t nbytes() const { return size_ * itemsize(dtype_); }
  int device() const { return allocation_->device(); }
  const std::shared_ptr<Allocation>& allocation() const { return allocation_; }

 private:
  DeviceBuffer(std::shared_ptr<Allocation> allocation, std::size_t offset,
               std::vector<int64_t> shape, DType dtype);

  std::shared_ptr<Allocation> allocation_;
  std::size_t offset_ = 0;  // in elements
  std::vector<int64_t> shape_;
  std::size_t size_ = 0;
  DType dtype_ = DType::f32;
};

// Makes `device` current for the lifetime of the guard (kernels and cuBLAS act on the current
// device, and a buffer belongs to the device it was allocated on), then restores the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

// Grow-only device scratch of the current device, held exclusively while the lock lives: the
// reductions (loss sums, sums of squares) write their partial sums here and copy one double back
// before the lock is released, so concurrent callers never share it. Never freed: it lives as
// long as the process (freeing device memory from a static destructor at exit is unsafe).
class ScratchLock {
 public:
  explicit ScratchLock(std::size_t doubles);
  double* data() const { return data_; }

 private:
  std::unique_lock<std::mutex> lock_;
  double* data_ = nullptr;
};

}  // namespace sparkbatch::cuda
