"""Names of the activations and losses of the built-in network, and their native codes.

The codes are the ``Activation`` and ``Loss`` enums of ``csrc/nn_math.hpp``. Losses keep DL4J's
definitions: cross-entropy sums over the outputs, MSE and MAE average over them, and every loss
is averaged over the examples of a minibatch.
"""

from __future__ import annotations

__all__ = ["ACTIVATIONS", "LOSSES", "activation_code", "loss_code", "needs_preactivation"]

ACTIVATIONS: dict[str, int] = {
    "identity": 0,
    "relu": 1,
    "leaky_relu": 2,
    "elu": 3,
    "gelu": 4,
    "tanh": 5,
    "sigmoid": 6,
    "softmax": 7,
}

#: Loss names; DL4J's names are accepted as aliases.
LOSSES: dict[str, int] = {
    "cross_entropy": 0,
    "mcxent": 0,
    "negative_log_likelihood": 0,
    "binary_cross_entropy": 1,
    "xent": 1,
    "mse": 2,
    "mae": 3,
    "l1": 3,
}

#: The default ``alpha`` of the activations that take one (leaky ReLU's slope, ELU's scale).
DEFAULT_ALPHA: dict[str, float] = {"leaky_relu": 0.01, "elu": 1.0}

_PREACTIVATION = frozenset({"relu", "leaky_relu", "elu", "gelu"})


def activation_code(name: str) -> int:
    """The native code of activation ``name``; ValueError naming the choices otherwise."""
    try:
        return ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}"
        ) from None


def loss_code(name: str) -> int:
    """The native code of loss ``name``; ValueError naming the choices otherwise."""
    try:
        return LOSSES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}") from None


def needs_preactivation(name: str) -> bool:
    """Whether the gradient of activation ``name`` needs its input (else its output suffices)."""
    return name in _PREACTIVATION
