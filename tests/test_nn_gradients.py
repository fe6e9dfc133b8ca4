"""Gradient checks of the built-in network by central differences, in float64.

Every activation (as a hidden layer), every loss with the output activations it is used with,
L2, dropout and masked sequences: the native backward pass must match d(score)/d(parameter)
measured numerically to a relative error under 1e-5 (DL4J's GradientCheckUtil criterion:
entries where both gradients are below 1e-8 in absolute value are compared absolutely).
"""

from __future__ import annotations

import numpy as np
import pytest
from tests.gradient_check import assert_gradients

from sparkbatch.data import DataSet
from sparkbatch.nn import ACTIVATIONS, SGD, Dense, Network, Output

STEP = 1e-6
MAX_RELATIVE_ERROR = 1e-5
MIN_ABSOLUTE_ERROR = 1e-8


def _labels(loss: str, rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    if loss in ("cross_entropy",):
        return np.eye(k)[rng.integers(0, k, n)]
    if loss == "binary_cross_entropy":
        return rng.integers(0, 2, (n, k)).astype(np.float64)
    return rng.normal(size=(n, k))


def _check(net: Network, ds: DataSet) -> None:
    assert_gradients(
        net,
        ds,
        step=STEP,
        max_relative_error=MAX_RELATIVE_ERROR,
        min_absolute_error=MIN_ABSOLUTE_ERROR,
    )


@pytest.mark.parametrize("activation", [a for a in ACTIVATIONS])
def test_hidden_activation_gradients(activation):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 4))
    net = Network(
        [Dense(4, 5, activation), Output(5, 3, "softmax", "cross_entropy")],
        SGD(0.1),
        seed=3,
        dtype="float64",
    )
    _check(net, DataSet(x, _labels("cross_entropy", rng, 6, 3)))


@pytest.mark.parametrize(
    ("activation", "loss"),
    [
        ("softmax", "cross_entropy"),
        ("sigmoid", "binary_cross_entropy"),
        ("sigmoid", "cross_entropy"),  # the unfused cross-entropy of an arbitrary activation
        ("softmax", "binary_cross_entropy"),
        ("identity", "mse"),
        ("tanh", "mse"),
        ("softmax", "mse"),
        ("identity", "mae"),
        ("elu", "mae"),
    ],
)
def test_output_loss_gradients(activation, loss):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(7, 3))
    y = _labels(loss, rng, 7, 4)
    if activation == "sigmoid" and loss == "cross_entropy":
        y = rng.uniform(0, 1, (7, 4))  # any non-negative targets
    net = Network(
        [Dense(3, 5, "tanh"), Output(5, 4, activation, loss)], SGD(0.1), seed=4, dtype="float64"
    )
    _check(net, DataSet(x, y))


def test_soft_labels_with_softmax_cross_entropy():
    # labels that do not sum to 1 per row: the gradient is p * sum(y) - y, not p - y
    rng = np.random.default_rng(3)
    net = Network([Output(3, 4, "softmax", "cross_entropy")], SGD(0.1), seed=5, dtype="float64")
    _check(net, DataSet(rng.normal(size=(5, 3)), rng.uniform(0, 2, (5, 4))))


def test_l2_and_dropout_gradients():
    rng = np.random.default_rng(4)
    net = Network(
        [
            Dense(4, 6, "relu", l2=0.01),
            Dense(6, 5, "gelu", dropout=0.3, l2=0.02),
            Output(5, 3, "softmax", "cross_entropy", l2=0.005, dropout=0.2),
        ],
        SGD(0.1),
        seed=6,
        dtype="float64",
    )
    _check(net, DataSet(rng.normal(size=(8, 4)), _labels("cross_entropy", rng, 8, 3)))


def test_masked_sequence_gradients():
    # [n, f, t] fitted step by step; the mask weighs each step's loss, 0 drops it
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 4, 5))
    y = np.eye(2)[rng.integers(0, 2, (3, 5))].transpose(0, 2, 1)  # [n, 2, t]
    mask = np.ones((3, 5))
    mask[0, 3:] = 0
    mask[2, 1:] = 0
    net = Network(
        [Dense(4, 5, "leaky_relu"), Output(5, 2, "softmax", "cross_entropy")],
        SGD(0.1),
        seed=7,
        dtype="float64",
    )
    ds = DataSet(x, y, features_mask=mask, labels_mask=mask)
    _check(net, ds)
    # masked steps change nothing: scrambling their labels keeps the score
    scrambled = y.copy()
    scrambled[0, :, 3:] = 1 - scrambled[0, :, 3:]
    assert net.compute_gradients(DataSet(x, scrambled, mask, mask)) == pytest.approx(
        net.compute_gradients(ds), rel=1e-12
    )
