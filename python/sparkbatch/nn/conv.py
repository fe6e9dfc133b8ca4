"""Convolutional layers: :class:`Conv2D`, :class:`MaxPool2D`, :class:`AvgPool2D` and
:class:`Flatten`.

Images are NCHW: an example ``[c, h, w]`` reaches a layer as one row of ``c * h * w`` values,
channel-major (a minibatch ``[n, c, h, w]`` is the same memory as rows ``[n, c * h * w]``), so a
spatial layer's ``n_in`` and ``n_out`` are ``c * h * w`` of its input and output images, and a
:class:`~sparkbatch.nn.Dense` layer may follow one directly when its ``n_in`` is that product.

A spatial layer needs the size of its input image. The first one of a
:class:`~sparkbatch.nn.Network` is given ``input_size=(h, w)`` (and its channels); the network
gives each later one without ``input_size`` the output shape of the layer before it, so
``to_config()`` records resolved sizes. In a :class:`~sparkbatch.nn.Graph` every spatial layer
needs explicit sizes.

Conv2D runs as im2col, one matrix product (numpy's BLAS or cuBLAS), the fused bias and
activation kernel on the product's ``[n * positions, out_channels]`` rows, and a batched
transpose back to NCHW; its backward pass is the transpose, the fused activation gradient (the
bias gradient is its column sums), two products and col2im. The kernels' contracts are those of
:class:`~sparkbatch.nn.backend.Backend` (``im2col`` to ``avg_pool_backward``); see
``docs/convolution.md``.

Examples
--------
>>> import numpy as np
>>> from sparkbatch.nn import SGD, Conv2D, Flatten, MaxPool2D, Network, Output
>>> net = Network(
...     [Conv2D(1, 4, 3, padding=1, input_size=(6, 6)), MaxPool2D(2), Flatten(),
...      Output(4 * 3 * 3, 2)],
...     SGD(0.1),
... )
>>> net.layers[1].output_shape
(4, 3, 3)
>>> net.output(np.zeros((5, 1, 6, 6), np.float32)).shape
(5, 2)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar

import numpy as np

from .functions import DEFAULT_ALPHA, activation_code, needs_preactivation
from .layers import WEIGHT_INITS, Layer, Params, Work, fill_weights, register_layer, set_count

__all__ = ["Conv2D", "MaxPool2D", "AvgPool2D", "Flatten", "is_spatial", "resolve_sizes"]

Pair = tuple[int, int]


def _pair(value: Any, name: str, least: int) -> Pair:
    """``value`` (an int or an ``(h, w)`` pair) as a pair of ints >= ``least``."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        pair = (int(value), int(value))
    elif (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
    ):
        pair = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name} must be an int or an (h, w) pair of ints, got {value!r}")
    if min(pair) < least:
        raise ValueError(f"{name} must be >= {least}, got {value!r}")
    return pair



def _optional_pair(value: Any, name: str) -> Pair | None:
    return None if value is None else _pair(value, name, 1)


def _out_size(size: Pair, kernel: Pair, stride: Pair, padding: Pair) -> Pair:
    """The output (h, w) of a window over an image of ``size``."""
    return tuple(  # type: ignore[return-value]
        (s + 2 * p - k) // st + 1 for s, k, st, p in zip(size, kernel, stride, padding, strict=True)
    )


def _json(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


@dataclass(frozen=True)
class _Spatial(Layer):
    """What the spatial layers share: the window, the input image and the output image."""

    #: Whether the layer's output is an image (a later spatial layer can take its shape).
    gives_image: ClassVar[bool] = True

    def _window(self) -> None:
        """Normalise kernel, stride, padding and input_size to pairs; check the output fits."""
        kernel = _pair(self.kernel, "kernel", 1)
        stride = kernel if getattr(self, "stride", 1) is None else _pair(self.stride, "stride", 1)
        padding = _pair(self.padding, "padding", 0)
        object.__setattr__(self, "kernel", kernel)
        object.__setattr__(self, "stride", stride)
        object.__setattr__(self, "padding", padding)
        object.__setattr__(self, "input_size", _optional_pair(self.input_size, "input_size"))
        if self.input_size is not None:
            out = _out_size(self.input_size, kernel, stride, padding)
            if min(out) < 1:
                raise ValueError(
                    f"{type(self).__name__}: a {kernel[0]}x{kernel[1]} window with padding "
                    f"{padding} does not fit a {self.input_size[0]}x{self.input_size[1]} input "
                    f"image (output {out[0]}x{out[1]})"
                )

    @property
    def channels_in(self) -> int | None:
        raise NotImplementedError

    @property
    def channels_out(self) -> int | None:
        raise NotImplementedError

    @property
    def input_shape(self) -> tuple[int, int, int] | None:
        """``(c, h, w)`` of the input image; None until its size is known."""
        c = self.channels_in
        if c is None or self.input_size is None:
            return None
        return (c, *self.input_size)

    @property
    def output_shape(self) -> tuple[int, int, int] | None:
        """``(c, h, w)`` of the output image; None until the input's size is known."""
        shape = self.input_shape
        if shape is None:
            return None
        out = _out_size(self.input_size, self.kernel, self.stride, self.padding)
        return (self.channels_out, *out)  # type: ignore[return-value]

    def _known(self, shape: tuple[int, int, int] | None) -> tuple[int, int, int]:
        if shape is None:
            raise ValueError(
                f"{type(self).__name__} does not know the size of its input image: give "
                "input_size=(h, w) (and channels= to a pooling layer), or put it after another "
                "spatial layer of a Network, which passes its output shape on"
            )
        return shape

    @property
    def n_in(self) -> int:  # type: ignore[override]
        """``c * h * w`` of the input image."""
        return math.prod(self._known(self.input_shape))

    @property
    def n_out(self) -> int:  # type: ignore[override]
        """``c * h * w`` of the output image."""
        return math.prod(self._known(self.output_shape))

    def with_input(self, shape: tuple[int, int, int]) -> _Spatial:
        """This layer taking images of ``shape`` ``(c, h, w)``."""
        raise NotImplementedError

    def _taking(self, shape: tuple[int, int, int]) -> Any:
        """This layer (a pool or Flatten, whose ``channels`` and ``input_size`` describe its
        input) taking images of ``shape``; ValueError when a size it was given differs."""
        channels, size = self.channels, self.input_size  # type: ignore[attr-defined]
        if (channels is not None and channels != shape[0]) or (
            size is not None and tuple(size) != tuple(shape[1:])
        ):
            raise ValueError(
                f"{type(self).__name__} was given channels={channels}, input_size={size} but "
                f"its input images have shape {tuple(shape)} (c, h, w)"
            )
        return replace(self, channels=shape[0], input_size=tuple(shape[1:]))

    def _args(self) -> tuple[int, ...]:
        """``c, h, w, kh, kw, sh, sw, ph, pw`` for the kernels."""
        c, h, w = self._known(self.input_shape)
        return (c, h, w, *self.kernel, *self.stride, *self.padding)

    def to_config(self) -> dict[str, Any]:
        return {"type": type(self).__name__, **{k: _json(v) for k, v in asdict(self).items()}}


@dataclass(frozen=True)
class Conv2D(_Spatial):
    """A 2-D convolution (cross-correlation, as PyTorch's ``Conv2d`` and DL4J's
    ``ConvolutionLayer``), then a bias per output channel and an activation.

    ``kernel``, ``stride`` and ``padding`` (zeros) are an int or an ``(h, w)`` pair;
    ``input_size=(h, w)`` is the size of the input image (see the module's docstring for when
    it may be left out). Parameters ``W [out_channels, in_channels * kh * kw]`` (PyTorch's
    ``weight [out_channels, in_channels, kh, kw]`` reshaped, and DL4J's ``W`` too) then
    ``b [out_channels]``. ``weight_init`` counts ``in_channels * kh * kw`` as the fan-in and
    ``out_channels * kh * kw`` as the fan-out; ``l2`` and ``dropout`` (of the input) are those
    of :class:`~sparkbatch.nn.Dense`.
    """

    in_channels: int
    out_channels: int
    kernel: int | Pair
    stride: int | Pair = 1
    padding: int | Pair = 0
    activation: str = "relu"
    weight_init: str = "xavier"
    l2: float = 0.0
    dropout: float = 0.0
    alpha: float | None = None
    input_size: Pair | None = None

    param_words: ClassVar[dict[str, str]] = {"W": "weights", "b": "bias"}

    def __post_init__(self) -> None:
        set_count(self, "in_channels")
        set_count(self, "out_channels")
        self._window()
        if self.weight_init not in WEIGHT_INITS:
            raise ValueError(
                f"unknown weight_init {self.weight_init!r}; choose one of {', '.join(WEIGHT_INITS)}"
            )
        if not (self.l2 >= 0 and math.isfinite(self.l2)):
            raise ValueError(f"Conv2D.l2 must be >= 0, got {self.l2}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"Conv2D.dropout must be in [0, 1), got {self.dropout}")
        alpha = DEFAULT_ALPHA.get(self.activation, 0.0) if self.alpha is None else self.alpha
        object.__setattr__(self, "_code", activation_code(self.activation))
        object.__setattr__(self, "_alpha", float(alpha))
        object.__setattr__(self, "_needs_z", needs_preactivation(self.activation))

    @property
    def channels_in(self) -> int:
        return self.in_channels

    @property
    def channels_out(self) -> int:
        return self.out_channels

    def with_input(self, shape: tuple[int, int, int]) -> Conv2D:
        if shape[0] != self.in_channels:
            raise ValueError(
                f"Conv2D has in_channels={self.in_channels} but its input images have "
                f"{shape[0]} channels (shape {shape})"
            )
        return replace(self, input_size=shape[1:])

    @property
    def _patch(self) -> int:
        return self.in_channels * self.kernel[0] * self.kernel[1]

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"W": (self.out_channels, self._patch), "b": (self.out_channels,)}

    def init_params(self, rng: np.random.Generator, params: dict[str, np.ndarray]) -> None:
        area = self.kernel[0] * self.kernel[1]
        fill_weights(rng, self.weight_init, params["W"], self._patch, self.out_channels * area)

    def work_shapes(self, rows: int) -> dict[str, Any]:
        _, oh, ow = self._known(self.output_shape)
        cells = rows * oh * ow
        shapes: dict[str, Any] = {
            "n": rows,
            "col": (cells, self._patch),
            "dcol": "col",  # col is spent once dW is computed
            "z": (cells, self.out_channels),
            "dz": (cells, self.out_channels),
            "out": (rows, self.n_out),
        }
        shapes["a"] = (cells, self.out_channels) if self._needs_z else "z"
        if self.dropout > 0:
            shapes["dropped"] = (rows, self.n_in)
        return shapes

    def forward(self, backend: Any, params: Params, x: Any, work: Work, seed: int | None) -> Any:
        if seed is not None and self.dropout > 0:
            backend.copy(work["dropped"], x)
            backend.dropout(work["dropped"], self.dropout, seed)
            x = work["dropped"]
        col, z, a, out = work["col"], work["z"], work["a"], work["out"]
        backend.im2col(x, col, *self._args())
        backend.matmul(col, params["W"], z, trans_b=True)
        backend.bias_activation(z, params["b"], a, self._code, self._alpha)
        _, oh, ow = self.output_shape  # type: ignore[misc]
        backend.channels_first(a, out, work["n"], self.out_channels, oh * ow)
        return out

    def backward(self, backend, params, grads, work, d_out, d_in, seed) -> None:
        _, oh, ow = self.output_shape  # type: ignore[misc]
        dz = work["dz"]
        backend.channels_last(d_out, dz, work["n"], self.out_channels, oh * ow)
        z = work["z"] if self._needs_z else None
        backend.activation_backward(dz, z, work["a"], dz, grads["b"], self._code, self._alpha)
        backend.matmul(dz, work["col"], grads["W"], trans_a=True)
        if self.l2 > 0:
            backend.axpy(grads["W"], params["W"], self.l2)
        if d_in is not None:
            dcol = work["dcol"]
            backend.matmul(dz, params["W"], dcol)
            backend.col2im(dcol, d_in, *self._args())
            if self.dropout > 0:  # the same mask as forward, recomputed from the seed
                backend.dropout(d_in, self.dropout, seed)

    def l2_penalty(self, backend: Any, params: Params) -> float:
        if self.l2 > 0:
            return 0.5 * self.l2 * backend.sum_squares(params["W"])
        return 0.0


@dataclass(frozen=True)
class _Pool(_Spatial):
    """Pooling over ``kernel`` windows (an int or ``(h, w)``), ``stride`` defaulting to the
    kernel, ``padding`` below the kernel (windows count only their in-image positions);
    ``channels`` and ``input_size`` of the input image. No parameters."""

    kernel: int | Pair
    stride: int | Pair | None = None
    padding: int | Pair = 0
    input_size: Pair | None = None
    channels: int | None = None

    def __post_init__(self) -> None:
        name = type(self).__name__
        set_count(self, "channels", optional=True)
        self._window()
        if self.padding[0] >= self.kernel[0] or self.padding[1] >= self.kernel[1]:
            raise ValueError(
                f"{name}: padding {self.padding} must be below the kernel {self.kernel} (a "
                "window of padding only would have nothing to pool)"
            )

    @property
    def channels_in(self) -> int | None:
        return self.channels

    @property
    def channels_out(self) -> int | None:
        return self.channels

    def with_input(self, shape: tuple[int, int, int]) -> _Pool:
        return self._taking(shape)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {}

    def init_params(self, rng: np.random.Generator, params: dict[str, np.ndarray]) -> None:
        pass

    def work_shapes(self, rows: int) -> dict[str, Any]:
        return {"out": (rows, self.n_out)}


@dataclass(frozen=True)
class MaxPool2D(_Pool):
    """Max pooling (DL4J's ``SubsamplingLayer`` with ``PoolingType.MAX``, PyTorch's
    ``MaxPool2d``): the maximum of each window, NaN propagating. The gradient of a window goes
    to the first position (row-major) holding its maximum."""

    def forward(self, backend: Any, params: Params, x: Any, work: Work, seed: int | None) -> Any:
        work["x"] = x
        backend.max_pool(x, work["out"], *self._args())
        return work["out"]

    def backward(self, backend, params, grads, work, d_out, d_in, seed) -> None:
        if d_in is not None:
            backend.max_pool_backward(work["x"], work["out"], d_out, d_in, *self._args())


@dataclass(frozen=True)
class AvgPool2D(_Pool):
    """Average pooling (``SubsamplingLayer`` with ``PoolingType.AVG``): the mean of each
    window's in-image positions, padding not counted (PyTorch's ``AvgPool2d`` with
    ``count_include_pad=False``)."""

    def forward(self, backend: Any, params: Params, x: Any, work: Work, seed: int | None) -> Any:
        backend.avg_pool(x, work["out"], *self._args())
        return work["out"]

    def backward(self, backend, params, grads, work, d_out, d_in, seed) -> None:
        if d_in is not None:
            backend.avg_pool_backward(d_out, d_in, *self._args())


@dataclass(frozen=True)
class Flatten(_Spatial):
    """Where images become feature vectors: the identity on the rows (already ``c * h * w``
    per example, channel-major, as PyTorch's ``flatten`` of NCHW). ``channels`` and
    ``input_size`` are those of its input image (a Network fills them in). No parameters."""

    channels: int | None = None
    input_size: Pair | None = None

    gives_image: ClassVar[bool] = False

    def __post_init__(self) -> None:
        set_count(self, "channels", optional=True)
        object.__setattr__(self, "input_size", _optional_pair(self.input_size, "input_size"))

    @property
    def channels_in(self) -> int | None:
        return self.channels

    @property
    def output_shape(self) -> tuple[int, int, int] | None:
        return self.input_shape

    def with_input(self, shape: tuple[int, int, int]) -> Flatten:
        return self._taking(shape)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {}

    def init_params(self, rng: np.random.Generator, params: dict[str, np.ndarray]) -> None:
        pass

    def work_shapes(self, rows: int) -> dict[str, Any]:
        return {}

    def forward(self, backend: Any, params: Params, x: Any, work: Work, seed: int | None) -> Any:
        return x

    def backward(self, backend, params, grads, work, d_out, d_in, seed) -> None:
        if d_in is not None:
            backend.copy(d_in, d_out)


for _cls in (Conv2D, MaxPool2D, AvgPool2D, Flatten):
    register_layer(_cls)


def is_spatial(layer: Any) -> bool:
    """Whether ``layer`` takes images (Conv2D, MaxPool2D, AvgPool2D, Flatten)."""
    return isinstance(layer, _Spatial)


def resolve_sizes(layers: Sequence[Layer]) -> tuple[Layer, ...]:
    """``layers`` of a chain with every spatial layer's input image known: one without
    ``input_size`` takes the output shape of the layer before it. ValueError naming the layer
    and the sizes when a spatial layer has no size to take or does not match its input."""
    resolved: list[Layer] = []
    for i, layer in enumerate(layers):
        if is_spatial(layer):
            previous = resolved[-1] if resolved else None
            given = None
            if is_spatial(previous) and previous.gives_image:  # type: ignore[union-attr]
                given = previous.output_shape  # type: ignore[union-attr]
            name = type(layer).__name__
            if layer.input_shape is None:
                if given is None:
                    after = (
                        "it is the first layer"
                        if previous is None
                        else f"layer {i - 1} ({type(previous).__name__}) does not give images"
                    )
                    raise ValueError(
                        f"layer {i} ({name}) needs the size of its input image: give "
                        f"input_size=(h, w) (and channels= to a pooling layer or Flatten); "
                        f"{after}"
                    )
                try:
                    layer = layer.with_input(given)
                except ValueError as e:
                    raise ValueError(f"layer {i} ({name}): {e}") from None
            elif given is not None and layer.input_shape != given:
                raise ValueError(
                    f"layer {i} ({name}) takes images of shape {layer.input_shape} (c, h, w) but "
                    f"layer {i - 1} ({type(previous).__name__}) gives {given}"
                )
        resolved.append(layer)
    return tuple(resolved)
