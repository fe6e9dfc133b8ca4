// The integer codes of activations, losses and updaters as the Python bindings receive them,
// checked once for the CPU and CUDA modules alike. An unknown code is std::invalid_argument,
// which pybind11 raises as ValueError.
#pragma once

#include <stdexcept>
#include <string>

#include "nn_math.hpp"

namespace sparkbatch::nn {

inline Activation activation_of(int code) {
  if (code < 0 || code > static_cast<int>(Activation::softmax))
    throw std::invalid_argument("unknown activation code " + std::to_string(code));
  return static_cast<Activation>(code);
}

inline Loss loss_of(int code) {
  if (code < 0 || code > static_cast<int>(Loss::mae))
    throw std::invalid_argument("unknown loss code " + std::to_string(code));
  return static_cast<Loss>(code);
}

inline Updater updater_of(int code) {
  if (code < 0 || code > static_cast<int>(Updater::rmsprop))
    throw std::invalid_argument("unknown updater code " + std::to_string(code));
  return static_cast<Updater>(code);
}

}  // namespace sparkbatch::nn
