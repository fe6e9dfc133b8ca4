"""Type stubs of the optional CUDA module (csrc/cuda/). Users reach it through
sparkbatch.nn.gpu, which imports it only when a GPU is asked for."""

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import DTypeLike, NDArray

def device_count() -> int: ...
def architectures() -> list[str]: ...
def runtime_version() -> int: ...
def driver_version() -> int: ...
def device_name(device: int) -> str: ...
def device_capability(device: int) -> tuple[int, int]: ...
def current_device() -> int: ...
def set_device(device: int) -> None: ...
def synchronize() -> None: ...
def load_cublas(candidates: Sequence[str] = ...) -> str: ...
def cublas_library() -> str | None: ...

class DeviceBuffer:
    def __init__(
        self, shape: int | Sequence[int], dtype: DTypeLike = "float32", device: int | None = None
    ) -> None: ...
    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def dtype(self) -> np.dtype[Any]: ...
    @property
    def size(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def ndim(self) -> int: ...
    @property
    def ptr(self) -> int: ...
    @property
    def device(self) -> int: ...
    def view(self, offset: int, shape: int | Sequence[int]) -> DeviceBuffer: ...
    def copy_from_host(self, array: Any) -> None: ...
    def to_host(self, out: NDArray[Any] | None = None) -> NDArray[Any]: ...
    def copy_from(self, other: DeviceBuffer) -> None: ...
    def zero(self) -> None: ...
    @property
    def __cuda_array_interface__(self) -> dict[str, Any]: ...
    def __dlpack__(
        self,
        stream: int | None = None,
        max_version: tuple[int, int] | None = None,
        dl_device: tuple[int, int] | None = None,
        copy: bool | None = None,
    ) -> Any: ...
    def __dlpack_device__(self) -> tuple[int, int]: ...

def to_device(array: Any, device: int | None = None) -> DeviceBuffer: ...
def nn_bias_activation(
    z: DeviceBuffer,
    bias: DeviceBuffer | None,
    out: DeviceBuffer,
    activation: int,
    alpha: float = 0.0,
) -> None: ...
def nn_activation_backward(
    da: DeviceBuffer,
    z: DeviceBuffer | None,
    a: DeviceBuffer,
    dz: DeviceBuffer,
    db: DeviceBuffer | None,
    activation: int,
    alpha: float = 0.0,
) -> None: ...
def nn_output_layer(
    loss: int,
    activation: int,
    alpha: float,
    z: DeviceBuffer,
    bias: DeviceBuffer | None,
    labels: DeviceBuffer,
    weights: DeviceBuffer | None,
    a: DeviceBuffer,
    dz: DeviceBuffer,
    db: DeviceBuffer | None,
    scale: float,
) -> float: ...
def nn_loss_sum(
    loss: int,
    activation: int,
    z: DeviceBuffer,
    a: DeviceBuffer,
    labels: DeviceBuffer,
    weights: DeviceBuffer | None,
) -> float: ...
def nn_updater_step(
    updater: int,
    params: DeviceBuffer,
    grads: DeviceBuffer,
    state: DeviceBuffer,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    momentum: float = 0.0,
    decay: float = 0.95,
) -> None: ...
def nn_average(
    buffers: Sequence[DeviceBuffer], out: DeviceBuffer, divisor: float | None = None
) -> None: ...
def nn_add_into(acc: DeviceBuffer, x: DeviceBuffer) -> None: ...
def nn_axpy(y: DeviceBuffer, x: DeviceBuffer, alpha: float) -> None: ...
def nn_dropout(x: DeviceBuffer, rate: float, seed: int) -> None: ...
def nn_sum_squares(x: DeviceBuffer) -> float: ...
def nn_count_non_finite(x: DeviceBuffer) -> int: ...
def matmul(
    a: DeviceBuffer,
    b: DeviceBuffer,
    out: DeviceBuffer,
    trans_a: bool = False,
    trans_b: bool = False,
    alpha: float = 1.0,
    beta: float = 0.0,
) -> None: ...
def copy_columns(src: DeviceBuffer, dst: DeviceBuffer, column: int) -> None:
    """dst[:, column:column + w] = src for src [rows, w] and dst [rows, W] (Merge's forward)."""

def take_columns(src: DeviceBuffer, column: int, dst: DeviceBuffer) -> None:
    """dst = src[:, column:column + w] for src [rows, W] and dst [rows, w] (Merge's gradient)."""

def nn_multiply(a: DeviceBuffer, b: DeviceBuffer, out: DeviceBuffer) -> None:
    """out = a * b element-wise; out may be a or b."""

def nn_maximum(a: DeviceBuffer, b: DeviceBuffer, out: DeviceBuffer) -> None:
    """out = max(a, b) element-wise, NaN where either is (numpy.maximum); out may be a or b."""

def nn_max_backward(
    dout: DeviceBuffer, x: DeviceBuffer, remaining: DeviceBuffer, dx: DeviceBuffer
) -> None:
    """Where x == remaining: dx = dout and remaining = NaN (ties: first input); else dx = 0."""

# -- the convolutional layers (as _native.nn_im2col and the rest, on DeviceBuffers) -------------

def nn_im2col(
    x: DeviceBuffer,
    col: DeviceBuffer,
    c: int,
    h: int,
    w: int,
    kh: int,
    kw: int,
    sh: int,
    sw: int,
    ph: int,
    pw: int,
) -> None:
    """col [n*P, K] = the receptive fields of x [n, c*h*w] (zeros for padding)."""

def nn_col2im(
    col: DeviceBuffer,
    x: DeviceBuffer,
    c: int,
    h: int,
    w: int,
    kh: int,
    kw: int,
    sh: int,
    sw: int,
    ph: int,
    pw: int,
) -> None:
    """x [n, c*h*w] overwritten with the sums of the col [n*P, K] entries of each pixel."""

def nn_channels_last(
    src: DeviceBuffer, dst: DeviceBuffer, n: int, channels: int, positions: int
) -> None:
    """dst [n, positions, channels] = src [n, channels, positions] transposed per example."""

def nn_channels_first(
    src: DeviceBuffer, dst: DeviceBuffer, n: int, channels: int, positions: int
) -> None:
    """dst [n, channels, positions] = src [n, positions, channels] transposed per example."""

def nn_max_pool(
    x: DeviceBuffer,
    out: DeviceBuffer,
    c: int,
    h: int,
    w: int,
    kh: int,
    kw: int,
    sh: int,
    sw: int,
    ph: int,
    pw: int,
) -> None:
    """out [n, c*P] = the max of each window's in-image values (NaN propagates)."""

def nn_max_pool_backward(
    x: DeviceBuffer,
    out: DeviceBuffer,
    d_out: DeviceBuffer,
    d_in: DeviceBuffer,
    c: int,
    h: int,
    w: int,
    kh: int,
    kw: int,
    sh: int,
    sw: int,
    ph: int,
    pw: int,
) -> None:
    """d_in overwritten: each window's d_out to its first position holding the max."""

def nn_avg_pool(
    x: DeviceBuffer,
    out: DeviceBuffer,
    c: int,
    h: int,
    w: int,
    kh: int,
    kw: int,
    sh: int,
    sw: int,
    ph: int,
    pw: int,
) -> None:
    """out [n, c*P] = the mean of each window's in-image values (padding not counted)."""

def nn_avg_pool_backward(
    d_out: DeviceBuffer,
    d_in: DeviceBuffer,
    c: int,
    h: int,
    w: int,
    kh: int,
    kw: int,
    sh: int,
    sw: int,
    ph: int,
    pw: int,
) -> None:
    """d_in overwritten: each window's d_out / count spread over its in-image positions."""
