// Bindings of the built-in network's kernels: _native.nn_*. Each takes numpy arrays of one dtype
// (float32 or float64), C-contiguous; outputs must be writeable. Nothing is converted or copied:
// an array of the wrong dtype, layout or shape is refused, since a silent copy of an output would
// lose the result. The GIL is released while a kernel runs.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <initializer_list>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

#include "bindings.hpp"
#include "nn_codes.hpp"
#include "nn_kernels.hpp"

namespace sparkbatch::bindings {
namespace {

using nn::Activation;
using nn::Loss;
using nn::Updater;

enum class Kind { f32, f64 };

Kind kind_of(const py::array& a, const char* name) {
  // By value, not identity: an unpickled array has its own (equal) dtype object. The host is
  // little-endian (CMake checks), so '<' and '=' are both native.
  const py::dtype dt = a.dtype();
  const char order = dt.byteorder();
  if (dt.kind() == 'f' && (order == '=' || order == '<')) {
    if (dt.itemsize() == 4) return Kind::f32;
    if (dt.itemsize() == 8) return Kind::f64;
  }
  throw py::type_error(std::string(name) + " must be float32 or float64, got " +
                       py::str(a.dtype()).cast<std::string>());
}

void check_layout(const py::array& a, const char* name, bool writeable) {
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + " must be C-contiguous");
  if (writeable && !a.writeable()) throw py::value_error(std::string(name) + " must be writeable");
}

// The arrays of one call: all of one dtype, checked once.
struct Args {
  Kind kind = Kind::f32;
  bool first = true;
  void add(const py::array& a, const char* name, bool writeable) {
    const Kind k = kind_of(a, name);
    if (first) {
      kind = k;
      first = false;
    } else if (k != kind) {
      throw py::type_error(std::string(name) + " has dtype " +
                           py::str(a.dtype()).cast<std::string>() +
                           " but the other arrays have " + (kind == Kind::f32 ? "float32" : "float64"));
    }
    check_layout(a, name, writeable);
  }
};

template <typename T>
T* mut(const py::array& a) {
  return static_cast<T*>(const_cast<void*>(a.data()));
}

template <typename T>
const T* cptr(const std::optional<py::array>& a) {
  return a ? static_cast<const T*>(a->data()) : nullptr;
}

template <typename T>
T* mptr(const std::optional<py::array>& a) {
  return a ? static_cast<T*>(const_cast<void*>(a->data())) : nullptr;
}

// Whether two arrays' bytes overlap: kernels that take restrict pointers refuse that.
bool overlap(const py::array& a, const py::array& b) {
  const auto* a0 = static_cast<const char*>(a.data());
  const auto* b0 = static_cast<const char*>(b.data());
  return a.nbytes() > 0 && b.nbytes() > 0 && a0 < b0 + b.nbytes() && b0 < a0 + a.nbytes();
}

// A named array of a call, or none (an absent optional).
struct Named {
  const py::array* array;
  const char* name;
};

Named named(const py::array& a, const char* name) { return {&a, name}; }
Named named(const std::optional<py::array>& a, const char* name) {
  return {a ? &*a : nullptr, name};
}

// ValueError unless each of `outputs` (written through restrict pointers) is separate from the
// other outputs and from every one of `inputs`; inputs may share memory with each other.
void expect_separate(std::initializer_list<Named> outputs, std::initializer_list<Named> inputs,
                     const char* what) {
  for (auto out = outputs.begin(); out != outputs.end(); ++out) {
    if (out->array == nullptr) continue;
    const auto refuse = [&](const Named& other) {
      if (other.array != nullptr && overlap(*out->array, *other.array))
        throw py::value_error(std::string(what) + "'s " + out->name +
                              " must not share memory with " + other.name);
    };
    for (auto other = std::next(out); other != outputs.end(); ++other) refuse(*other);
    for (const Named& in : inputs) refuse(in);
  }
}

// [n, m] of a 2-D array.
std::pair<std::size_t, std::size_t> matrix_shape(const py::array& a, const char* name) {
  if (a.ndim() != 2)
    throw py::value_error(std::string(name) + " must be 2-D [n, m], got " +
                          std::to_string(a.ndim()) + "-D");
  return {static_cast<std::size_t>(a.shape(0)), static_cast<std::size_t>(a.shape(1))};
}

void expect_shape(const py::array& a, const char* name, std::size_t n, std::size_t m) {
  if (a.ndim() != 2 || static_cast<std::size_t>(a.shape(0)) != n ||
      static_cast<std::size_t>(a.shape(1)) != m)
    throw py::value_error(std::string(name) + " must have shape [" + std::to_string(n) + ", " +
                          std::to_string(m) + "]");
}

void expect_vector(const std::optional<py::array>& a, const char* name, std::size_t m) {
  if (a && (a->ndim() != 1 || static_cast<std::size_t>(a->shape(0)) != m))
    throw py::value_error(std::string(name) + " must have shape [" + std::to_string(m) + "]");
}

void py_bias_activation(const py::array& z, const std::optional<py::array>& bias,
                        const py::array& out, int activation, double alpha) {
  Args args;
  args.add(z, "z", true);
  if (bias) args.add(*bias, "bias", false);
  args.add(out, "out", true);
  const auto [n, m] = matrix_shape(z, "z");
  expect_shape(out, "out", n, m);
  expect_vector(bias, "bias", m);
  const Activation act = nn::activation_of(activation);
  py::gil_scoped_release release;
  if (args.kind == Kind::f32)
    nn::bias_activation(mut<float>(z), cptr<float>(bias), mut<float>(out), n, m, act,
                        static_cast<float>(alpha));
  else
    nn::bias_activation(mut<double>(z), cptr<double>(bias), mut<double>(out), n, m, act, alpha);
}

void py_activation_backward(const py::array& da, const std::optional<py::array>& z,
                            const py::array& a, const py::array& dz,
                            const std::optional<py::array>& db, int activation, double alpha) {
  Args args;
  args.add(da, "da", false);
  if (z) args.add(*z, "z", false);
  args.add(a, "a", false);
  args.add(dz, "dz", true);
  if (db) args.add(*db, "db", true);
  const auto [n, m] = matrix_shape(da, "da");
  if (z) expect_shape(*z, "z", n, m);
  expect_shape(a, "a", n, m);
  expect_shape(dz, "dz", n, m);
  expect_vector(db, "db", m);
  const Activation act = nn::activation_of(activation);
  if (!z && nn::needs_preactivation(act))
    throw py::value_error("this activation's gradient needs the pre-activation z");
  py::gil_scoped_release release;
  if (args.kind == Kind::f32)
    nn::activation_backward(static_cast<const float*>(da.data()), cptr<float>(z),
                            static_cast<const float*>(a.data()), mut<float>(dz), mptr<float>(db),
                            n, m, act, static_cast<float>(alpha));
  else
    nn::activation_backward(static_cast<const double*>(da.data()), cptr<double>(z),
                            static_cast<const double*>(a.data()), mut<double>(dz),
                            mptr<double>(db), n, m, act, alpha);
}

// Label-mask weights: [n] or [n, 1] per example, [n, m] per output.
template <typename T>
nn::LossWeights<T> weights_of(const std::optional<py::array>& w, std::size_t n, std::size_t m) {
  nn::LossWeights<T> out;
  if (!w) return out;
  const auto size = static_cast<std::size_t>(w->size());
  const bool per_example = size == n && (w->ndim() == 1 || (w->ndim() == 2 && w->shape(1) == 1));
  const bool per_output = w->ndim() == 2 && size == n * m && static_cast<std::size_t>(w->shape(0)) == n;
  if (!per_example && !per_output)
    throw py::value_error("weights must have shape [" + std::to_string(n) + "], [" +
                          std::to_string(n) + ", 1] or [" + std::to_string(n) + ", " +
                          std::to_string(m) + "]");
  out.data = static_cast<const T*>(w->data());
  out.per_output = per_output && !per_example;
  return out;
}

double py_output_layer(int loss, int activation, double alpha, const py::array& z,
                       const std::optional<py::array>& bias, const py::array& labels,
                       const std::optional<py::array>& weights, const py::array& a,
                       const py::array& dz, const std::optional<py::array>& db, double scale) {
  Args args;
  args.add(z, "z", true);
  if (bias) args.add(*bias, "bias", false);
  args.add(labels, "labels", false);
  if (weights) args.add(*weights, "weights", false);
  args.add(a, "a", true);
  args.add(dz, "dz", true);
  if (db) args.add(*db, "db", true);
  const auto [n, m] = matrix_shape(z, "z");
  expect_shape(labels, "labels", n, m);
  expect_shape(a, "a", n, m);
  expect_shape(dz, "dz", n, m);
  expect_vector(bias, "bias", m);
  expect_vector(db, "db", m);
  if (overlap(a, z) || overlap(dz, z) || overlap(dz, labels))
    throw py::value_error("the output layer's a and dz must not share memory with z or labels");
  const Loss l = nn::loss_of(loss);
  const Activation act = nn::activation_of(activation);
  if (args.kind == Kind::f32) {
    const auto w = weights_of<float>(weights, n, m);
    py::gil_scoped_release release;
    return nn::output_layer(l, act, static_cast<float>(alpha), mut<float>(z), cptr<float>(bias),
                            static_cast<const float*>(labels.data()), w, mut<float>(a),
                            mut<float>(dz), mptr<float>(db), n, m, static_cast<float>(scale));
  }
  const auto w = weights_of<double>(weights, n, m);
  py::gil_scoped_release release;
  return nn::output_layer(l, act, alpha, mut<double>(z), cptr<double>(bias),
                          static_cast<const double*>(labels.data()), w, mut<double>(a),
                          mut<double>(dz), mptr<double>(db), n, m, scale);
}

double py_loss_sum(int loss, int activation, const py::array& z, const py::array& a,
                   const py::array& labels, const std::optional<py::array>& weights) {
  Args args;
  args.add(z, "z", false);
  args.add(a, "a", false);
  args.add(labels, "labels", false);
  if (weights) args.add(*weights, "weights", false);
  const auto [n, m] = matrix_shape(z, "z");
  expect_shape(a, "a", n, m);
  expect_shape(labels, "labels", n, m);
  const Loss l = nn::loss_of(loss);
  const Activation act = nn::activation_of(activation);
  if (args.kind == Kind::f32) {
    const auto w = weights_of<float>(weights, n, m);
    py::gil_scoped_release release;
    return nn::loss_sum(l, act, static_cast<const float*>(z.data()),
                        static_cast<const float*>(a.data()),
                        static_cast<const float*>(labels.data()), w, n, m);
  }
  const auto w = weights_of<double>(weights, n, m);
  py::gil_scoped_release release;
  return nn::loss_sum(l, act, static_cast<const double*>(z.data()),
                      static_cast<const double*>(a.data()),
                      static_cast<const double*>(labels.data()), w, n, m);
}

void py_updater_step(int updater, const py::array& params, const py::array& grads,
                     const py::array& state, double lr, double beta1, double beta2, double eps,
                     double momentum, double decay) {
  const Updater u = nn::updater_of(updater);
  Args args;
  args.add(params, "params", true);
  args.add(grads, "grads", false);
  args.add(state, "state", true);
  if (overlap(params, grads) || overlap(params, state) || overlap(grads, state))
    throw py::value_error("params, grads and state must be separate buffers");
  const auto count = static_cast<std::size_t>(params.size());
  if (static_cast<std::size_t>(grads.size()) != count)
    throw py::value_error("grads has " + std::to_string(grads.size()) + " values, params " +
                          std::to_string(count));
  const auto expected_state = count * static_cast<std::size_t>(nn::updater_state_per_param(u));
  if (static_cast<std::size_t>(state.size()) != expected_state)
    throw py::value_error("state has " + std::to_string(state.size()) + " values, expected " +
                          std::to_string(expected_state));
  nn::UpdaterHyper h;
  h.lr = lr;
  h.beta1 = beta1;
  h.beta2 = beta2;
  h.eps = eps;
  h.momentum = momentum;
  h.decay = decay;
  py::gil_scoped_release release;
  if (args.kind == Kind::f32)
    nn::updater_step(u, mut<float>(params), static_cast<const float*>(grads.data()),
                     mut<float>(state), count, h);
  else
    nn::updater_step(u, mut<double>(params), static_cast<const double*>(grads.data()),
                     mut<double>(state), count, h);
}

// Flat views of same-sized buffers of one dtype.
struct Flat {
  Args args;
  std::size_t count = 0;
  bool have = false;
  void add(const py::array& a, const char* name, bool writeable) {
    args.add(a, name, writeable);
    const auto size = static_cast<std::size_t>(a.size());
    if (have && size != count)
      throw py::value_error(std::string(name) + " has " + std::to_string(size) +
                            " values, the others " + std::to_string(count));
    count = size;
    have = true;
  }
};

void py_average(const std::vector<py::array>& buffers, const py::array& out,
                std::optional<double> divisor) {
  if (buffers.empty()) throw py::value_error("average needs at least one buffer");
  const double d = divisor.value_or(static_cast<double>(buffers.size()));
  if (!(d > 0)) throw py::value_error("divisor must be > 0, got " + std::to_string(d));
  Flat flat;
  for (const auto& b : buffers) flat.add(b, "buffer", false);
  flat.add(out, "out", true);
  const std::size_t k = buffers.size();
  if (flat.args.kind == Kind::f32) {
    std::vector<const float*> pointers;
    for (const auto& b : buffers) pointers.push_back(static_cast<const float*>(b.data()));
    py::gil_scoped_release release;
    nn::average(pointers.data(), k, mut<float>(out), flat.count, d);
  } else {
    std::vector<const double*> pointers;
    for (const auto& b : buffers) pointers.push_back(static_cast<const double*>(b.data()));
    py::gil_scoped_release release;
    nn::average(pointers.data(), k, mut<double>(out), flat.count, d);
  }
}

void py_add_into(const py::array& acc, const py::array& x) {
  Flat flat;
  flat.add(acc, "acc", true);
  flat.add(x, "x", false);
  py::gil_scoped_release release;
  if (flat.args.kind == Kind::f32)
    nn::add_into(mut<float>(acc), static_cast<const float*>(x.data()), flat.count);
  else
    nn::add_into(mut<double>(acc), static_cast<const double*>(x.data()), flat.count);
}

// The bfloat16 transport's kernels: float32 arrays and uint16 arrays of the same size, both
// C-contiguous (the ring's pieces); the GIL is released while they run.
void check_bfloat16_pair(const py::array& f32, const char* f32_name, const py::array& wire,
                         const char* wire_name) {
  if (!f32.dtype().is(py::dtype::of<float>()))
    throw py::type_error(std::string(f32_name) + " must be float32, got " +
                         std::string(py::str(f32.dtype())));
  if (!wire.dtype().is(py::dtype::of<uint16_t>()))
    throw py::type_error(std::string(wire_name) + " must be uint16 (bfloat16 bits), got " +
                         std::string(py::str(wire.dtype())));
  for (const py::array* a : {&f32, &wire})
    if (!(a->flags() & py::array::c_style))
      throw py::value_error("bfloat16 kernels need C-contiguous arrays");
  if (f32.size() != wire.size())
    throw py::value_error(std::string(f32_name) + " has " + std::to_string(f32.size()) +
                          " values, " + wire_name + " " + std::to_string(wire.size()));
}

void require_writable(const py::array& a, const char* name) {
  if (!a.writeable()) throw py::value_error(std::string(name) + " must be writable");
}

void py_bfloat16_encode(const py::array& x, const py::array& out) {
  check_bfloat16_pair(x, "x", out, "out");
  require_writable(out, "out");
  const auto* src = static_cast<const float*>(x.data());
  auto* dst = static_cast<uint16_t*>(const_cast<void*>(out.data()));
  const auto n = static_cast<std::size_t>(x.size());
  py::gil_scoped_release release;
  nn::bfloat16_encode(src, dst, n);
}

void py_bfloat16_add_into(const py::array& acc, const py::array& x) {
  check_bfloat16_pair(acc, "acc", x, "x");
  require_writable(acc, "acc");
  auto* dst = static_cast<float*>(const_cast<void*>(acc.data()));
  const auto* src = static_cast<const uint16_t*>(x.data());
  const auto n = static_cast<std::size_t>(acc.size());
  py::gil_scoped_release release;
  nn::bfloat16_add_into(dst, src, n);
}

void py_bfloat16_add_encode(const py::array& acc, const py::array& x, const py::array& out) {
  check_bfloat16_pair(acc, "acc", x, "x");
  check_bfloat16_pair(acc, "acc", out, "out");
  require_writable(acc, "acc");
  require_writable(out, "out");
  auto* sum = static_cast<float*>(const_cast<void*>(acc.data()));
  const auto* src = static_cast<const uint16_t*>(x.data());
  auto* dst = static_cast<uint16_t*>(const_cast<void*>(out.data()));
  const auto n = static_cast<std::size_t>(acc.size());
  py::gil_scoped_release release;
  nn::bfloat16_add_encode(sum, src, dst, n);
}

void py_bfloat16_decode(const py::array& x, const py::array& out) {
  check_bfloat16_pair(out, "out", x, "x");
  require_writable(out, "out");
  const auto* src = static_cast<const uint16_t*>(x.data());
  auto* dst = static_cast<float*>(const_cast<void*>(out.data()));
  const auto n = static_cast<std::size_t>(out.size());
  py::gil_scoped_release release;
  nn::bfloat16_decode(src, dst, n);
}

void py_axpy(const py::array& y, const py::array& x, double alpha) {
  Flat flat;
  flat.add(y, "y", true);
  flat.add(x, "x", false);
  py::gil_scoped_release release;
  if (flat.args.kind == Kind::f32)
    nn::axpy(mut<float>(y), static_cast<const float*>(x.data()), static_cast<float>(alpha),
             flat.count);
  else
    nn::axpy(mut<double>(y), static_cast<const double*>(x.data()), alpha, flat.count);
}

void py_dropout(const py::array& x, double rate, uint64_t seed) {
  if (!(rate >= 0.0 && rate < 1.0))
    throw py::value_error("dropout rate must be in [0, 1), got " + std::to_string(rate));
  Flat flat;
  flat.add(x, "x", true);
  py::gil_scoped_release release;
  if (flat.args.kind == Kind::f32)
    nn::dropout(mut<float>(x), flat.count, rate, seed);
  else
    nn::dropout(mut<double>(x), flat.count, rate, seed);
}

// Below this many values the check is quicker than releasing and taking back the GIL.
constexpr py::ssize_t kReleaseGilMin = py::ssize_t{1} << 16;

int64_t py_first_non_finite(const py::array& x) {
  Flat flat;
  flat.add(x, "x", false);
  const auto check = [&]() -> int64_t {
    if (flat.args.kind == Kind::f32)
      return nn::first_non_finite(static_cast<const float*>(x.data()), flat.count);
    return nn::first_non_finite(static_cast<const double*>(x.data()), flat.count);
  };
  if (x.size() < kReleaseGilMin) return check();
  py::gil_scoped_release release;
  return check();
}

// -- LSTM steps ------------------------------------------------------------------------------

nn::Activation lstm_activation_of(int code, const char* name) {
  const nn::Activation act = nn::activation_of(code);
  if (act != nn::Activation::identity && act != nn::Activation::tanh &&
      act != nn::Activation::sigmoid)
    throw py::value_error(std::string(name) + " must be identity, tanh or sigmoid (code 0, 5 or 6), got code " +
                          std::to_string(code));
  return act;
}

void expect_optional(const std::optional<py::array>& a, const char* name, std::size_t n,
                     std::size_t m) {
  if (a) expect_shape(*a, name, n, m);
}

// The sizes of a step: n examples, m units, t steps; s < t.
struct StepSizes {
  std::size_t n, m, t, s;
};

StepSizes step_sizes(const py::array& gates, int64_t t, int64_t s) {
  const auto [n, w] = matrix_shape(gates, "gates");
  if (w % 4 != 0 || w == 0)
    throw py::value_error("gates must have 4 * units columns, got " + std::to_string(w));
  if (t < 1 || s < 0 || s >= t)
    throw py::value_error("step " + std::to_string(s) + " is outside [0, " + std::to_string(t) +
                          ")");
  return {n, w / 4, static_cast<std::size_t>(t), static_cast<std::size_t>(s)};
}

void py_lstm_forward_step(const py::array& gates, const py::array& zx, const py::array& bias,
                          const std::optional<py::array>& mask,
                          const std::optional<py::array>& c_prev,
                          const std::optional<py::array>& h_prev, const py::array& c,
                          const py::array& h, const std::optional<py::array>& out, int64_t t,
                          int64_t s, int activation, int gate_activation) {
  Args args;
  args.add(gates, "gates", true);
  args.add(zx, "zx", false);
  args.add(bias, "bias", false);
  if (mask) args.add(*mask, "mask", false);
  if (c_prev) args.add(*c_prev, "c_prev", false);
  if (h_prev) args.add(*h_prev, "h_prev", false);
  args.add(c, "c", true);
  args.add(h, "h", true);
  if (out) args.add(*out, "out", true);
  const StepSizes z = step_sizes(gates, t, s);
  expect_shape(zx, "zx", z.n * z.t, 4 * z.m);
  expect_vector(bias, "bias", 4 * z.m);
  expect_optional(mask, "mask", z.n, z.t);
  expect_optional(c_prev, "c_prev", z.n, z.m);
  expect_optional(h_prev, "h_prev", z.n, z.m);
  expect_shape(c, "c", z.n, z.m);
  expect_shape(h, "h", z.n, z.m);
  expect_optional(out, "out", z.n * z.t, z.m);
  expect_separate({named(gates, "gates"), named(c, "c"), named(h, "h"), named(out, "out")},
                  {named(zx, "zx"), named(bias, "bias"), named(mask, "mask"),
                   named(c_prev, "c_prev"), named(h_prev, "h_prev")},
                  "an LSTM step");
  const Activation act = lstm_activation_of(activation, "activation");
  const Activation gate = lstm_activation_of(gate_activation, "gate_activation");
  const auto run = [&](auto zero) {
    using T = decltype(zero);
    nn::LstmForwardStep<T> p;
    p.gates = mut<T>(gates);
    p.zx = static_cast<const T*>(zx.data());
    p.bias = static_cast<const T*>(bias.data());
    p.mask = cptr<T>(mask);
    p.c_prev = cptr<T>(c_prev);
    p.h_prev = cptr<T>(h_prev);
    p.c = mut<T>(c);
    p.h = mut<T>(h);
    p.out = mptr<T>(out);
    p.n = z.n;
    p.t = z.t;
    p.s = z.s;
    p.m = z.m;
    py::gil_scoped_release release;
    nn::lstm_forward_step(p, act, gate);
  };
  if (args.kind == Kind::f32)
    run(0.0f);
  else
    run(0.0);
}

void py_lstm_backward_step(const py::array& gates, const py::array& c,
                           const std::optional<py::array>& c_prev,
                           const std::optional<py::array>& mask,
                           const std::optional<py::array>& d_out,
                           const std::optional<py::array>& dh_rec, const py::array& dh_carry,
                           const py::array& dc, const py::array& dgates,
                           const std::optional<py::array>& dgates_seq, int64_t t, int64_t s,
                           int activation, int gate_activation) {
  Args args;
  args.add(gates, "gates", false);
  args.add(c, "c", false);
  if (c_prev) args.add(*c_prev, "c_prev", false);
  if (mask) args.add(*mask, "mask", false);
  if (d_out) args.add(*d_out, "d_out", false);
  if (dh_rec) args.add(*dh_rec, "dh_rec", false);
  args.add(dh_carry, "dh_carry", true);
  args.add(dc, "dc", true);
  args.add(dgates, "dgates", true);
  if (dgates_seq) args.add(*dgates_seq, "dgates_seq", true);
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
  expect_separate({named(dh_carry, "dh_carry"), named(dc, "dc"), named(dgates, "dgates"),
                   named(dgates_seq, "dgates_seq")},
                  {named(gates, "gates"), named(c, "c"), named(c_prev, "c_prev"),
                   named(mask, "mask"), named(d_out, "d_out"), named(dh_rec, "dh_rec")},
                  "an LSTM backward step");
  const Activation act = lstm_activation_of(activation, "activation");
  const Activation gate = lstm_activation_of(gate_activation, "gate_activation");
  const auto run = [&](auto zero) {
    using T = decltype(zero);
    nn::LstmBackwardStep<T> p;
    p.gates = static_cast<const T*>(gates.data());
    p.c = static_cast<const T*>(c.data());
    p.c_prev = cptr<T>(c_prev);
    p.mask = cptr<T>(mask);
    p.d_out = cptr<T>(d_out);
    p.dh_rec = cptr<T>(dh_rec);
    p.dh_carry = mut<T>(dh_carry);
    p.dc = mut<T>(dc);
    p.dgates = mut<T>(dgates);
    p.dgates_seq = mptr<T>(dgates_seq);
    p.n = z.n;
    p.t = z.t;
    p.s = z.s;
    p.m = z.m;
    py::gil_scoped_release release;
    nn::lstm_backward_step(p, act, gate);
  };
  if (args.kind == Kind::f32)
    run(0.0f);
  else
    run(0.0);
}

}  // namespace

void register_nn(py::module_& m) {
  using namespace pybind11::literals;
  m.def("nn_bias_activation", &py_bias_activation, "z"_a, "bias"_a, "out"_a, "activation"_a,
        "alpha"_a = 0.0,
        "z += bias (in place); out = activation(z). out may be z.");
  m.def("nn_activation_backward", &py_activation_backward, "da"_a, "z"_a, "a"_a, "dz"_a, "db"_a,
        "activation"_a, "alpha"_a = 0.0,
        "dz = da * activation'(z); db = column sums of dz. dz may be da.");
  m.def("nn_output_layer", &py_output_layer, "loss"_a, "activation"_a, "alpha"_a, "z"_a,
        "bias"_a, "labels"_a, "weights"_a, "a"_a, "dz"_a, "db"_a, "scale"_a,
        "Output layer after its matrix product: bias, activation, weighted loss (returned as a "
        "sum), dz = scale * dloss/dz, db = column sums of dz.");
  m.def("nn_loss_sum", &py_loss_sum, "loss"_a, "activation"_a, "z"_a, "a"_a, "labels"_a,
        "weights"_a, "Sum of the weighted loss terms of an output layer's activations.");
  m.def("nn_updater_step", &py_updater_step, "updater"_a, "params"_a, "grads"_a, "state"_a,
        "lr"_a, "beta1"_a = 0.9, "beta2"_a = 0.999, "eps"_a = 1e-8, "momentum"_a = 0.0,
        "decay"_a = 0.95, "One updater step over a flat parameter buffer, in place.");
  m.def("nn_average", &py_average, "buffers"_a, "out"_a, "divisor"_a = py::none(),
        "out = element-wise sum of the buffers / divisor (default: their number, the mean); "
        "out may be one of them.");
  m.def("nn_add_into", &py_add_into, "acc"_a, "x"_a, "acc += x, in place.");
  m.def("nn_axpy", &py_axpy, "y"_a, "x"_a, "alpha"_a, "y += alpha * x, in place.");
  m.def("bfloat16_encode", &py_bfloat16_encode, "x"_a, "out"_a,
        "out (uint16) = float32 x rounded to bfloat16, to nearest, ties to even (NaN kept).");
  m.def("bfloat16_add_into", &py_bfloat16_add_into, "acc"_a, "x"_a,
        "acc (float32) += x (uint16 bfloat16 bits) widened, in place.");
  m.def("bfloat16_add_encode", &py_bfloat16_add_encode, "acc"_a, "x"_a, "out"_a,
        "acc (float32) += x (uint16 bfloat16 bits) widened, then out (uint16) = acc rounded to "
        "bfloat16: one pass (a ring's reduce-scatter step).");
  m.def("bfloat16_decode", &py_bfloat16_decode, "x"_a, "out"_a,
        "out (float32) = x (uint16 bfloat16 bits) widened.");
  m.def("nn_dropout", &py_dropout, "x"_a, "rate"_a, "seed"_a,
        "Inverted dropout in place; the mask is a function of (seed, index).");
  m.def("first_non_finite", &py_first_non_finite, "x"_a,
        "The flat (C-order) index of the first NaN or infinity in x (float32 or float64, "
        "C-contiguous), or -1 when every value is finite. One pass; the GIL is released for "
        "large arrays.");
  m.def("nn_lstm_forward_step", &py_lstm_forward_step, "gates"_a, "zx"_a, "bias"_a, "mask"_a,
        "c_prev"_a, "h_prev"_a, "c"_a, "h"_a, "out"_a, "t"_a, "s"_a, "activation"_a,
        "gate_activation"_a,
        "One LSTM forward step after gates = h_prev @ RW: adds zx (x @ W, [n * t, 4m] "
        "example-major) at step s and the bias, activates the gates in place, writes c, the "
        "carried h and out (h, 0 at a masked step) at step s.");
  m.def("nn_lstm_backward_step", &py_lstm_backward_step, "gates"_a, "c"_a, "c_prev"_a,
        "mask"_a, "d_out"_a, "dh_rec"_a, "dh_carry"_a, "dc"_a, "dgates"_a, "dgates_seq"_a,
        "t"_a, "s"_a, "activation"_a, "gate_activation"_a,
        "One LSTM backward step: the gates' pre-activation gradients of step s (also into "
        "dgates_seq at step s), and the carried h and c gradients for step s - 1.");
}

}  // namespace sparkbatch::bindings
