// The element-wise arithmetic of the built-in network, written once for host and device code.
//
// Every activation (and its derivative), every loss term, every updater's step, the mean of k
// buffers and the dropout mask are small inline functions here. The CPU kernels (nn_kernels.cpp)
// call them in their loops and the CUDA kernels (csrc/cuda/) call them once per thread, so the CPU
// test suite checks the very arithmetic the GPU runs. Nothing here allocates, throws or loops over
// an array; row-wise pieces (softmax) are composed from these functions by the kernels.
#pragma once

#include <math.h>
#include <string.h>

#include <cstddef>
#include <cstdint>

#if defined(__CUDACC__)
#define SB_HD __host__ __device__ __forceinline__
#else
#define SB_HD inline
#endif

namespace sparkbatch::nn {

// The codes are part of the Python API (sparkbatch.nn.functions); append, never renumber.
enum class Activation : int32_t {
  identity = 0,
  relu = 1,
  leaky_relu = 2,
  elu = 3,
  gelu = 4,
  tanh = 5,
  sigmoid = 6,
  softmax = 7,  // row-wise: the kernels normalise each row; element-wise it is exp
};

enum class Loss : int32_t {
  mcxent = 0,  // multi-class cross-entropy, -sum_j y_j log a_j (fused with softmax)
  xent = 1,    // binary cross-entropy summed over the outputs (fused with sigmoid)
  mse = 2,     // mean over the outputs of (a - y)^2
  mae = 3,     // mean over the outputs of |a - y|
};

enum class Updater : int32_t { sgd = 0, momentum = 1, nesterov = 2, adam = 3, rmsprop = 4 };

// Overloads that pick the float or double function on host and device alike.
SB_HD float exp_(float x) { return ::expf(x); }
SB_HD double exp_(double x) { return ::exp(x); }
SB_HD float expm1_(float x) { return ::expm1f(x); }
SB_HD double expm1_(double x) { return ::expm1(x); }
SB_HD float log_(float x) { return ::logf(x); }
SB_HD double log_(double x) { return ::log(x); }
SB_HD float log1p_(float x) { return ::log1pf(x); }
SB_HD double log1p_(double x) { return ::log1p(x); }
SB_HD float tanh_(float x) { return ::tanhf(x); }
SB_HD double tanh_(double x) { return ::tanh(x); }
SB_HD float erf_(float x) { return ::erff(x); }
SB_HD double erf_(double x) { return ::erf(x); }
SB_HD float sqrt_(float x) { return ::sqrtf(x); }
SB_HD double sqrt_(double x) { return ::sqrt(x); }
SB_HD float abs_(float x) { return ::fabsf(x); }
SB_HD double abs_(double x) { return ::fabs(x); }

// 1 / (1 + e^-x) without overflow for large |x|.
template <typename T>
SB_HD T sigmoid(T x) {
  if (x >= T(0)) return T(1) / (T(1) + exp_(-x));
  const T e = exp_(x);
  return e / (T(1) + e);
}

// y = f(x). Softmax is exp here; the kernels subtract the row maximum first and normalise after.
template <typename T>
SB_HD T activate(Activation a, T x, T alpha) {
  switch (a) {
    case Activation::relu:
      return x > T(0) ? x : T(0);
    case Activation::leaky_relu:
      return x > T(0) ? x : alpha * x;
    case Activation::elu:
      return x > T(0) ? x : alpha * expm1_(x);
    case Activation::gelu:  // the exact form, as PyTorch's default
      return T(0.5) * x * (T(1) + erf_(x * T(0.70710678118654752440)));
    case Activation::tanh:
      return tanh_(x);
    case Activation::sigmoid:
      return sigmoid(x);
    case Activation::softmax:
      return exp_(x);
    case Activation::identity:
    default:
      return x;
  }
}

// dy/dx at pre-activation x with y = f(x), for the element-wise activations (softmax's Jacobian
// is not diagonal: see softmax_backward in the kernels).
template <typename T>
SB_HD T activation_grad(Activation a, T x, T y, T alpha) {
  switch (a) {
    case Activation::relu:
      return x > T(0) ? T(1) : T(0);
    case Activation::leaky_relu:
      return x > T(0) ? T(1) : alpha;
    case Activation::elu:
      return x > T(0) ? T(1) : y + alpha;
    case Activation::gelu: {
      const T cdf = T(0.5) * (T(1) + erf_(x * T(0.70710678118654752440)));
      const T pdf = T(0.39894228040143267794) * exp_(T(-0.5) * x * x);
      return cdf + x * pdf;
    }
    case Activation::tanh:
      return T(1) - y * y;
    case Activation::sigmoid:
      return y * (T(1) - y);
    case Activation::identity:
    case Activation::softmax:
    default:
      return T(1);
  }
}

// Whether backward needs the pre-activation x (else y suffices and x may be overwritten).
SB_HD bool needs_preactivation(Activation a) {
  return a == Activation::relu || a == Activation::leaky_relu || a == Activation::elu ||
         a == Activation::gelu;
}

// ---------------------------------------------------------------------------------------------
// What the CPU and CUDA kernels share besides the arithmetic.

// Per-example ([n]) or per-output ([n, m]) weights of the loss, from a label mask; none: all 1.
template <typename T>
struct LossWeights {
  const T* data = nullptr;
  bool per_output = false;
  SB_HD T at(std::size_t i, std::size_t j, std::size_t m) const {
    if (data == nullptr) return T(1);
    return per_output ? data[i * m + j] : data[i];
  }
};

// An updater step's hyper-parameters, already scheduled (Adam: lr is the bias-corrected step).
struct UpdaterHyper {
  double lr = 0;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double momentum = 0;
  double decay = 0.95;
};

// State values per parameter of each updater.
SB_HD int updater_state_per_param(Updater u) {
  switch (u) {
    case Updater::momentum:
    case Updater::nesterov:
    case Updater::rmsprop:
      return 1;
    case Updater::adam:
      return 2;
    case Updater::sgd:
    default:
      return 0;
  }
}

// Keeps log() finite in the cross-entropies of activations other than the fused ones.
template <typename T>
SB_HD T log_eps() {
  return T(1e-10);
}

// ---------------------------------------------------------------------------------------------
// Losses: each returns the loss term of one output and stores d(term)/d(input) in *grad.
// `inv_outputs` is 1 / (number of outputs) for the losses that average over the outputs.

// Cross-entropy of softmax outputs from the log-probability z - lse; the gradient with respect
// to z is p * sum(y) - y, which the kernel assembles per row (it needs the row's label sum).
template <typename T>
SB_HD T softmax_xent_term(T z_minus_lse, T y) {
  return -y * z_minus_lse;
}

// Binary cross-entropy of sigmoid(z) from the logit z, stable for any |z|; grad w.r.t. z.
template <typename T>
SB_HD T sigmoid_xent(T z, T y, T* grad) {
  *grad = sigmoid(z) - y;
  return (z > T(0) ? z : T(0)) - z * y + log1p_(exp_(-abs_(z)));
}

// Cross-entropy of an arbitrary activation a in (0, 1]: grad w.r.t. a. `eps` keeps log finite.
template <typename T>
SB_HD T mcxent_term(T a, T y, T eps, T* grad) {
  const T clipped = a > eps ? a : eps;
  *grad = -y / clipped;
  return -y * log_(clipped);
}

// Binary cross-entropy of an arbitrary activation a in [0, 1]: grad w.r.t. a.
template <typename T>
SB_HD T xent_term(T a, T y, T eps, T* grad) {
  const T lo = a > eps ? a : eps;
  const T hi = a < T(1) - eps ? a : T(1) - eps;
  *grad = (hi - y) / (lo * (T(1) - hi));
  return -(y * log_(lo) + (T(1) - y) * log_(T(1) - hi));
}

template <typename T>
SB_HD T mse_term(T a, T y, T inv_outputs, T* grad) {
  const T d = a - y;
  *grad = T(2) * d * inv_outputs;
  return d * d * inv_outputs;
}

template <typename T>
SB_HD T mae_term(T a, T y, T inv_outputs, T* grad) {
  const T d = a - y;
  *grad = (d > T(0) ? T(1) : (d < T(0) ? T(-1) : T(0))) * inv_outputs;
  return abs_(d) * inv_outputs;
}

// ---------------------------------------------------------------------------------------------
// Updaters: one parameter p with its gradient g and its state. Hyper-parameters arrive already
// scheduled (and, for Adam, bias-corrected on the host once per step).

template <typename T>
SB_HD void sgd_step(T& p, T g, T lr) {
  p -= lr * g;
}

// Classical momentum: v <- mu v - lr g; p <- p + v.
template <typename T>
SB_HD void momentum_step(T& p, T& v, T g, T lr, T mu) {
  v = mu * v - lr * g;
  p += v;
}

// Nesterov momentum in DL4J's form (Nesterovs): p <- p - mu v_prev + (1 + mu) v.
template <typename T>
SB_HD void nesterov_step(T& p, T& v, T g, T lr, T mu) {
  const T previous = v;
  v = mu * v - lr * g;
  p += (T(1) + mu) * v - mu * previous;
}

// Adam with the bias correction folded into step = lr sqrt(1 - b2^t) / (1 - b1^t).
template <typename T>
SB_HD void adam_step(T& p, T& m, T& v, T g, T step, T beta1, T beta2, T eps) {
  m = beta1 * m + (T(1) - beta1) * g;
  v = beta2 * v + (T(1) - beta2) * g * g;
  p -= step * m / (sqrt_(v) + eps);
}

template <typename T>
SB_HD void rmsprop_step(T& p, T& s, T g, T lr, T decay, T eps) {
  s = decay * s + (T(1) - decay) * g * g;
  p -= lr * g / (sqrt_(s) + eps);
}

// ---------------------------------------------------------------------------------------------
// Averaging and dropout.

// Element i of the sum of k buffers divided by `divisor` (k for a mean; the number of workers
// when the buffers are already sums), summed in buffer order so every caller rounds alike.
template <typename T>
SB_HD T mean_at(const T* const* buffers, int64_t k, int64_t i, T divisor) {
  T sum = buffers[0][i];
  for (int64_t j = 1; j < k; ++j) sum += buffers[j][i];
  return sum / divisor;
}

// A counter-based hash (splitmix64's finaliser): the dropout mask of element i is a function of
// (seed, i), so backward recomputes the mask instead of storing it, on host and device alike.
SB_HD uint64_t mix64(uint64_t seed, uint64_t i) {
  uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The factor element i is multiplied by: 0 when dropped, 1 / keep otherwise (inverted dropout).
// `threshold` is keep * 2^32 (elements whose hash's upper 32 bits fall below it are kept).
template <typename T>
SB_HD T dropout_factor(uint64_t seed, uint64_t i, uint64_t threshold, T inv_keep) {
  return (mix64(seed, i) >> 32) < threshold ? inv_keep : T(0);
}

// ---------------------------------------------------------------------------------------------
// LSTM (DL4J's, without peepholes). A row of 4m gate pre-activations holds, as DL4J's
// LSTMHelpers orders them: [0, m) the block input (the layer's activation), [m, 2m) the forget
// gate, [2m, 3m) the output gate, [3m, 4m) the input gate (the gate activation):
//   c_s = f * c_{s-1} + i * a,   h_s = o * act(c_s).
// At a masked step (features mask 0) c and h are carried through unchanged and the output is 0.
// The activations are those whose gradient needs only their output (identity, tanh, sigmoid).

// The arrays of one forward step s of n examples of m units (see nn_kernels.hpp).
template <typename T>
struct LstmForwardStep {
  T* gates = nullptr;         // [n, 4m]: h_{s-1} @ RW on entry, the activations on exit
  const T* zx = nullptr;      // [n, t, 4m] example-major: x @ W at every step
  const T* bias = nullptr;    // [4m]
  const T* mask = nullptr;    // [n, t], or null: every step is real
  const T* c_prev = nullptr;  // [n, m], or null: zeros (s = 0)
  const T* h_prev = nullptr;  // [n, m], or null: zeros
  T* c = nullptr;             // [n, m]: c_s
  T* h = nullptr;             // [n, m]: the carried h after step s
  T* out = nullptr;           // [n, t, m] example-major, or null: h_s, 0 at a masked step
  std::size_t n = 0, t = 0, s = 0, m = 0;
};

// The arrays of one backward step s, run for s = t-1 down to 0.
template <typename T>
struct LstmBackwardStep {
  const T* gates = nullptr;   // [n, 4m]: the activations of step s
  const T* c = nullptr;       // [n, m]: c_s
  const T* c_prev = nullptr;  // [n, m], or null: zeros
  const T* mask = nullptr;    // [n, t], or null
  const T* d_out = nullptr;   // [n, t, m] example-major, or null: d(loss)/d(output)
  const T* dh_rec = nullptr;  // [n, m], or null: d(loss)/d(h_s) through step s+1's h_s @ RW
  T* dh_carry = nullptr;      // [n, m] in/out: d(loss)/d(h_s) carried past masked steps
  T* dc = nullptr;            // [n, m] in/out: d(loss)/d(c_s) on entry, d/d(c_{s-1}) on exit
  T* dgates = nullptr;        // [n, 4m]: d(loss)/d(pre-activations), 0 at a masked step
  T* dgates_seq = nullptr;    // [n, t, 4m] example-major, or null: dgates stored at step s
  std::size_t n = 0, t = 0, s = 0, m = 0;
};

// Whether step s of example i is real.
template <typename T>
SB_HD bool lstm_real(const T* mask, std::size_t i, std::size_t t, std::size_t s) {
  return mask == nullptr || mask[i * t + s] != T(0);
}

// The LSTM's activations. Floats: an exp that loops vectorise (libm's expf and tanhf do not,
// and they would dominate a step): Cephes' expf polynomial after a reduction by powers of two,
// within 2 ulp, and sigmoid and tanh from it. Their input is first clamped to [-40, 40]
// (lstm_clamp; both are saturated there in float, and the exp's argument stays in range), in a
// pass of its own on the CPU: GCC vectorises a float select, or the bit manipulation below, but
// not both in one loop. NaN stays NaN. Doubles (gradient checks) use libm, unclamped. Host and
// device run the same arithmetic.
SB_HD uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t bits;
  memcpy(&bits, &x, sizeof bits);
  return bits;
#endif
}

SB_HD float bits_float(uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float x;
  memcpy(&x, &bits, sizeof x);
  return x;
#endif
}

SB_HD float lstm_clamp(float x) { return x > 40.0f ? 40.0f : (x < -40.0f ? -40.0f : x); }
SB_HD double lstm_clamp(double x) { return x; }

// e^x for x in [-80, 80] (or NaN).
SB_HD float lstm_exp(float x) {
  // n = round(x / ln 2) by the 1.5 * 2^23 trick: the low mantissa bits of `shifted` hold n.
  const float shifted = x * 1.44269504088896341f + 12582912.0f;
  const float fn = shifted - 12582912.0f;
  int32_t n = static_cast<int32_t>(float_bits(shifted) & 0x007FFFFFu) - 0x00400000;
  n = n > 127 ? 127 : (n < -126 ? -126 : n);  // only for a NaN x
  float r = x - fn * 0.693359375f;
  r = r - fn * -2.12194440e-4f;
  const float z = r * r;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * z + r + 1.0f;
  return y * bits_float(static_cast<uint32_t>(n + 127) << 23);
}

// sigmoid and tanh of an input already through lstm_clamp.
SB_HD float lstm_sigmoid_clamped(float x) { return 1.0f / (1.0f + lstm_exp(-x)); }
SB_HD double lstm_sigmoid_clamped(double x) { return sigmoid(x); }
SB_HD float lstm_tanh_clamped(float x) { return 2.0f / (1.0f + lstm_exp(-2.0f * x)) - 1.0f; }
SB_HD double lstm_tanh_clamped(double x) { return tanh_(x); }

// An LSTM activation (identity, tanh or sigmoid) of a clamped input, of any input, and its
// gradient from its output.
template <typename T>
SB_HD T lstm_activate_clamped(Activation a, T x) {
  if (a == Activation::tanh) return lstm_tanh_clamped(x);
  if (a == Activation::sigmoid) return lstm_sigmoid_clamped(x);
  return x;
}

template <typename T>
SB_HD T lstm_activate(Activation a, T x) {
  return a == Activation::identity ? x : lstm_activate_clamped(a, lstm_clamp(x));
}

template <typename T>
SB_HD T lstm_activation_grad(Activation a, T y) {
  if (a == Activation::tanh) return T(1) - y * y;
  if (a == Activation::sigmoid) return y * (T(1) - y);
  return T(1);
}

// One unit's forward: pre-activations (za, zf, zo, zi) to activations, c and h.
template <typename T>
SB_HD void lstm_unit_forward(Activation act, Activation gate, T za, T zf, T zo, T zi, T c_prev,
                             T* a, T* f, T* o, T* ig, T* c, T* h) {
  *a = lstm_activate(act, za);
  *f = lstm_activate(gate, zf);
  *o = lstm_activate(gate, zo);
  *ig = lstm_activate(gate, zi);
  *c = *f * c_prev + *ig * *a;
  *h = *o * lstm_activate(act, *c);
}

// One unit's backward from its activations, c_s, c_{s-1} and dh = d(loss)/d(h_s); *dc holds
// d(loss)/d(c_s) from later steps on entry and d(loss)/d(c_{s-1}) on exit.
template <typename T>
SB_HD void lstm_unit_backward(Activation act, Activation gate, T a, T f, T o, T ig, T c,
                              T c_prev, T dh, T* dc, T* dza, T* dzf, T* dzo, T* dzi) {
  const T ac = lstm_activate(act, c);
  const T dct = *dc + dh * o * lstm_activation_grad(act, ac);
  *dzo = dh * ac * lstm_activation_grad(gate, o);
  *dza = dct * ig * lstm_activation_grad(act, a);
  *dzi = dct * a * lstm_activation_grad(gate, ig);
  *dzf = dct * c_prev * lstm_activation_grad(gate, f);
  *dc = dct * f;
}

// Forward of unit j of example i at step p.s.
template <typename T>
SB_HD void lstm_forward_at(const LstmForwardStep<T>& p, Activation act, Activation gate,
                           std::size_t i, std::size_t j) {
  const std::size_t m = p.m, w = 4 * m;
  const std::size_t u = i * m + j;
  T* g = p.gates + i * w;
  const std::size_t at = (i * p.t + p.s);
  const T cp = p.c_prev != nullptr ? p.c_prev[u] : T(0);
  if (!lstm_real(p.mask, i, p.t, p.s)) {
    p.c[u] = cp;
    p.h[u] = p.h_prev != nullptr ? p.h_prev[u] : T(0);
    if (p.out != nullptr) p.out[at * m + j] = T(0);
    g[j] = g[m + j] = g[2 * m + j] = g[3 * m + j] = T(0);
    return;
  }
  const T* zx = p.zx + at * w;
  const T* b = p.bias;
  T a, f, o, ig, c, h;
  lstm_unit_forward(act, gate, g[j] + zx[j] + b[j], g[m + j] + zx[m + j] + b[m + j],
                    g[2 * m + j] + zx[2 * m + j] + b[2 * m + j],
                    g[3 * m + j] + zx[3 * m + j] + b[3 * m + j], cp, &a, &f, &o, &ig, &c, &h);
  g[j] = a;
  g[m + j] = f;
  g[2 * m + j] = o;
  g[3 * m + j] = ig;
  p.c[u] = c;
  p.h[u] = h;
  if (p.out != nullptr) p.out[at * m + j] = h;
}

// Backward of unit j of example i at step p.s.
template <typename T>
SB_HD void lstm_backward_at(const LstmBackwardStep<T>& p, Activation act, Activation gate,
                            std::size_t i, std::size_t j) {
  const std::size_t m = p.m, w = 4 * m;
  const std::size_t u = i * m + j;
  const std::size_t at = (i * p.t + p.s);
  T* dg = p.dgates + i * w;
  T* dgs = p.dgates_seq != nullptr ? p.dgates_seq + at * w : nullptr;
  T dh = p.dh_carry[u] + (p.dh_rec != nullptr ? p.dh_rec[u] : T(0));
  if (!lstm_real(p.mask, i, p.t, p.s)) {  // h and c went through unchanged; dc stays
    p.dh_carry[u] = dh;
    dg[j] = dg[m + j] = dg[2 * m + j] = dg[3 * m + j] = T(0);
    if (dgs != nullptr) dgs[j] = dgs[m + j] = dgs[2 * m + j] = dgs[3 * m + j] = T(0);
    return;
  }
  if (p.d_out != nullptr) dh += p.d_out[at * m + j];
  p.dh_carry[u] = T(0);
  const T* g = p.gates + i * w;
  const T cp = p.c_prev != nullptr ? p.c_prev[u] : T(0);
  T dza, dzf, dzo, dzi;
  lstm_unit_backward(act, gate, g[j], g[m + j], g[2 * m + j], g[3 * m + j], p.c[u], cp, dh,
                     &p.dc[u], &dza, &dzf, &dzo, &dzi);
  dg[j] = dza;
  dg[m + j] = dzf;
  dg[2 * m + j] = dzo;
  dg[3 * m + j] = dzi;
  if (dgs != nullptr) {
    dgs[j] = dza;
    dgs[m + j] = dzf;
    dgs[2 * m + j] = dzo;
    dgs[3 * m + j] = dzi;
  }
}

}  // namespace sparkbatch::nn
