"""Type stubs of the native core (csrc/). Users call it through sparkbatch.data, sparkbatch.records
and sparkbatch.spark, which add names, checks and errors."""

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

ALIGNMENT: int

def crc32c(buffer: Any, value: int = 0) -> int: ...
def crc32c_hardware() -> bool: ...
def read_header(
    file: NDArray[np.uint8], name: str, dtypes: dict[str, np.dtype[Any]]
) -> tuple[dict[str, NDArray[Any]], dict[str, str], int]: ...
def read_file(
    path: str, name: str, max_bytes: int, crc: bool, dtypes: dict[str, np.dtype[Any]]
) -> tuple[dict[str, NDArray[Any]], dict[str, str], int | None] | None: ...
def write_file(fd: int, tensors: list[tuple[str, str, Any]], metadata: dict[str, str]) -> int: ...
def serialize(tensors: list[tuple[str, str, Any]], metadata: dict[str, str]) -> bytes: ...
def one_hot(indices: NDArray[np.integer[Any]], num_classes: int) -> NDArray[np.float32]: ...
def build_info() -> dict[str, Any]: ...
def parse_csv(
    buffer: Any,
    *,
    delimiter: str = ",",
    quote: str = '"',
    skip_lines: int = 0,
    columns: int = -1,
    class_columns: Mapping[int, int] = ...,
    categories: Mapping[int, Sequence[str]] = ...,
    string_columns: Sequence[int] = ...,
    on_error: str = "raise",
    threads: int = 0,
    quoted_newlines: bool = True,
) -> dict[str, Any]: ...

# The built-in network's kernels (bindings_nn.cpp): float32 or float64 arrays of one dtype,
# C-contiguous, outputs writeable; nothing is converted or copied.
def nn_bias_activation(
    z: NDArray[Any],
    bias: NDArray[Any] | None,
    out: NDArray[Any],
    activation: int,
    alpha: float = 0.0,
) -> None: ...
def nn_activation_backward(
    da: NDArray[Any],
    z: NDArray[Any] | None,
    a: NDArray[Any],
    dz: NDArray[Any],
    db: NDArray[Any] | None,
    activation: int,
    alpha: float = 0.0,
) -> None: ...
def nn_output_layer(
    loss: int,
    activation: int,
    alpha: float,
    z: NDArray[Any],
    bias: NDArray[Any] | None,
    labels: NDArray[Any],
    weights: NDArray[Any] | None,
    a: NDArray[Any],
    dz: NDArray[Any],
    db: NDArray[Any] | None,
    scale: float,
) -> float: ...
def nn_loss_sum(
    loss: int,
    activation: int,
    z: NDArray[Any],
    a: NDArray[Any],
    labels: NDArray[Any],
    weights: NDArray[Any] | None,
) -> float: ...
def nn_updater_step(
    updater: int,
    params: NDArray[Any],
    grads: NDArray[Any],
    state: NDArray[Any],
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    momentum: float = 0.0,
    decay: float = 0.95,
) -> None: ...
def nn_average(
    buffers: Sequence[NDArray[Any]], out: NDArray[Any], divisor: float | None = None
) -> None: ...
def nn_add_into(acc: NDArray[Any], x: NDArray[Any]) -> None: ...
def nn_axpy(y: NDArray[Any], x: NDArray[Any], alpha: float) -> None: ...
def bfloat16_encode(x: NDArray[Any], out: NDArray[Any]) -> None: ...
def bfloat16_add_encode(acc: NDArray[Any], x: NDArray[Any], out: NDArray[Any]) -> None: ...
def bfloat16_add_into(acc: NDArray[Any], x: NDArray[Any]) -> None: ...
def bfloat16_decode(x: NDArray[Any], out: NDArray[Any]) -> None: ...
def nn_dropout(x: NDArray[Any], rate: float, seed: int) -> None: ...
def first_non_finite(x: NDArray[Any]) -> int: ...

# The fitted normalizers' kernels (bindings_normalize.cpp): x float32 or float64, C-contiguous,
# [n, f], [n, f, t] (mask [n, t] of uint8, bool, float32 or float64) or [n, c, ...].
def normalize_moments(
    x: NDArray[Any], mask: NDArray[Any] | None = None
) -> tuple[
    int, NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]
]: ...
def normalize_affine(
    x: NDArray[Any],
    mask: NDArray[Any] | None,
    center: NDArray[np.float64],
    scale: NDArray[np.float64],
    offset: NDArray[np.float64],
    out: NDArray[Any],
) -> None: ...

# The convolutional layers' kernels (bindings_conv.cpp): arrays float32 or float64, C-contiguous,
# images as rows [n, c*h*w]; sizes are ints; see csrc/conv_kernels.hpp and docs/convolution.md.
def nn_im2col(
    x: NDArray[Any], col: NDArray[Any], c: int, h: int, w: int, kh: int, kw: int, sh: int,
    sw: int, ph: int, pw: int,
) -> None: ...
def nn_col2im(
    col: NDArray[Any], x: NDArray[Any], c: int, h: int, w: int, kh: int, kw: int, sh: int,
    sw: int, ph: int, pw: int,
) -> None: ...
def nn_channels_last(
    src: NDArray[Any], dst: NDArray[Any], n: int, channels: int, positions: int
) -> None: ...
def nn_channels_first(
    src: NDArray[Any], dst: NDArray[Any], n: int, channels: int, positions: int
) -> None: ...
def nn_max_pool(
    x: NDArray[Any], out: NDArray[Any], c: int, h: int, w: int, kh: int, kw: int, sh: int,
    sw: int, ph: int, pw: int,
) -> None: ...
def nn_max_pool_backward(
    x: NDArray[Any], out: NDArray[Any], d_out: NDArray[Any], d_in: NDArray[Any], c: int, h: int,
    w: int, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int,
) -> None: ...
def nn_avg_pool(
    x: NDArray[Any], out: NDArray[Any], c: int, h: int, w: int, kh: int, kw: int, sh: int,
    sw: int, ph: int, pw: int,
) -> None: ...
def nn_avg_pool_backward(
    d_out: NDArray[Any], d_in: NDArray[Any], c: int, h: int, w: int, kh: int, kw: int, sh: int,
    sw: int, ph: int, pw: int,
) -> None: ...

# bindings_records.cpp
def pack_float_records(records: list[Any], head: bytes) -> NDArray[np.uint8] | None: ...
