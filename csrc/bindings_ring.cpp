// Bindings of the ring all-reduce's passes: _native.RingPasses and the float16 conversions of the
// ring's float16 transport. The sockets stay Python's (their file descriptors are borrowed); a
// pass releases the GIL for its whole run, and a broken connection raises ConnectionError.
#include <pybind11/numpy.h>

#include <cstdint>
#include <string>

#include "bindings.hpp"
#include "ring.hpp"

namespace sparkbatch::bindings {
namespace {

ring::Dtype dtype_of(const py::array& flat) {
  const py::dtype dt = flat.dtype();
  const char order = dt.byteorder();
  if (dt.kind() == 'f' && (order == '=' || order == '<')) {
    if (dt.itemsize() == 4) return ring::Dtype::f32;
    if (dt.itemsize() == 8) return ring::Dtype::f64;
  }
  throw py::type_error("the ring sums float32 or float64 buffers, got " +
                       py::str(dt).cast<std::string>());
}

ring::Wire wire_of(const py::object& transport) {
  if (transport.is_none()) return ring::Wire::same;
  const auto name = transport.cast<std::string>();
  if (name == "bfloat16") return ring::Wire::bfloat16;
  if (name == "float16") return ring::Wire::float16;
  throw py::value_error("transport must be None, 'bfloat16' or 'float16', got '" + name + "'");
}

// The checks every pass makes before it lets go of the GIL: a writable contiguous buffer and
// size + 1 chunk boundaries that rise from 0 to at most its length.
void check_pass(const py::array& flat, const py::array_t<std::int64_t>& bounds, int size) {
  if (!(flat.flags() & py::array::c_style) || !flat.writeable())
    throw py::value_error("a ring pass needs a writable C-contiguous buffer");
  if (!(bounds.flags() & py::array::c_style) || bounds.ndim() != 1 || bounds.size() != size + 1)
    throw py::value_error("bounds must hold " + std::to_string(size + 1) + " chunk boundaries");
  const std::int64_t* b = bounds.data();
  if (b[0] < 0 || b[size] > flat.size())
    throw py::value_error("bounds reach past the buffer's " + std::to_string(flat.size()) +
                          " values");
  for (int c = 0; c < size; ++c)
    if (b[c + 1] < b[c]) throw py::value_error("bounds must not decrease");
}

using PassFn = std::uint64_t (ring::Passes::*)(void*, ring::Dtype, const std::int64_t*);

std::uint64_t run_pass(ring::Passes& passes, int size, PassFn fn, const py::array& flat,
                       const py::array_t<std::int64_t>& bounds) {
  check_pass(flat, bounds, size);
  const ring::Dtype dtype = dtype_of(flat);
  void* data = const_cast<void*>(flat.data());
  const std::int64_t* b = bounds.data();
  py::gil_scoped_release release;
  return (passes.*fn)(data, dtype, b);
}

template <typename From, typename To, typename Convert>
void convert(const py::array& x, const py::array& out, const char* from_name,
             const char* to_name, Convert each) {
  if (!x.dtype().is(py::dtype::of<From>()) || !out.dtype().is(py::dtype::of<To>()))
    throw py::type_error(std::string("x must be ") + from_name + " and out " + to_name);
  if (!(x.flags() & py::array::c_style) || !(out.flags() & py::array::c_style) ||
      !out.writeable() || x.size() != out.size())
    throw py::value_error("x and out must be C-contiguous, of one size, out writable");
  const auto* src = static_cast<const From*>(x.data());
  auto* dst = static_cast<To*>(const_cast<void*>(out.data()));
  const auto n = static_cast<std::size_t>(x.size());
  py::gil_scoped_release release;
  for (std::size_t k = 0; k < n; ++k) dst[k] = each(src[k]);
}

}  // namespace

void register_ring(py::module_& m) {
  using namespace pybind11::literals;
  py::class_<ring::Passes>(m, "RingPasses",
                           "One task's passes of the ring all-reduce over its two connections.")
      .def(py::init([](int send_fd, int recv_fd, int rank, int size, std::size_t piece_bytes,
                       const py::object& transport) {
             return new ring::Passes(send_fd, recv_fd, rank, size, piece_bytes,
                                     wire_of(transport));
           }),
           "send_fd"_a, "recv_fd"_a, "rank"_a, "size"_a, "piece_bytes"_a,
           "transport"_a = py::none())
      .def(
          "reduce_scatter",
          [](ring::Passes& self, const py::array& flat, const py::array_t<std::int64_t>& bounds,
             int size) {
            return run_pass(self, size, &ring::Passes::reduce_scatter, flat, bounds);
          },
          "flat"_a, "bounds"_a, "size"_a,
          "Sum chunk rank + 1 of flat over the ring, in place; the bytes sent.")
      .def(
          "all_gather",
          [](ring::Passes& self, const py::array& flat, const py::array_t<std::int64_t>& bounds,
             int size) { return run_pass(self, size, &ring::Passes::all_gather, flat, bounds); },
          "flat"_a, "bounds"_a, "size"_a,
          "Copy every task's summed chunk into flat; the bytes sent.");
  m.def(
      "float16_encode",
      [](const py::array& x, const py::array& out) {
        convert<float, std::uint16_t>(x, out, "float32", "uint16",
                                      [](float v) { return ring::to_float16(v); });
      },
      "x"_a, "out"_a, "out (uint16) = float32 x as float16 bits, to nearest, ties to even.");
  m.def(
      "float16_decode",
      [](const py::array& x, const py::array& out) {
        convert<std::uint16_t, float>(x, out, "uint16", "float32",
                                      [](std::uint16_t h) { return ring::from_float16(h); });
      },
      "x"_a, "out"_a, "out (float32) = float16 bits x widened (exact).");
}

}  // namespace sparkbatch::bindings
