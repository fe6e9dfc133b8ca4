"""The built-in network on a GPU: device copies of its buffers and its training step in CUDA.

:class:`GpuState` holds what a :class:`~sparkbatch.nn.Network` needs on a GPU: its flat
parameter, gradient and updater-state buffers (one device allocation each, with every layer's
``W`` and ``b`` as views, laid out as on the host) and work buffers per batch size. Its
:meth:`~GpuState.fit_batch` runs the CPU step's algorithm operation for operation, cuBLAS for
the matrix products and the CUDA twins of the ``_native.nn_*`` kernels for the rest, so the two
devices differ only by rounding. Each step copies the minibatch in and the score out; the
parameters cross only when asked (:meth:`~GpuState.download_params`,
:meth:`~GpuState.upload_params`), e.g. at an averaging round.

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
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import SparkbatchError
from .functions import activation_code, loss_code, needs_preactivation

if TYPE_CHECKING:
    from .layers import Dense, Output
    from .network import Network

__all__ = [
    "CudaUnavailableError",
    "GpuState",
    "cuda_available",
    "cuda_module",
    "load_cublas",
    "parse_device",
]

_WORKSPACES_KEPT = 4  # batch sizes whose work buffers are kept, as on the CPU
_ALIGN_BYTES = 256  # work-buffer views start at multiples of this (cuBLAS and vector loads)

#: Where the pip wheels put cuBLAS, relative to a site-packages directory: nvidia-cublas (CUDA
#: 13) and nvidia-cublas-cu12. Tried after the sonames, which find a toolkit's copy.
_WHEEL_CUBLAS = (
    "nvidia/cu13/lib/libcublas.so.13",
    "nvidia/cublas/lib/libcublas.so.13",
    "nvidia/cublas/lib/libcublas.so.12",
)
_CUBLAS_SONAMES = ("libcublas.so.13", "libcublas.so.12", "libcublas.so")


class CudaUnavailableError(SparkbatchError, RuntimeError):
    """A GPU was asked for where none can be used; the message says why and what to do."""


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


def _cublas_candidates() -> list[str]:
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
        return module.load_cublas(_cublas_candidates())
    except RuntimeError as e:
        raise CudaUnavailableError(str(e)) from e


def _carve(cuda: ModuleType, shapes: Sequence[tuple[int, ...]], dtype: np.dtype, device: int):
    """Views of the given shapes into one new device allocation, each 256-byte aligned."""
    align = _ALIGN_BYTES // dtype.itemsize
    offsets, total = [], 0
    for shape in shapes:
        offsets.append(total)
        total += -(-math.prod(shape) // align) * align
    buffer = cuda.DeviceBuffer((total,), dtype, device)
    return [buffer.view(o, s) for o, s in zip(offsets, shapes, strict=True)]


def _views(buffer: Any, layers: Sequence[Dense | Output]) -> tuple[list[Any], list[Any]]:
    """Per layer, the W ``[n_in, n_out]`` and b ``[n_out]`` views (network._views' layout)."""
    weights, biases = [], []
    offset = 0
    for layer in layers:
        weights.append(buffer.view(offset, (layer.n_in, layer.n_out)))
        offset += layer.n_in * layer.n_out
        biases.append(buffer.view(offset, (layer.n_out,)))
        offset += layer.n_out
    return weights, biases


class _Workspace:
    """Device work buffers for one batch size (network._Workspace's), in one allocation."""

    def __init__(
        self, cuda: ModuleType, layers: Sequence[Dense | Output], rows: int, dtype, device: int
    ) -> None:
        last = len(layers) - 1
        separate_a = [
            i == last or needs_preactivation(layer.activation) for i, layer in enumerate(layers)
        ]
        shapes = [(rows, layers[0].n_in), (rows, layers[-1].n_out), (rows,)]  # x, y, w
        shapes += [(rows, layer.n_out) for layer in layers]  # z
        shapes += [  # a
            (rows, layer.n_out) for layer, own in zip(layers, separate_a, strict=True) if own
        ]
        shapes += [(rows, layers[-1].n_out)]  # dz_out
        shapes += [(rows, layer.n_in) for layer in layers[1:]]  # d_input
        shapes += [(rows, layer.n_in) for layer in layers if layer.dropout > 0]  # dropped
        views = iter(_carve(cuda, shapes, dtype, device))
        self.x, self.y, self.w = next(views), next(views), next(views)
        self.z = [next(views) for _ in layers]
        # Hidden activations that need no pre-activation overwrite it; the output keeps both.
        self.a = [next(views) if own else z for own, z in zip(separate_a, self.z, strict=True)]
        self.dz_out = next(views)
        self.d_input = [None] + [next(views) for _ in layers[1:]]
        self.dropped = [next(views) if layer.dropout > 0 else None for layer in layers]


class GpuState:
    """A network's buffers on a GPU and its training step there.

    Parameters
    ----------
    network : Network
        Read for its layers, updater, dtype and dropout seeds; its host parameters and updater
        state are uploaded. The network keeps its counters (``iteration``, ``epoch``), which
        :meth:`fit_batch` reads and does not advance. Only a weak reference is kept.
    device : int
        CUDA device ordinal.

    Attributes
    ----------
    params, grads, state : DeviceBuffer
        The flat buffers on the device (``__dlpack__`` and ``__cuda_array_interface__`` let
        PyTorch or CuPy use them without a copy).
    weights, biases : list of DeviceBuffer
        Per layer, views ``W [n_in, n_out]`` and ``b [n_out]`` into ``params``.
    """

    def __init__(self, network: Network, device: int = 0) -> None:
        cuda = cuda_module()
        if not 0 <= device < cuda.device_count():
            raise ValueError(f"no CUDA device {device}: {cuda.device_count()} visible")
        load_cublas()
        self._cuda = cuda
        self._network = weakref.ref(network)
        self.device = device
        self.layers = tuple(network.layers)
        self.dtype = np.dtype(network.dtype)
        self._codes = [(activation_code(layer.activation), layer.slope) for layer in self.layers]
        self._loss = loss_code(self.layers[-1].loss)
        total = network.num_params
        state_size = network.updater.state_per_param * total
        self.params = cuda.DeviceBuffer((total,), self.dtype, device)
        self.grads = cuda.DeviceBuffer((total,), self.dtype, device)
        self.state = cuda.DeviceBuffer((state_size,), self.dtype, device)
        self.grads.zero()
        self.weights, self.biases = _views(self.params, self.layers)
        self.weight_grads, self.bias_grads = _views(self.grads, self.layers)
        self._workspaces: OrderedDict[int, _Workspace] = OrderedDict()
        self.upload_params(network._params)
        self.upload_state(network._state)

    # -- moving buffers ------------------------------------------------------------------------

    def upload_params(self, values: Any) -> None:
        """Copy ``num_params`` host values into the device parameters."""
        self.params.copy_from_host(np.asarray(values).reshape(-1))

    def upload_state(self, values: Any) -> None:
        """Copy host values into the device updater state."""
        self.state.copy_from_host(np.asarray(values).reshape(-1))

    def download_params(self, out: np.ndarray | None = None) -> np.ndarray:
        """The device parameters copied to ``out`` (a flat host array) or to a new array."""
        return self.params.to_host(out)

    def download_state(self, out: np.ndarray | None = None) -> np.ndarray:
        """The device updater state copied to ``out`` or to a new host array."""
        return self.state.to_host(out)

    def download_gradients(self, out: np.ndarray | None = None) -> np.ndarray:
        """The gradients of the last :meth:`compute_gradients` copied to the host."""
        return self.grads.to_host(out)

    # -- training ------------------------------------------------------------------------------

    def fit_batch(self, x: Any, y: Any, w: np.ndarray | None = None) -> float:
        """One step (Network.fit_batch's, less the counters): gradients, then the updater at
        the network's current ``iteration`` and ``epoch``. Returns the score before the step.

        ``x [rows, n_in]`` and ``y [rows, n_out]`` are host arrays of the network's dtype (as
        ``Network._arrays`` makes them) or DeviceBuffers of those shapes, used in place; ``w``
        is None or the host array of per-row loss weights.

        The bare step, without the non-finite checks of ``Network.fit_batch`` (NOTE
        [non-finite checks] in ``sparkbatch._finite``), which trains through
        :meth:`compute_gradients`, :meth:`gradients_finite` and :meth:`update` instead; kept
        for ``bench/gpu.py`` and ``tests/test_cuda.py``, which time and compare the step alone.
        """
        score = self.compute_gradients(x, y, w)
        self.update()
        return score

    def update(self) -> None:
        """The updater's step from :attr:`grads` at the network's ``iteration`` and ``epoch``."""
        network = self._live_network()
        updater = network.updater
        self._cuda.nn_updater_step(
            updater.code,
            self.params,
            self.grads,
            self.state,
            **updater._hyper(network.iteration, network.epoch, network.updater_steps),
        )

    def gradients_finite(self) -> bool:
        """Whether every value of :attr:`grads` is finite: one reduction on the device."""
        return self._cuda.nn_count_non_finite(self.grads) == 0

    def compute_gradients(self, x: Any, y: Any, w: np.ndarray | None = None) -> float:
        """Network.compute_gradients on the device: fills :attr:`grads`, returns the score."""
        cuda = self._cuda
        rows = _rows_of(x)
        if rows == 0:
            raise ValueError("cannot fit an empty minibatch")
        ws = self._workspace(rows)
        x_dev = self._stage(ws.x, x, "features")
        y_dev = self._stage(ws.y, y, "labels")
        w_dev = self._stage_weights(ws.w, w)
        inputs = self._forward(ws, x_dev, training=True)
        last = len(self.layers) - 1
        act, alpha = self._codes[last]
        divisor = float(rows if w is None else w.sum())
        cuda.matmul(inputs[last], self.weights[last], ws.z[last])
        loss = cuda.nn_output_layer(
            self._loss,
            act,
            alpha,
            ws.z[last],
            self.biases[last],
            y_dev,
            w_dev,
            ws.a[last],
            ws.dz_out,
            self.bias_grads[last],
            1.0 / divisor if divisor > 0 else 0.0,
        )
        self._backward(inputs, ws)
        return (loss / divisor if divisor > 0 else 0.0) + self.l2_penalty()

    def l2_penalty(self) -> float:
        """``sum(l2 / 2 * |W|^2)`` over the layers with ``l2 > 0`` (Network._l2_penalty)."""
        penalty = 0.0
        for layer, weights in zip(self.layers, self.weights, strict=True):
            if layer.l2 > 0:
                penalty += 0.5 * layer.l2 * self._cuda.nn_sum_squares(weights)
        return penalty

    # -- inference -----------------------------------------------------------------------------

    def infer(self, x: Any, out: np.ndarray | None = None) -> np.ndarray:
        """The output layer's activations for ``x [rows, n_in]``, copied to ``out`` (a
        C-contiguous host array of ``rows * n_out`` values) or to a new ``[rows, n_out]``."""
        _, a = self._infer(x)
        return a.to_host(out)

    def score_sum(self, x: Any, y: Any, w: np.ndarray | None = None) -> float:
        """The sum of the weighted loss terms over the rows of ``x`` (``_native.nn_loss_sum`` of
        Network.score; the caller divides and adds :meth:`l2_penalty`)."""
        rows = _rows_of(x)
        if rows == 0:
            return 0.0
        z, a = self._infer(x)
        ws = self._workspace(rows)
        y_dev = self._stage(ws.y, y, "labels")
        w_dev = self._stage_weights(ws.w, w)
        act, _ = self._codes[-1]
        return self._cuda.nn_loss_sum(self._loss, act, z, a, y_dev, w_dev)

    # -- internals -----------------------------------------------------------------------------

    def _live_network(self) -> Network:
        network = self._network()
        if network is None:
            raise RuntimeError("the network of this GpuState no longer exists")
        return network

    def _workspace(self, rows: int) -> _Workspace:
        ws = self._workspaces.get(rows)
        if ws is None:
            ws = _Workspace(self._cuda, self.layers, rows, self.dtype, self.device)
            self._workspaces[rows] = ws
            while len(self._workspaces) > _WORKSPACES_KEPT:
                self._workspaces.popitem(last=False)
        else:
            self._workspaces.move_to_end(rows)
        return ws

    def _stage(self, buffer: Any, array: Any, name: str) -> Any:
        """``array`` in device memory: a DeviceBuffer as it is, a host array copied to
        ``buffer``; either must have ``buffer``'s shape."""
        if isinstance(array, self._cuda.DeviceBuffer):
            if array.shape != buffer.shape or array.dtype != self.dtype:
                raise ValueError(
                    f"{name} must be a {self.dtype} buffer of shape {buffer.shape}, got "
                    f"{array.dtype} {array.shape}"
                )
            return array
        if np.shape(array) != buffer.shape:
            raise ValueError(f"{name} must have shape {buffer.shape}, got {np.shape(array)}")
        buffer.copy_from_host(array)
        return buffer

    def _stage_weights(self, buffer: Any, w: np.ndarray | None) -> Any:
        if w is None:
            return None
        w = np.ascontiguousarray(w, dtype=self.dtype)
        if w.shape == buffer.shape:
            buffer.copy_from_host(w)
            return buffer
        # Other shapes ([rows, 1], [rows, n_out]) get their own buffer; the kernel checks them.
        return self._cuda.to_device(w, self.device)

    def _forward(self, ws: _Workspace, x: Any, training: bool) -> list[Any]:
        """Run the hidden layers; returns the input of every layer (after its dropout)."""
        cuda = self._cuda
        network = self._live_network() if training else None
        inputs = []
        current = x
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            if training and layer.dropout > 0:
                dropped = ws.dropped[i]
                dropped.copy_from(current)
                cuda.nn_dropout(dropped, layer.dropout, network._dropout_seed(i))
                current = dropped
            inputs.append(current)
            if i == last:
                break
            z = ws.z[i]
            cuda.matmul(current, self.weights[i], z)
            act, alpha = self._codes[i]
            cuda.nn_bias_activation(z, self.biases[i], ws.a[i], act, alpha)
            current = ws.a[i]
        return inputs

    def _backward(self, inputs: list[Any], ws: _Workspace) -> None:
        cuda = self._cuda
        network = self._live_network()
        dz = ws.dz_out
        for i in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[i]
            cuda.matmul(inputs[i], dz, self.weight_grads[i], trans_a=True)
            if layer.l2 > 0:
                cuda.nn_axpy(self.weight_grads[i], self.weights[i], layer.l2)
            if i == 0:
                break
            d_input = ws.d_input[i]
            cuda.matmul(dz, self.weights[i], d_input, trans_b=True)
            if layer.dropout > 0:  # the same mask as forward, recomputed from the seed
                cuda.nn_dropout(d_input, layer.dropout, network._dropout_seed(i))
            below = self.layers[i - 1]
            act, alpha = self._codes[i - 1]
            z = ws.z[i - 1] if needs_preactivation(below.activation) else None
            cuda.nn_activation_backward(
                d_input, z, ws.a[i - 1], d_input, self.bias_grads[i - 1], act, alpha
            )
            dz = d_input

    def _infer(self, x: Any) -> tuple[Any, Any]:
        """Forward without dropout; the output layer's (pre-activation, activation) buffers."""
        rows = _rows_of(x)
        ws = self._workspace(rows)
        inputs = self._forward(ws, self._stage(ws.x, x, "features"), training=False)
        last = len(self.layers) - 1
        self._cuda.matmul(inputs[last], self.weights[last], ws.z[last])
        act, alpha = self._codes[last]
        self._cuda.nn_bias_activation(ws.z[last], self.biases[last], ws.a[last], act, alpha)
        return ws.z[last], ws.a[last]

    def __repr__(self) -> str:
        return (
            f"GpuState(device={self.device}, {self.params.size} params, {self.dtype.name}, "
            f"{len(self._workspaces)} batch sizes cached)"
        )


def _rows_of(x: Any) -> int:
    shape = x.shape if hasattr(x, "shape") else np.shape(x)
    if len(shape) != 2:
        raise ValueError(f"features must be 2-D [rows, n_in] here, got shape {tuple(shape)}")
    return int(shape[0])
