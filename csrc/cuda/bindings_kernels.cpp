// Bindings of the CUDA kernels: _cuda.nn_* take DeviceBuffers where _native.nn_* take numpy
// arrays, with the same names, arguments, checks and messages, plus matmul (cuBLAS). Buffers of
// one call must share a dtype and a device; the call runs on that device. Kernels are queued on
// the legacy default stream and return at once, except those that return a number (they wait
// for it). The GIL is released while CUDA is called.
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "cublas.hpp"
#include "kernels.hpp"
#include "nn_codes.hpp"
#include "py_cuda.hpp"

namespace sparkbatch::cuda::bindings {
namespace {

const char* dtype_name(DType t) { return t == DType::f32 ? "float32" : "float64"; }

// The buffers of one call: one dtype, one device, checked once.
struct Args {
  DType dtype = DType::f32;
  int device = 0;
  bool first = true;
  void add(const DeviceBuffer& b, const char* name) {
    if (first) {
      dtype = b.dtype();
      device = b.device();
      first = false;
      return;
    }
    if (b.dtype() != dtype)
      throw py::type_error(std::string(name) + " has dtype " + dtype_name(b.dtype()) +
                           " but the other buffers have " + dtype_name(dtype));
    if (b.device() != device)
      throw py::value_error(std::string(name) + " is on CUDA device " +
                            std::to_string(b.device()) + " but the other buffers are on device " +
                            std::to_string(device));
  }
  void add(const DeviceBuffer* b, const char* name) {
    if (b != nullptr) add(*b, name);
  }
};

template <typename T>
T* ptr(const DeviceBuffer& b) {
  return b.as<T>();
}

template <typename T>
T* ptr(const DeviceBuffer* b) {
  return b != nullptr ? b->as<T>() : nullptr;
}

std::pair<std::size_t, std::size_t> matrix_shape(const DeviceBuffer& b, const char* name) {
  if (b.shape().size() != 2)
    throw py::value_error(std::string(name) + " must be 2-D [n, m], got " +
                          std::to_string(b.shape().size()) + "-D");
  return {static_cast<std::size_t>(b.shape()[0]), static_cast<std::size_t>(b.shape()[1])};
}

void expect_shape(const DeviceBuffer& b, const char* name, std::size_t n, std::size_t m) {
  if (b.shape().size() != 2 || static_cast<std::size_t>(b.shape()[0]) != n ||
      static_cast<std::size_t>(b.shape()[1]) != m)
    throw py::value_error(std::string(name) + " must have shape [" + std::to_string(n) + ", " +
                          std::to_string(m) + "]");
}

void expect_vector(const DeviceBuffer* b, const char* name, std::size_t m) {
  if (b != nullptr && (b->shape().size() != 1 || static_cast<std::size_t>(b->shape()[0]) != m))
    throw py::value_error(std::string(name) + " must have shape [" + std::to_string(m) + "]");
}

// Label-mask weights, as bindings_nn.cpp reads them: [n] or [n, 1] per example, [n, m] per output.
template <typename T>
LossWeights<T> weights_of(const DeviceBuffer* w, std::size_t n, std::size_t m) {
  LossWeights<T> out;
  if (w == nullptr) return out;
  const std::size_t size = w->size();
  const auto& shape = w->shape();
  const bool per_example =
      size == n && (shape.size() == 1 || (shape.size() == 2 && shape[1] == 1));
  const bool per_output =
      shape.size() == 2 && size == n * m && static_cast<std::size_t>(shape[0]) == n;
  if (!per_example && !per_output)
    throw py::value_error("weights must have shape [" + std::to_string(n) + "], [" +
                          std::to_string(n) + ", 1] or [" + std::to_string(n) + ", " +
                          std::to_string(m) + "]");
  out.data = w->as<T>();
  out.per_output = per_output && !per_example;
  return out;
}

void py_bias_activation(const DeviceBuffer& z, const DeviceBuffer* bias, const DeviceBuffer& out,
                        int activation, double alpha) {
  Args args;
  args.add(z, "z");
  args.add(bias, "bias");
  args.add(out, "out");
  const auto [n, m] = matrix_shape(z, "z");
  expect_shape(out, "out", n, m);
  expect_vector(bias, "bias", m);
  const Activation act = nn::activation_of(activation);
  py::gil_scoped_release release;
  const DeviceGuard guard(args.device);
  if (args.dtype == DType::f32)
    bias_activation(ptr<float>(z), ptr<const float>(bias), ptr<float>(out), n, m, act,
                    static_cast<float>(alpha));
  else
    bias_activation(ptr<double>(z), ptr<const double>(bias), ptr<double>(out), n, m, act, alpha);
}

void py_activation_backward(const DeviceBuffer& da, const DeviceBuffer* z, const DeviceBuffer& a,
                            const DeviceBuffer& dz, const DeviceBuffer* db, int activation,
                            double alpha) {
  Args args;
  args.add(da, "da");
  args.add(z, "z");
  args.add(a, "a");
  args.add(dz, "dz");
  args.add(db, "db");
  const auto [n, m] = matrix_shape(da, "da");
  if (z != nullptr) expect_shape(*z, "z", n, m);
  expect_shape(a, "a", n, m);
  expect_shape(dz, "dz", n, m);
  expect_vector(db, "db", m);
  const Activation act = nn::activation_of(activation);
  if (z == nullptr && nn::needs_preactivation(act))
    throw py::value_error("this activation's gradient needs the pre-activation z");
  py::gil_scoped_release release;
  const DeviceGuard guard(args.device);
  if (args.dtype == DType::f32)
    activation_backward(ptr<const float>(da), ptr<const float>(z), ptr<const float>(a),
                        ptr<float>(dz), ptr<float>(db), n, m, act, static_cast<float>(alpha));
  else
    activation_backward(ptr<const double>(da), ptr<const double>(z), ptr<const double>(a),
                        ptr<double>(dz), ptr<double>(db), n, m, act, alpha);
}

double py_output_layer(int loss, int activation, double alpha, const DeviceBuffer& z,
                       const DeviceBuffer* bias, const DeviceBuffer& labels,
                       const DeviceBuffer* weights, const DeviceBuffer& a, const DeviceBuffer& dz,
                       const DeviceBuffer* db, double scale) {
  Args args;
  args.add(z, "z");
  args.add(bias, "bias");
  args.add(labels, "labels");
  args.add(weights, "weights");
  args.add(a, "a");
  args.add(dz, "dz");
  args.add(db, "db");
  const auto [n, m] = matrix_shape(z, "z");
  expect_shape(labels, "labels", n, m);
  expect_shape(a, "a", n, m);
  expect_shape(dz, "dz", n, m);
  expect_vector(bias, "bias", m);
  expect_vector(db, "db", m);
  const Loss l = nn::loss_of(loss);
  const Activation act = nn::activation_of(activation);
  if (args.dtype == DType::f32) {
    const auto w = weights_of<float>(weights, n, m);
    py::gil_scoped_release release;
    const DeviceGuard guard(args.device);
    const ScratchLock scratch(rows_scratch(n));
    return output_layer(l, act, static_cast<float>(alpha), ptr<float>(z), ptr<const float>(bias),
                        ptr<const float>(labels), w, ptr<float>(a), ptr<float>(dz),
                        ptr<float>(db), n, m, static_cast<float>(scale), scratch.data());
  }
  const auto w = weights_of<double>(weights, n, m);
  py::gil_scoped_release release;
  const DeviceGuard guard(args.device);
  const ScratchLock scratch(rows_scratch(n));
  return output_layer(l, act, alpha, ptr<double>(z), ptr<const double>(bias),
                      ptr<const double>(labels), w, ptr<double>(a), ptr<double>(dz),
                      ptr<double>(db), n, m, scale, scratch.data());
}

double py_loss_sum(int loss, int activation, const DeviceBuffer& z, const DeviceBuffer& a,
                   const DeviceBuffer& labels, const DeviceBuffer* weights) {
  Args args;
  args.add(z, "z");
  args.add(a, "a");
  args.add(labels, "labels");
  args.add(weights, "weights");
  const auto [n, m] = matrix_shape(z, "z");
  expect_shape(a, "a", n, m);
  expect_shape(labels, "labels", n, m);
  const Loss l = nn::loss_of(loss);
  const Activation act = nn::activation_of(activation);
  if (args.dtype == DType::f32) {
    const auto w = weights_of<float>(weights, n, m);
    py::gil_scoped_release release;
    const DeviceGuard guard(args.device);
    const ScratchLock scratch(rows_scratch(n));
    return loss_sum(l, act, ptr<const float>(z), ptr<const float>(a), ptr<const float>(labels), w,
                    n, m, scratch.data());
  }
  const auto w = weights_of<double>(weights, n, m);
  py::gil_scoped_release release;
  const DeviceGuard guard(args.device);
  const ScratchLock scratch(rows_scratch(n));
  return loss_sum(l, act, ptr<const double>(z), ptr<const double>(a), ptr<const double>(labels),
                  w, n, m, scratch.data());
}

void py_updater_step(int updater, const DeviceBuffer& params, const DeviceBuffer& grads,
                     const DeviceBuffer& state, double lr, double beta1, double beta2, double eps,
                     double momentum, double decay) {
  const Updater u = nn::updater_of(updater);
  Args args;
  args.add(params, "params");
  args.add(grads, "grads");
  args.add(state, "state");
  const std::size_t count = params.size();
  if (grads.size() != count)
    throw py::value_error("grads has " + std::to_string(grads.size()) + " values, params " +
                          std::to_string(count));
  const std::size_t expected_state =
      count * static_cast<std::size_t>(nn::updater_state_per_param(u));
  if (state.size() != expected_state)
    throw py::value_error("state has " + std::to_string(state.size()) + " values, expected " +
                          std::to_string(expected_state));
  UpdaterHyper h;
  h.lr = lr;
  h.beta1 = beta1;
  h.beta2 = beta2;
  h.eps = eps;
  h.momentum = momentum;
  h.decay = decay;
  py::gil_scoped_release release;
  const DeviceGuard guard(args.device);
  if (args.dtype == DType::f32)
    updater_step(u, ptr<float>(params), ptr<const float>(grads), ptr<float>(state), count, h);
  else
    updater_step(u, ptr<double>(params), ptr<const double>(grads), ptr<double>(state), count, h);
}

// Same-sized buffers of one dtype and device.
struct Flat {
  Args args;
  std::size_t count = 0;
  bool have = false;
  void add(const DeviceBuffer& b, const char* name) {
    args.add(b, name);
    if (have && b.size() != count)
      throw py::value_error(std::string(name) + " has " + std::to_string(b.size()) +
                            " values, the others " + std::to_string(count));
    count = b.size();
    have = true;
  }
};

template <typename T>
void average_of(const std::vector<DeviceBuffer>& buffers, const DeviceBuffer& out,
                std::size_t count, double divisor, int device) {
  std::vector<const T*> pointers;
  for (const auto& b : buffers) pointers.push_back(b.as<const T>());
  py::gil_scoped_release release;
  const DeviceGuard guard(device);
  average(pointers.data(), pointers.size(), out.as<T>(), count, divisor);
}

void py_average(const std::vector<DeviceBuffer>& buffers, const DeviceBuffer& out,
                std::optional<double> divisor) {
  if (buffers.empty()) throw py::value_error("average needs at least one buffer");
  if (buffers.size() > kMaxAverage)
    throw py::value_error("average takes at most " + std::to_string(kMaxAverage) +
                          " buffers per call, got " + std::to_string(buffers.size()) +
                          "; sum them in groups with nn_add_into, then divide");
  const double d = divisor.value_or(static_cast<double>(buffers.size()));
  if (!(d > 0)) throw py::value_error("divisor must be > 0, got " + std::to_string(d));
  Flat flat;
  for (const auto& b : buffers) flat.add(b, "buffer");
  flat.add(out, "out");
  if (flat.args.dtype == DType::f32)
    average_of<float>(buffers, out, flat.count, d, flat.args.device);
  else
    average_of<double>(buffers, out, flat.count, d, flat.args.device);
}

void py_add_into(const DeviceBuffer& acc, const DeviceBuffer& x) {
  Flat flat;
  flat.add(acc, "acc");
  flat.add(x, "x");
  py::gil_scoped_release release;
  const DeviceGuard guard(flat.args.device);
  if (flat.args.dtype == DType::f32)
    add_into(ptr<float>(acc), ptr<const float>(x), flat.count);
  else
    add_into(ptr<double>(acc), ptr<const double>(x), flat.count);
}

void py_axpy(const DeviceBuffer& y, const DeviceBuffer& x, double alpha) {
  Flat flat;
  flat.add(y, "y");
  flat.add(x, "x");
  py::gil_scoped_release release;
  const DeviceGuard guard(flat.args.device);
  if (flat.args.dtype == DType::f32)
    axpy(ptr<float>(y), ptr<const float>(x), static_cast<float>(alpha), flat.count);
  else
    axpy(ptr<double>(y), ptr<const double>(x), alpha, flat.count);
}

void py_dropout(const DeviceBuffer& x, double rate, uint64_t seed) {
  if (!(rate >= 0.0 && rate < 1.0))
    throw py::value_error("dropout rate must be in [0, 1), got " + std::to_string(rate));
  py::gil_scoped_release release;
  const DeviceGuard guard(x.device());
  if (x.dtype() == DType::f32)
    dropout(ptr<float>(x), x.size(), rate, seed);
  else
    dropout(ptr<double>(x), x.size(), rate, seed);
}

double py_sum_squares(const DeviceBuffer& x) {
  py::gil_scoped_release release;
  const DeviceGuard guard(x.device());
  const ScratchLock scratch(sum_scratch());
  if (x.dtype() == DType::f32) return sum_squares(ptr<const float>(x), x.size(), scratch.data());
  return sum_squares(ptr<const double>(x), x.size(), scratch.data());
}

std::size_t py_count_non_finite(const DeviceBuffer& x) {
  py::gil_scoped_release release;
  const DeviceGuard guard(x.device());
  const ScratchLock scratch(sum_scratch());
  if (x.dtype() == DType::f32)
    return count_non_finite(ptr<const float>(x), x.size(), scratch.data());
  return count_non_finite(ptr<const double>(x), x.size(), scratch.data());
}

bool overlap(const DeviceBuffer& a, const DeviceBuffer& b) {
  const auto* pa = static_cast<const char*>(a.data());
  const auto* pb = static_cast<const char*>(b.data());
  return a.nbytes() > 0 && b.nbytes() > 0 && pa < pb + b.nbytes() && pb < pa + a.nbytes();
}

void py_matmul(const DeviceBuffer& a, const DeviceBuffer& b, const DeviceBuffer& out, bool trans_a,
               bool trans_b, double alpha, double beta) {
  Args args;
  args.add(a, "a");
  args.add(b, "b");
  args.add(out, "out");
  const auto [ra, ca] = matrix_shape(a, "a");
  const auto [rb, cb] = matrix_shape(b, "b");
  const std::size_t m = trans_a ? ca : ra;
  const std::size_t k = trans_a ? ra : ca;
  const std::size_t kb = trans_b ? cb : rb;
  const std::size_t n = trans_b ? rb : cb;
  if (k != kb)
    throw py::value_error("matmul: op(a) is [" + std::to_string(m) + ", " + std::to_string(k) +
                          "] but op(b) is [" + std::to_string(kb) + ", " + std::to_string(n) +
                          "]");
  expect_shape(out, "out", m, n);
  if (overlap(out, a) || overlap(out, b))
    throw py::value_error("matmul: out must not share memory with a or b");
  py::gil_scoped_release release;
  const DeviceGuard guard(args.device);
  const auto lm = static_cast<long>(m), ln = static_cast<long>(n), lk = static_cast<long>(k);
  if (args.dtype == DType::f32)
    gemm<float>(trans_a, trans_b, lm, ln, lk, static_cast<float>(alpha), ptr<const float>(a),
                ptr<const float>(b), static_cast<float>(beta), ptr<float>(out));
  else
    gemm<double>(trans_a, trans_b, lm, ln, lk, alpha, ptr<const double>(a), ptr<const double>(b),
                 beta, ptr<double>(out));
}

// -- the computation graph's vertices ----------------------------------------------------------

std::size_t column_of(int64_t column) {
  if (column < 0) throw py::value_error("column must be >= 0, got " + std::to_string(column));
  return static_cast<std::size_t>(column);
}

// [rows, w] `narrow` and [rows, width] `wide` with columns [column, column + w) inside `wide`.
void expect_columns(const char* fn, const DeviceBuffer& narrow, const char* narrow_name,
                    const DeviceBuffer& wide, const char* wide_name, std::size_t column) {
  const auto [rows, w] = matrix_shape(narrow, narrow_name);
  const auto [wide_rows, width] = matrix_shape(wide, wide_name);
  if (wide_rows != rows)
    throw py::value_error(std::string(fn) + ": " + wide_name + " has " +
                          std::to_string(wide_rows) + " rows but " + narrow_name + " has " +
                          std::to_string(rows));
  if (column > width || w > width - column)
    throw py::value_error(std::string(fn) + ": columns [" + std::to_string(column) + ", " +
                          std::to_string(column + w) + ") are past " + wide_name +
                          "'s width " + std::to_string(width));
  if (overlap(narrow, wide))
    throw py::value_error(std::string(fn) + ": " + wide_name + " must not share memory with " +
                          narrow_name);
}

void py_copy_columns(const DeviceBuffer& src, const DeviceBuffer& dst, int64_t column) {
  Args args;
  args.add(src, "src");
  args.add(dst, "dst");
  const std::size_t c = column_of(column);
  expect_columns("copy_columns", src, "src", dst, "dst", c);
  const auto rows = static_cast<std::size_t>(src.shape()[0]);
  const auto w = static_cast<std::size_t>(src.shape()[1]);
  const auto width = static_cast<std::size_t>(dst.shape()[1]);
  py::gil_scoped_release release;
  const DeviceGuard guard(args.device);
  if (args.dtype == DType::f32)
    copy_columns(ptr<const float>(src), ptr<float>(dst), rows, w, width, c);
  else
    copy_columns(ptr<const double>(src), ptr<double>(dst), rows, w, width, c);
}

void py_take_columns(const DeviceBuffer& src, int64_t column, const DeviceBuffer& dst) {
  Args args;
  args.add(src, "src");
  args.add(dst, "dst");
  const std::size_t c = column_of(column);
  expect_columns("take_columns", dst, "dst", src, "src", c);
  const auto rows = static_cast<std::size_t>(dst.shape()[0]);
  const auto w = static_cast<std::size_t>(dst.shape()[1]);
  const auto width = static_cast<std::size_t>(src.shape()[1]);
  py::gil_scoped_release release;
  const DeviceGuard guard(args.device);
  if (args.dtype == DType::f32)
    take_columns(ptr<const float>(src), ptr<float>(dst), rows, w, width, c);
  else
    take_columns(ptr<const double>(src), ptr<double>(dst), rows, w, width, c);
}

// An element-wise output may be an input itself (each thread reads its element before writing
// it) but not a shifted view of its memory.
void expect_same_or_apart(const char* fn, const DeviceBuffer& out, const char* out_name,
                          const DeviceBuffer& in, const char* in_name) {
  if (overlap(out, in) && out.data() != in.data())
    throw py::value_error(std::string(fn) + ": " + out_name + " must be " + in_name +
                          " or not share memory with it");
}

void expect_apart(const char* fn, const DeviceBuffer& a, const char* a_name,
                  const DeviceBuffer& b, const char* b_name) {
  if (overlap(a, b))
    throw py::value_error(std::string(fn) + ": " + a_name + " must not share memory with " +
                          b_name);
}

void py_multiply(const DeviceBuffer& a, const DeviceBuffer& b, const DeviceBuffer& out) {
  Flat flat;
  flat.add(a, "a");
  flat.add(b, "b");
  flat.add(out, "out");
  expect_same_or_apart("nn_multiply", out, "out", a, "a");
  expect_same_or_apart("nn_multiply", out, "out", b, "b");
  py::gil_scoped_release release;
  const DeviceGuard guard(flat.args.device);
  if (flat.args.dtype == DType::f32)
    multiply(ptr<const float>(a), ptr<const float>(b), ptr<float>(out), flat.count);
  else
    multiply(ptr<const double>(a), ptr<const double>(b), ptr<double>(out), flat.count);
}

void py_maximum(const DeviceBuffer& a, const DeviceBuffer& b, const DeviceBuffer& out) {
  Flat flat;
  flat.add(a, "a");
  flat.add(b, "b");
  flat.add(out, "out");
  expect_same_or_apart("nn_maximum", out, "out", a, "a");
  expect_same_or_apart("nn_maximum", out, "out", b, "b");
  py::gil_scoped_release release;
  const DeviceGuard guard(flat.args.device);
  if (flat.args.dtype == DType::f32)
    maximum(ptr<const float>(a), ptr<const float>(b), ptr<float>(out), flat.count);
  else
    maximum(ptr<const double>(a), ptr<const double>(b), ptr<double>(out), flat.count);
}

void py_max_backward(const DeviceBuffer& dout, const DeviceBuffer& x,
                     const DeviceBuffer& remaining, const DeviceBuffer& dx) {
  Flat flat;
  flat.add(dout, "dout");
  flat.add(x, "x");
  flat.add(remaining, "remaining");
  flat.add(dx, "dx");
  expect_apart("nn_max_backward", remaining, "remaining", dout, "dout");
  expect_apart("nn_max_backward", remaining, "remaining", x, "x");
  expect_apart("nn_max_backward", remaining, "remaining", dx, "dx");
  expect_apart("nn_max_backward", dx, "dx", dout, "dout");
  expect_apart("nn_max_backward", dx, "dx", x, "x");
  py::gil_scoped_release release;
  const DeviceGuard guard(flat.args.device);
  if (flat.args.dtype == DType::f32)
    max_backward(ptr<const float>(dout), ptr<const float>(x), ptr<float>(remaining),
                 ptr<float>(dx), flat.count);
  else
    max_backward(ptr<const double>(dout), ptr<const double>(x), ptr<double>(remaining),
                 ptr<double>(dx), flat.count);
}

// -- LSTM steps, as _native.nn_lstm_*_step with DeviceBuffers -----------------------------------

Activation lstm_activation_of(int code, const char* name) {
  const Activation act = nn::activation_of(code);
  if (act != Activation::identity && act != Activation::tanh && act != Activation::sigmoid)
    throw py::value_error(std::string(name) +
                          " must be identity, tanh or sigmoid (code 0, 5 or 6), got code " +
                          std::to_string(code));
  return act;
}

void expect_optional(const DeviceBuffer* b, const char* name, std::size_t n, std::size_t m) {
  if (b != nullptr) expect_shape(*b, name, n, m);
}

struct StepSizes {
  std::size_t n, m, t, s;
};

StepSizes step_sizes(const DeviceBuffer& gates, int64_t t, int64_t s) {
  const auto [n, w] = matrix_shape(gates, "gates");
  if (w % 4 != 0 || w == 0)
    throw py::value_error("gates must have 4 * units columns, got " + std::to_string(w));
  if (t < 1 || s < 0 || s >= t)
    throw py::value_error("step " + std::to_string(s) + " is outside [0, " + std::to_string(t) +
                          ")");
  return {n, w / 4, static_cast<std::size_t>(t), static_cast<std::size_t>(s)};
}

void py_lstm_forward_step(const DeviceBuffer& gates, const DeviceBuffer& zx,
                          const DeviceBuffer& bias, const DeviceBuffer* mask,
                          const DeviceBuffer* c_prev, const DeviceBuffer* h_prev,
                          const DeviceBuffer& c, const DeviceBuffer& h, const DeviceBuffer* out,
                          int64_t t, int64_t s, int activation, int gate_activation) {
  Args args;
  args.add(gates, "gates");
  args.add(zx, "zx");
  args.add(bias, "bias");
  args.add(mask, "mask");
  args.add(c_prev, "c_prev");
  args.add(h_prev, "h_prev");
  args.add(c, "c");
  args.add(h, "h");
  args.add(out, "out");
  const StepSizes z = step_sizes(gates, t, s);
  expect_shape(zx, "zx", z.n * z.t, 4 * z.m);
  expect_vector(&bias, "bias", 4 * z.m);
  expect_optional(mask, "mask", z.n, z.t);
  expect_optional(c_prev, "c_prev", z.n, z.m);
  expect_optional(h_prev, "h_prev", z.n, z.m);
  expect_shape(c, "c", z.n, z.m);
  expect_shape(h, "h", z.n, z.m);
  expect_optional(out, "out", z.n * z.t, z.m);
  if (overlap(c, h) || overlap(gates, c) || overlap(gates, h) ||
      (c_prev != nullptr && overlap(c, *c_prev)) || (h_prev != nullptr && overlap(h, *h_prev)))
    throw py::value_error("an LSTM step's gates, c and h must not share memory with its inputs");
  const Activation act = lstm_activation_of(activation, "activation");
  const Activation gate = lstm_activation_of(gate_activation, "gate_activation");
  const auto run = [&](auto zero) {
    using T = decltype(zero);
    nn::LstmForwardStep<T> p;
    p.gates = ptr<T>(gates);
    p.zx = ptr<const T>(zx);
    p.bias = ptr<const T>(bias);
    p.mask = ptr<const T>(mask);
    p.c_prev = ptr<const T>(c_prev);
    p.h_prev = ptr<const T>(h_prev);
    p.c = ptr<T>(c);
    p.h = ptr<T>(h);
    p.out = ptr<T>(out);
    p.n = z.n;
    p.t = z.t;
    p.s = z.s;
    p.m = z.m;
    py::gil_scoped_release release;
    const DeviceGuard guard(args.device);
    lstm_forward_step(p, act, gate);
  };
  if (args.dtype == DType::f32)
    run(0.0f);
  else
    run(0.0);
}

void py_lstm_backward_step(const DeviceBuffer& gates, const DeviceBuffer& c,
                           const DeviceBuffer* c_prev, const DeviceBuffer* mask,
                           const DeviceBuffer* d_out, const DeviceBuffer* dh_rec,
                           const DeviceBuffer& dh_carry, const DeviceBuffer& dc,
                           const DeviceBuffer& dgates, const DeviceBuffer* dgates_seq, int64_t t,
                           int64_t s, int activation, int gate_activation) {
  Args args;
  args.add(gates, "gates");
  args.add(c, "c");
  args.add(c_prev, "c_prev");
  args.add(mask, "mask");
  args.add(d_out, "d_out");
  args.add(dh_rec, "dh_rec");
  args.add(dh_carry, "dh_carry");
  args.add(dc, "dc");
  args.add(dgates, "dgates");
  args.add(dgates_seq, "dgates_seq");
  const StepSizes z = step_sizes(gates, t, s);
  expect_shape(c, "c", z.n, z.m);
  expect_optional(c_prev, "c_prev", z.n, z.m);
  expect_optional(mask, "mask", z.n, z.t);
  expect_optional(d_out, "d_out", z.n * z.t, z.m);
  expect_optional(dh_rec, "dh_rec", z.n, z.m);
  expect_shape(dh_carry, "dh_carry", z.n, z.m);
  expect_shape(dc, "dc", z.n, z.m);
  expect_shape(dgates, "dgates", z.n, 4 * z.m);
  expect_optional(dgates_seq, "dgates_seq", z.n * z.t, 4 * z.m);
  if (overlap(dgates, gates) || overlap(dh_carry, dc) || overlap(dgates, dc) ||
      overlap(dgates, dh_carry) || (dh_rec != nullptr && overlap(*dh_rec, dh_carry)))
    throw py::value_error("an LSTM backward step's outputs must be separate buffers");
  const Activation act = lstm_activation_of(activation, "activation");
  const Activation gate = lstm_activation_of(gate_activation, "gate_activation");
  const auto run = [&](auto zero) {
    using T = decltype(zero);
    nn::LstmBackwardStep<T> p;
    p.gates = ptr<const T>(gates);
    p.c = ptr<const T>(c);
    p.c_prev = ptr<const T>(c_prev);
    p.mask = ptr<const T>(mask);
    p.d_out = ptr<const T>(d_out);
    p.dh_rec = ptr<const T>(dh_rec);
    p.dh_carry = ptr<T>(dh_carry);
    p.dc = ptr<T>(dc);
    p.dgates = ptr<T>(dgates);
    p.dgates_seq = ptr<T>(dgates_seq);
    p.n = z.n;
    p.t = z.t;
    p.s = z.s;
    p.m = z.m;
    py::gil_scoped_release release;
    const DeviceGuard guard(args.device);
    lstm_backward_step(p, act, gate);
  };
  if (args.dtype == DType::f32)
    run(0.0f);
  else
    run(0.0);
}

// -- the convolutional layers, as _native.nn_im2col and the rest (bindings_conv.cpp) -------------

std::size_t size_arg(int64_t v, const char* name, int64_t least) {
  if (v < least)
    throw py::value_error(std::string(name) + " must be >= " + std::to_string(least) + ", got " +
                          std::to_string(v));
  return static_cast<std::size_t>(v);
}

// a * b, or ValueError when it overflows (the sizes would then match no buffer).
std::size_t times(std::size_t a, std::size_t b) {
  std::size_t product = 0;
  if (__builtin_mul_overflow(a, b, &product))
    throw py::value_error("the convolution's sizes overflow: " + std::to_string(a) + " * " +
                          std::to_string(b));
  return product;
}

// Every window count and size fits in 2^31 per dimension, so the padded sizes cannot overflow.
constexpr int64_t kMaxExtent = int64_t{1} << 31;

// The geometry of a call, checked as _native's shape_of; n is the first dimension of `x`.
ConvGeometry geometry_of(const DeviceBuffer& x, const char* x_name, int64_t c, int64_t h,
                         int64_t w, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                         int64_t pw, bool pooling) {
  const std::pair<int64_t, const char*> extents[] = {{c, "c"},   {h, "h"},   {w, "w"},
                                                     {kh, "kh"}, {kw, "kw"}, {sh, "sh"},
                                                     {sw, "sw"}, {ph, "ph"}, {pw, "pw"}};
  for (const auto& [v, name] : extents)
    if (v >= kMaxExtent)
      throw py::value_error(std::string(name) + " must be < 2^31, got " + std::to_string(v));
  ConvGeometry g{};
  g.c = size_arg(c, "c", 1);
  g.h = size_arg(h, "h", 1);
  g.w = size_arg(w, "w", 1);
  g.kh = size_arg(kh, "kh", 1);
  g.kw = size_arg(kw, "kw", 1);
  g.sh = size_arg(sh, "sh", 1);
  g.sw = size_arg(sw, "sw", 1);
  g.ph = size_arg(ph, "ph", 0);
  g.pw = size_arg(pw, "pw", 0);
  if (pooling && (g.ph >= g.kh || g.pw >= g.kw))
    throw py::value_error("pooling padding must be below the kernel size, got padding (" +
                          std::to_string(ph) + ", " + std::to_string(pw) + ") for kernel (" +
                          std::to_string(kh) + ", " + std::to_string(kw) + ")");
  if (g.h + 2 * g.ph < g.kh || g.w + 2 * g.pw < g.kw)
    throw py::value_error("a " + std::to_string(kh) + "x" + std::to_string(kw) +
                          " window with padding (" + std::to_string(ph) + ", " +
                          std::to_string(pw) + ") does not fit a " + std::to_string(h) + "x" +
                          std::to_string(w) + " image");
  g.oh = (g.h + 2 * g.ph - g.kh) / g.sh + 1;
  g.ow = (g.w + 2 * g.pw - g.kw) / g.sw + 1;
  if (x.shape().empty())
    throw py::value_error(std::string(x_name) + " must have a first dimension n");
  g.n = static_cast<std::size_t>(x.shape()[0]);
  return g;
}

std::size_t positions(const ConvGeometry& g) { return times(g.oh, g.ow); }
std::size_t patch(const ConvGeometry& g) { return times(times(g.c, g.kh), g.kw); }
std::size_t image(const ConvGeometry& g) { return times(times(g.c, g.h), g.w); }

// rows * cols values, in any shape (the layers pass [n * P, channels] buffers as [n, ...] ones).
void expect_size(const DeviceBuffer& b, const char* name, std::size_t rows, std::size_t cols) {
  const auto& shape = b.shape();
  if (b.size() == times(rows, cols)) return;
  std::string got;
  for (std::size_t d = 0; d < shape.size(); ++d)
    got += (d ? ", " : "") + std::to_string(shape[d]);
  throw py::value_error(std::string(name) + " must have shape [" + std::to_string(rows) + ", " +
                        std::to_string(cols) + "], got [" + got + "]");
}

// An output separate from an input (the kernels read one while writing the other).
void expect_separate(const DeviceBuffer& out, const char* out_name, const DeviceBuffer& in,
                     const char* in_name) {
  if (overlap(out, in))
    throw py::value_error(std::string(out_name) + " must not share memory with " + in_name);
}

// Runs body(float{}) or body(double{}) on the call's device, without the GIL.
template <typename F>
void on_device(const Args& args, F&& body) {
  py::gil_scoped_release release;
  const DeviceGuard guard(args.device);
  if (args.dtype == DType::f32)
    body(float{});
  else
    body(double{});
}

void py_im2col(const DeviceBuffer& x, const DeviceBuffer& col, int64_t c, int64_t h, int64_t w,
               int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
  Args args;
  args.add(x, "x");
  args.add(col, "col");
  expect_separate(col, "col", x, "x");
  const ConvGeometry g = geometry_of(x, "x", c, h, w, kh, kw, sh, sw, ph, pw, false);
  expect_size(x, "x", g.n, image(g));
  expect_size(col, "col", times(g.n, positions(g)), patch(g));
  on_device(args, [&](auto zero) {
    using T = decltype(zero);
    im2col(ptr<const T>(x), ptr<T>(col), g);
  });
}

void py_col2im(const DeviceBuffer& col, const DeviceBuffer& x, int64_t c, int64_t h, int64_t w,
               int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
  Args args;
  args.add(col, "col");
  args.add(x, "x");
  expect_separate(x, "x", col, "col");
  const ConvGeometry g = geometry_of(x, "x", c, h, w, kh, kw, sh, sw, ph, pw, false);
  expect_size(x, "x", g.n, image(g));
  expect_size(col, "col", times(g.n, positions(g)), patch(g));
  on_device(args, [&](auto zero) {
    using T = decltype(zero);
    col2im(ptr<const T>(col), ptr<T>(x), g);
  });
}

void py_channels(bool last, const DeviceBuffer& src, const DeviceBuffer& dst, int64_t n,
                 int64_t channels, int64_t count) {
  Args args;
  args.add(src, "src");
  args.add(dst, "dst");
  expect_separate(dst, "dst", src, "src");
  const std::size_t rows = size_arg(n, "n", 0);
  const std::size_t c = size_arg(channels, "channels", 1);
  const std::size_t p = size_arg(count, "positions", 1);
  expect_size(src, "src", rows, times(c, p));
  expect_size(dst, "dst", rows, times(c, p));
  on_device(args, [&](auto zero) {
    using T = decltype(zero);
    if (last)
      channels_last(ptr<const T>(src), ptr<T>(dst), rows, c, p);
    else
      channels_first(ptr<const T>(src), ptr<T>(dst), rows, c, p);
  });
}

void py_max_pool(const DeviceBuffer& x, const DeviceBuffer& out, int64_t c, int64_t h, int64_t w,
                 int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
  Args args;
  args.add(x, "x");
  args.add(out, "out");
  expect_separate(out, "out", x, "x");
  const ConvGeometry g = geometry_of(x, "x", c, h, w, kh, kw, sh, sw, ph, pw, true);
  expect_size(x, "x", g.n, image(g));
  expect_size(out, "out", g.n, times(g.c, positions(g)));
  on_device(args, [&](auto zero) {
    using T = decltype(zero);
    max_pool(ptr<const T>(x), ptr<T>(out), g);
  });
}

void py_max_pool_backward(const DeviceBuffer& x, const DeviceBuffer& out,
                          const DeviceBuffer& d_out, const DeviceBuffer& d_in, int64_t c,
                          int64_t h, int64_t w, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                          int64_t ph, int64_t pw) {
  Args args;
  args.add(x, "x");
  args.add(out, "out");
  args.add(d_out, "d_out");
  args.add(d_in, "d_in");
  expect_separate(d_in, "d_in", x, "x");
  expect_separate(d_in, "d_in", out, "out");
  expect_separate(d_in, "d_in", d_out, "d_out");
  const ConvGeometry g = geometry_of(x, "x", c, h, w, kh, kw, sh, sw, ph, pw, true);
  expect_size(x, "x", g.n, image(g));
  expect_size(out, "out", g.n, times(g.c, positions(g)));
  expect_size(d_out, "d_out", g.n, times(g.c, positions(g)));
  expect_size(d_in, "d_in", g.n, image(g));
  on_device(args, [&](auto zero) {
    using T = decltype(zero);
    max_pool_backward(ptr<const T>(x), ptr<const T>(out), ptr<const T>(d_out), ptr<T>(d_in), g);
  });
}

void py_avg_pool(const DeviceBuffer& x, const DeviceBuffer& out, int64_t c, int64_t h, int64_t w,
                 int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
  Args args;
  args.add(x, "x");
  args.add(out, "out");
  expect_separate(out, "out", x, "x");
  const ConvGeometry g = geometry_of(x, "x", c, h, w, kh, kw, sh, sw, ph, pw, true);
  expect_size(x, "x", g.n, image(g));
  expect_size(out, "out", g.n, times(g.c, positions(g)));
  on_device(args, [&](auto zero) {
    using T = decltype(zero);
    avg_pool(ptr<const T>(x), ptr<T>(out), g);
  });
}

void py_avg_pool_backward(const DeviceBuffer& d_out, const DeviceBuffer& d_in, int64_t c,
                          int64_t h, int64_t w, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                          int64_t ph, int64_t pw) {
  Args args;
  args.add(d_out, "d_out");
  args.add(d_in, "d_in");
  expect_separate(d_in, "d_in", d_out, "d_out");
  const ConvGeometry g = geometry_of(d_in, "d_in", c, h, w, kh, kw, sh, sw, ph, pw, true);
  expect_size(d_in, "d_in", g.n, image(g));
  expect_size(d_out, "d_out", g.n, times(g.c, positions(g)));
  on_device(args, [&](auto zero) {
    using T = decltype(zero);
    avg_pool_backward(ptr<const T>(d_out), ptr<T>(d_in), g);
  });
}

}  // namespace

void register_kernels(py::module_& m) {
  using namespace pybind11::literals;
  m.def("nn_bias_activation", &py_bias_activation, "z"_a, "bias"_a, "out"_a, "activation"_a,
        "alpha"_a = 0.0, "z += bias (in place); out = activation(z). out may be z.");
  m.def("nn_activation_backward", &py_activation_backward, "da"_a, "z"_a, "a"_a, "dz"_a, "db"_a,
        "activation"_a, "alpha"_a = 0.0,
        "dz = da * activation'(z); db = column sums of dz. dz may be da.");
  m.def("nn_output_layer", &py_output_layer, "loss"_a, "activation"_a, "alpha"_a, "z"_a,
        "bias"_a, "labels"_a, "weights"_a, "a"_a, "dz"_a, "db"_a, "scale"_a,
        "Output layer after its matrix product: bias, activation, weighted loss (returned as a "
        "sum), dz = scale * dloss/dz, db = column sums of dz. Waits for the GPU.");
  m.def("nn_loss_sum", &py_loss_sum, "loss"_a, "activation"_a, "z"_a, "a"_a, "labels"_a,
        "weights"_a,
        "Sum of the weighted loss terms of an output layer's activations. Waits for the GPU.");
  m.def("nn_updater_step", &py_updater_step, "updater"_a, "params"_a, "grads"_a, "state"_a,
        "lr"_a, "beta1"_a = 0.9, "beta2"_a = 0.999, "eps"_a = 1e-8, "momentum"_a = 0.0,
        "decay"_a = 0.95, "One updater step over a flat parameter buffer, in place.");
  m.def("nn_average", &py_average, "buffers"_a, "out"_a, "divisor"_a = py::none(),
        "out = element-wise sum of the buffers (at most 64) / divisor (default: their number, "
        "the mean); out may be one of them.");
  m.def("nn_add_into", &py_add_into, "acc"_a, "x"_a, "acc += x, in place.");
  m.def("nn_axpy", &py_axpy, "y"_a, "x"_a, "alpha"_a, "y += alpha * x, in place.");
  m.def("nn_dropout", &py_dropout, "x"_a, "rate"_a, "seed"_a,
        "Inverted dropout in place; the mask is a function of (seed, index), as on the CPU.");
  m.def("nn_sum_squares", &py_sum_squares, "x"_a,
        "Sum of the squares of the elements, accumulated in float64. Waits for the GPU.");
  m.def("nn_count_non_finite", &py_count_non_finite, "x"_a,
        "How many elements are NaN or infinite (0: all finite). Waits for the GPU.");
  m.def("matmul", &py_matmul, "a"_a, "b"_a, "out"_a, "trans_a"_a = false, "trans_b"_a = false,
        "alpha"_a = 1.0, "beta"_a = 0.0,
        "out = alpha * op(a) @ op(b) + beta * out for row-major matrices (cuBLAS); op transposes "
        "when trans_a / trans_b. out must not overlap a or b.");
  m.def("copy_columns", &py_copy_columns, "src"_a, "dst"_a, "column"_a,
        "dst[:, column:column + w] = src for src [rows, w] and dst [rows, W] (Merge's forward "
        "pass); one device-to-device 2-D copy. src and dst must not overlap.");
  m.def("take_columns", &py_take_columns, "src"_a, "column"_a, "dst"_a,
        "dst = src[:, column:column + w] for src [rows, W] and dst [rows, w] (Merge's "
        "gradient); one device-to-device 2-D copy. src and dst must not overlap.");
  m.def("nn_multiply", &py_multiply, "a"_a, "b"_a, "out"_a,
        "out = a * b, element-wise over same-sized buffers; out may be a or b.");
  m.def("nn_maximum", &py_maximum, "a"_a, "b"_a, "out"_a,
        "out = max(a, b) element-wise, NaN where either is (as numpy.maximum); out may be a or "
        "b.");
  m.def("nn_lstm_forward_step", &py_lstm_forward_step, "gates"_a, "zx"_a, "bias"_a, "mask"_a,
        "c_prev"_a, "h_prev"_a, "c"_a, "h"_a, "out"_a, "t"_a, "s"_a, "activation"_a,
        "gate_activation"_a, "One LSTM forward step, as _native.nn_lstm_forward_step.");
  m.def("nn_lstm_backward_step", &py_lstm_backward_step, "gates"_a, "c"_a, "c_prev"_a,
        "mask"_a, "d_out"_a, "dh_rec"_a, "dh_carry"_a, "dc"_a, "dgates"_a, "dgates_seq"_a,
        "t"_a, "s"_a, "activation"_a, "gate_activation"_a,
        "One LSTM backward step, as _native.nn_lstm_backward_step.");
  m.def("nn_max_backward", &py_max_backward, "dout"_a, "x"_a, "remaining"_a, "dx"_a,
        "Gradient of a max for one input x: where x == remaining, dx = dout and remaining = NaN "
        "(a tie goes to the first input called), else dx = 0. All four buffers distinct.");
  m.def("nn_im2col", &py_im2col, "x"_a, "col"_a, "c"_a, "h"_a, "w"_a, "kh"_a, "kw"_a, "sh"_a,
        "sw"_a, "ph"_a, "pw"_a,
        "col [n*P, K] = the receptive fields of x [n, c*h*w] (zeros for padding), as "
        "_native.nn_im2col.");
  m.def("nn_col2im", &py_col2im, "col"_a, "x"_a, "c"_a, "h"_a, "w"_a, "kh"_a, "kw"_a, "sh"_a,
        "sw"_a, "ph"_a, "pw"_a,
        "x [n, c*h*w] overwritten with the sums of the col [n*P, K] entries of each pixel, as "
        "_native.nn_col2im (no atomics: the same result on every run).");
  m.def(
      "nn_channels_last",
      [](const DeviceBuffer& src, const DeviceBuffer& dst, int64_t n, int64_t channels,
         int64_t positions) { py_channels(true, src, dst, n, channels, positions); },
      "src"_a, "dst"_a, "n"_a, "channels"_a, "positions"_a,
      "dst [n, positions, channels] = src [n, channels, positions] transposed per example.");
  m.def(
      "nn_channels_first",
      [](const DeviceBuffer& src, const DeviceBuffer& dst, int64_t n, int64_t channels,
         int64_t positions) { py_channels(false, src, dst, n, channels, positions); },
      "src"_a, "dst"_a, "n"_a, "channels"_a, "positions"_a,
      "dst [n, channels, positions] = src [n, positions, channels] transposed per example.");
  m.def("nn_max_pool", &py_max_pool, "x"_a, "out"_a, "c"_a, "h"_a, "w"_a, "kh"_a, "kw"_a,
        "sh"_a, "sw"_a, "ph"_a, "pw"_a,
        "out [n, c*P] = the max of each window's in-image values (NaN propagates).");
  m.def("nn_max_pool_backward", &py_max_pool_backward, "x"_a, "out"_a, "d_out"_a, "d_in"_a,
        "c"_a, "h"_a, "w"_a, "kh"_a, "kw"_a, "sh"_a, "sw"_a, "ph"_a, "pw"_a,
        "d_in overwritten: each window's d_out to its first position holding the max.");
  m.def("nn_avg_pool", &py_avg_pool, "x"_a, "out"_a, "c"_a, "h"_a, "w"_a, "kh"_a, "kw"_a,
        "sh"_a, "sw"_a, "ph"_a, "pw"_a,
        "out [n, c*P] = the mean of each window's in-image values (padding not counted).");
  m.def("nn_avg_pool_backward", &py_avg_pool_backward, "d_out"_a, "d_in"_a, "c"_a, "h"_a, "w"_a,
        "kh"_a, "kw"_a, "sh"_a, "sw"_a, "ph"_a, "pw"_a,
        "d_in overwritten: each window's d_out / count spread over its in-image positions.");
}

}  // namespace sparkbatch::cuda::bindings
