// The CPU kernels of the built-in network: one pass over memory for each step that is not a
// matrix product (numpy's BLAS does those). Every kernel is a loop around the element-wise
// functions of nn_math.hpp, which the CUDA kernels share. Large arrays are split over the thread
// pool; results do not depend on the number of threads (every element is computed by one thread,
// and reductions run in a fixed order).
#pragma once

#include <cstddef>
#include <cstdint>

#include "nn_math.hpp"

namespace sparkbatch::nn {

// z[i, j] += bias[j]; a[i, j] = f(z[i, j]) (softmax: over row i). `a` may be `z`.
template <typename T>
void bias_activation(T* z, const T* bias, T* a, std::size_t n, std::size_t m, Activation act,
                     T alpha);

// dz = da * f'(z) (softmax: a * (da - sum(da * a)) per row) and db = column sums of dz.
// `dz` may be `da`; `z` may be null when the activation does not need it; `db` may be null.
template <typename T>
void activation_backward(const T* da, const T* z, const T* a, T* dz, T* db, std::size_t n,
                         std::size_t m, Activation act, T alpha);

// The whole output layer after its matrix product, in one pass per row: adds the bias to z,
// computes the activation a, the weighted loss, dz = scale * d(loss)/dz and db = column sums of dz.
// Softmax with cross-entropy and sigmoid with binary cross-entropy use the fused, stable forms.
// Returns the sum of the weighted loss terms (not scaled).
template <typename T>
double output_layer(Loss loss, Activation act, T alpha, T* z, const T* bias, const T* labels,
                    LossWeights<T> weights, T* a, T* dz, T* db, std::size_t n, std::size_t m,
                    T scale);

// The loss only (no gradient): for scoring. `a` is the activated output.
template <typename T>
double loss_sum(Loss loss, Activation act, const T* z, const T* a, const T* labels,
                LossWeights<T> weights, std::size_t n, std::size_t m);

// One step of updater `u` over `count` parameters: state holds state_per_param blocks of count.
template <typename T>
void updater_step(Updater u, T* params, const T* grads, T* state, std::size_t count,
                  const UpdaterHyper& h);

// out = (sum of the k buffers) / divisor; out may be one of them. divisor = k gives the mean.
template <typename T>
void average(const T* const* buffers, std::size_t k, T* out, std::size_t count, double divisor);

// acc += x.
template <typename T>
void add_into(T* acc, const T* x, std::size_t count);

// y += alpha * x.
template <typename T>
void axpy(T* y, const T* x, T alpha, std::size_t count);

// bfloat16 as the ring exchange's wire carries it: the upper 16 bits of a float32, rounded to
// nearest, ties to even (a NaN stays a quiet NaN of the same sign).
void bfloat16_encode(const float* x, uint16_t* out, std::size_t count);
// acc += x widened from bfloat16 (exact: a bfloat16 is a float32 with 16 zero low bits).
void bfloat16_add_into(float* acc, const uint16_t* x, std::size_t count);
// out = x widened from bfloat16.
void bfloat16_decode(const uint16_t* x, float* out, std::size_t count);
// acc += x widened, then out = acc rounded to bfloat16: bfloat16_add_into and bfloat16_encode
// in one pass (a ring's reduce-scatter sums what arrived and sends the sum on).
void bfloat16_add_encode(float* acc, const uint16_t* x, uint16_t* out, std::size_t count);

// x[i] *= dropout_factor(seed, i) for i in [0, count): drops with probability `rate`.
template <typename T>
void dropout(T* x, std::size_t count, double rate, uint64_t seed);

// The index of the first NaN or infinity in x[0, count), or -1 when every value is finite. One
// vectorised pass over the exponent bits (large buffers split over the thread pool); the exact
// index is looked up only in the block that holds one.
template <typename T>
int64_t first_non_finite(const T* x, std::size_t count);

// One forward step of an LSTM layer for every example (LstmForwardStep in nn_math.hpp), after
// the caller's recurrent product p.gates = h_{s-1} @ RW: adds x @ W and the bias, activates the
// gates, and writes c_s, the carried h_s and the output at step s. `act` and `gate` are each
// identity, tanh or sigmoid.
template <typename T>
void lstm_forward_step(const LstmForwardStep<T>& p, Activation act, Activation gate);

// One backward step (LstmBackwardStep): the gates' pre-activation gradients of step s, with the
// carried h and c gradients updated for step s-1. The caller then computes dh_rec for step s-1
// as p.dgates @ RW^T.
template <typename T>
void lstm_backward_step(const LstmBackwardStep<T>& p, Activation act, Activation gate);

}  // namespace sparkbatch::nn
