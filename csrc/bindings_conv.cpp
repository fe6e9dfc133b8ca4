// Bindings of the convolutional layers' kernels (conv_kernels.hpp): _native.nn_im2col, nn_col2im,
// nn_channels_last, nn_channels_first, nn_max_pool, nn_max_pool_backward, nn_avg_pool and
// nn_avg_pool_backward. Arrays are numpy arrays of one dtype (float32 or float64), C-contiguous
// and aligned, outputs writeable and separate from the inputs; sizes are Python ints, and every
// array's size is checked against them (ValueError naming the array and the shape expected).
// Nothing is converted or copied. The GIL is released while a kernel runs.
#include <pybind11/numpy.h>

#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "bindings.hpp"
#include "conv_kernels.hpp"

namespace sparkbatch::bindings {
namespace {

using nn::ConvShape;

// The arrays of one call: all float32 or all float64, C-contiguous, outputs writeable, each
// output separate from every other array.
struct Arrays {
  bool f64 = false;
  bool first = true;
  std::vector<std::pair<const py::array*, const char*>> seen;
  std::vector<std::pair<const py::array*, const char*>> outputs;

  bool written(const py::array* a) const {
    for (const auto& o : outputs)
      if (o.first == a) return true;
    return false;
  }
  static bool overlap(const py::array& a, const py::array& b) {
    const auto* a0 = static_cast<const char*>(a.data());
    const auto* b0 = static_cast<const char*>(b.data());
    return a.nbytes() > 0 && b.nbytes() > 0 && a0 < b0 + b.nbytes() && b0 < a0 + a.nbytes();
  }

  void add(const py::array& a, const char* name, bool output) {
    const py::dtype dt = a.dtype();
    const char order = dt.byteorder();
    const bool native = order == '=' || order == '<';  // CMake checks the host is little-endian
    if (dt.kind() != 'f' || !native || (dt.itemsize() != 4 && dt.itemsize() != 8))
      throw py::type_error(std::string(name) + " must be float32 or float64, got " +
                           py::str(dt).cast<std::string>());
    const bool is64 = dt.itemsize() == 8;
    if (first) {
      f64 = is64;
      first = false;
    } else if (is64 != f64) {
      throw py::type_error(std::string(name) + " has dtype " + py::str(dt).cast<std::string>() +
                           " but the other arrays have " + (f64 ? "float64" : "float32"));
    }
    if (!(a.flags() & py::array::c_style))
      throw py::value_error(std::string(name) + " must be C-contiguous");
    // numpy's C-contiguous does not imply aligned (np.frombuffer at an odd offset)
    if (reinterpret_cast<std::uintptr_t>(a.data()) % static_cast<std::uintptr_t>(dt.itemsize()))
      throw py::value_error(std::string(name) + " must be aligned to its item size");
    if (output && !a.writeable()) throw py::value_error(std::string(name) + " must be writeable");
    for (const auto& [other, other_name] : seen) {
      const bool either = output || written(other);
      if (either && overlap(a, *other))
        throw py::value_error(std::string(name) + " must not share memory with " + other_name);
    }
    seen.emplace_back(&a, name);
    if (output) outputs.emplace_back(&a, name);
  }
};

// A size argument in [least, 2^31): bounded, so that sums like h + 2*ph cannot overflow.
std::size_t size_arg(std::int64_t v, const char* name, std::int64_t least) {
  constexpr std::int64_t kMax = std::int64_t{1} << 31;
  if (v < least || v >= kMax)
    throw py::value_error(std::string(name) + " must be in [" + std::to_string(least) +
                          ", 2^31), got " + std::to_string(v));
  return static_cast<std::size_t>(v);
}

// a * b, or ValueError when it does not fit a size_t (sizes come from Python ints).
std::size_t product(std::size_t a, std::size_t b) {
  if (b != 0 && a > std::numeric_limits<std::size_t>::max() / b)
    throw py::value_error("the sizes' product overflows: " + std::to_string(a) + " * " +
                          std::to_string(b));
  return a * b;
}

// The window sizes of a call, checked; n is taken from the first dimension of `x`. Every
// product the kernels and the size checks form (n*c*h*w, n*P*K, n*c*P) is checked not to
// overflow, so a wrapped product can never pass for an array's size.
ConvShape shape_of(const py::array& x, const char* x_name, std::int64_t c, std::int64_t h,
                   std::int64_t w, std::int64_t kh, std::int64_t kw, std::int64_t sh,
                   std::int64_t sw, std::int64_t ph, std::int64_t pw, bool pooling) {
  ConvShape s;
  s.c = size_arg(c, "c", 1);
  s.h = size_arg(h, "h", 1);
  s.w = size_arg(w, "w", 1);
  s.kh = size_arg(kh, "kh", 1);
  s.kw = size_arg(kw, "kw", 1);
  s.sh = size_arg(sh, "sh", 1);
  s.sw = size_arg(sw, "sw", 1);
  s.ph = size_arg(ph, "ph", 0);
  s.pw = size_arg(pw, "pw", 0);
  if (pooling && (s.ph >= s.kh || s.pw >= s.kw))
    throw py::value_error("pooling padding must be below the kernel size, got padding (" +
                          std::to_string(ph) + ", " + std::to_string(pw) + ") for kernel (" +
                          std::to_string(kh) + ", " + std::to_string(kw) + ")");
  if (s.out_h() < 1 || s.out_w() < 1)
    throw py::value_error("a " + std::to_string(kh) + "x" + std::to_string(kw) +
                          " window with padding (" + std::to_string(ph) + ", " +
                          std::to_string(pw) + ") does not fit a " + std::to_string(h) + "x" +
                          std::to_string(w) + " image");
  if (x.ndim() < 1) throw py::value_error(std::string(x_name) + " must have a first dimension n");
  s.n = static_cast<std::size_t>(x.shape(0));
  product(product(product(s.n, s.c), s.h), s.w);
  product(product(s.n, product(s.out_h(), s.out_w())), product(product(s.c, s.kh), s.kw));
  return s;
}

// rows * cols values (any shape of them: [n, c*h*w] or [n, c, h, w], [n*P, oc] or [n, oc*P]).
void expect_size(const py::array& a, const char* name, std::size_t rows, std::size_t cols) {
  if (static_cast<std::size_t>(a.size()) == rows * cols) return;
  std::string got;
  for (py::ssize_t d = 0; d < a.ndim(); ++d)
    got += (d ? ", " : "") + std::to_string(a.shape(d));
  throw py::value_error(std::string(name) + " must have shape [" + std::to_string(rows) + ", " +
                        std::to_string(cols) + "], got [" + got + "]");
}

template <typename T>
T* mut(const py::array& a) {
  return static_cast<T*>(const_cast<void*>(a.data()));
}
template <typename T>
const T* in(const py::array& a) {
  return static_cast<const T*>(a.data());
}

// Runs body<float> or body<double> without the GIL.
template <typename F>
void dispatch(bool f64, F&& body) {
  py::gil_scoped_release release;
  if (f64)
    body(double{});
  else
    body(float{});
}

void py_im2col(const py::array& x, const py::array& col, std::int64_t c, std::int64_t h,
               std::int64_t w, std::int64_t kh, std::int64_t kw, std::int64_t sh,
               std::int64_t sw, std::int64_t ph, std::int64_t pw) {
  Arrays arrays;
  arrays.add(x, "x", false);
  arrays.add(col, "col", true);
  const ConvShape s = shape_of(x, "x", c, h, w, kh, kw, sh, sw, ph, pw, false);
  expect_size(x, "x", s.n, s.image());
  expect_size(col, "col", s.n * s.positions(), s.patch());
  dispatch(arrays.f64, [&](auto t) {
    using T = decltype(t);
    nn::im2col(in<T>(x), mut<T>(col), s);
  });
}

void py_col2im(const py::array& col, const py::array& x, std::int64_t c, std::int64_t h,
               std::int64_t w, std::int64_t kh, std::int64_t kw, std::int64_t sh,
               std::int64_t sw, std::int64_t ph, std::int64_t pw) {
  Arrays arrays;
  arrays.add(col, "col", false);
  arrays.add(x, "x", true);
  const ConvShape s = shape_of(x, "x", c, h, w, kh, kw, sh, sw, ph, pw, false);
  expect_size(x, "x", s.n, s.image());
  expect_size(col, "col", s.n * s.positions(), s.patch());
  dispatch(arrays.f64, [&](auto t) {
    using T = decltype(t);
    nn::col2im(in<T>(col), mut<T>(x), s);
  });
}

void py_channels(bool last, const py::array& src, const py::array& dst, std::int64_t n,
                 std::int64_t channels, std::int64_t positions) {
  Arrays arrays;
  arrays.add(src, "src", false);
  arrays.add(dst, "dst", true);
  const std::size_t nn_ = size_arg(n, "n", 0), c = size_arg(channels, "channels", 1),
                    p = size_arg(positions, "positions", 1);
  product(nn_, product(c, p));
  expect_size(src, "src", nn_, c * p);
  expect_size(dst, "dst", nn_, c * p);
  dispatch(arrays.f64, [&](auto t) {
    using T = decltype(t);
    if (last)
      nn::channels_last(in<T>(src), mut<T>(dst), nn_, c, p);
    else
      nn::channels_first(in<T>(src), mut<T>(dst), nn_, c, p);
  });
}

void py_max_pool(const py::array& x, const py::array& out, std::int64_t c, std::int64_t h,
                 std::int64_t w, std::int64_t kh, std::int64_t kw, std::int64_t sh,
                 std::int64_t sw, std::int64_t ph, std::int64_t pw) {
  Arrays arrays;
  arrays.add(x, "x", false);
  arrays.add(out, "out", true);
  const ConvShape s = shape_of(x, "x", c, h, w, kh, kw, sh, sw, ph, pw, true);
  expect_size(x, "x", s.n, s.image());
  expect_size(out, "out", s.n, s.c * s.positions());
  dispatch(arrays.f64, [&](auto t) {
    using T = decltype(t);
    nn::max_pool(in<T>(x), mut<T>(out), s);
  });
}

void py_max_pool_backward(const py::array& x, const py::array& out, const py::array& d_out,
                          const py::array& d_in, std::int64_t c, std::int64_t h, std::int64_t w,
                          std::int64_t kh, std::int64_t kw, std::int64_t sh, std::int64_t sw,
                          std::int64_t ph, std::int64_t pw) {
  Arrays arrays;
  arrays.add(x, "x", false);
  arrays.add(out, "out", false);
  arrays.add(d_out, "d_out", false);
  arrays.add(d_in, "d_in", true);
  const ConvShape s = shape_of(x, "x", c, h, w, kh, kw, sh, sw, ph, pw, true);
  expect_size(x, "x", s.n, s.image());
  expect_size(out, "out", s.n, s.c * s.positions());
  expect_size(d_out, "d_out", s.n, s.c * s.positions());
  expect_size(d_in, "d_in", s.n, s.image());
  dispatch(arrays.f64, [&](auto t) {
    using T = decltype(t);
    nn::max_pool_backward(in<T>(x), in<T>(out), in<T>(d_out), mut<T>(d_in), s);
  });
}

void py_avg_pool(const py::array& x, const py::array& out, std::int64_t c, std::int64_t h,
                 std::int64_t w, std::int64_t kh, std::int64_t kw, std::int64_t sh,
                 std::int64_t sw, std::int64_t ph, std::int64_t pw) {
  Arrays arrays;
  arrays.add(x, "x", false);
  arrays.add(out, "out", true);
  const ConvShape s = shape_of(x, "x", c, h, w, kh, kw, sh, sw, ph, pw, true);
  expect_size(x, "x", s.n, s.image());
  expect_size(out, "out", s.n, s.c * s.positions());
  dispatch(arrays.f64, [&](auto t) {
    using T = decltype(t);
    nn::avg_pool(in<T>(x), mut<T>(out), s);
  });
}

void py_avg_pool_backward(const py::array& d_out, const py::array& d_in, std::int64_t c,
                          std::int64_t h, std::int64_t w, std::int64_t kh, std::int64_t kw,
                          std::int64_t sh, std::int64_t sw, std::int64_t ph, std::int64_t pw) {
  Arrays arrays;
  arrays.add(d_out, "d_out", false);
  arrays.add(d_in, "d_in", true);
  const ConvShape s = shape_of(d_in, "d_in", c, h, w, kh, kw, sh, sw, ph, pw, true);
  expect_size(d_in, "d_in", s.n, s.image());
  expect_size(d_out, "d_out", s.n, s.c * s.positions());
  dispatch(arrays.f64, [&](auto t) {
    using T = decltype(t);
    nn::avg_pool_backward(in<T>(d_out), mut<T>(d_in), s);
  });
}

}  // namespace

void register_conv(py::module_& m) {
  using namespace py::literals;
  m.def("nn_im2col", &py_im2col, "x"_a, "col"_a, "c"_a, "h"_a, "w"_a, "kh"_a, "kw"_a, "sh"_a,
        "sw"_a, "ph"_a, "pw"_a,
        "col [n*P, K] = the receptive fields of x [n, c*h*w] (zeros for padding).");
  m.def("nn_col2im", &py_col2im, "col"_a, "x"_a, "c"_a, "h"_a, "w"_a, "kh"_a, "kw"_a, "sh"_a,
        "sw"_a, "ph"_a, "pw"_a,
        "x [n, c*h*w] overwritten with the sums of the col [n*P, K] entries of each pixel.");
  m.def(
      "nn_channels_last",
      [](const py::array& src, const py::array& dst, std::int64_t n, std::int64_t channels,
         std::int64_t positions) { py_channels(true, src, dst, n, channels, positions); },
      "src"_a, "dst"_a, "n"_a, "channels"_a, "positions"_a,
      "dst [n, positions, channels] = src [n, channels, positions] transposed per example.");
  m.def(
      "nn_channels_first",
      [](const py::array& src, const py::array& dst, std::int64_t n, std::int64_t channels,
         std::int64_t positions) { py_channels(false, src, dst, n, channels, positions); },
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

}  // namespace sparkbatch::bindings
