#include "ring.hpp"

#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

#include "nn_kernels.hpp"

namespace sparkbatch::ring {

namespace {

std::string describe(int error) { return std::strerror(error); }

std::size_t align64(std::size_t bytes) { return (bytes + 63) & ~std::size_t{63}; }

void encode(Wire wire, const float* x, std::uint8_t* out, std::size_t count) {
  auto* bits = reinterpret_cast<std::uint16_t*>(out);
  if (wire == Wire::bfloat16) {
    nn::bfloat16_encode(x, bits, count);
  } else {
    for (std::size_t k = 0; k < count; ++k) bits[k] = to_float16(x[k]);
  }
}

void decode(Wire wire, const std::uint8_t* in, float* out, std::size_t count) {
  const auto* bits = reinterpret_cast<const std::uint16_t*>(in);
  if (wire == Wire::bfloat16) {
    nn::bfloat16_decode(bits, out, count);
  } else {
    for (std::size_t k = 0; k < count; ++k) out[k] = from_float16(bits[k]);
  }
}

// acc (count values of dtype) += what arrived (count values as the wire carries them).
void add_arrived(Dtype dtype, bool encoded, Wire wire, std::uint8_t* acc, const std::uint8_t* in,
                 std::size_t count) {
  if (dtype == Dtype::f64) {
    nn::add_into(reinterpret_cast<double*>(acc), reinterpret_cast<const double*>(in), count);
  } else if (!encoded) {
    nn::add_into(reinterpret_cast<float*>(acc), reinterpret_cast<const float*>(in), count);
  } else if (wire == Wire::bfloat16) {
    nn::bfloat16_add_into(reinterpret_cast<float*>(acc),
                          reinterpret_cast<const std::uint16_t*>(in), count);
  } else {
    auto* out = reinterpret_cast<float*>(acc);
    const auto* bits = reinterpret_cast<const std::uint16_t*>(in);
    for (std::size_t k = 0; k < count; ++k) out[k] += from_float16(bits[k]);
  }
}

}  // namespace

uint16_t to_float16(float x) {
  std::uint32_t f;
  std::memcpy(&f, &x, sizeof f);
  const auto sign = static_cast<std::uint16_t>((f >> 16) & 0x8000u);
  const std::uint32_t exponent = (f >> 23) & 0xffu;
  const std::uint32_t mantissa = f & 0x7fffffu;
  if (exponent == 0xffu) {  // infinity, or a NaN kept quiet with its top payload bits
    if (mantissa == 0) return static_cast<std::uint16_t>(sign | 0x7c00u);
    return static_cast<std::uint16_t>(sign | 0x7e00u | (mantissa >> 13));
  }
  if (exponent >= 143) return static_cast<std::uint16_t>(sign | 0x7c00u);  // |x| >= 2^16
  if (exponent >= 113) {  // a normal float16 (rounding may carry into the exponent, up to inf)
    auto h = static_cast<std::uint32_t>(((exponent - 112) << 10) | (mantissa >> 13));
    const std::uint32_t rest = mantissa & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
    return static_cast<std::uint16_t>(sign | h);
  }
  if (exponent < 102) return sign;  // below half the smallest subnormal: rounds to zero
  // A subnormal float16: m * 2^-24, m = the 24-bit significand shifted right, ties to even
  // (m may round up to 1024, the smallest normal, which the same bits encode).
  const std::uint32_t significand = mantissa | 0x800000u;
  const std::uint32_t shift = 126 - exponent;  // 14 to 24
  std::uint32_t m = significand >> shift;
  const std::uint32_t rest = significand & ((1u << shift) - 1u);
  const std::uint32_t half = 1u << (shift - 1);
  if (rest > half || (rest == half && (m & 1u))) ++m;
  return static_cast<std::uint16_t>(sign | m);
}

float from_float16(uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1fu;
  const std::uint32_t mantissa = h & 0x3ffu;
  std::uint32_t f;
  if (exponent == 0) {  // zero or subnormal: exact as m * 2^-24
    const float value = static_cast<float>(mantissa) * 5.9604644775390625e-08f;
    std::memcpy(&f, &value, sizeof f);
    f |= sign;
  } else if (exponent == 31) {
    f = sign | 0x7f800000u | (mantissa << 13);
  } else {
    f = sign | ((exponent + 112) << 23) | (mantissa << 13);
  }
  float out;
  std::memcpy(&out, &f, sizeof out);
  return out;
}

Passes::Passes(int send_fd, int recv_fd, int rank, int size, std::size_t piece_bytes, Wire wire)
    : send_fd_(send_fd),
      recv_fd_(recv_fd),
      rank_(rank),
      size_(size),
      piece_bytes_(std::max<std::size_t>(piece_bytes, 64)),
      wire_(wire) {
  if (size < 2 || rank < 0 || rank >= size)
    throw std::invalid_argument("a ring's passes need 2 or more tasks and a rank among them, got "
                                "rank " + std::to_string(rank) + " of " + std::to_string(size));
}

std::size_t Passes::piece_values(Dtype dtype) const {
  return std::max<std::size_t>(1, piece_bytes_ / (dtype == Dtype::f64 ? 8 : 4));
}

std::size_t Passes::wire_size(Dtype dtype) const {
  if (dtype == Dtype::f64) return 8;
  return wire_ == Wire::same ? 4 : 2;
}

std::uint8_t* Passes::workspace(std::size_t bytes) {
  if (workspace_.size() < bytes) workspace_.resize(bytes);
  return workspace_.data();
}

void Passes::queue(const void* data, std::size_t bytes) {
  if (bytes > 0) outgoing_.push_back({static_cast<const std::uint8_t*>(data), bytes});
}

bool Passes::send_some() {
  while (!outgoing_.empty()) {
    Outgoing& front = outgoing_.front();
    const ssize_t n = ::send(send_fd_, front.data, front.bytes, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return false;
      throw ConnectionLost("sending to the next task of the ring failed: " + describe(errno));
    }
    sent_ += static_cast<std::uint64_t>(n);
    front.data += n;
    front.bytes -= static_cast<std::size_t>(n);
    if (front.bytes == 0) outgoing_.pop_front();
  }
  return true;
}

void Passes::receive(void* dst, std::size_t bytes) {
  auto* at = static_cast<std::uint8_t*>(dst);
  while (bytes > 0) {
    send_some();
    const ssize_t n = ::recv(recv_fd_, at, bytes, MSG_DONTWAIT);
    if (n > 0) {
      at += n;
      bytes -= static_cast<std::size_t>(n);
      continue;
    }
    if (n == 0) throw ConnectionLost("the previous task of the ring closed its connection");
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK)
      throw ConnectionLost("receiving from the previous task of the ring failed: " +
                           describe(errno));
    wait(true);
  }
}

void Passes::flush() {
  while (!send_some()) wait(false);
}

void Passes::wait(bool want_recv) {
  pollfd fds[2];
  nfds_t count = 0;
  if (want_recv) fds[count++] = {recv_fd_, POLLIN, 0};
  if (!outgoing_.empty()) fds[count++] = {send_fd_, POLLOUT, 0};
  if (count == 0) return;
  while (::poll(fds, count, -1) < 0) {
    if (errno != EINTR)
      throw ConnectionLost("waiting on the ring's connections failed: " + describe(errno));
  }
  for (nfds_t k = 0; k < count; ++k)
    if (fds[k].revents & POLLNVAL)
      throw ConnectionLost("a connection of the ring was closed during an all-reduce");
  // POLLERR / POLLHUP: the next send or recv reports what happened.
}

Passes::Layout Passes::layout(void* flat, Dtype dtype, const std::int64_t* bounds) const {
  return Layout{static_cast<std::uint8_t*>(flat), bounds, size_, dtype == Dtype::f64 ? 8u : 4u,
                wire_size(dtype), piece_values(dtype), encodes(dtype)};
}

std::uint64_t Passes::reduce_scatter(void* flat, Dtype dtype, const std::int64_t* bounds) {
  sent_ = 0;
  outgoing_.clear();
  const Layout l = layout(flat, dtype, bounds);
  const int n = size_;
  const std::size_t item = l.item, wsize = l.wsize, step = l.step;
  const bool encoded = l.encoded;
  std::uint8_t* const base = l.base;
  auto chunk = [&](int c) { return l.chunk(c); };
  auto values = [&](int c) { return chunk(c).second - chunk(c).first; };
  // The workspace: one staging piece for what arrives, then (when encoding) every piece this
  // task sends, in order: its own chunk, then each summed chunk it passes on.
  std::size_t encoded_bytes = 0;
  if (encoded) {
    std::size_t sending = values(rank_);
    for (int s = 0; s < n - 2; ++s) sending += values(rank_ - s - 1);
    encoded_bytes = sending * wsize;
  }
  std::uint8_t* staging = workspace(align64(step * wsize) + encoded_bytes);
  std::uint8_t* out = staging + align64(step * wsize);
  auto pass_on = [&](std::size_t lo, std::size_t hi) {
    if (!encoded) {
      queue(base + lo * item, (hi - lo) * item);
    } else {
      encode(wire_, reinterpret_cast<const float*>(base) + lo, out, hi - lo);
      queue(out, (hi - lo) * wsize);
      out += (hi - lo) * wsize;
    }
    send_some();
  };
  {  // step 0: this task's own chunk
    const auto [lo, hi] = chunk(rank_);
    for (std::size_t a = lo; a < hi; a += step) pass_on(a, std::min(hi, a + step));
  }
  for (int s = 0; s < n - 1; ++s) {  // step s: chunk rank - s - 1 arrives, is summed, moves on
    const auto [lo, hi] = chunk(rank_ - s - 1);
    for (std::size_t a = lo; a < hi; a += step) {
      const std::size_t b = std::min(hi, a + step);
      receive(staging, (b - a) * wsize);
      if (s < n - 2 && encoded && wire_ == Wire::bfloat16) {  // sum and round for the wire at once
        nn::bfloat16_add_encode(reinterpret_cast<float*>(base) + a,
                                reinterpret_cast<const std::uint16_t*>(staging),
                                reinterpret_cast<std::uint16_t*>(out), b - a);
        queue(out, (b - a) * wsize);
        out += (b - a) * wsize;
        send_some();
        continue;
      }
      add_arrived(dtype, encoded, wire_, base + a * item, staging, b - a);
      if (s < n - 2) pass_on(a, b);
    }
  }
  flush();
  // When encoding, the chunk summed here stays float32 until all_gather rounds it as it sends
  // it: in a grid the columns' all-reduce sums it on first, and rounding it here as well cost
  // a third of the encoding.
  return sent_;
}

std::uint64_t Passes::all_gather(void* flat, Dtype dtype, const std::int64_t* bounds) {
  sent_ = 0;
  outgoing_.clear();
  const Layout l = layout(flat, dtype, bounds);
  const int n = size_;
  const std::size_t item = l.item, wsize = l.wsize, step = l.step;
  const bool encoded = l.encoded;
  std::uint8_t* const base = l.base;
  auto chunk = [&](int c) { return l.chunk(c); };
  // When encoding, the workspace holds every chunk as the wire carries it: the one summed here
  // (sent), then each arriving one (widened into place, and passed on from there).
  const std::size_t total = static_cast<std::size_t>(bounds[n] - bounds[0]);
  std::uint8_t* out = encoded ? workspace(total * wsize) : nullptr;
  {  // step 0: the chunk summed here
    const auto [lo, hi] = chunk(rank_ + 1);
    for (std::size_t a = lo; a < hi; a += step) {
      const std::size_t b = std::min(hi, a + step);
      if (!encoded) {
        queue(base + a * item, (b - a) * item);
      } else {  // rounded for the wire, and kept as sent: every task ends with the same bits
        auto* values_here = reinterpret_cast<float*>(base) + a;
        encode(wire_, values_here, out, b - a);
        decode(wire_, out, values_here, b - a);
        queue(out, (b - a) * wsize);
        out += (b - a) * wsize;
      }
      send_some();
    }
  }
  for (int s = 0; s < n - 1; ++s) {  // step s: chunk rank - s arrives, into place, moves on
    const auto [lo, hi] = chunk(rank_ - s);
    for (std::size_t a = lo; a < hi; a += step) {
      const std::size_t b = std::min(hi, a + step);
      std::uint8_t* arrived = encoded ? out : base + a * item;
      receive(arrived, (b - a) * wsize);
      if (encoded) {
        decode(wire_, arrived, reinterpret_cast<float*>(base) + a, b - a);
        out += (b - a) * wsize;
      }
      if (s < n - 2) queue(arrived, (b - a) * wsize);
    }
  }
  flush();
  return sent_;
}

}  // namespace sparkbatch::ring
