"""Where the built-in network's arithmetic runs: the primitives of a training step, per device.

A :class:`Backend` allocates arrays on its device and runs the operations a training step is made
of (matrix products, bias + activation, activation gradients, the fused output layer, dropout,
the updater, element-wise sums). Layers (:mod:`sparkbatch.nn.layers`), vertices
(:mod:`sparkbatch.nn.vertices`) and the step itself (:mod:`sparkbatch.nn.engine`) are written
once against this interface; :class:`CpuBackend` implements it with the ``_native`` kernels and
numpy's BLAS, and :class:`sparkbatch.nn.gpu.CudaBackend` with the ``_cuda`` kernels and cuBLAS.
The kernels of both have the same contracts, so the two devices differ only by rounding.

An *array* is whatever the backend allocates: a numpy array on the CPU, a
``sparkbatch._cuda.DeviceBuffer`` on a GPU. Every array is C-contiguous and of the backend's
dtype.

Examples
--------
>>> import numpy as np
>>> backend = make_backend("cpu", "float64")
>>> a = backend.from_host(np.arange(6.0).reshape(2, 3))
>>> out = backend.empty((2, 2))
>>> backend.matmul(a, a, out, trans_b=True)
>>> backend.to_host(out)
array([[ 5., 14.],
       [14., 50.]])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import _native

__all__ = ["Backend", "CpuBackend", "make_backend"]


class Backend:
    """The primitives of a training step on one device, for one dtype (float32 or float64).

    Subclasses implement every method; the contracts are those of the ``_native.nn_*`` kernels
    (see ``csrc/nn_kernels.hpp``), which the CUDA kernels share.
    """

    #: ``"cpu"`` or ``"cuda:N"``.
    device: str = "cpu"
    #: Whether host arrays must be copied to the device (:meth:`stage`) before kernels read them.
    stages: bool = True

    def __init__(self, dtype: str | np.dtype) -> None:
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")

    # -- memory ------------------------------------------------------------------------------

    def empty(self, shape: tuple[int, ...]) -> Any:
        """A new uninitialised array."""
        raise NotImplementedError

    def zeros(self, shape: tuple[int, ...]) -> Any:
        """A new array of zeros."""
        array = self.empty(shape)
        self.zero(array)
        return array

    def carve(self, shapes: Sequence[tuple[int, ...]]) -> list[Any]:
        """New arrays of the given shapes (a workspace); a backend may carve them from one
        allocation."""
        return [self.empty(shape) for shape in shapes]

    def view(self, flat: Any, offset: int, shape: tuple[int, ...]) -> Any:
        """The part of 1-D ``flat`` from ``offset`` as an array of ``shape``, sharing memory."""
        raise NotImplementedError

    def from_host(self, host: Any) -> Any:
        """A new array holding a copy of host array ``host``."""
        raise NotImplementedError

    def adopt(self, host: np.ndarray) -> Any:
        """An array of this backend holding host array ``host``: ``host`` itself where the
        backend can use it (the CPU, same dtype, contiguous), else a copy."""
        return self.from_host(host)

    def stage(self, host: Any, buffer: Any) -> Any:
        """``host`` (a C-contiguous host array of this dtype) where kernels can read it: copied
        into ``buffer`` (an array of its shape) on a device, as it is on the CPU. An array of
        this backend is returned as it is."""
        raise NotImplementedError

    def to_host(self, array: Any, out: np.ndarray | None = None) -> np.ndarray:
        """``array`` copied into host array ``out``, or into a new one (on the CPU too)."""
        raise NotImplementedError

    def upload(self, dst: Any, host: Any) -> None:
        """Copy host values (as many as ``dst`` holds) into ``dst``."""
        raise NotImplementedError

    def copy(self, dst: Any, src: Any) -> None:
        """``dst = src`` (same shape)."""
        raise NotImplementedError

    def zero(self, array: Any) -> None:
        """Set every value of ``array`` to 0."""
        raise NotImplementedError

    def copy_columns(self, src: Any, dst: Any, column: int) -> None:
        """``dst[:, column:column + w] = src`` for ``src [rows, w]`` (Merge's forward)."""
        raise NotImplementedError

    def take_columns(self, src: Any, column: int, dst: Any) -> None:
        """``dst = src[:, column:column + w]`` for ``dst [rows, w]`` (Merge's backward)."""
        raise NotImplementedError

    # -- layers ------------------------------------------------------------------------------

    def matmul(
        self, a: Any, b: Any, out: Any, *, trans_a: bool = False, trans_b: bool = False
    ) -> None:
        """``out = op(a) @ op(b)``, ``op`` transposing where asked."""
        raise NotImplementedError

    def bias_activation(self, z: Any, bias: Any, out: Any, activation: int, alpha: float) -> None:
        """``z += bias`` per row, then ``out = activation(z)`` (``out`` may be ``z``)."""
        raise NotImplementedError

    def activation_backward(
        self, da: Any, z: Any, a: Any, dz: Any, db: Any, activation: int, alpha: float
    ) -> None:
        """``dz = da * activation'``, from ``z`` (None where the output ``a`` suffices), and
        ``db`` = column sums of ``dz`` (None to skip); ``dz`` may be ``da``."""
        raise NotImplementedError

    def output_layer(
        self,
        loss: int,
        activation: int,
        alpha: float,
        z: Any,
        bias: Any,
        labels: Any,
        weights: Any,
        a: Any,
        dz: Any,
        db: Any,
        scale: float,
    ) -> float:
        """The fused output layer: bias, activation, loss and its gradient (times ``scale``)
        in one pass; returns the sum of the (row-weighted) loss terms."""
        raise NotImplementedError

    def loss_sum(
        self, loss: int, activation: int, z: Any, a: Any, labels: Any, weights: Any
    ) -> float:
        """The sum of the (row-weighted) loss terms of activations ``a`` (from ``z``)."""
        raise NotImplementedError

    def dropout(self, x: Any, rate: float, seed: int) -> None:
        """Inverted dropout in place; the mask is a function of ``(seed, index)``."""
        raise NotImplementedError

    def column_sums(self, x: Any, out: Any) -> None:
        """``out`` = the column sums of ``x [rows, m]`` (a bias gradient)."""
        raise NotImplementedError

    def lstm_forward_step(
        self,
        gates: Any,
        zx: Any,
        bias: Any,
        mask: Any,
        c_prev: Any,
        h_prev: Any,
        c: Any,
        h: Any,
        out: Any,
        t: int,
        s: int,
        activation: int,
        gate_activation: int,
    ) -> None:
        """One LSTM forward step after ``gates = h_prev @ RW``: see ``lstm_forward_step`` in
        ``csrc/nn_kernels.hpp`` (``mask``, ``c_prev``, ``h_prev`` and ``out`` may be None)."""
        raise NotImplementedError

    def lstm_backward_step(
        self,
        gates: Any,
        c: Any,
        c_prev: Any,
        mask: Any,
        d_out: Any,
        dh_rec: Any,
        dh_carry: Any,
        dc: Any,
        dgates: Any,
        dgates_seq: Any,
        t: int,
        s: int,
        activation: int,
        gate_activation: int,
    ) -> None:
        """One LSTM backward step: see ``lstm_backward_step`` in ``csrc/nn_kernels.hpp``."""
        raise NotImplementedError

    # -- convolution (csrc/conv_kernels.hpp; docs/convolution.md) ------------------------------
    # Images are rows [n, c*h*w] (NCHW). With oh = (h + 2*ph - kh) // sh + 1,
    # ow = (w + 2*pw - kw) // sw + 1, P = oh*ow and K = c*kh*kw. Sizes are Python ints.

    def im2col(
        self,
        x: Any,
        col: Any,
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
        """``col [n*P, K]`` = the receptive fields of ``x [n, c*h*w]``: row ``i*P + oy*ow + ox``
        holds output position ``(oy, ox)`` of example ``i``, column ``ci*kh*kw + ky*kw + kx``
        the pixel ``x[i, ci, oy*sh - ph + ky, ox*sw - pw + kx]`` (0 outside the image)."""
        raise NotImplementedError

    def col2im(
        self,
        col: Any,
        x: Any,
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
        """The adjoint of :meth:`im2col`: ``x [n, c*h*w]`` is overwritten with the sum of the
        ``col`` entries that map to each pixel (0 where none does)."""
        raise NotImplementedError

    def channels_last(self, src: Any, dst: Any, n: int, channels: int, positions: int) -> None:
        """``dst [n, positions, channels]`` = ``src [n, channels, positions]`` transposed per
        example (NCHW to NHWC)."""
        raise NotImplementedError

    def channels_first(self, src: Any, dst: Any, n: int, channels: int, positions: int) -> None:
        """``dst [n, channels, positions]`` = ``src [n, positions, channels]`` transposed per
        example (NHWC to NCHW)."""
        raise NotImplementedError

    def max_pool(
        self,
        x: Any,
        out: Any,
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
        """``out [n, c*P]`` = the max over each window's in-image positions of ``x [n, c*h*w]``
        (a NaN in the window gives NaN; ``ph < kh`` and ``pw < kw``)."""
        raise NotImplementedError

    def max_pool_backward(
        self,
        x: Any,
        out: Any,
        d_out: Any,
        d_in: Any,
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
        """``d_in [n, c*h*w]`` overwritten: each window's ``d_out`` goes to the first in-image
        position (row-major in the window) whose ``x`` equals its ``out`` (ties go to one
        place); overlapping windows accumulate."""
        raise NotImplementedError

    def avg_pool(
        self,
        x: Any,
        out: Any,
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
        """``out [n, c*P]`` = the mean over each window's in-image positions (padding is not
        counted in the divisor)."""
        raise NotImplementedError

    def avg_pool_backward(
        self,
        d_out: Any,
        d_in: Any,
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
        """``d_in [n, c*h*w]`` overwritten: each window's ``d_out`` divided by its count of
        in-image positions, spread over them (overlaps accumulate)."""
        raise NotImplementedError

    # -- element-wise ------------------------------------------------------------------------

    def updater_step(
        self, code: int, params: Any, grads: Any, state: Any, hyper: dict[str, float]
    ) -> None:
        """One updater step in place (``code`` and ``hyper`` from the :class:`Updater`)."""
        raise NotImplementedError

    def add_into(self, acc: Any, x: Any) -> None:
        """``acc += x``."""
        raise NotImplementedError

    def axpy(self, y: Any, x: Any, alpha: float) -> None:
        """``y += alpha * x``."""
        raise NotImplementedError

    def scale(self, dst: Any, src: Any, alpha: float) -> None:
        """``dst = alpha * src``."""
        raise NotImplementedError

    def average(self, arrays: Sequence[Any], out: Any) -> None:
        """``out`` = the element-wise mean of ``arrays`` (``out`` may be one of them)."""
        raise NotImplementedError

    def multiply(self, a: Any, b: Any, out: Any) -> None:
        """``out = a * b`` element-wise (``out`` may be ``a`` or ``b``)."""
        raise NotImplementedError

    def maximum(self, a: Any, b: Any, out: Any) -> None:
        """``out = max(a, b)`` element-wise, NaN propagating (``out`` may be ``a`` or ``b``)."""
        raise NotImplementedError

    def max_backward(self, d_out: Any, x: Any, remaining: Any, dx: Any) -> None:
        """Where ``x == remaining``: ``dx = d_out`` and ``remaining = NaN``; elsewhere
        ``dx = 0``. Called for each input of a maximum in order, with ``remaining`` starting
        as the maximum, it gives each value's gradient to the first input that holds it."""
        raise NotImplementedError

    def sum_squares(self, x: Any) -> float:
        """``sum(x ** 2)``, accumulated in double precision where the kernel does so."""
        raise NotImplementedError

    def all_finite(self, x: Any) -> bool:
        """Whether every value of ``x`` is finite."""
        raise NotImplementedError

    def synchronize(self) -> None:
        """Wait for the device to finish the work queued so far (no-op on the CPU)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.device!r}, {self.dtype.name})"


class CpuBackend(Backend):
    """The CPU: numpy arrays, numpy's BLAS for matrix products, ``_native`` kernels for the
    rest. Staging and views copy nothing."""

    device = "cpu"
    stages = False

    def empty(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.empty(shape, self.dtype)

    def adopt(self, host: np.ndarray) -> np.ndarray:
        if host.dtype == self.dtype and host.flags.c_contiguous and host.flags.writeable:
            return host
        return self.from_host(host)

    def zeros(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.zeros(shape, self.dtype)

    def view(self, flat: np.ndarray, offset: int, shape: tuple[int, ...]) -> np.ndarray:
        return flat[offset : offset + math.prod(shape)].reshape(shape)

    def from_host(self, host: Any) -> np.ndarray:
        return np.array(host, self.dtype, order="C", copy=True)

    def stage(self, host: Any, buffer: Any) -> Any:
        return host

    def to_host(self, array: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        if out is None:
            return array.copy()
        np.copyto(out.reshape(array.shape), array)
        return out

    def upload(self, dst: np.ndarray, host: Any) -> None:
        np.copyto(dst, np.asarray(host).reshape(dst.shape), casting="same_kind")

    def copy(self, dst: np.ndarray, src: np.ndarray) -> None:
        np.copyto(dst, src)

    def zero(self, array: np.ndarray) -> None:
        array[...] = 0

    def copy_columns(self, src: np.ndarray, dst: np.ndarray, column: int) -> None:
        dst[:, column : column + src.shape[1]] = src

    def take_columns(self, src: np.ndarray, column: int, dst: np.ndarray) -> None:
        np.copyto(dst, src[:, column : column + dst.shape[1]])

    def matmul(
        self,
        a: np.ndarray,
        b: np.ndarray,
        out: np.ndarray,
        *,
        trans_a: bool = False,
        trans_b: bool = False,
    ) -> None:
        a = a.T if trans_a else a
        b = b.T if trans_b else b
        if a.shape[1] == 1:  # an outer product (a one-wide output's input gradient): numpy hands
            np.multiply(a, b, out=out)  # a transposed view of it to a slow loop, not to BLAS
        else:
            np.matmul(a, b, out=out)

    def bias_activation(self, z, bias, out, activation, alpha) -> None:
        _native.nn_bias_activation(z, bias, out, activation, alpha)

    def activation_backward(self, da, z, a, dz, db, activation, alpha) -> None:
        _native.nn_activation_backward(da, z, a, dz, db, activation, alpha)

    def output_layer(self, loss, activation, alpha, z, bias, labels, weights, a, dz, db, scale):
        return _native.nn_output_layer(
            loss, activation, alpha, z, bias, labels, weights, a, dz, db, scale
        )

    def loss_sum(self, loss, activation, z, a, labels, weights) -> float:
        return _native.nn_loss_sum(loss, activation, z, a, labels, weights)

    def dropout(self, x, rate, seed) -> None:
        _native.nn_dropout(x, rate, seed)

    def column_sums(self, x, out) -> None:
        # The identity's gradient is the input itself (no pass): only the column sums run.
        _native.nn_activation_backward(x, None, x, x, out, 0, 0.0)

    lstm_forward_step = staticmethod(_native.nn_lstm_forward_step)
    lstm_backward_step = staticmethod(_native.nn_lstm_backward_step)

    im2col = staticmethod(_native.nn_im2col)
    col2im = staticmethod(_native.nn_col2im)
    channels_last = staticmethod(_native.nn_channels_last)
    channels_first = staticmethod(_native.nn_channels_first)
    max_pool = staticmethod(_native.nn_max_pool)
    max_pool_backward = staticmethod(_native.nn_max_pool_backward)
    avg_pool = staticmethod(_native.nn_avg_pool)
    avg_pool_backward = staticmethod(_native.nn_avg_pool_backward)

    def updater_step(self, code, params, grads, state, hyper) -> None:
        _native.nn_updater_step(code, params, grads, state, **hyper)

    def add_into(self, acc, x) -> None:
        _native.nn_add_into(acc, x)

    def axpy(self, y, x, alpha) -> None:
        _native.nn_axpy(y, x, alpha)

    def scale(self, dst, src, alpha) -> None:
        np.multiply(src, alpha, out=dst)

    def average(self, arrays, out) -> None:
        _native.nn_average(list(arrays), out)

    def multiply(self, a, b, out) -> None:
        np.multiply(a, b, out=out)

    def maximum(self, a, b, out) -> None:
        np.maximum(a, b, out=out)

    def max_backward(self, d_out, x, remaining, dx) -> None:
        first = np.equal(x, remaining)
        dx[...] = 0
        np.copyto(dx, d_out, where=first)
        remaining[first] = np.nan

    def sum_squares(self, x: np.ndarray) -> float:
        flat = x.reshape(-1)
        return float(np.dot(flat, flat))

    def all_finite(self, x: np.ndarray) -> bool:
        return _native.first_non_finite(x) < 0


def make_backend(device: str | int, dtype: str | np.dtype) -> Backend:
    """The backend of ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``N``) for ``dtype``;
    :class:`~sparkbatch.errors.CudaUnavailableError` saying why when a GPU is asked for and
    none can be used."""
    from . import gpu  # the CUDA module itself is imported only when a GPU is asked for

    index = gpu.parse_device(device)
    if index is None:
        return CpuBackend(dtype)
    return gpu.CudaBackend(dtype, index)
