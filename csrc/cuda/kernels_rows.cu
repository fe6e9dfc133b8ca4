// Row-wise kernels: bias + activation, activation gradient + bias gradient, the output layer and
// the loss alone, with the deterministic reductions behind them (column sums and loss sums).
//
// NOTE(one warp per row): softmax and the output layer need sums over a row, so one warp owns a
// row (lane l takes columns l, l+32, ...) and combines its lanes with shuffles: no shared memory,
// no atomics, and rows of any width. The element-wise kernels are plain grid-stride loops. The
// activation and loss arrive as run-time codes: the switch is the same for every thread of a
// launch, so it costs a few uniform branches, while one specialised kernel per activation would
// multiply the compile time that every `pip install` pays.
//
// NOTE(deterministic sums): no sum uses atomics. Column sums give each column to 16 threads that
// add every 16th row in order, then add their 16 partials in order; loss sums write one double
// per row, then reduce them in a fixed tree whose shape depends on the row count only. The same
// inputs give bit-identical results on every run.
#include <cuda_runtime.h>
#include <math.h>

#include "check.hpp"
#include "kernels.hpp"
#include "launch.hpp"

namespace sparkbatch::cuda {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr unsigned kSumLanes = 16;           // threads per column in column_sums_kernel
constexpr unsigned kReduceThreads = kThreads;
constexpr unsigned kReduceBlocks = 256;       // partial sums of reduce_sum

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (unsigned offset = kWarp / 2; offset > 0; offset /= 2)
    v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
  for (unsigned offset = kWarp / 2; offset > 0; offset /= 2) {
    const T other = __shfl_xor_sync(kFullMask, v, offset);
    v = other > v ? other : v;
  }
  return v;
}

// The loss term of one output from its activation a (every loss but the fused ones).
template <typename T>
__device__ __forceinline__ T loss_term(Loss loss, T a, T y, T inv_outputs, T* grad) {
  switch (loss) {
    case Loss::mcxent:
      return nn::mcxent_term(a, y, nn::log_eps<T>(), grad);
    case Loss::xent:
      return nn::xent_term(a, y, nn::log_eps<T>(), grad);
    case Loss::mae:
      return nn::mae_term(a, y, inv_outputs, grad);
    case Loss::mse:
    default:
      return nn::mse_term(a, y, inv_outputs, grad);
  }
}

// softmax_row of nn_kernels.cpp by one warp: z += bias; a = softmax(z) (a may be z).
// Returns log(sum(exp(z))) to every lane.
template <typename T>
__device__ T softmax_row(T* z, const T* bias, T* a, std::size_t m, unsigned lane) {
  T top = T(-INFINITY);
  for (std::size_t j = lane; j < m; j += kWarp) {
    if (bias != nullptr) z[j] += bias[j];
    top = z[j] > top ? z[j] : top;
  }
  top = warp_max(top);
  T sum = T(0);
  for (std::size_t j = lane; j < m; j += kWarp) {
    a[j] = nn::exp_(z[j] - top);
    sum += a[j];
  }
  sum = warp_sum(sum);
  const T inv = T(1) / sum;
  for (std::size_t j = lane; j < m; j += kWarp) a[j] *= inv;
  return top + nn::log_(sum);
}

// softmax_backward_row of nn_kernels.cpp by one warp: dz = a * (da - sum(da * a)); dz may be da.
template <typename T>
__device__ void softmax_backward_row(const T* da, const T* a, T* dz, std::size_t m,
                                     unsigned lane) {
  T dot = T(0);
  for (std::size_t j = lane; j < m; j += kWarp) dot += da[j] * a[j];
  dot = warp_sum(dot);
  for (std::size_t j = lane; j < m; j += kWarp) dz[j] = a[j] * (da[j] - dot);
}

template <typename T>
__global__ void bias_activation_kernel(T* z, const T* bias, T* a, std::size_t count,
                                       std::size_t m, Activation act, T alpha) {
  for (std::size_t i = thread_index(); i < count; i += thread_stride()) {
    const T x = bias != nullptr ? z[i] + bias[i % m] : z[i];
    z[i] = x;
    a[i] = nn::activate(act, x, alpha);
  }
}

template <typename T>
__global__ void softmax_kernel(T* z, const T* bias, T* a, std::size_t n, std::size_t m) {
  const std::size_t row = thread_index() / kWarp;
  if (row >= n) return;  // the whole warp
  softmax_row(z + row * m, bias, a + row * m, m, threadIdx.x % kWarp);
}

template <typename T>
__global__ void activation_grad_kernel(const T* da, const T* z, const T* a, T* dz,
                                       std::size_t count, Activation act, T alpha) {
  for (std::size_t i = thread_index(); i < count; i += thread_stride()) {
    const T x = z != nullptr ? z[i] : T(0);
    dz[i] = da[i] * nn::activation_grad(act, x, a[i], alpha);
  }
}

template <typename T>
__global__ void softmax_backward_kernel(const T* da, const T* a, T* dz, std::size_t n,
                                        std::size_t m) {
  const std::size_t row = thread_index() / kWarp;
  if (row >= n) return;
  const std::size_t base = row * m;
  softmax_backward_row(da + base, a + base, dz + base, m, threadIdx.x % kWarp);
}

// sums[j] = sum over rows of x[i, j]; blocks of (32 columns) x (kSumLanes rows at a time).
template <typename T>
__global__ void column_sums_kernel(const T* x, T* sums, std::size_t n, std::size_t m) {
  __shared__ T partial[kSumLanes][kWarp];
  const std::size_t j = static_cast<std::size_t>(blockIdx.x) * kWarp + threadIdx.x;
  T sum = T(0);
  if (j < m)
    for (std::size_t i = threadIdx.y; i < n; i += kSumLanes) sum += x[i * m + j];
  partial[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && j < m) {
    T total = partial[0][threadIdx.x];
    for (unsigned r = 1; r < kSumLanes; ++r) total += partial[r][threadIdx.x];
    sums[j] = total;
  }
}

// output_layer of nn_kernels.cpp, one warp per row; the row's loss goes to row_losses[row].
template <typename T>
__global__ void output_layer_kernel(Loss loss, Activation act, T alpha, T* z, const T* bias,
                                    const T* labels, LossWeights<T> w, T* a, T* dz, std::size_t n,
                                    std::size_t m, T scale, double* row_losses) {
  const std::size_t row = thread_index() / kWarp;
  if (row >= n) return;
  const unsigned lane = threadIdx.x % kWarp;
  const std::size_t base = row * m;
  T* zr = z + base;
  T* ar = a + base;
  T* dzr = dz + base;
  const T* yr = labels + base;
  const T inv_outputs = T(1) / T(m);
  T row_loss = T(0);
  if (loss == Loss::mcxent && act == Activation::softmax) {
    const T lse = softmax_row(zr, bias, ar, m, lane);  // log p_j = z_j - lse
    T weighted_labels = T(0);  // sum_k w_k y_k: d(loss)/dz_j = p_j * this - w_j y_j
    for (std::size_t j = lane; j < m; j += kWarp) {
      const T c = w.at(row, j, m) * yr[j];
      weighted_labels += c;
      row_loss += nn::softmax_xent_term(zr[j] - lse, c);
    }
    weighted_labels = warp_sum(weighted_labels);
    for (std::size_t j = lane; j < m; j += kWarp)
      dzr[j] = scale * (ar[j] * weighted_labels - w.at(row, j, m) * yr[j]);
  } else if (loss == Loss::xent && act == Activation::sigmoid) {
    for (std::size_t j = lane; j < m; j += kWarp) {
      if (bias != nullptr) zr[j] += bias[j];
      ar[j] = nn::sigmoid(zr[j]);
      T g;
      const T term = nn::sigmoid_xent(zr[j], yr[j], &g);
      const T wt = w.at(row, j, m);
      row_loss += wt * term;
      dzr[j] = scale * wt * g;
    }
  } else {
    if (act == Activation::softmax) {
      softmax_row(zr, bias, ar, m, lane);
    } else {
      for (std::size_t j = lane; j < m; j += kWarp) {
        const T x = bias != nullptr ? zr[j] + bias[j] : zr[j];
        zr[j] = x;
        ar[j] = nn::activate(act, x, alpha);
      }
    }
    for (std::size_t j = lane; j < m; j += kWarp) {
      T g;
      const T term = loss_term(loss, ar[j], yr[j], inv_outputs, &g);
      const T wt = w.at(row, j, m);
      row_loss += wt * term;
      dzr[j] = scale * wt * g;  // d(loss)/da for now
    }
    if (act == Activation::softmax) {
      softmax_backward_row(dzr, ar, dzr, m, lane);
    } else if (act != Activation::identity) {
      for (std::size_t j = lane; j < m; j += kWarp)
        dzr[j] = dzr[j] * nn::activation_grad(act, zr[j], ar[j], alpha);
    }
  }
  row_loss = warp_sum(row_loss);
  if (lane == 0) row_losses[row] = static_cast<double>(row_loss);
}

// loss_sum of nn_kernels.cpp, one warp per row; the row's loss goes to row_losses[row].
template <typename T>
__global__ void loss_sum_kernel(Loss loss, Activation act, const T* z, const T* a,
                                const T* labels, LossWeights<T> w, std::size_t n, std::size_t m,
                                double* row_losses) {
  const std::size_t row = thread_index() / kWarp;
  if (row >= n) return;
  const unsigned lane = threadIdx.x % kWarp;
  const std::size_t base = row * m;
  const T* zr = z + base;
  const T* ar = a + base;
  const T* yr = labels + base;
  const T inv_outputs = T(1) / T(m);
  T row_loss = T(0);
  if (loss == Loss::mcxent && act == Activation::softmax) {
    T top = zr[0];
    for (std::size_t j = lane; j < m; j += kWarp) top = zr[j] > top ? zr[j] : top;
    top = warp_max(top);
    T sum = T(0);
    for (std::size_t j = lane; j < m; j += kWarp) sum += nn::exp_(zr[j] - top);
    sum = warp_sum(sum);
    const T lse = top + nn::log_(sum);
    for (std::size_t j = lane; j < m; j += kWarp)
      row_loss += nn::softmax_xent_term(zr[j] - lse, w.at(row, j, m) * yr[j]);
  } else {
    for (std::size_t j = lane; j < m; j += kWarp) {
      T g;
      const T term = loss == Loss::xent && act == Activation::sigmoid
                         ? nn::sigmoid_xent(zr[j], yr[j], &g)
                         : loss_term(loss, ar[j], yr[j], inv_outputs, &g);
      row_loss += w.at(row, j, m) * term;
    }
  }
  row_loss = warp_sum(row_loss);
  if (lane == 0) row_losses[row] = static_cast<double>(row_loss);
}

struct DoubleValues {
  const double* x;
  __device__ double operator()(std::size_t i) const { return x[i]; }
};

template <typename T>
struct Squares {
  const T* x;
  __device__ double operator()(std::size_t i) const {
    const double v = static_cast<double>(x[i]);
    return v * v;
  }
};

// 1 for a NaN or an infinity, else 0 (the CPU's first_non_finite, counted).
template <typename T>
struct NonFinite {
  const T* x;
  __device__ double operator()(std::size_t i) const { return isfinite(x[i]) ? 0.0 : 1.0; }
};

// out[blockIdx.x] = sum of f(i) over the block's grid-stride share of [0, n), tree-reduced.
template <typename F>
__global__ void reduce_kernel(F f, std::size_t n, double* out) {
  __shared__ double partial[kReduceThreads];
  double sum = 0.0;
  for (std::size_t i = thread_index(); i < n; i += thread_stride()) sum += f(i);
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (unsigned width = kReduceThreads / 2; width > 0; width /= 2) {
    if (threadIdx.x < width) partial[threadIdx.x] += partial[threadIdx.x + width];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = partial[0];
}

// Sum of f(i) over [0, n) in double, copied to the host; scratch: kReduceBlocks + 1 doubles.
template <typename F>
double reduce_sum(F f, std::size_t n, double* scratch) {
  if (n == 0) return 0.0;
  const auto blocks = static_cast<unsigned>(
      std::min<std::size_t>((n + kReduceThreads - 1) / kReduceThreads, kReduceBlocks));
  reduce_kernel<<<blocks, kReduceThreads>>>(f, n, scratch);
  check_launch("reduce_kernel (partial sums)");
  double* total = scratch + kReduceBlocks;
  reduce_kernel<<<1, kReduceThreads>>>(DoubleValues{scratch}, blocks, total);
  check_launch("reduce_kernel (total)");
  double result = 0.0;
  check(cudaMemcpy(&result, total, sizeof(double), cudaMemcpyDeviceToHost),
        "copying a sum to the host");
  return result;
}

template <typename T>
void column_sums(const T* x, T* sums, std::size_t n, std::size_t m) {
  if (m == 0) return;
  const dim3 block(kWarp, kSumLanes);
  const auto blocks = static_cast<unsigned>((m + kWarp - 1) / kWarp);
  column_sums_kernel<<<blocks, block>>>(x, sums, n, m);
  check_launch("column_sums_kernel");
}

}  // namespace

std::size_t rows_scratch(std::size_t n) { return n + kReduceBlocks + 1; }

std::size_t sum_scratch() { return kReduceBlocks + 1; }

template <typename T>
void bias_activation(T* z, const T* bias, T* a, std::size_t n, std::size_t m, Activation act,
                     T alpha) {
  if (n == 0 || m == 0) return;
  if (act == Activation::softmax) {
    softmax_kernel<<<row_blocks(n), kThreads>>>(z, bias, a, n, m);
    check_launch("softmax_kernel");
  } else {
    bias_activation_kernel<<<grid_blocks(n * m), kThreads>>>(z, bias, a, n * m, m, act, alpha);
    check_launch("bias_activation_kernel");
  }
}

template <typename T>
void activation_backward(const T* da, const T* z, const T* a, T* dz, T* db, std::size_t n,
                         std::size_t m, Activation act, T alpha) {
  if (m == 0) return;
  if (n > 0) {
    if (act == Activation::softmax) {
      softmax_backward_kernel<<<row_blocks(n), kThreads>>>(da, a, dz, n, m);
      check_launch("softmax_backward_kernel");
    } else if (act == Activation::identity) {
      if (dz != da)
        check(cudaMemcpyAsync(dz, da, n * m * sizeof(T), cudaMemcpyDeviceToDevice, 0),
              "cudaMemcpyAsync (identity gradient)");
    } else {
      activation_grad_kernel<<<grid_blocks(n * m), kThreads>>>(da, z, a, dz, n * m, act, alpha);
      check_launch("activation_grad_kernel");
    }
  }
  if (db != nullptr) column_sums(static_cast<const T*>(dz), db, n, m);
}

template <typename T>
double output_layer(Loss loss, Activation act, T alpha, T* z, const T* bias, const T* labels,
                    LossWeights<T> weights, T* a, T* dz, T* db, std::size_t n, std::size_t m,
                    T scale, double* scratch) {
  if (m == 0) return 0.0;
  if (n > 0) {
    output_layer_kernel<<<row_blocks(n), kThreads>>>(loss, act, alpha, z, bias, labels, weights,
                                                     a, dz, n, m, scale, scratch);
    check_launch("output_layer_kernel");
  }
  if (db != nullptr) column_sums(static_cast<const T*>(dz), db, n, m);
  return reduce_sum(DoubleValues{scratch}, n, scratch + n);
}

template <typename T>
double loss_sum(Loss loss, Activation act, const T* z, const T* a, const T* labels,
                LossWeights<T> weights, std::size_t n, std::size_t m, double* scratch) {
  if (n == 0 || m == 0) return 0.0;
  loss_sum_kernel<<<row_blocks(n), kThreads>>>(loss, act, z, a, labels, weights, n, m, scratch);
  check_launch("loss_sum_kernel");
  return reduce_sum(DoubleValues{scratch}, n, scratch + n);
}

template <typename T>
double sum_squares(const T* x, std::size_t count, double* scratch) {
  return reduce_sum(Squares<T>{x}, count, scratch);
}

template <typename T>
std::size_t count_non_finite(const T* x, std::size_t count, double* scratch) {
  // A sum of ones in double is exact up to 2^53 elements.
  return static_cast<std::size_t>(reduce_sum(NonFinite<T>{x}, count, scratch));
}

#define SPARKBATCH_CUDA_ROWS_INSTANTIATE(T)                                                      \
  template void bias_activation<T>(T*, const T*, T*, std::size_t, std::size_t, Activation, T);  \
  template void activation_backward<T>(const T*, const T*, const T*, T*, T*, std::size_t,        \
                                       std::size_t, Activation, T);                              \
  template double output_layer<T>(Loss, Activation, T, T*, const T*, const T*, LossWeights<T>,  \
                                  T*, T*, T*, std::size_t, std::size_t, T, double*);             \
  template double loss_sum<T>(Loss, Activation, const T*, const T*, const T*, LossWeights<T>,    \
                              std::size_t, std::size_t, double*);                               \
  template double sum_squares<T>(const T*, std::size_t, double*);                               \
  template std::size_t count_non_finite<T>(const T*, std::size_t, double*);

SPARKBATCH_CUDA_ROWS_INSTANTIATE(float)
SPARKBATCH_CUDA_ROWS_INSTANTIATE(double)

}  // namespace sparkbatch::cuda
