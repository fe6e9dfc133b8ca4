// Launch configuration shared by the kernel files (host code), and the grid-stride loop's
// thread index and stride (device code).
#pragma once

#include <algorithm>
#include <climits>
#include <cstddef>
#include <stdexcept>

namespace sparkbatch::cuda {

constexpr unsigned kThreads = 256;        // threads per block of every kernel
constexpr unsigned kWarp = 32;
constexpr unsigned kRowsPerBlock = kThreads / kWarp;  // warp-per-row kernels
constexpr std::size_t kMaxGridBlocks = 4096;          // grid-stride kernels loop beyond this

// Blocks for a grid-stride loop over `count` items.
inline unsigned grid_blocks(std::size_t count) {
  return static_cast<unsigned>(std::min((count + kThreads - 1) / kThreads, kMaxGridBlocks));
}

// Blocks for one warp per row over `rows` rows.
inline unsigned row_blocks(std::size_t rows) {
  const std::size_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  if (blocks > static_cast<std::size_t>(INT_MAX))
    throw std::invalid_argument("too many rows for one launch");
  return static_cast<unsigned>(blocks);
}

#ifdef __CUDACC__
// A thread's first item, and the step to its next, in a grid-stride loop.
__device__ __forceinline__ std::size_t thread_index() {
  return static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ std::size_t thread_stride() {
  return static_cast<std::size_t>(gridDim.x) * blockDim.x;
}
#endif

}  // namespace sparkbatch::cuda
