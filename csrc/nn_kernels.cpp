#include "nn_kernels.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#include <xmmintrin.h>
#endif

#include "thread_pool.hpp"

namespace sparkbatch::nn {
namespace {

// Below this many elements a pass runs on the calling thread: waking the pool costs more.
constexpr std::size_t kParallelMin = std::size_t{1} << 17;

// Calls fn(begin, end) over pieces of [0, count); `work` is the number of elements touched.
template <typename F>
void for_pieces(std::size_t count, std::size_t work, F&& fn) {
  const std::size_t threads = pool_threads();
  if (work < kParallelMin || threads < 2 || count < 2) {
    fn(std::size_t{0}, count);
    return;
  }
  const std::size_t pieces = std::min(count, threads * 4);
  const std::size_t step = (count + pieces - 1) / pieces;
  parallel_for(pieces, [&](std::size_t p) {
    const std::size_t begin = p * step;
    const std::size_t end = std::min(count, begin + step);
    if (begin < end) fn(begin, end);
  });
}

template <Activation A>
using ActivationTag = std::integral_constant<Activation, A>;

// Calls f with the activation as a compile-time constant, so each loop is specialised (and the
// simple ones vectorised) instead of switching per element.
template <typename F>
void with_activation(Activation act, F&& f) {
  switch (act) {
    case Activation::relu:
      return f(ActivationTag<Activation::relu>{});
    case Activation::leaky_relu:
      return f(ActivationTag<Activation::leaky_relu>{});
    case Activation::elu:
      return f(ActivationTag<Activation::elu>{});
    case Activation::gelu:
      return f(ActivationTag<Activation::gelu>{});
    case Activation::tanh:
      return f(ActivationTag<Activation::tanh>{});
    case Activation::sigmoid:
      return f(ActivationTag<Activation::sigmoid>{});
    case Activation::softmax:
      return f(ActivationTag<Activation::softmax>{});
    case Activation::identity:
    default:
      return f(ActivationTag<Activation::identity>{});
  }
}

// Row i of softmax(z + bias), with z updated to z + bias; a may alias z. Returns log(sum(exp z)).
template <typename T>
T softmax_row(T* z, const T* bias, T* a, std::size_t m) {
  T top = -std::numeric_limits<T>::infinity();
  for (std::size_t j = 0; j < m; ++j) {
    if (bias != nullptr) z[j] += bias[j];
    top = z[j] > top ? z[j] : top;
  }
  T sum = T(0);
  for (std::size_t j = 0; j < m; ++j) {
    a[j] = exp_(z[j] - top);
    sum += a[j];
  }
  const T inv = T(1) / sum;
  for (std::size_t j = 0; j < m; ++j) a[j] *= inv;
  return top + log_(sum);
}

// dz_j = a_j * (da_j - sum_k da_k a_k): the softmax Jacobian times da, for one row.
template <typename T>
void softmax_backward_row(const T* da, const T* a, T* dz, std::size_t m) {
  T dot = T(0);
  for (std::size_t j = 0; j < m; ++j) dot += da[j] * a[j];
  for (std::size_t j = 0; j < m; ++j) dz[j] = a[j] * (da[j] - dot);
}

// db = column sums of dz [n, m], in row order.
template <typename T>
void column_sums(const T* dz, T* db, std::size_t n, std::size_t m) {
  std::fill(db, db + m, T(0));
  for (std::size_t i = 0; i < n; ++i) {
    const T* row = dz + i * m;
    for (std::size_t j = 0; j < m; ++j) db[j] += row[j];
  }
}

// The finite check: blocks of this many values are tested with one branch-free pass each, and
// buffers from kFiniteParallelMin values up are split over the pool (a read-only pass is cheaper
// per value than the kernels above, so it pays to split only larger ones).
constexpr std::size_t kFiniteBlock = 4096;
constexpr std::size_t kFiniteParallelMin = std::size_t{1} << 20;

// Whether x[0, count) holds a NaN or an infinity: exactly the values whose exponent bits are
// all ones. Integer compares and an OR over 32-bit words, so the loop vectorises without
// -ffast-math (which would let the compiler assume there is no NaN to find) and without the
// 64-bit vector compares that baseline x86-64 lacks: a double's exponent is in its high word.
bool any_non_finite(const float* x, std::size_t count) {
  constexpr uint32_t exponent = 0x7f800000u;
  uint32_t found = 0;
  for (std::size_t i = 0; i < count; ++i) {
    uint32_t bits;
    std::memcpy(&bits, x + i, sizeof bits);
    found |= static_cast<uint32_t>((bits & exponent) == exponent);
  }
  return found != 0;
}

bool any_non_finite(const double* x, std::size_t count) {
  static_assert(sizeof(double) == 2 * sizeof(uint32_t), "IEEE 754 binary64");
  constexpr uint32_t exponent = 0x7ff00000u;  // of the high (second, little-endian) word
  uint32_t found = 0;
  for (std::size_t i = 0; i < count; ++i) {
    uint32_t high;
    std::memcpy(&high, reinterpret_cast<const char*>(x + i) + sizeof(uint32_t), sizeof high);
    found |= static_cast<uint32_t>((high & exponent) == exponent);
  }
  return found != 0;
}

// first_non_finite over [begin, end), block by block; stops early once `stop(block)` says a
// lower index was already found elsewhere.
template <typename T, typename Stop>
int64_t first_non_finite_in(const T* x, std::size_t begin, std::size_t end, Stop&& stop) {
  for (std::size_t b = begin; b < end; b += kFiniteBlock) {
    if (stop(b)) return -1;
    const std::size_t e = std::min(end, b + kFiniteBlock);
    if (!any_non_finite(x + b, e - b)) continue;
    for (std::size_t i = b; i < e; ++i)
      if (!std::isfinite(x[i])) return static_cast<int64_t>(i);
  }
  return -1;
}

// Calls f with an LSTM's activation and gate activation as compile-time constants (each one of
// identity, tanh and sigmoid; the bindings refuse the others).
template <Activation A>
struct SimpleTag {
  static constexpr Activation value = A;
};

template <typename F>
void with_simple_activation(Activation act, F&& f) {
  switch (act) {
    case Activation::tanh:
      return f(SimpleTag<Activation::tanh>{});
    case Activation::sigmoid:
      return f(SimpleTag<Activation::sigmoid>{});
    case Activation::identity:
    default:
      return f(SimpleTag<Activation::identity>{});
  }
}

// An LSTM step's units cost a few vectorised exps each, about 10 ns: a step of 64 x 128 units
// takes some 80 us on one thread, on the order of waking the pool (and much less than a stall
// when a shared machine deschedules a worker, which a step of ~100 such calls would pay each
// time). So a step goes to the pool from 32768 units (e.g. 256 x 128) on.
constexpr std::size_t kLstmUnitWork = 4;

}  // namespace

template <typename T>
void bias_activation(T* z, const T* bias, T* a, std::size_t n, std::size_t m, Activation act,
                     T alpha) {
  with_activation(act, [&](auto tag) {
    constexpr Activation A = decltype(tag)::value;
    for_pieces(n, n * m, [&](std::size_t begin, std::size_t end) {
      for (std::size_t i = begin; i < end; ++i) {
        T* zr = z + i * m;
        T* ar = a + i * m;
        if constexpr (A == Activation::softmax) {
          softmax_row(zr, bias, ar, m);
        } else if (ar == zr) {  // in place; one loop per case, as in activation_backward
          if (bias != nullptr) {
            for (std::size_t j = 0; j < m; ++j) {
              const T y = activate(A, zr[j] + bias[j], alpha);
              zr[j] = y;
            }
          } else {
            for (std::size_t j = 0; j < m; ++j) {
              const T y = activate(A, zr[j], alpha);
              zr[j] = y;
            }
          }
        } else {
          T* __restrict zs = zr;
          T* __restrict as = ar;
          if (bias != nullptr) {
            for (std::size_t j = 0; j < m; ++j) {
              const T x = zs[j] + bias[j];
              const T y = activate(A, x, alpha);
              zs[j] = x;
              as[j] = y;
            }
          } else {
            for (std::size_t j = 0; j < m; ++j) {
              const T y = activate(A, zs[j], alpha);
              as[j] = y;
            }
          }
        }
      }
    });
  });
}

template <typename T>
void activation_backward(const T* da, const T* z, const T* a, T* dz, T* db, std::size_t n,
                         std::size_t m, Activation act, T alpha) {
  with_activation(act, [&](auto tag) {
    constexpr Activation A = decltype(tag)::value;
    for_pieces(n, n * m, [&](std::size_t begin, std::size_t end) {
      for (std::size_t i = begin; i < end; ++i) {
        const std::size_t row = i * m;
        if constexpr (A == Activation::softmax) {
          softmax_backward_row(da + row, a + row, dz + row, m);
        } else if constexpr (A == Activation::identity) {
          if (dz != da) std::copy(da + row, da + row + m, dz + row);
        } else {
          // Written so that GCC vectorises the loop: the gradient goes to a local first (a
          // product with the ternary itself, as ReLU's is, becomes a branch per element, slow on
          // random signs); z is tested once per row, not per element; and z, a and dz do not
          // overlap (dz may be da, which is read before dz is written).
          const T* __restrict zr = z != nullptr ? z + row : nullptr;
          const T* __restrict ar = a + row;
          const T* dar = da + row;
          T* dzr = dz + row;
          if (zr != nullptr) {
            for (std::size_t j = 0; j < m; ++j) {
              const T g = activation_grad(A, zr[j], ar[j], alpha);
              dzr[j] = dar[j] * g;
            }
          } else {
            for (std::size_t j = 0; j < m; ++j) {
              const T g = activation_grad(A, T(0), ar[j], alpha);
              dzr[j] = dar[j] * g;
            }
          }
        }
      }
    });
  });
  if (db != nullptr) column_sums(dz, db, n, m);
}

template <typename T>
double output_layer(Loss loss, Activation act, T alpha, T* z, const T* bias, const T* labels,
                    LossWeights<T> weights, T* a, T* dz, T* db, std::size_t n, std::size_t m,
                    T scale) {
  const T inv_outputs = T(1) / T(m);
  double total = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t row = i * m;
    T* zr = z + row;
    T* ar = a + row;
    T* dzr = dz + row;
    const T* yr = labels + row;
    T row_loss = T(0);
    if (loss == Loss::mcxent && act == Activation::softmax) {
      const T lse = softmax_row(zr, bias, ar, m);  // log p_j = z_j - lse
      T weighted_labels = T(0);  // sum_k w_k y_k: d(loss)/dz_j = p_j * this - w_j y_j
      for (std::size_t j = 0; j < m; ++j) {
        const T c = weights.at(i, j, m) * yr[j];
        weighted_labels += c;
        row_loss += softmax_xent_term(zr[j] - lse, c);
      }
      for (std::size_t j = 0; j < m; ++j)
        dzr[j] = scale * (ar[j] * weighted_labels - weights.at(i, j, m) * yr[j]);
    } else if (loss == Loss::xent && act == Activation::sigmoid) {
      for (std::size_t j = 0; j < m; ++j) {
        if (bias != nullptr) zr[j] += bias[j];
        ar[j] = sigmoid(zr[j]);
        T g;
        const T term = sigmoid_xent(zr[j], yr[j], &g);
        const T w = weights.at(i, j, m);
        row_loss += w * term;
        dzr[j] = scale * w * g;
      }
    } else {
      bias_activation(zr, bias, ar, 1, m, act, alpha);
      for (std::size_t j = 0; j < m; ++j) {
        T g;
        T term;
        switch (loss) {
          case Loss::mcxent:
            term = mcxent_term(ar[j], yr[j], log_eps<T>(), &g);
            break;
          case Loss::xent:
            term = xent_term(ar[j], yr[j], log_eps<T>(), &g);
            break;
          case Loss::mae:
            term = mae_term(ar[j], yr[j], inv_outputs, &g);
            break;
          case Loss::mse:
          default:
            term = mse_term(ar[j], yr[j], inv_outputs, &g);
            break;
        }
        const T w = weights.at(i, j, m);
        row_loss += w * term;
        dzr[j] = scale * w * g;  // d(loss)/da for now
      }
      activation_backward(dzr, zr, ar, dzr, static_cast<T*>(nullptr), 1, m, act, alpha);
    }
    total += static_cast<double>(row_loss);
  }
  if (db != nullptr) column_sums(dz, db, n, m);
  return total;
}

template <typename T>
double loss_sum(Loss loss, Activation act, const T* z, const T* a, const T* labels,
                LossWeights<T> weights, std::size_t n, std::size_t m) {
  const T inv_outputs = T(1) / T(m);
  double total = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t row = i * m;
    T row_loss = T(0);
    if (loss == Loss::mcxent && act == Activation::softmax) {
      T top = z[row];
      for (std::size_t j = 1; j < m; ++j) top = z[row + j] > top ? z[row + j] : top;
      T sum = T(0);
      for (std::size_t j = 0; j < m; ++j) sum += exp_(z[row + j] - top);
      const T lse = top + log_(sum);
      for (std::size_t j = 0; j < m; ++j)
        row_loss += softmax_xent_term(z[row + j] - lse, weights.at(i, j, m) * labels[row + j]);
    } else {
      for (std::size_t j = 0; j < m; ++j) {
        T g;
        T term;
        const T y = labels[row + j];
        if (loss == Loss::xent && act == Activation::sigmoid) {
          term = sigmoid_xent(z[row + j], y, &g);
        } else if (loss == Loss::mcxent) {
          term = mcxent_term(a[row + j], y, log_eps<T>(), &g);
        } else if (loss == Loss::xent) {
          term = xent_term(a[row + j], y, log_eps<T>(), &g);
        } else if (loss == Loss::mae) {
          term = mae_term(a[row + j], y, inv_outputs, &g);
        } else {
          term = mse_term(a[row + j], y, inv_outputs, &g);
        }
        row_loss += weights.at(i, j, m) * term;
      }
    }
    total += static_cast<double>(row_loss);
  }
  return total;
}

template <typename T>
void updater_step(Updater u, T* params, const T* grads, T* state, std::size_t count,
                  const UpdaterHyper& h) {
  const T lr = static_cast<T>(h.lr);
  const T mu = static_cast<T>(h.momentum);
  const T beta1 = static_cast<T>(h.beta1);
  const T beta2 = static_cast<T>(h.beta2);
  const T eps = static_cast<T>(h.eps);
  const T decay = static_cast<T>(h.decay);
  for_pieces(count, count, [=](std::size_t begin, std::size_t end) {
    // Local restrict pointers: the buffers never overlap, and GCC vectorises these loops only
    // when it knows that (and does not reload pointers from the closure).
    T* __restrict p = params;
    const T* __restrict g = grads;
    T* __restrict s = state;
    switch (u) {
      case Updater::momentum:
        for (std::size_t i = begin; i < end; ++i) momentum_step(p[i], s[i], g[i], lr, mu);
        break;
      case Updater::nesterov:
        for (std::size_t i = begin; i < end; ++i) nesterov_step(p[i], s[i], g[i], lr, mu);
        break;
      case Updater::adam: {
        T* __restrict v = state + count;  // [m | v]
        for (std::size_t i = begin; i < end; ++i)
          adam_step(p[i], s[i], v[i], g[i], lr, beta1, beta2, eps);
        break;
      }
      case Updater::rmsprop:
        for (std::size_t i = begin; i < end; ++i) rmsprop_step(p[i], s[i], g[i], lr, decay, eps);
        break;
      case Updater::sgd:
      default:
        for (std::size_t i = begin; i < end; ++i) sgd_step(p[i], g[i], lr);
        break;
    }
  });
}

namespace {

// The average's passes over one block (no pointer aliases another: the loops vectorise).
template <typename T>
void sum_block(T* __restrict sum, const T* __restrict a, const T* __restrict b, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) sum[i] = a[i] + b[i];
}

template <typename T>
void add_block(T* __restrict sum, const T* __restrict x, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) sum[i] += x[i];
}

template <typename T>
void divide_block(T* __restrict out, const T* __restrict sum, std::size_t n, T d) {
  for (std::size_t i = 0; i < n; ++i) out[i] = sum[i] / d;
}

template <typename T>
void divide_in_place(T* x, std::size_t n, T d) {
  for (std::size_t i = 0; i < n; ++i) x[i] = x[i] / d;
}

// Elements per block of the average: its sum (16 KiB) stays in the L1 cache while each buffer's
// block is added to it, one buffer after another.
template <typename T>
constexpr std::size_t kAverageBlock = 16384 / sizeof(T);

}  // namespace

// Block by block: the block's sum in a small array kept in cache, b0 + b1, then + b2, ... one
// buffer at a time (each pass a vectorised loop over two streams; one loop over all k buffers
// per element neither vectorises nor streams), then divided into out. That is mean_at's
// arithmetic exactly (the sum in T, in buffer order, then one division), so the result has the
// same bits as the per-element loop and the CUDA kernel. out may be one of the buffers: a block
// of out is written only after all buffers' block has been read.
template <typename T>
void average(const T* const* buffers, std::size_t k, T* out, std::size_t count, double divisor) {
  const T d = static_cast<T>(divisor);
  constexpr std::size_t block = kAverageBlock<T>;
  for_pieces(count, count * k, [&](std::size_t begin, std::size_t end) {
    alignas(64) T sum[block];
    for (std::size_t b = begin; b < end; b += block) {
      const std::size_t n = std::min(block, end - b);
      if (k == 1) {  // a sum aggregated elsewhere, divided here (often in place)
        if (buffers[0] == out) {
          divide_in_place(out + b, n, d);
        } else {
          std::memcpy(sum, buffers[0] + b, n * sizeof(T));
          divide_block(out + b, sum, n, d);
        }
        continue;
      }
      sum_block(sum, buffers[0] + b, buffers[1] + b, n);
      for (std::size_t j = 2; j < k; ++j) add_block(sum, buffers[j] + b, n);
      divide_block(out + b, sum, n, d);
    }
  });
}

template <typename T>
void add_into(T* acc, const T* x, std::size_t count) {
  for_pieces(count, count, [&](std::size_t begin, std::size_t end) {
    for (std::size_t i = begin; i < end; ++i) acc[i] += x[i];
  });
}

template <typename T>
void axpy(T* y, const T* x, T alpha, std::size_t count) {
  for_pieces(count, count, [&](std::size_t begin, std::size_t end) {
    for (std::size_t i = begin; i < end; ++i) y[i] += alpha * x[i];
  });
}

template <typename T>
void dropout(T* x, std::size_t count, double rate, uint64_t seed) {
  const double keep = 1.0 - rate;
  const auto threshold = static_cast<uint64_t>(keep * 4294967296.0);
  const T inv_keep = static_cast<T>(1.0 / keep);
  for_pieces(count, count, [&](std::size_t begin, std::size_t end) {
    for (std::size_t i = begin; i < end; ++i) x[i] *= dropout_factor(seed, i, threshold, inv_keep);
  });
}

template <typename T>
int64_t first_non_finite(const T* x, std::size_t count) {
  const std::size_t threads = pool_threads();
  if (count < kFiniteParallelMin || threads < 2)
    return first_non_finite_in(x, 0, count, [](std::size_t) { return false; });
  // Pieces in index order; a piece stops once a lower piece has found one, and the answer is
  // the lowest piece's find.
  const std::size_t pieces = threads * 4;
  const std::size_t step = (count + pieces - 1) / pieces;
  std::vector<int64_t> found(pieces, -1);
  std::atomic<std::size_t> lowest{pieces};
  parallel_for(pieces, [&](std::size_t p) {
    const std::size_t begin = p * step;
    const std::size_t end = std::min(count, begin + step);
    if (begin >= end) return;
    found[p] = first_non_finite_in(x, begin, end, [&](std::size_t) { return lowest.load() < p; });
    if (found[p] >= 0) {
      std::size_t seen = lowest.load();
      while (p < seen && !lowest.compare_exchange_weak(seen, p)) {
      }
    }
  });
  for (const int64_t index : found)
    if (index >= 0) return index;
  return -1;
}

namespace {

// The LSTM step loops, one example (row) at a time: a masked row copies its state through; a
// real one runs loops over its units that GCC vectorises (the float activations are branch-free,
// see lstm_exp in nn_math.hpp). Each unit's arithmetic is that of lstm_forward_at /
// lstm_backward_at, which the CUDA kernels run per thread.
template <Activation A, Activation G, typename T>
void lstm_forward_rows(const LstmForwardStep<T>& p, std::size_t begin, std::size_t end) {
  const std::size_t m = p.m, w = 4 * m;
  for (std::size_t i = begin; i < end; ++i) {
    const std::size_t at = i * p.t + p.s;
    T* __restrict g = p.gates + i * w;
    T* __restrict c = p.c + i * m;
    T* __restrict h = p.h + i * m;
    T* out = p.out != nullptr ? p.out + at * m : nullptr;
    const T* cp = p.c_prev != nullptr ? p.c_prev + i * m : nullptr;
    if (!lstm_real(p.mask, i, p.t, p.s)) {
      for (std::size_t j = 0; j < m; ++j) c[j] = cp != nullptr ? cp[j] : T(0);
      const T* hp = p.h_prev != nullptr ? p.h_prev + i * m : nullptr;
      for (std::size_t j = 0; j < m; ++j) h[j] = hp != nullptr ? hp[j] : T(0);
      if (out != nullptr) std::fill(out, out + m, T(0));
      std::fill(g, g + w, T(0));
      continue;
    }
    const T* __restrict zx = p.zx + at * w;
    const T* __restrict b = p.bias;
    // Clamp, then activate, in passes of their own (see lstm_clamp in nn_math.hpp); identity
    // takes no clamp.
    if constexpr (A == Activation::identity) {
      for (std::size_t j = 0; j < m; ++j) g[j] = g[j] + zx[j] + b[j];
    } else {
      for (std::size_t j = 0; j < m; ++j) g[j] = lstm_clamp(g[j] + zx[j] + b[j]);
      for (std::size_t j = 0; j < m; ++j) g[j] = lstm_activate_clamped(A, g[j]);
    }
    if constexpr (G == Activation::identity) {
      for (std::size_t j = m; j < w; ++j) g[j] = g[j] + zx[j] + b[j];
    } else {
      for (std::size_t j = m; j < w; ++j) g[j] = lstm_clamp(g[j] + zx[j] + b[j]);
      for (std::size_t j = m; j < w; ++j) g[j] = lstm_activate_clamped(G, g[j]);
    }
    const T* __restrict a = g;
    const T* __restrict f = g + m;
    const T* __restrict o = g + 2 * m;
    const T* __restrict ig = g + 3 * m;
    if (cp != nullptr) {
      for (std::size_t j = 0; j < m; ++j) c[j] = f[j] * cp[j] + ig[j] * a[j];
    } else {
      for (std::size_t j = 0; j < m; ++j) c[j] = f[j] * T(0) + ig[j] * a[j];
    }
    if constexpr (A == Activation::identity) {
      for (std::size_t j = 0; j < m; ++j) h[j] = o[j] * c[j];
    } else {
      for (std::size_t j = 0; j < m; ++j) h[j] = lstm_clamp(c[j]);
      for (std::size_t j = 0; j < m; ++j) h[j] = o[j] * lstm_activate_clamped(A, h[j]);
    }
    if (out != nullptr) std::copy(h, h + m, out);
  }
}

template <Activation A, Activation G, bool HasPrev, typename T>
void lstm_backward_units(const T* __restrict g, const T* __restrict c, const T* __restrict cp,
                         T* __restrict dc, T* __restrict carry, T* __restrict dg, std::size_t m) {
  // act(c) as lstm_forward_rows computed it: identity unclamped, tanh and sigmoid of the clamp
  // of c, which runs in a pass of its own into dz_o's place (read below before it is written).
  if constexpr (A != Activation::identity)
    for (std::size_t j = 0; j < m; ++j) dg[2 * m + j] = lstm_clamp(c[j]);
  for (std::size_t j = 0; j < m; ++j) {
    const T a = g[j], f = g[m + j], o = g[2 * m + j], ig = g[3 * m + j];
    const T dh = carry[j];
    T ac;
    if constexpr (A == Activation::identity)
      ac = c[j];
    else
      ac = lstm_activate_clamped(A, dg[2 * m + j]);
    const T dct = dc[j] + dh * o * lstm_activation_grad(A, ac);
    T c_prev = T(0);
    if constexpr (HasPrev) c_prev = cp[j];
    dg[2 * m + j] = dh * ac * lstm_activation_grad(G, o);
    dg[j] = dct * ig * lstm_activation_grad(A, a);
    dg[3 * m + j] = dct * a * lstm_activation_grad(G, ig);
    dg[m + j] = dct * c_prev * lstm_activation_grad(G, f);
    dc[j] = dct * f;
    carry[j] = T(0);
  }
}

template <Activation A, Activation G, typename T>
void lstm_backward_rows(const LstmBackwardStep<T>& p, std::size_t begin, std::size_t end) {
  const std::size_t m = p.m, w = 4 * m;
  for (std::size_t i = begin; i < end; ++i) {
    const std::size_t at = i * p.t + p.s;
    T* __restrict carry = p.dh_carry + i * m;
    T* __restrict dg = p.dgates + i * w;
    T* dgs = p.dgates_seq != nullptr ? p.dgates_seq + at * w : nullptr;
    const T* rec = p.dh_rec != nullptr ? p.dh_rec + i * m : nullptr;
    if (!lstm_real(p.mask, i, p.t, p.s)) {  // h and c went through unchanged; dc stays
      if (rec != nullptr)
        for (std::size_t j = 0; j < m; ++j) carry[j] = carry[j] + rec[j];
      std::fill(dg, dg + w, T(0));
      if (dgs != nullptr) std::fill(dgs, dgs + w, T(0));
      continue;
    }
    // dh = carry + rec + d_out, summed in that order (as lstm_backward_at), into the carry row,
    // which then goes back to 0.
    if (rec != nullptr)
      for (std::size_t j = 0; j < m; ++j) carry[j] = carry[j] + rec[j];
    if (p.d_out != nullptr) {
      const T* __restrict d = p.d_out + at * m;
      for (std::size_t j = 0; j < m; ++j) carry[j] = carry[j] + d[j];
    }
    const T* __restrict g = p.gates + i * w;
    const T* __restrict c = p.c + i * m;
    const T* cp = p.c_prev != nullptr ? p.c_prev + i * m : nullptr;
    T* __restrict dc = p.dc + i * m;
    if (cp != nullptr)
      lstm_backward_units<A, G, true>(g, c, cp, dc, carry, dg, m);
    else
      lstm_backward_units<A, G, false>(g, c, cp, dc, carry, dg, m);
    if (dgs != nullptr) std::copy(dg, dg + w, dgs);
  }
}

}  // namespace

template <typename T>
void lstm_forward_step(const LstmForwardStep<T>& p, Activation act, Activation gate) {
  with_simple_activation(act, [&](auto act_tag) {
    with_simple_activation(gate, [&](auto gate_tag) {
      constexpr Activation A = decltype(act_tag)::value;
      constexpr Activation G = decltype(gate_tag)::value;
      for_pieces(p.n, p.n * p.m * kLstmUnitWork, [&](std::size_t begin, std::size_t end) {
        lstm_forward_rows<A, G>(p, begin, end);
      });
    });
  });
}

template <typename T>
void lstm_backward_step(const LstmBackwardStep<T>& p, Activation act, Activation gate) {
  with_simple_activation(act, [&](auto act_tag) {
    with_simple_activation(gate, [&](auto gate_tag) {
      constexpr Activation A = decltype(act_tag)::value;
      constexpr Activation G = decltype(gate_tag)::value;
      for_pieces(p.n, p.n * p.m * kLstmUnitWork, [&](std::size_t begin, std::size_t end) {
        lstm_backward_rows<A, G>(p, begin, end);
      });
    });
  });
}

#define SPARKBATCH_NN_INSTANTIATE(T)                                                             \
  template void bias_activation<T>(T*, const T*, T*, std::size_t, std::size_t, Activation, T);  \
  template void activation_backward<T>(const T*, const T*, const T*, T*, T*, std::size_t,        \
                                       std::size_t, Activation, T);                              \
  template double output_layer<T>(Loss, Activation, T, T*, const T*, const T*, LossWeights<T>,  \
                                  T*, T*, T*, std::size_t, std::size_t, T);                      \
  template double loss_sum<T>(Loss, Activation, const T*, const T*, const T*, LossWeights<T>,    \
                              std::size_t, std::size_t);                                         \
  template void updater_step<T>(Updater, T*, const T*, T*, std::size_t, const UpdaterHyper&);   \
  template void average<T>(const T* const*, std::size_t, T*, std::size_t, double);                    \
  template void add_into<T>(T*, const T*, std::size_t);                                          \
  template void axpy<T>(T*, const T*, T, std::size_t);                                           \
  template void dropout<T>(T*, std::size_t, double, uint64_t);                                   \
  template int64_t first_non_finite<T>(const T*, std::size_t);                                \
  template void lstm_forward_step<T>(const LstmForwardStep<T>&, Activation, Activation);        \
  template void lstm_backward_step<T>(const LstmBackwardStep<T>&, Activation, Activation);

SPARKBATCH_NN_INSTANTIATE(float)
SPARKBATCH_NN_INSTANTIATE(double)

namespace {

inline uint16_t to_bfloat16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u)  // NaN: keep it one (rounding could carry it away)
    return static_cast<uint16_t>((bits >> 16) | 0x40u);
  return static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

#if defined(__SSE2__)
// Eight values of to_bfloat16 at once. The compiler's own vectorisation of the scalar loop spends
// most of its time narrowing 32-bit lanes to 16 (SSE2 has no unsigned pack): 11-17 ms for 10M
// values here against 3.4 for decoding. Here each lane keeps its result in the upper half and is
// shifted down arithmetically, so the signed pack (packssdw) narrows it exactly.
inline __m128i to_bfloat16_x4(__m128i bits) {
  const __m128i lsb = _mm_and_si128(_mm_srli_epi32(bits, 16), _mm_set1_epi32(1));
  const __m128i rounded = _mm_add_epi32(_mm_add_epi32(bits, _mm_set1_epi32(0x7FFF)), lsb);
  const __m128i magnitude = _mm_and_si128(bits, _mm_set1_epi32(0x7FFFFFFF));
  const __m128i is_nan = _mm_cmpgt_epi32(magnitude, _mm_set1_epi32(0x7F800000));
  const __m128i quiet_nan = _mm_or_si128(bits, _mm_set1_epi32(0x400000));
  const __m128i chosen =
      _mm_or_si128(_mm_and_si128(is_nan, quiet_nan), _mm_andnot_si128(is_nan, rounded));
  return _mm_srai_epi32(chosen, 16);
}
#endif

inline float from_bfloat16(uint16_t value) {
  const uint32_t bits = static_cast<uint32_t>(value) << 16;
  float out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}

}  // namespace

void bfloat16_encode(const float* __restrict x, uint16_t* __restrict out, std::size_t count) {
  std::size_t i = 0;
#if defined(__SSE2__)
  for (; i + 8 <= count; i += 8) {
    const __m128i low = to_bfloat16_x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i)));
    const __m128i high =
        to_bfloat16_x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i + 4)));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm_packs_epi32(low, high));
  }
#endif
  for (; i < count; ++i) out[i] = to_bfloat16(x[i]);
}

void bfloat16_add_into(float* __restrict acc, const uint16_t* __restrict x, std::size_t count) {
  for (std::size_t i = 0; i < count; ++i) acc[i] += from_bfloat16(x[i]);
}

void bfloat16_decode(const uint16_t* __restrict x, float* __restrict out, std::size_t count) {
  for (std::size_t i = 0; i < count; ++i) out[i] = from_bfloat16(x[i]);
}

void bfloat16_add_encode(float* __restrict acc, const uint16_t* __restrict x,
                         uint16_t* __restrict out, std::size_t count) {
  std::size_t i = 0;
#if defined(__SSE2__)
  const __m128i zero = _mm_setzero_si128();
  for (; i + 8 <= count; i += 8) {
    const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i));
    // widening: each bfloat16 becomes the upper half of a float32 whose lower half is zero
    const __m128 low = _mm_add_ps(_mm_loadu_ps(acc + i),
                                  _mm_castsi128_ps(_mm_unpacklo_epi16(zero, bits)));
    const __m128 high = _mm_add_ps(_mm_loadu_ps(acc + i + 4),
                                   _mm_castsi128_ps(_mm_unpackhi_epi16(zero, bits)));
    _mm_storeu_ps(acc + i, low);
    _mm_storeu_ps(acc + i + 4, high);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                     _mm_packs_epi32(to_bfloat16_x4(_mm_castps_si128(low)),
                                     to_bfloat16_x4(_mm_castps_si128(high))));
  }
#endif
  for (; i < count; ++i) {
    acc[i] += from_bfloat16(x[i]);
    out[i] = to_bfloat16(acc[i]);
  }
}

}  // namespace sparkbatch::nn
