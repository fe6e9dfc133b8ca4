"""Layers of the built-in network: the :class:`Layer` protocol, ``Dense`` and ``Output``.

A layer is immutable configuration (sizes, activation, initialisation, regularisation) plus the
arithmetic of its forward and backward passes, written once against a
:class:`~sparkbatch.nn.backend.Backend`. Its parameters are views into the model's one flat
buffer: :meth:`Layer.param_shapes` declares them in order (``W [n_in, n_out]`` then
``b [n_out]`` for both layers here, DL4J's order), and the model lays the layers out one after
another. Adding a layer means one class with these methods (and its kernels, if it needs new
ones); the engine that runs networks and graphs does not change.

Features are rows ``[rows, n_in]``: a minibatch ``[n, n_in]``, or a sequence ``[n, n_in, t]``
with every time step a row.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np

from .functions import DEFAULT_ALPHA, activation_code, loss_code, needs_preactivation

__all__ = [
    "Layer",
    "Dense",
    "Output",
    "WEIGHT_INITS",
    "fill_weights",
    "is_layer_type",
    "layer_from_config",
    "register_layer",
    "set_count",
]

#: Weight initialisations, as DL4J's ``WeightInit``: ``xavier`` N(0, 2 / (n_in + n_out)),
#: ``he`` (alias ``relu``) N(0, 2 / n_in), ``uniform`` U(-1/sqrt(n_in), 1/sqrt(n_in)), ``zeros``.
WEIGHT_INITS = ("xavier", "he", "relu", "uniform", "zeros")

Params = dict[str, Any]  # a layer's parameters (or their gradients) by name, as backend arrays
Work = dict[str, Any]  # a layer's work arrays for one batch size, by name


class Layer:
    """The protocol every layer implements (``Dense`` and ``Output`` are the examples).

    The engine calls, per layer: :meth:`param_shapes` and :meth:`init_params` once;
    :meth:`work_shapes` once per batch size, allocating what it returns into the ``work``
    dict; then per minibatch :meth:`forward` in topological order and :meth:`backward` in
    reverse. ``seed`` is the layer's dropout seed for this step (None when not training).
    A layer may store in ``work`` during :meth:`forward` what its :meth:`backward` needs.
    """

    #: Width of the layer's input and of its output (features per row).
    n_in: int
    n_out: int
    #: L2 coefficient (the engine asks for :meth:`l2_penalty` only where it is > 0) and the
    #: rate of input dropout (the engine computes a dropout seed only where it is > 0).
    l2: float = 0.0
    dropout: float = 0.0
    #: Names the error messages use for the parameters, e.g. ``{"W": "weights"}``.
    param_words: ClassVar[dict[str, str]] = {}
    #: How the layer treats the time steps of a sequence (NOTE [rows of a sequence] in
    #: :mod:`sparkbatch.nn.engine`): ``"rows"``, every row on its own (``Dense``, ``Output``);
    #: ``"sequence"``, whole sequences in and out, the engine handing the layer ``n``, ``t``
    #: (:meth:`sequence_work_shapes`) and the features mask (``work["mask"]``) (``LSTM``,
    #: ``RnnOutput``); ``"last_step"``, a sequence in and one row per example out
    #: (``LastTimeStep``).
    time: ClassVar[str] = "rows"

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shapes of the parameters, by name, in their order in the flat buffer."""
        raise NotImplementedError

    @property
    def num_params(self) -> int:
        return sum(math.prod(shape) for shape in self.param_shapes().values())

    def init_params(self, rng: np.random.Generator, params: dict[str, np.ndarray]) -> None:
        """Fill the host views ``params`` (zeros on entry) with initial values from ``rng``."""
        raise NotImplementedError

    def work_shapes(self, rows: int) -> dict[str, tuple[int, ...] | str]:
        """Work arrays for ``rows`` rows, by name: a shape, or the name of an earlier entry to
        share its memory."""
        raise NotImplementedError

    def sequence_work_shapes(self, n: int, t: int) -> dict[str, Any]:
        """Work arrays for ``n`` sequences of ``t`` steps (layers whose :attr:`time` is not
        ``"rows"``); by default those of ``n * t`` rows."""
        return self.work_shapes(n * t)

    def forward(self, backend: Any, params: Params, x: Any, work: Work, seed: int | None) -> Any:
        """The layer's output for input rows ``x`` (an array of ``work`` or of the caller)."""
        raise NotImplementedError

    def backward(
        self,
        backend: Any,
        params: Params,
        grads: Params,
        work: Work,
        d_out: Any,
        d_in: Any,
        seed: int | None,
    ) -> None:
        """Write the parameters' gradients into ``grads`` and the gradient with respect to the
        input into ``d_in`` (None: not needed), from ``d_out``, the gradient with respect to
        the output (which the layer may overwrite)."""
        raise NotImplementedError

    def l2_penalty(self, backend: Any, params: Params) -> float:
        """The layer's L2 term of the score (0 without L2)."""
        return 0.0


def fill_weights(
    rng: np.random.Generator, kind: str, target: np.ndarray, fan_in: int, fan_out: int
) -> None:
    """Fill ``target`` by weight initialisation ``kind`` (one of :data:`WEIGHT_INITS`) for a
    layer of the given fan-in and fan-out (``n_in``, ``n_out`` of a Dense layer)."""
    shape = target.shape
    if kind == "xavier":
        target[...] = rng.normal(0.0, math.sqrt(2.0 / (fan_in + fan_out)), shape)
    elif kind in ("he", "relu"):
        target[...] = rng.normal(0.0, math.sqrt(2.0 / fan_in), shape)
    elif kind == "uniform":
        bound = 1.0 / math.sqrt(fan_in)
        target[...] = rng.uniform(-bound, bound, shape)
    else:
        target[...] = 0.0


def set_count(layer: Any, field: str, optional: bool = False) -> None:
    """Check ``layer.field`` is an int >= 1 (or None when ``optional``) and store it as a
    Python int (a numpy integer would not survive ``to_json``)."""
    value = getattr(layer, field)
    if value is None and optional:
        return
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{type(layer).__name__}.{field} must be an int >= 1, got {value!r}")
    object.__setattr__(layer, field, int(value))


@dataclass(frozen=True)
class _DenseBase(Layer):
    """``W [n_in, n_out]``, ``b [n_out]``, an activation, input dropout and L2 on ``W``."""

    param_words: ClassVar[dict[str, str]] = {"W": "weights", "b": "bias"}

    def _check(self) -> None:
        name = type(self).__name__
        set_count(self, "n_in")
        set_count(self, "n_out")
        activation_code(self.activation)
        if self.weight_init not in WEIGHT_INITS:
            raise ValueError(
                f"unknown weight_init {self.weight_init!r}; choose one of {', '.join(WEIGHT_INITS)}"
            )
        if not (self.l2 >= 0 and math.isfinite(self.l2)):
            raise ValueError(f"{name}.l2 must be >= 0, got {self.l2}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"{name}.dropout must be in [0, 1), got {self.dropout}")
        # Looked up once, for the step (frozen: set through object.__setattr__).
        object.__setattr__(self, "_code", activation_code(self.activation))
        object.__setattr__(self, "_alpha", self.slope)
        object.__setattr__(self, "_needs_z", needs_preactivation(self.activation))

    @property
    def num_params(self) -> int:
        """Weights plus biases."""
        return self.n_in * self.n_out + self.n_out

    @property
    def slope(self) -> float:
        """The activation's ``alpha`` (leaky ReLU's slope, ELU's scale), defaulted."""
        if self.alpha is not None:
            return float(self.alpha)
        return DEFAULT_ALPHA.get(self.activation, 0.0)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"W": (self.n_in, self.n_out), "b": (self.n_out,)}

    def init_params(self, rng: np.random.Generator, params: dict[str, np.ndarray]) -> None:
        self.init_weights(rng, params["W"])

    def init_weights(self, rng: np.random.Generator, weights: np.ndarray) -> None:
        """Fill ``weights`` (the layer's W view) by the layer's initialisation."""
        fill_weights(rng, self.weight_init, weights, self.n_in, self.n_out)

    def l2_penalty(self, backend: Any, params: Params) -> float:
        if self.l2 > 0:
            return 0.5 * self.l2 * backend.sum_squares(params["W"])
        return 0.0

    def _dropped_input(self, backend: Any, x: Any, work: Work, seed: int | None) -> Any:
        """``x`` after the layer's input dropout (a copy in ``work``) when training."""
        if seed is not None and self.dropout > 0:
            dropped = work["dropped"]
            backend.copy(dropped, x)
            backend.dropout(dropped, self.dropout, seed)
            x = dropped
        work["x"] = x
        return x

    def _weight_and_input_gradients(
        self,
        backend: Any,
        params: Params,
        grads: Params,
        work: Work,
        dz: Any,
        d_in: Any,
        seed: int | None,
    ) -> None:
        """``dW = x.T @ dz`` (+ L2), and ``d_in = dz @ W.T`` through the dropout mask."""
        backend.matmul(work["x"], dz, grads["W"], trans_a=True)
        if self.l2 > 0:
            backend.axpy(grads["W"], params["W"], self.l2)
        if d_in is not None:
            backend.matmul(dz, params["W"], d_in, trans_b=True)
            if self.dropout > 0:  # the same mask as forward, recomputed from the seed
                backend.dropout(d_in, self.dropout, seed)

    def to_config(self) -> dict[str, Any]:
        return {"type": type(self).__name__, **asdict(self)}


@dataclass(frozen=True)
class Dense(_DenseBase):
    """A fully connected hidden layer: ``a = activation(x @ W + b)``.

    ``dropout`` is the probability of dropping each *input* of the layer while training
    (inverted dropout, as DL4J applies it to a layer's input; note that DL4J's ``dropOut(p)``
    takes the probability of *keeping*). ``l2`` adds ``l2 / 2 * |W|^2`` to the score.
    """

    n_in: int
    n_out: int
    activation: str = "relu"
    weight_init: str = "xavier"
    l2: float = 0.0
    dropout: float = 0.0
    alpha: float | None = None

    def __post_init__(self) -> None:
        self._check()

    def work_shapes(self, rows: int) -> dict[str, tuple[int, ...] | str]:
        shapes: dict[str, tuple[int, ...] | str] = {"z": (rows, self.n_out)}
        # An activation whose gradient needs only its output overwrites the pre-activation.
        shapes["a"] = (rows, self.n_out) if needs_preactivation(self.activation) else "z"
        if self.dropout > 0:
            shapes["dropped"] = (rows, self.n_in)
        return shapes

    def forward(self, backend: Any, params: Params, x: Any, work: Work, seed: int | None) -> Any:
        x = self._dropped_input(backend, x, work, seed)
        z, a = work["z"], work["a"]
        backend.matmul(x, params["W"], z)
        backend.bias_activation(z, params["b"], a, self._code, self._alpha)
        return a

    def backward(self, backend, params, grads, work, d_out, d_in, seed) -> None:
        z = work["z"] if self._needs_z else None
        backend.activation_backward(d_out, z, work["a"], d_out, grads["b"], self._code, self._alpha)
        self._weight_and_input_gradients(backend, params, grads, work, d_out, d_in, seed)


@dataclass(frozen=True)
class Output(_DenseBase):
    """The output layer: an activation and the loss it is trained on.

    Softmax with ``"cross_entropy"`` (DL4J's MCXENT) and sigmoid with ``"binary_cross_entropy"``
    (XENT) are computed in one fused, numerically stable native pass.
    """

    n_in: int
    n_out: int
    activation: str = "softmax"
    loss: str = "cross_entropy"
    weight_init: str = "xavier"
    l2: float = 0.0
    dropout: float = 0.0
    alpha: float | None = None

    def __post_init__(self) -> None:
        self._check()
        object.__setattr__(self, "_loss", loss_code(self.loss))

    def work_shapes(self, rows: int) -> dict[str, tuple[int, ...] | str]:
        shapes: dict[str, tuple[int, ...] | str] = {
            "z": (rows, self.n_out),
            "a": (rows, self.n_out),
            "dz": (rows, self.n_out),
        }
        if self.dropout > 0:
            shapes["dropped"] = (rows, self.n_in)
        return shapes

    def forward(self, backend: Any, params: Params, x: Any, work: Work, seed: int | None) -> Any:
        """Training (``seed`` given): the pre-activation only, which :meth:`loss_gradient`
        finishes in one fused pass; inference: the activations."""
        x = self._dropped_input(backend, x, work, seed)
        z = work["z"]
        backend.matmul(x, params["W"], z)
        if seed is None:
            backend.bias_activation(z, params["b"], work["a"], self._code, self._alpha)
            return work["a"]
        return z

    def loss_gradient(
        self,
        backend: Any,
        params: Params,
        grads: Params,
        work: Work,
        labels: Any,
        weights: Any,
        scale: float,
    ) -> float:
        """After a training :meth:`forward`: bias, activation, loss and ``dz`` (times
        ``scale``) and the bias gradient in one pass; returns the sum of the loss terms."""
        return backend.output_layer(
            self._loss,
            self._code,
            self._alpha,
            work["z"],
            params["b"],
            labels,
            weights,
            work["a"],
            work["dz"],
            grads["b"],
            scale,
        )

    def loss_sum(self, backend: Any, work: Work, labels: Any, weights: Any) -> float:
        """After an inference :meth:`forward`: the sum of the (row-weighted) loss terms."""
        return backend.loss_sum(self._loss, self._code, work["z"], work["a"], labels, weights)

    def backward(self, backend, params, grads, work, d_out, d_in, seed) -> None:
        """From ``work["dz"]`` (``d_out`` is None: the loss is the output's gradient)."""
        self._weight_and_input_gradients(backend, params, grads, work, work["dz"], d_in, seed)


_LAYERS: dict[str, type[Layer]] = {"Dense": Dense, "Output": Output}


def register_layer(cls: type[Layer]) -> type[Layer]:
    """Make ``cls`` known to :func:`layer_from_config` (configurations name layers by class)."""
    _LAYERS[cls.__name__] = cls
    return cls


def is_layer_type(name: Any) -> bool:
    """Whether configurations name a layer class ``name`` (not a vertex)."""
    return name in _LAYERS


def layer_from_config(config: dict[str, Any]) -> Layer:
    """The layer that ``to_config()`` described."""
    config = dict(config)
    kind = config.pop("type", None)
    if kind not in _LAYERS:
        raise ValueError(f"unknown layer type {kind!r}; expected one of {', '.join(_LAYERS)}")
    return _LAYERS[kind](**config)
