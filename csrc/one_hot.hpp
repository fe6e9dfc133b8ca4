// One-hot encoding of class indices, used when a minibatch file stores labels compactly and by
// the CSV-to-DataSet conversion.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

namespace sparkbatch {

// A class index outside [0, num_classes); `position` is its flat index in the input.
struct LabelRangeError : std::out_of_range {
  LabelRangeError(std::size_t position_, int64_t value_, int64_t num_classes_)
      : std::out_of_range("class index " + std::to_string(value_) + " at position " +
                          std::to_string(position_) + " is outside [0, " +
                          std::to_string(num_classes_) + ")"),
        position(position_), value(value_), num_classes(num_classes_) {}
  std::size_t position;
  int64_t value;
  int64_t num_classes;
};

// out[i, c, j] = (indices[i, j] == c) for indices shaped [n, steps] and out shaped
// [n, num_classes, steps] (steps == 1 gives the [n, num_classes] layout). `out` is written whole.
template <typename Index, typename Out>
void one_hot(const Index* indices, std::size_t n, std::size_t steps, int64_t num_classes, Out* out) {
  const auto classes = static_cast<std::size_t>(num_classes);
  for (std::size_t i = 0; i < n * classes * steps; ++i) out[i] = Out(0);
  for (std::size_t i = 0; i < n; ++i) {
    for (std::size_t j = 0; j < steps; ++j) {
      const std::size_t pos = i * steps + j;
      Index raw;  // memcpy: indices from a foreign file need not be aligned
      std::memcpy(&raw, indices + pos, sizeof raw);
      const auto v = static_cast<int64_t>(raw);
      if (v < 0 || v >= num_classes) throw LabelRangeError(pos, v, num_classes);
      out[(i * classes + static_cast<std::size_t>(v)) * steps + j] = Out(1);
    }
  }
}

}  // namespace sparkbatch
