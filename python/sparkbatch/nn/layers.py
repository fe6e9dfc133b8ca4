"""Layer configurations of the built-in network: ``Dense`` and ``Output``.

A layer here is configuration only (sizes, activation, initialisation, regularisation); its
weights ``W [n_in, n_out]`` and bias ``b [n_out]`` are views into the network's one flat
parameter buffer, laid out layer after layer as ``W`` then ``b`` (DL4J's order).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .functions import DEFAULT_ALPHA, activation_code, loss_code

__all__ = ["Dense", "Output", "WEIGHT_INITS", "layer_from_config"]

#: Weight initialisations, as DL4J's ``WeightInit``: ``xavier`` N(0, 2 / (n_in + n_out)),
#: ``he`` (alias ``relu``) N(0, 2 / n_in), ``uniform`` U(-1/sqrt(n_in), 1/sqrt(n_in)), ``zeros``.
WEIGHT_INITS = ("xavier", "he", "relu", "uniform", "zeros")


@dataclass(frozen=True)
class _Layer:
    def _check(self) -> None:
        name = type(self).__name__
        if self.n_in < 1 or self.n_out < 1:
            raise ValueError(
                f"{name} needs n_in >= 1 and n_out >= 1, got {self.n_in}, {self.n_out}"
            )
        activation_code(self.activation)
        if self.weight_init not in WEIGHT_INITS:
            raise ValueError(
                f"unknown weight_init {self.weight_init!r}; choose one of {', '.join(WEIGHT_INITS)}"
            )
        if not (self.l2 >= 0 and math.isfinite(self.l2)):
            raise ValueError(f"{name}.l2 must be >= 0, got {self.l2}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"{name}.dropout must be in [0, 1), got {self.dropout}")

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

    def init_weights(self, rng: np.random.Generator, weights: np.ndarray) -> None:
        """Fill ``weights`` (the layer's W view) by the layer's initialisation."""
        n_in, n_out = self.n_in, self.n_out
        if self.weight_init == "xavier":
            weights[...] = rng.normal(0.0, math.sqrt(2.0 / (n_in + n_out)), (n_in, n_out))
        elif self.weight_init in ("he", "relu"):
            weights[...] = rng.normal(0.0, math.sqrt(2.0 / n_in), (n_in, n_out))
        elif self.weight_init == "uniform":
            bound = 1.0 / math.sqrt(n_in)
            weights[...] = rng.uniform(-bound, bound, (n_in, n_out))
        else:
            weights[...] = 0.0

    def to_config(self) -> dict[str, Any]:
        return {"type": type(self).__name__, **asdict(self)}


@dataclass(frozen=True)
class Dense(_Layer):
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


@dataclass(frozen=True)
class Output(_Layer):
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
        loss_code(self.loss)


def layer_from_config(config: dict[str, Any]) -> Dense | Output:
    """The layer that ``to_config()`` described."""
    config = dict(config)
    kind = config.pop("type", None)
    classes = {"Dense": Dense, "Output": Output}
    if kind not in classes:
        raise ValueError(f"unknown layer type {kind!r}; expected Dense or Output")
    return classes[kind](**config)
