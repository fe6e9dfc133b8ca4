"""The built-in models on a GPU: :class:`CudaBackend`, and whether a GPU can be used here.

:class:`CudaBackend` implements the :class:`~sparkbatch.nn.backend.Backend` primitives with
cuBLAS for the matrix products and the CUDA twins of the ``_native.nn_*`` kernels for the rest,
so a model's step (written once, in :mod:`sparkbatch.nn.engine`) runs on the GPU operation for
operation as on the CPU, and the two devices differ only by rounding. Each step copies the
minibatch in and the score out; the parameters cross only when asked (``params()``,
``set_params``), e.g. at an averaging round.

The CUDA module ``sparkbatch._cuda`` is optional and imported on first use, never by
``import sparkbatch``. :func:`cuda_available` tells whether a GPU can be used here, and
:func:`cuda_module` raises :class:`CudaUnavailableError` saying why not.

Examples
--------
>>> from sparkbatch.nn.gpu import cuda_available, parse_device
>>> isinstance(cuda_available(), bool)
True
>>> parse_device("cpu"), parse_device("cuda"), parse_device("cuda:1")
(None, 0, 1)
"""

from __future__ import annotations

import functools
import importlib
import math
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np

from ..errors import CudaUnavailableError  # defined there with every error; importable here too
from .backend import Backend

__all__ = [
    "CudaBackend",
    "CudaUnavailableError",
    "cublas_candidates",
    "cuda_available",
    "cuda_module",
    "load_cublas",
    "parse_device",
]

_ALIGN_BYTES = 256  # work-buffer views start at multiples of this (cuBLAS and vector loads)

#: Where the pip wheels put cuBLAS, relative to a site-packages directory: nvidia-cublas (CUDA
#: 13) and nvidia-cublas-cu12. Tried after the sonames, which find a toolkit's copy.
_WHEEL_CUBLAS = (
    "nvidia/cu13/lib/libcublas.so.13",
    "nvidia/cublas/lib/libcublas.so.13",
    "nvidia/cublas/lib/libcublas.so.12",
)
_CUBLAS_SONAMES = ("libcublas.so.13", "libcublas.so.12", "libcublas.so")


@functools.cache
def _import() -> tuple[ModuleType | None, str]:
    """The CUDA module, or None and why it cannot be imported (cached: imported once)."""
    try:
        return importlib.import_module("sparkbatch._cuda"), ""
    except ImportError as e:
        return None, (
            f"this sparkbatch was built without its CUDA module ({e}); reinstall it where nvcc "
            "is on PATH (pip install -Ccmake.define.SPARKBATCH_CUDA=ON sparkbatch makes a "
            "missing CUDA compiler an error instead of a CPU-only build)"
        )


def cuda_version(code: int) -> str:
    """A CUDA version code (e.g. 13000, as cudaRuntimeGetVersion gives) as text ("13.0")."""
    return f"{code // 1000}.{code % 1000 // 10}"


def cuda_available() -> bool:
    """Whether the CUDA module was built and a GPU is visible (never raises).

    Examples
    --------
    >>> cuda_available() in (True, False)
    True
    """
    module, _ = _import()
    return module is not None and module.device_count() > 0


def cuda_module() -> ModuleType:
    """``sparkbatch._cuda``, once a GPU is known to be usable; :class:`CudaUnavailableError`
    saying why not otherwise (module not built, no driver, driver too old, no device)."""
    module, reason = _import()
    if module is None:
        raise CudaUnavailableError(f"device='cuda' needs a GPU, but {reason}")
    if module.device_count() > 0:
        return module
    driver, runtime = module.driver_version(), module.runtime_version()
    if driver == 0:
        why = "no NVIDIA driver is installed (libcuda.so.1 was not found)"
    elif driver < runtime:
        why = (
            f"the NVIDIA driver supports CUDA {cuda_version(driver)} while sparkbatch._cuda was "
            f"built with CUDA {cuda_version(runtime)}: update the driver"
        )
    else:
        why = "the NVIDIA driver sees no GPU"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        why += f" (CUDA_VISIBLE_DEVICES={visible!r})"
    raise CudaUnavailableError(f"device='cuda' needs a GPU, but {why}; use device='cpu'")


def parse_device(device: str | int) -> int | None:
    """The CUDA device ordinal that ``device`` names (``"cuda"`` is 0, ``"cuda:1"``, ``1``),
    or None for ``"cpu"``; ValueError for anything else."""
    if isinstance(device, (int, np.integer)) and not isinstance(device, bool) and device >= 0:
        return int(device)
    if isinstance(device, str):
        name, _, index = device.strip().lower().partition(":")
        if name == "cpu" and not index:
            return None
        if name == "cuda" and (not index or index.isdigit()):
            return int(index or 0)
    raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or N >= 0, got {device!r}")


def cublas_candidates() -> list[str]:
    """The cuBLAS libraries :func:`load_cublas` tries, in order: the sonames (a CUDA toolkit's
    copy, found by the dynamic loader), then the pip wheels' copies (nvidia-cublas,
    nvidia-cublas-cu12) found under a ``sys.path`` directory. ``sparkbatch info`` tries them too,
    to report which cuBLAS a GPU network would use (no GPU needed for that).

    Examples
    --------
    >>> cublas_candidates()[0]
    'libcublas.so.13'
    """
    candidates = list(_CUBLAS_SONAMES)
    for base in dict.fromkeys(p for p in sys.path if p and os.path.isdir(p)):
        for relative in _WHEEL_CUBLAS:
            path = os.path.join(base, relative)
            if os.path.isfile(path):
                candidates.append(path)
    return candidates


def load_cublas() -> str:
    """Load cuBLAS (a toolkit's, else a pip wheel's) for the GPU's matrix products; returns the
    library loaded. :class:`CudaUnavailableError` naming every candidate tried otherwise."""
    module = cuda_module()
    try:
        return module.load_cublas(cublas_candidates())
    except RuntimeError as e:
        raise CudaUnavailableError(str(e)) from e


class CudaBackend(Backend):
    """A CUDA device: ``DeviceBuffer`` arrays, cuBLAS matrix products, ``_cuda`` kernels.

    Creating one checks that the GPU can be used and loads cuBLAS, raising
    :class:`CudaUnavailableError` saying why not.
    """

    def __init__(self, dtype: str | np.dtype, index: int = 0) -> None:
        super().__init__(dtype)
        cuda = cuda_module()
        if not 0 <= index < cuda.device_count():
            raise ValueError(f"no CUDA device {index}: {cuda.device_count()} visible")
        load_cublas()
        self._cuda = cuda
        self.index = index
        self.device = f"cuda:{index}"

    def empty(self, shape: tuple[int, ...]) -> Any:
        return self._cuda.DeviceBuffer(tuple(shape), self.dtype, self.index)

    def carve(self, shapes: Sequence[tuple[int, ...]]) -> list[Any]:
        """Views of the given shapes into one new allocation, each 256-byte aligned."""
        align = _ALIGN_BYTES // self.dtype.itemsize
        offsets, total = [], 0
        for shape in shapes:
            offsets.append(total)
            total += -(-math.prod(shape) // align) * align
        buffer = self.empty((max(total, 1),))
        return [buffer.view(o, tuple(s)) for o, s in zip(offsets, shapes, strict=True)]

    def view(self, flat: Any, offset: int, shape: tuple[int, ...]) -> Any:
        return flat.view(offset, tuple(shape))

    def from_host(self, host: Any) -> Any:
        return self._cuda.to_device(np.ascontiguousarray(host, self.dtype), self.index)

    def stage(self, host: Any, buffer: Any) -> Any:
        if isinstance(host, self._cuda.DeviceBuffer):
            if tuple(host.shape) != tuple(buffer.shape) or host.dtype != self.dtype:
                raise ValueError(
                    f"expected a {self.dtype} buffer of shape {tuple(buffer.shape)}, got "
                    f"{host.dtype} {tuple(host.shape)}"
                )
            return host
        if tuple(np.shape(host)) != tuple(buffer.shape):
            raise ValueError(f"expected shape {tuple(buffer.shape)}, got {np.shape(host)}")
        buffer.copy_from_host(host)
        return buffer

    def to_host(self, array: Any, out: np.ndarray | None = None) -> np.ndarray:
        return array.to_host(out)

    def upload(self, dst: Any, host: Any) -> None:
        values = np.asarray(host)
        if not np.can_cast(values.dtype, self.dtype, "same_kind"):
            raise TypeError(f"cannot copy {values.dtype} values into {self.dtype} parameters")
        dst.copy_from_host(np.ascontiguousarray(values.reshape(-1), self.dtype))

    def copy(self, dst: Any, src: Any) -> None:
        dst.copy_from(src)

    def zero(self, array: Any) -> None:
        array.zero()

    def copy_columns(self, src: Any, dst: Any, column: int) -> None:
        self._cuda.copy_columns(src, dst, column)

    def take_columns(self, src: Any, column: int, dst: Any) -> None:
        self._cuda.take_columns(src, column, dst)

    def matmul(self, a, b, out, *, trans_a: bool = False, trans_b: bool = False) -> None:
        self._cuda.matmul(a, b, out, trans_a=trans_a, trans_b=trans_b)

    def bias_activation(self, z, bias, out, activation, alpha) -> None:
        self._cuda.nn_bias_activation(z, bias, out, activation, alpha)

    def activation_backward(self, da, z, a, dz, db, activation, alpha) -> None:
        self._cuda.nn_activation_backward(da, z, a, dz, db, activation, alpha)

    def output_layer(self, loss, activation, alpha, z, bias, labels, weights, a, dz, db, scale):
        return self._cuda.nn_output_layer(
            loss, activation, alpha, z, bias, labels, weights, a, dz, db, scale
        )

    def loss_sum(self, loss, activation, z, a, labels, weights) -> float:
        return self._cuda.nn_loss_sum(loss, activation, z, a, labels, weights)

    def dropout(self, x, rate, seed) -> None:
        self._cuda.nn_dropout(x, rate, seed)

    def column_sums(self, x, out) -> None:
        self._cuda.nn_activation_backward(x, None, x, x, out, 0, 0.0)

    def lstm_forward_step(self, *args) -> None:
        self._cuda.nn_lstm_forward_step(*args)

    def lstm_backward_step(self, *args) -> None:
        self._cuda.nn_lstm_backward_step(*args)

    # The convolutional layers' kernels: ``geometry`` is (c, h, w, kh, kw, sh, sw, ph, pw), or
    # (n, channels, positions) for the transposes, as the Backend methods take them.

    def im2col(self, x, col, *geometry) -> None:
        self._cuda.nn_im2col(x, col, *geometry)

    def col2im(self, col, x, *geometry) -> None:
        self._cuda.nn_col2im(col, x, *geometry)

    def channels_last(self, src, dst, n, channels, positions) -> None:
        self._cuda.nn_channels_last(src, dst, n, channels, positions)

    def channels_first(self, src, dst, n, channels, positions) -> None:
        self._cuda.nn_channels_first(src, dst, n, channels, positions)

    def max_pool(self, x, out, *geometry) -> None:
        self._cuda.nn_max_pool(x, out, *geometry)

    def max_pool_backward(self, x, out, d_out, d_in, *geometry) -> None:
        self._cuda.nn_max_pool_backward(x, out, d_out, d_in, *geometry)

    def avg_pool(self, x, out, *geometry) -> None:
        self._cuda.nn_avg_pool(x, out, *geometry)

    def avg_pool_backward(self, d_out, d_in, *geometry) -> None:
        self._cuda.nn_avg_pool_backward(d_out, d_in, *geometry)

    def updater_step(self, code, params, grads, state, hyper) -> None:
        self._cuda.nn_updater_step(code, params, grads, state, **hyper)

    def add_into(self, acc, x) -> None:
        self._cuda.nn_add_into(acc, x)

    def axpy(self, y, x, alpha) -> None:
        self._cuda.nn_axpy(y, x, alpha)

    def scale(self, dst, src, alpha) -> None:
        dst.zero()
        self._cuda.nn_axpy(dst, src, alpha)

    def average(self, arrays, out) -> None:
        self._cuda.nn_average(list(arrays), out)

    def multiply(self, a, b, out) -> None:
        self._cuda.nn_multiply(a, b, out)

    def maximum(self, a, b, out) -> None:
        self._cuda.nn_maximum(a, b, out)

    def max_backward(self, d_out, x, remaining, dx) -> None:
        self._cuda.nn_max_backward(d_out, x, remaining, dx)

    def sum_squares(self, x) -> float:
        return self._cuda.nn_sum_squares(x)

    def all_finite(self, x) -> bool:
        return self._cuda.nn_count_non_finite(x) == 0

    def synchronize(self) -> None:
        self._cuda.synchronize()
