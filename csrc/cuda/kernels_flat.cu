// Kernels over flat buffers: the updaters' step, the average of k buffers, add, axpy, dropout.
// Grid-stride loops; each element is computed by one thread with the nn_math.hpp function the
// CPU kernel calls. The module is compiled without fast-math and without FMA contraction
// (--fmad=false: these kernels are bound by memory, not arithmetic), so + - * / and sqrt round
// exactly as the CPU's do and these results match the x86-64 CPU build bit for bit.
#include <cuda_runtime.h>

#include <cstdint>

#include "check.hpp"
#include "kernels.hpp"
#include "launch.hpp"

namespace sparkbatch::cuda {
namespace {

template <typename T>
__global__ void updater_kernel(Updater u, T* params, const T* grads, T* state, std::size_t count,
                               T lr, T mu, T beta1, T beta2, T eps, T decay) {
  const std::size_t begin = thread_index();
  const std::size_t stride = thread_stride();
  switch (u) {
    case Updater::momentum:
      for (std::size_t i = begin; i < count; i += stride)
        nn::momentum_step(params[i], state[i], grads[i], lr, mu);
      break;
    case Updater::nesterov:
      for (std::size_t i = begin; i < count; i += stride)
        nn::nesterov_step(params[i], state[i], grads[i], lr, mu);
      break;
    case Updater::adam: {
      T* m = state;
      T* v = state + count;
      for (std::size_t i = begin; i < count; i += stride)
        nn::adam_step(params[i], m[i], v[i], grads[i], lr, beta1, beta2, eps);
      break;
    }
    case Updater::rmsprop:
      for (std::size_t i = begin; i < count; i += stride)
        nn::rmsprop_step(params[i], state[i], grads[i], lr, decay, eps);
      break;
    case Updater::sgd:
    default:
      for (std::size_t i = begin; i < count; i += stride) nn::sgd_step(params[i], grads[i], lr);
      break;
  }
}

// ---------------------------------------------------------------------------------------------
// Averaging. NOTE(vectorised average): the k buffer pointers travel in the kernel's argument
// block (no device array to allocate and copy per call). When every buffer and the output are
// 16-byte aligned, each thread loads float4 (double2) vectors, with all k loads of a vector
// issued before the adds for k <= 8 (a template per k), which keeps enough bytes in flight to run
// at copy speed. Each lane gets exactly nn::mean_at's arithmetic: the sum in buffer order, then
// one division; the scalar kernel (unaligned buffers, and the last few elements) calls mean_at.

template <typename T>
struct Buffers {
  const T* p[kMaxAverage];
};

template <typename T>
struct Vector;
template <>
struct Vector<float> {
  using type = float4;
  static constexpr std::size_t lanes = 4;
};
template <>
struct Vector<double> {
  using type = double2;
  static constexpr std::size_t lanes = 2;
};

__device__ __forceinline__ void add_lanes(float4& acc, const float4& x) {
  acc.x += x.x;
  acc.y += x.y;
  acc.z += x.z;
  acc.w += x.w;
}
__device__ __forceinline__ void add_lanes(double2& acc, const double2& x) {
  acc.x += x.x;
  acc.y += x.y;
}
__device__ __forceinline__ void divide_lanes(float4& acc, float d) {
  acc.x /= d;
  acc.y /= d;
  acc.z /= d;
  acc.w /= d;
}
__device__ __forceinline__ void divide_lanes(double2& acc, double d) {
  acc.x /= d;
  acc.y /= d;
}

// K > 0: exactly K buffers, loads unrolled; K == 0: `k` buffers.
template <typename T, int K>
__global__ void average_vector_kernel(Buffers<T> b, int k, T* out, std::size_t vectors,
                                      T divisor) {
  using V = typename Vector<T>::type;
  for (std::size_t v = thread_index(); v < vectors; v += thread_stride()) {
    V acc = reinterpret_cast<const V*>(b.p[0])[v];
    if constexpr (K > 0) {
      V x[K > 1 ? K - 1 : 1];
#pragma unroll
      for (int j = 1; j < K; ++j) x[j - 1] = reinterpret_cast<const V*>(b.p[j])[v];
#pragma unroll
      for (int j = 1; j < K; ++j) add_lanes(acc, x[j - 1]);
    } else {
      for (int j = 1; j < k; ++j) add_lanes(acc, reinterpret_cast<const V*>(b.p[j])[v]);
    }
    divide_lanes(acc, divisor);
    reinterpret_cast<V*>(out)[v] = acc;
  }
}

template <typename T>
__global__ void average_scalar_kernel(Buffers<T> b, int64_t k, T* out, std::size_t begin,
                                      std::size_t end, T divisor) {
  for (std::size_t i = begin + thread_index(); i < end; i += thread_stride())
    out[i] = nn::mean_at(b.p, k, static_cast<int64_t>(i), divisor);
}

template <typename T>
void launch_average_vector(const Buffers<T>& b, int k, T* out, std::size_t vectors, T d) {
  const unsigned blocks = grid_blocks(vectors);
  switch (k) {
#define SPARKBATCH_AVERAGE_CASE(K)                                               \
  case K:                                                                        \
    average_vector_kernel<T, K><<<blocks, kThreads>>>(b, k, out, vectors, d);    \
    break;
    SPARKBATCH_AVERAGE_CASE(1)
    SPARKBATCH_AVERAGE_CASE(2)
    SPARKBATCH_AVERAGE_CASE(3)
    SPARKBATCH_AVERAGE_CASE(4)
    SPARKBATCH_AVERAGE_CASE(5)
    SPARKBATCH_AVERAGE_CASE(6)
    SPARKBATCH_AVERAGE_CASE(7)
    SPARKBATCH_AVERAGE_CASE(8)
#undef SPARKBATCH_AVERAGE_CASE
    default:
      average_vector_kernel<T, 0><<<blocks, kThreads>>>(b, k, out, vectors, d);
      break;
  }
  check_launch("average_vector_kernel");
}

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

template <typename T>
__global__ void add_into_kernel(T* acc, const T* x, std::size_t count) {
  for (std::size_t i = thread_index(); i < count; i += thread_stride()) acc[i] += x[i];
}

template <typename T>
__global__ void axpy_kernel(T* y, const T* x, T alpha, std::size_t count) {
  for (std::size_t i = thread_index(); i < count; i += thread_stride()) y[i] += alpha * x[i];
}

template <typename T>
__global__ void dropout_kernel(T* x, std::size_t count, uint64_t seed, uint64_t threshold,
                               T inv_keep) {
  for (std::size_t i = thread_index(); i < count; i += thread_stride())
    x[i] *= nn::dropout_factor(seed, static_cast<uint64_t>(i), threshold, inv_keep);
}

}  // namespace

template <typename T>
void updater_step(Updater u, T* params, const T* grads, T* state, std::size_t count,
                  const UpdaterHyper& h) {
  if (count == 0) return;
  updater_kernel<<<grid_blocks(count), kThreads>>>(
      u, params, grads, state, count, static_cast<T>(h.lr), static_cast<T>(h.momentum),
      static_cast<T>(h.beta1), static_cast<T>(h.beta2), static_cast<T>(h.eps),
      static_cast<T>(h.decay));
  check_launch("updater_kernel");
}

template <typename T>
void average(const T* const* buffers, std::size_t k, T* out, std::size_t count, double divisor) {
  if (k == 0 || k > kMaxAverage) throw std::invalid_argument("average takes 1 to 64 buffers");
  if (count == 0) return;
  Buffers<T> b{};
  bool aligned = aligned16(out);
  for (std::size_t j = 0; j < k; ++j) {
    b.p[j] = buffers[j];
    aligned = aligned && aligned16(buffers[j]);
  }
  const T d = static_cast<T>(divisor);
  std::size_t done = 0;
  if (aligned) {
    const std::size_t vectors = count / Vector<T>::lanes;
    if (vectors > 0) launch_average_vector(b, static_cast<int>(k), out, vectors, d);
    done = vectors * Vector<T>::lanes;
  }
  if (done < count) {
    average_scalar_kernel<<<grid_blocks(count - done), kThreads>>>(
        b, static_cast<int64_t>(k), out, done, count, d);
    check_launch("average_scalar_kernel");
  }
}

template <typename T>
void add_into(T* acc, const T* x, std::size_t count) {
  if (count == 0) return;
  add_into_kernel<<<grid_blocks(count), kThreads>>>(acc, x, count);
  check_launch("add_into_kernel");
}

template <typename T>
void axpy(T* y, const T* x, T alpha, std::size_t count) {
  if (count == 0) return;
  axpy_kernel<<<grid_blocks(count), kThreads>>>(y, x, alpha, count);
  check_launch("axpy_kernel");
}

template <typename T>
void dropout(T* x, std::size_t count, double rate, uint64_t seed) {
  if (count == 0) return;
  const double keep = 1.0 - rate;  // as nn_kernels.cpp
  const auto threshold = static_cast<uint64_t>(keep * 4294967296.0);
  const T inv_keep = static_cast<T>(1.0 / keep);
  dropout_kernel<<<grid_blocks(count), kThreads>>>(x, count, seed, threshold, inv_keep);
  check_launch("dropout_kernel");
}

#define SPARKBATCH_CUDA_FLAT_INSTANTIATE(T)                                                     \
  template void updater_step<T>(Updater, T*, const T*, T*, std::size_t, const UpdaterHyper&);  \
  template void average<T>(const T* const*, std::size_t, T*, std::size_t, double);             \
  template void add_into<T>(T*, const T*, std::size_t);                                         \
  template void axpy<T>(T*, const T*, T, std::size_t);                                          \
  template void dropout<T>(T*, std::size_t, double, uint64_t);

SPARKBATCH_CUDA_FLAT_INSTANTIATE(float)
SPARKBATCH_CUDA_FLAT_INSTANTIATE(double)

}  // namespace sparkbatch::cuda
