// The LSTM's gate arithmetic on the GPU: one thread per (example, unit) of a time step, each
// running the per-unit functions of nn_math.hpp (lstm_forward_at, lstm_backward_at) that the CPU
// kernels run, so the two devices differ only by the matrix products' rounding. The recurrent
// product h_{s-1} @ RW and the whole-sequence products are cuBLAS calls made by the caller.
#include <cuda_runtime.h>

#include "check.hpp"
#include "kernels.hpp"
#include "launch.hpp"

namespace sparkbatch::cuda {
namespace {

template <typename T>
__global__ void lstm_forward_kernel(nn::LstmForwardStep<T> p, Activation act, Activation gate) {
  const std::size_t units = p.n * p.m;
  for (std::size_t k = thread_index(); k < units; k += thread_stride())
    nn::lstm_forward_at(p, act, gate, k / p.m, k % p.m);
}

template <typename T>
__global__ void lstm_backward_kernel(nn::LstmBackwardStep<T> p, Activation act,
                                     Activation gate) {
  const std::size_t units = p.n * p.m;
  for (std::size_t k = thread_index(); k < units; k += thread_stride())
    nn::lstm_backward_at(p, act, gate, k / p.m, k % p.m);
}

}  // namespace

template <typename T>
void lstm_forward_step(const nn::LstmForwardStep<T>& p, Activation act, Activation gate) {
  const std::size_t units = p.n * p.m;
  if (units == 0) return;
  lstm_forward_kernel<T><<<grid_blocks(units), kThreads>>>(p, act, gate);
  check(cudaGetLastError(), "lstm_forward_step");
}

template <typename T>
void lstm_backward_step(const nn::LstmBackwardStep<T>& p, Activation act, Activation gate) {
  const std::size_t units = p.n * p.m;
  if (units == 0) return;
  lstm_backward_kernel<T><<<grid_blocks(units), kThreads>>>(p, act, gate);
  check(cudaGetLastError(), "lstm_backward_step");
}

template void lstm_forward_step<float>(const nn::LstmForwardStep<float>&, Activation, Activation);
template void lstm_forward_step<double>(const nn::LstmForwardStep<double>&, Activation,
                                        Activation);
template void lstm_backward_step<float>(const nn::LstmBackwardStep<float>&, Activation,
                                        Activation);
template void lstm_backward_step<double>(const nn::LstmBackwardStep<double>&, Activation,
                                         Activation);

}  // namespace sparkbatch::cuda
