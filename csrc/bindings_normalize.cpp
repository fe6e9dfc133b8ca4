// Bindings of the fitted normalizers' kernels (normalize.hpp): _native.normalize_moments and
// _native.normalize_affine. Arrays are float32 or float64, C-contiguous, [n, f], [n, f, t] (with
// an optional [n, t] mask of uint8, bool, float32 or float64) or [n, c, ...]; nothing is converted
// or copied, so an array of the wrong dtype, layout or shape is refused with a clear error. The GIL
// is released while a kernel runs.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>

#include "bindings.hpp"
#include "normalize.hpp"

namespace sparkbatch::bindings {
namespace {

using normalize::Layout;

enum class Elem { f32, f64, u8 };

std::string dtype_name(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

Elem elem_of(const py::array& a, const char* name, bool mask) {
  const py::dtype dt = a.dtype();
  const char order = dt.byteorder();
  const bool native = order == '=' || order == '<' || order == '|';
  if (native && dt.kind() == 'f' && dt.itemsize() == 4) return Elem::f32;
  if (native && dt.kind() == 'f' && dt.itemsize() == 8) return Elem::f64;
  if (mask && (dt.kind() == 'u' || dt.kind() == 'b') && dt.itemsize() == 1) return Elem::u8;
  throw py::type_error(std::string(name) + " must be " +
                       (mask ? "uint8, bool, float32 or float64" : "float32 or float64") +
                       ", got " + dtype_name(a));
}

void expect_contiguous(const py::array& a, const char* name) {
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + " must be C-contiguous");
}

std::string shape_of(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

// The [outer, cols, inner] view of x; checks x and its mask.
Layout layout_of(const py::array& x, const std::optional<py::array>& mask) {
  elem_of(x, "x", false);
  expect_contiguous(x, "x");
  if (x.ndim() < 2)
    throw py::value_error("x must have at least 2 dimensions [n, f, ...], got shape " +
                          shape_of(x));
  Layout l{static_cast<std::size_t>(x.shape(0)), static_cast<std::size_t>(x.shape(1)), 1};
  for (py::ssize_t i = 2; i < x.ndim(); ++i) l.inner *= static_cast<std::size_t>(x.shape(i));
  if (mask) {
    elem_of(*mask, "mask", true);
    expect_contiguous(*mask, "mask");
    if (x.ndim() != 3)
      throw py::value_error("a mask applies only to sequences [n, f, t], but x has shape " +
                            shape_of(x));
    if (mask->ndim() != 2 || mask->shape(0) != x.shape(0) || mask->shape(1) != x.shape(2))
      throw py::value_error("mask must have shape [" + std::to_string(x.shape(0)) + ", " +
                            std::to_string(x.shape(2)) + "] for x of shape " + shape_of(x) +
                            ", got " + shape_of(*mask));
  }
  return l;
}

const double* column_vector(const py::array& v, const char* name, std::size_t cols) {
  if (elem_of(v, name, false) != Elem::f64)
    throw py::type_error(std::string(name) + " must be float64, got " + dtype_name(v));
  expect_contiguous(v, name);
  if (v.ndim() != 1 || static_cast<std::size_t>(v.shape(0)) != cols)
    throw py::value_error(std::string(name) + " must have shape [" + std::to_string(cols) +
                          "] (one value per column), got " + shape_of(v));
  return static_cast<const double*>(v.data());
}

// Calls fn(T*, M*) with x's element type and the mask's (a null pointer of uint8_t without one).
template <typename Fn>
void dispatch(const py::array& x, const std::optional<py::array>& mask, Fn&& fn) {
  const auto with_x = [&](auto* m) {
    if (elem_of(x, "x", false) == Elem::f32)
      fn(static_cast<const float*>(x.data()), m);
    else
      fn(static_cast<const double*>(x.data()), m);
  };
  if (!mask) return with_x(static_cast<const std::uint8_t*>(nullptr));
  switch (elem_of(*mask, "mask", true)) {
    case Elem::u8: return with_x(static_cast<const std::uint8_t*>(mask->data()));
    case Elem::f32: return with_x(static_cast<const float*>(mask->data()));
    case Elem::f64: return with_x(static_cast<const double*>(mask->data()));
  }
}

py::tuple py_moments(const py::array& x, const std::optional<py::array>& mask) {
  const Layout l = layout_of(x, mask);
  const auto cols = static_cast<py::ssize_t>(l.cols);
  py::array_t<double> mean(cols), m2(cols), lo(cols), hi(cols);
  double* out[4] = {mean.mutable_data(), m2.mutable_data(), lo.mutable_data(), hi.mutable_data()};
  std::uint64_t count = 0;
  dispatch(x, mask, [&](const auto* data, const auto* steps) {
    py::gil_scoped_release release;
    count = normalize::column_moments(data, steps, l, out[0], out[1], out[2], out[3]);
  });
  return py::make_tuple(count, mean, m2, lo, hi);
}

void py_affine(const py::array& x, const std::optional<py::array>& mask, const py::array& center,
               const py::array& scale, const py::array& offset, const py::array& out) {
  const Layout l = layout_of(x, mask);
  const double* a = column_vector(center, "center", l.cols);
  const double* s = column_vector(scale, "scale", l.cols);
  const double* b = column_vector(offset, "offset", l.cols);
  if (elem_of(out, "out", false) != elem_of(x, "x", false))
    throw py::type_error("out must have x's dtype " + dtype_name(x) + ", got " + dtype_name(out));
  expect_contiguous(out, "out");
  if (!out.writeable()) throw py::value_error("out must be writeable");
  bool same_shape = out.ndim() == x.ndim();
  for (py::ssize_t i = 0; same_shape && i < x.ndim(); ++i)
    same_shape = out.shape(i) == x.shape(i);
  if (!same_shape)
    throw py::value_error("out must have x's shape " + shape_of(x) + ", got " + shape_of(out));
  const auto* x0 = static_cast<const char*>(x.data());
  const auto* o0 = static_cast<const char*>(out.data());
  if (x0 != o0 && x.nbytes() > 0 && x0 < o0 + out.nbytes() && o0 < x0 + x.nbytes())
    throw py::value_error("out must be x itself (in place) or not share memory with it");
  if (mask) {
    const auto* m0 = static_cast<const char*>(mask->data());
    if (mask->nbytes() > 0 && out.nbytes() > 0 && m0 < o0 + out.nbytes() &&
        o0 < m0 + mask->nbytes())
      throw py::value_error("out must not share memory with mask");
  }
  dispatch(x, mask, [&](const auto* data, const auto* steps) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(data)>>;
    T* dst = static_cast<T*>(const_cast<void*>(out.data()));
    py::gil_scoped_release release;
    normalize::affine(data, steps, l, a, s, b, dst);
  });
}

}  // namespace

void register_normalize(py::module_& m) {
  using namespace pybind11::literals;
  m.def("normalize_moments", &py_moments, "x"_a, "mask"_a = py::none(),
        "Per column of x ([n, f], [n, f, t] with an optional [n, t] mask, [n, c, ...]): "
        "(count, mean, M2, min, max), count an int (values per column), the rest float64 "
        "arrays. One pass over x; float64 accumulation.");
  m.def("normalize_affine", &py_affine, "x"_a, "mask"_a, "center"_a, "scale"_a, "offset"_a,
        "out"_a,
        "out = (x - center[c]) * scale[c] + offset[c] per column c (float64 arithmetic, one "
        "rounding); masked steps become 0. out may be x (in place).");
}

}  // namespace sparkbatch::bindings
