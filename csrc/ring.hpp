// The two passes of the ring all-reduce (python/sparkbatch/train/ring.py) over a task's two TCP
// connections, in one thread without the GIL: each pass receives piece after piece from the
// previous task, sums or places it, and passes pieces on to the next task whenever its socket
// takes them, so that receiving, summing and sending overlap (a pipeline around the ring).
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <stdexcept>
#include <utility>
#include <vector>

namespace sparkbatch::ring {

// A neighbour's connection failed or closed mid-pass; Python sees a ConnectionError.
struct ConnectionLost : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class Dtype { f32, f64 };
// What a float32 value travels as: itself, or rounded (to nearest, ties to even) to bfloat16 or
// IEEE float16, summed in float32 on arrival. Other dtypes always travel as themselves.
enum class Wire { same, bfloat16, float16 };

// float16 bits of x, to nearest, ties to even (overflow to infinity, a NaN stays a NaN).
uint16_t to_float16(float x);
// The float32 value of float16 bits (exact).
float from_float16(uint16_t h);

// One task's place in a ring of `size` tasks: `send_fd` connects to task rank + 1, `recv_fd`
// from task rank - 1. The sockets belong to the caller and stay open across passes; a pass
// leaves them as it found them (or throws ConnectionLost when one broke).
class Passes {
 public:
  Passes(int send_fd, int recv_fd, int rank, int size, std::size_t piece_bytes, Wire wire);

  // Reduce-scatter over flat (bounds: the size + 1 chunk boundaries, in values): afterwards
  // chunk rank + 1 holds the sum over the ring, in float32 (what arrived was rounded as the wire
  // carries it). Returns the bytes this task sent.
  std::uint64_t reduce_scatter(void* flat, Dtype dtype, const std::int64_t* bounds);
  // All-gather: every task's summed chunk copied into the others' flat; when the wire is not
  // `same`, each chunk is rounded as the wire carries it, on its owner too, so that every task
  // ends with the same bits. Bytes sent.
  std::uint64_t all_gather(void* flat, Dtype dtype, const std::int64_t* bounds);

 private:
  // A pass's buffer and its chunks: where each begins and ends, how its values travel.
  struct Layout {
    std::uint8_t* base;
    const std::int64_t* bounds;
    int size;
    std::size_t item;     // bytes per value in the buffer
    std::size_t wsize;    // bytes per value on the wire
    std::size_t step;     // values per piece
    bool encoded;         // float32 rounded for the wire
    // Chunk c (taken mod size) as [first, last) values.
    std::pair<std::size_t, std::size_t> chunk(int c) const {
      c = ((c % size) + size) % size;
      return {static_cast<std::size_t>(bounds[c]), static_cast<std::size_t>(bounds[c + 1])};
    }
  };

  struct Outgoing {
    const std::uint8_t* data;
    std::size_t bytes;
  };

  // Queue bytes for the next task; they must stay put until flush() or the pass returns.
  void queue(const void* data, std::size_t bytes);
  // Receive exactly `bytes` from the previous task into dst, sending what is queued meanwhile.
  void receive(void* dst, std::size_t bytes);
  // Send everything queued.
  void flush();
  // Send what the socket takes now; false when nothing more can go without waiting.
  bool send_some();
  // Wait until the previous task's socket has data (if want_recv) or the next one takes some.
  void wait(bool want_recv);
  std::size_t piece_values(Dtype dtype) const;
  std::size_t wire_size(Dtype dtype) const;
  bool encodes(Dtype dtype) const { return dtype == Dtype::f32 && wire_ != Wire::same; }
  std::uint8_t* workspace(std::size_t bytes);
  Layout layout(void* flat, Dtype dtype, const std::int64_t* bounds) const;

  int send_fd_;
  int recv_fd_;
  int rank_;
  int size_;
  std::size_t piece_bytes_;
  Wire wire_;
  std::deque<Outgoing> outgoing_;
  std::uint64_t sent_ = 0;
  std::vector<std::uint8_t> workspace_;  // kept between passes: the encoded pieces, a staging piece
};

}  // namespace sparkbatch::ring
