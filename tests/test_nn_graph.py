"""Graph: gradients by central differences, a chain that is a Network step for step, validation
messages, scoring and outputs against numpy, files and configurations, and the engine run on a
backend that stages and carves its memory as a GPU's does.

Every gradient check runs in float64 over every parameter: the analytic gradient of
``compute_gradients`` must match d(score)/d(parameter) measured by central differences (step
1e-5) to a relative error under 1e-6 (entries where both are below 1e-8 in absolute value
are compared absolutely, as in ``test_nn_gradients.py``).
"""

from __future__ import annotations

import json
import math
import pickle
import re

import numpy as np
import pytest
from tests.gradient_check import assert_gradients

from sparkbatch import FormatError
from sparkbatch.data import DataSet, MultiDataSet
from sparkbatch.nn import (
    SGD,
    Adam,
    Dense,
    ElementWise,
    Graph,
    Merge,
    Nesterov,
    Network,
    Output,
)
from sparkbatch.nn import graph as graph_module
from sparkbatch.nn.backend import CpuBackend
from sparkbatch.nn.engine import Engine

STEP = 1e-5  # at 1e-6, round-off (~1e-16 * score / STEP) swamps gradients near 1e-4
MAX_RELATIVE_ERROR = 1e-6
MIN_ABSOLUTE_ERROR = 1e-8


# -- helpers ---------------------------------------------------------------------------------------


def _check_gradients(graph: Graph, batch: MultiDataSet | DataSet) -> None:
    """Central differences over every parameter against ``graph.gradients()``."""
    assert_gradients(
        graph,
        batch,
        step=STEP,
        max_relative_error=MAX_RELATIVE_ERROR,
        min_absolute_error=MIN_ABSOLUTE_ERROR,
    )


def _rows(x: np.ndarray) -> np.ndarray:
    """``[n, f]`` as it is, ``[n, f, t]`` as rows ``[n * t, f]`` (time steps of an example
    together), as the models see them."""
    return x if x.ndim == 2 else x.transpose(0, 2, 1).reshape(-1, x.shape[1])


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _dense(graph: Graph, name: str, x: np.ndarray, activation) -> np.ndarray:
    p = graph.layer_params(name)
    return activation(x @ p["W"] + p["b"])


def _one_hot_sequences(rng: np.random.Generator, n: int, k: int, t: int) -> np.ndarray:
    return np.eye(k)[rng.integers(0, k, (n, t))].transpose(0, 2, 1)  # [n, k, t]


def _labels(loss: str, rng: np.random.Generator, n: int, k: int, t: int) -> np.ndarray:
    if loss == "binary_cross_entropy":
        return rng.integers(0, 2, (n, k, t)).astype(np.float64)
    return rng.normal(size=(n, k, t))


def _masks(n: int, t: int) -> list[np.ndarray]:
    """Labels masks ``[n, t]`` of the two outputs: whole examples and single steps dropped."""
    first = np.ones((n, t))
    first[1] = 0  # example 1 counts for nothing
    first[3, t - 1] = 0
    second = np.ones((n, t))
    second[0, :2] = 0
    second[4] = 0
    return [first, second]


def _copy_model_state(model, backend: CpuBackend):
    """``model`` running on ``backend`` from its current parameters and updater state."""
    model._engine = Engine(
        model._topology, backend, model.params().copy(), model.updater_state().copy()
    )
    return model


# -- 1. gradient checks ------------------------------------------------------------------------


def _two_by_two(combine: str, second_loss: str) -> Graph:
    """Inputs a [3] and b [4], a hidden layer each, ``combine`` of the two, and two outputs
    reading the combination: softmax cross-entropy and ``second_loss``."""
    if combine == "merge":
        vertex, width = (Merge(), "ha", "hb"), 10
    else:
        vertex, width = (ElementWise(combine), "ha", "hb"), 5
    second = (
        Output(width, 2, "identity", "mse", l2=0.02)
        if second_loss == "mse"
        else Output(width, 2, "sigmoid", "binary_cross_entropy", l2=0.02)
    )
    return Graph(
        ["a", "b"],
        {
            "ha": (Dense(3, 5, "tanh", l2=0.01), "a"),
            "hb": (Dense(4, 5, "sigmoid"), "b"),
            "v": vertex,
            "class": (Output(width, 3, "softmax", "cross_entropy"), "v"),
            "second": (second, "v"),
        },
        ["class", "second"],
        SGD(0.1),
        seed=11,
        dtype="float64",
    )


@pytest.mark.parametrize("second_loss", ["mse", "binary_cross_entropy"])
@pytest.mark.parametrize("combine", ["merge", "add", "average", "product", "max"])
def test_gradients_of_two_inputs_and_two_masked_outputs(combine, second_loss):
    rng = np.random.default_rng(20)
    n, t = 5, 3
    a, b = rng.normal(size=(n, 3, t)), rng.normal(size=(n, 4, t))
    labels = [_one_hot_sequences(rng, n, 3, t), _labels(second_loss, rng, n, 2, t)]
    batch = MultiDataSet([a, b], labels, labels_masks=_masks(n, t))
    graph = _two_by_two(combine, second_loss)
    if combine == "max":  # the maximum has a kink where its inputs tie: keep clear of it
        ha = _dense(graph, "ha", _rows(a), np.tanh)
        hb = _dense(graph, "hb", _rows(b), _sigmoid)
        assert np.abs(ha - hb).min() > 1e-4
    _check_gradients(graph, batch)


def test_gradients_with_one_output_masked_and_the_other_not():
    rng = np.random.default_rng(21)
    n, t = 6, 2
    a, b = rng.normal(size=(n, 3, t)), rng.normal(size=(n, 4, t))
    labels = [_one_hot_sequences(rng, n, 3, t), rng.normal(size=(n, 2, t))]
    batch = MultiDataSet([a, b], labels, labels_masks=[_masks(n, t)[0], None])
    _check_gradients(_two_by_two("merge", "mse"), batch)


def test_gradients_are_summed_where_several_vertices_read_one_output():
    # "h" is read five times: twice by one product, by a layer with dropout, by a merge and by
    # an output; "k" by a sum and an average. Every reader's gradient must reach them.
    rng = np.random.default_rng(22)
    n, t = 5, 2
    a, b = rng.normal(size=(n, 3, t)), rng.normal(size=(n, 4, t))
    graph = Graph(
        ["a", "b"],
        {
            "h": (Dense(3, 4, "tanh", l2=0.01), "a"),
            "k": (Dense(4, 4, "sigmoid"), "b"),
            "square": (ElementWise("product"), "h", "h"),
            "g": (Dense(4, 4, "tanh", dropout=0.25), "h"),
            "sum": (ElementWise("add"), "square", "g", "k"),
            "top": (ElementWise("average"), "sum", "k"),
            "m": (Merge(), "h", "top"),
            "class": (Output(8, 3, "softmax", "cross_entropy"), "m"),
            "flags": (Output(4, 2, "sigmoid", "binary_cross_entropy", l2=0.02), "h"),
        },
        ["class", "flags"],
        SGD(0.1),
        seed=12,
        dtype="float64",
    )
    labels = [_one_hot_sequences(rng, n, 3, t), _labels("binary_cross_entropy", rng, n, 2, t)]
    batch = MultiDataSet([a, b], labels, labels_masks=_masks(n, t))
    _check_gradients(graph, batch)


@pytest.mark.parametrize(
    "vertex",
    [
        (ElementWise("product"), "h", "h"),
        (ElementWise("product"), "h", "k", "h"),
        (ElementWise("add"), "h", "h"),
        (ElementWise("average"), "h", "k", "h"),
        (ElementWise("max"), "h", "k", "h"),  # h ties with itself: the first "h" takes it
        (Merge(), "h", "h"),
    ],
    ids=["product-hh", "product-hkh", "add-hh", "average-hkh", "max-hkh", "merge-hh"],
)
def test_gradients_where_a_vertex_reads_one_name_twice(vertex):
    rng = np.random.default_rng(23)
    n = 9
    x = rng.normal(size=(n, 3))
    width = 8 if isinstance(vertex[0], Merge) else 4
    graph = Graph(
        ["x"],
        {
            "h": (Dense(3, 4, "tanh", l2=0.01), "x"),
            "k": (Dense(3, 4, "sigmoid"), "x"),
            "v": vertex,
            "out": (Output(width, 3, "softmax", "cross_entropy"), "v"),
            "side": (Output(4, 2, "identity", "mse"), "k"),
        },
        ["out", "side"],
        SGD(0.1),
        seed=13,
        dtype="float64",
    )
    if vertex[0] == ElementWise("max"):
        h = _dense(graph, "h", x, np.tanh)
        k = _dense(graph, "k", x, _sigmoid)
        assert np.abs(h - k).min() > 1e-4
    batch = MultiDataSet([x], [np.eye(3)[rng.integers(0, 3, n)], rng.normal(size=(n, 2))])
    _check_gradients(graph, batch)


def test_gradients_through_vertices_of_inputs_alone():
    # A merge and a product of the inputs themselves (no parameter upstream: no backward pass
    # there), an input given with its width because it feeds only vertices, and an output that
    # reads an input directly.
    rng = np.random.default_rng(24)
    n = 7
    a, b = rng.normal(size=(n, 3)), rng.normal(size=(n, 3))
    graph = Graph(
        ["a", ("b", 3)],
        {
            "m": (Merge(), "a", "b"),
            "e": (ElementWise("product"), "a", "b"),
            "h": (Dense(6, 3, "tanh", dropout=0.3), "m"),
            "s": (ElementWise("add"), "h", "e", "b"),
            "o": (Output(3, 2, "softmax", "cross_entropy", l2=0.01), "s"),
            "r": (Output(3, 3, "identity", "mse"), "a"),
        },
        ["r", "o"],  # the labels' order, not the dict's
        SGD(0.1),
        seed=14,
        dtype="float64",
    )
    batch = MultiDataSet([a, b], [rng.normal(size=(n, 3)), np.eye(2)[rng.integers(0, 2, n)]])
    _check_gradients(graph, batch)


# -- 2. a chain is a Network -------------------------------------------------------------------


def _chain_pair(dtype: str) -> tuple[Network, Graph]:
    layers = [
        Dense(4, 8, "relu", dropout=0.2, l2=1e-3),
        Dense(8, 6, "tanh", dropout=0.1),
        Output(6, 3, "softmax", "cross_entropy", l2=1e-3),
    ]
    net = Network(layers, Adam(0.01), seed=7, dtype=dtype)
    graph = Graph(
        ["x"],
        {"first": (layers[0], "x"), "second": (layers[1], "first"), "out": (layers[2], "second")},
        ["out"],
        Adam(0.01),
        seed=7,
        dtype=dtype,
    )
    return net, graph


@pytest.mark.parametrize("sequences", [False, True], ids=["rows", "masked-sequences"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_chain_graph_steps_exactly_as_the_network(dtype, sequences):
    rng = np.random.default_rng(30)
    n = 37
    if sequences:
        x = rng.normal(size=(n, 4, 3)).astype(dtype)
        y = _one_hot_sequences(rng, n, 3, 3).astype(dtype)
        mask = (rng.uniform(size=(n, 3)) > 0.3).astype(dtype)
        data = DataSet(x, y, labels_mask=mask)
    else:
        x = rng.normal(size=(n, 4)).astype(dtype)
        data = DataSet(x, np.eye(3, dtype=dtype)[rng.integers(0, 3, n)])
    net, graph = _chain_pair(dtype)
    np.testing.assert_array_equal(graph.params(), net.params())
    assert graph.num_params == net.num_params
    for step, batch in enumerate(data.split(10)):  # 10, 10, 10 and 7 examples
        assert graph.fit_batch(batch) == net.fit_batch(batch), f"step {step}"
        np.testing.assert_array_equal(graph.gradients(), net.gradients())
        np.testing.assert_array_equal(graph.params(), net.params())
        np.testing.assert_array_equal(graph.updater_state(), net.updater_state())
    graph.fit(data, epochs=2, batch_size=16)
    net.fit(data, epochs=2, batch_size=16)
    np.testing.assert_array_equal(graph.params(), net.params())
    assert (graph.iteration, graph.epoch) == (net.iteration, net.epoch) == (10, 2)
    assert graph.last_score == net.last_score
    [out] = graph.output([x], batch_size=8)
    np.testing.assert_array_equal(out, net.output(x, batch_size=8))
    assert graph.score(data) == net.score(data)
    assert graph.compute_gradients(data) == net.compute_gradients(data)
    np.testing.assert_array_equal(graph.gradients(), net.gradients())
    for i, name in enumerate(["first", "second", "out"]):
        w, b = net.weights(i)
        np.testing.assert_array_equal(graph.layer_params(name)["W"], w)
        np.testing.assert_array_equal(graph.layer_params(name)["b"], b)


# -- 3. validation ---------------------------------------------------------------------------------


def _o(n_in: int) -> Output:
    return Output(n_in, 2, "softmax", "cross_entropy")


BAD_GRAPHS = [
    pytest.param(
        ["x"],
        {"h": (Dense(3, 4), "y"), "o": (_o(4), "h")},
        ["o"],
        "vertex 'h' reads 'y', which is neither an input ('x') nor a vertex",
        id="unknown-input-name",
    ),
    pytest.param(
        ["x"],
        {
            "a": (Dense(3, 4), "x"),
            "m": (Merge(), "a", "c"),
            "b": (Dense(8, 4), "m"),
            "c": (Dense(4, 4), "b"),
            "o": (_o(4), "c"),
        },
        ["o"],
        "the graph has a cycle: m -> b -> c -> m",
        id="cycle",
    ),
    pytest.param(
        ["x"],
        {"a": (Dense(3, 4), "x"), "b": (Dense(4, 4), "b"), "o": (_o(4), "b")},
        ["o"],
        "the graph has a cycle: b -> b",
        id="self-loop",
    ),
    pytest.param(
        ["x", "z"],
        {"h": (Dense(3, 4), "x"), "o": (_o(4), "h")},
        ["o"],
        "input 'z' is not read by any vertex",
        id="unused-input",
    ),
    pytest.param(
        ["x", "z"],
        {"h": (Dense(3, 4), "x"), "d": (Dense(2, 4), "z"), "o": (_o(4), "h")},
        ["o"],
        "input 'z' leads to no output",
        id="input-to-a-dead-end",
    ),
    pytest.param(
        ["x"],
        {"h": (Dense(3, 4), "x"), "dead": (Dense(4, 4), "h"), "o": (_o(4), "h")},
        ["o"],
        "vertex 'dead' leads to no output",
        id="vertex-to-no-output",
    ),
    pytest.param(
        ["x"],
        {"h": (Dense(3, 4), "x"), "o": (_o(5), "h")},
        ["o"],
        "vertex 'o' (Output with n_in=5) reads 'h' of width 4",
        id="layer-width",
    ),
    pytest.param(
        ["x"],
        {
            "h": (Dense(3, 4), "x"),
            "k": (Dense(4, 4), "h"),
            "m": (Merge(), "h", "k"),
            "d": (Dense(9, 4), "m"),
            "o": (_o(4), "d"),
        },
        ["o"],
        "vertex 'd' (Dense with n_in=9) reads 'm' of width 8",
        id="layer-reading-a-merge-width",
    ),
    pytest.param(
        ["x"],
        {
            "h": (Dense(3, 4), "x"),
            "k": (Dense(3, 5), "x"),
            "e": (ElementWise("add"), "h", "k"),
            "o": (_o(4), "e"),
        },
        ["o"],
        "vertex 'e' (add) needs inputs of one width, but input 0 has width 4 and input 1 has "
        "width 5",
        id="elementwise-widths",
    ),
    pytest.param(
        ["x"],
        {
            "h": (Dense(3, 4), "x"),
            "k": (Dense(5, 4), "x"),
            "m": (Merge(), "h", "k"),
            "o": (_o(8), "m"),
        },
        ["o"],
        "input 'x' has n_in=3 of 'h' but vertex 'k' (Dense) has n_in=5",
        id="layers-disagree-on-an-input",
    ),
    pytest.param(
        [("x", 4)],
        {"h": (Dense(3, 4), "x"), "o": (_o(4), "h")},
        ["o"],
        "input 'x' has width 4 but vertex 'h' (Dense) has n_in=3",
        id="given-width-disagrees",
    ),
    pytest.param(
        ["x"],
        {"h": (Dense(3, 4), "x"), "o": (_o(4), "h")},
        ["h"],
        "output 'h' is a Dense; outputs must be Output layers",
        id="output-not-an-output-layer",
    ),
    pytest.param(
        ["x"],
        {"h": (Dense(3, 4), "x"), "o": (_o(4), "h"), "extra": (_o(4), "h")},
        ["o"],
        "Output layer 'extra' is not listed in outputs",
        id="output-layer-not-listed",
    ),
    pytest.param(
        ["x"],
        {"h": (Dense(3, 4), "x"), "o": (_o(4), "h"), "after": (Output(2, 2), "o")},
        ["o", "after"],
        "vertex 'after' reads output 'o'; an Output layer ends the graph",
        id="reading-an-output",
    ),
    pytest.param(
        ["x"],
        {"h": (Dense(3, 4), "x"), "o": (_o(4), "h")},
        ["nowhere"],
        "output 'nowhere' is not a vertex of the graph",
        id="unknown-output",
    ),
    pytest.param(
        ["x", "z"],
        {"h": (Dense(3, 4), "x", "z"), "o": (_o(4), "h")},
        ["o"],
        "layer 'h' reads 2 inputs ('x', 'z'); a layer reads one",
        id="layer-with-two-inputs",
    ),
    pytest.param(
        ["x"],
        {"h": (Dense(3, 4), "x"), "m": (Merge(), "h"), "o": (_o(4), "m")},
        ["o"],
        "vertex 'm' (Merge) needs at least 2 inputs, got 1",
        id="merge-of-one",
    ),
    pytest.param(
        ["x", "z"],
        {"h": (Dense(3, 3), "x"), "s": (ElementWise("add"), "h", "z"), "o": (_o(3), "s")},
        ["o"],
        "input 'z' feeds no layer directly, so its width is unknown: give it as ('z', width)",
        id="input-width-unknown",
    ),
    pytest.param(
        ["x"],
        {"x": (Dense(3, 4), "x"), "o": (_o(4), "x")},
        ["o"],
        "vertex 'x' has the name of an input",
        id="vertex-named-as-an-input",
    ),
    pytest.param(
        ["x", "x"],
        {"h": (Dense(3, 4), "x"), "o": (_o(4), "h")},
        ["o"],
        "input 'x' is named twice",
        id="input-twice",
    ),
    pytest.param(
        ["x"],
        {"h": (Dense(3, 4), "x"), "o": (_o(4), "h")},
        ["o", "o"],
        "outputs name a vertex twice",
        id="output-twice",
    ),
    pytest.param(
        [("x", 0)],
        {"h": (Dense(3, 4), "x"), "o": (_o(4), "h")},
        ["o"],
        "input 'x' has width 0; a width is an integer >= 1",
        id="width-zero",
    ),
    pytest.param(
        [("x", True)],
        {"h": (Dense(1, 4), "x"), "o": (_o(4), "h")},
        ["o"],
        "input 'x' has width True; a width is an integer >= 1",
        id="width-bool",
    ),
    pytest.param(["x"], {}, ["o"], "vertices must be a non-empty dict", id="no-vertices"),
    pytest.param(
        ["x"],
        {"h": (Dense(3, 4), "x"), "o": (_o(4), "h")},
        [],
        "outputs must be a non-empty list of Output layer names",
        id="no-outputs",
    ),
]


@pytest.mark.parametrize(("inputs", "vertices", "outputs", "message"), BAD_GRAPHS)
def test_bad_graphs_are_refused_naming_the_vertex(inputs, vertices, outputs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Graph(inputs, vertices, outputs)


@pytest.mark.parametrize(
    ("inputs", "vertices", "message"),
    [
        (["x"], {"h": ("dense", "x"), "o": (_o(4), "h")}, "vertex 'h' is a str, not a layer"),
        (["x"], {"h": Dense(3, 4), "o": (_o(4), "h")}, "vertex 'h' must be given as (layer"),
        (["x"], {"h": (Dense(3, 4), 0), "o": (_o(4), "h")}, "vertex 'h' reads 0: inputs are"),
        ([("x", 3, 1)], {"h": (Dense(3, 4), "x"), "o": (_o(4), "h")}, "a (name, width) pair"),
        ([7], {"h": (Dense(3, 4), "x"), "o": (_o(4), "h")}, "a (name, width) pair, got 7"),
    ],
)
def test_malformed_graph_arguments_are_type_errors(inputs, vertices, message):
    with pytest.raises(TypeError, match=re.escape(message)):
        Graph(inputs, vertices, ["o"])


def test_an_input_feeding_only_vertices_needs_its_width_and_then_works():
    vertices = {
        "h": (Dense(3, 3, "tanh"), "x"),
        "s": (ElementWise("add"), "h", "z"),
        "o": (Output(3, 2), "s"),
    }
    with pytest.raises(ValueError, match=re.escape("give it as ('z', width) in inputs")):
        Graph(["x", "z"], vertices, ["o"])
    graph = Graph(["x", ("z", 3)], vertices, ["o"], seed=1)
    assert graph.inputs == ("x", "z")
    assert graph.input_widths == [3, 3]
    rng = np.random.default_rng(31)
    x, z = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    [out] = graph.output([x, z])
    assert out.shape == (6, 2)
    with pytest.raises(
        ValueError, match=re.escape("features[1] (input 'z') must have shape [n, 3]")
    ):
        graph.output([x, x[:, :2]])


def _two_in_two_out(**kwargs) -> Graph:
    return Graph(
        ["a", "b"],
        {
            "ha": (Dense(3, 6, "tanh"), "a"),
            "hb": (Dense(2, 6, "tanh"), "b"),
            "m": (Merge(), "ha", "hb"),
            "class": (Output(12, 3, "softmax", "cross_entropy"), "m"),
            "value": (Output(12, 2, "identity", "mse"), "m"),
        },
        ["class", "value"],
        Adam(0.02),
        **kwargs,
    )


def _two_in_two_out_data(rng: np.random.Generator, n: int) -> MultiDataSet:
    a, b = rng.normal(size=(n, 3)), rng.normal(size=(n, 2))
    classes = (a[:, 0] + b[:, 1] > 0).astype(int) + (a[:, 1] > 1).astype(int)
    value = np.stack([a[:, 2] - b[:, 0], a[:, 0] * 0.5], axis=1)
    return MultiDataSet([a, b], [np.eye(3)[classes], value])


def test_minibatches_that_do_not_fit_the_graph_are_refused():
    rng = np.random.default_rng(32)
    graph = _two_in_two_out(seed=2)
    data = _two_in_two_out_data(rng, 8)
    (a, b), (y, v) = data.features, data.labels
    cases = [
        (MultiDataSet([a], [y, v]), "this graph has 2 inputs ('a', 'b') but got 1 features arrays"),
        (
            MultiDataSet([a, b, b], [y, v]),
            "this graph has 2 inputs ('a', 'b') but got 3 features arrays",
        ),
        (
            MultiDataSet([a, b], [y]),
            "this graph has 2 outputs ('class', 'value') but the minibatch has 1 labels arrays",
        ),
        (MultiDataSet([a, b]), "the minibatch has no labels"),
        (
            MultiDataSet([a, rng.normal(size=(8, 2, 3))], [y, v]),
            "the features arrays give different numbers of rows (examples times time steps): "
            "[8, 24]",
        ),
        (
            MultiDataSet([a, b], [y, rng.normal(size=(8, 2, 2))]),
            "the features and labels arrays give different numbers of rows (examples times "
            "time steps): [8, 8, 16]",
        ),
        (
            MultiDataSet([a, a], [y, v]),
            "features[1] (input 'b') must have shape [n, 2] (or [n, 2, t] for sequences) for "
            "this graph, got (8, 3)",
        ),
        (
            MultiDataSet([a, b], [y, y]),
            "labels[1] (output 'value') must have shape [n, 2]",
        ),
        (DataSet(a, y), "this graph has 2 inputs ('a', 'b') but got 1 features arrays"),
    ]
    before = graph.params().copy()
    for batch, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            graph.fit(batch)
        with pytest.raises(ValueError, match=re.escape(message)):
            graph.score(batch)
    np.testing.assert_array_equal(graph.params(), before)
    assert graph.iteration == 0
    with pytest.raises(ValueError, match=re.escape("different numbers of rows")):
        graph.output([a, b[:5]])
    with pytest.raises(TypeError, match="expected a MultiDataSet or DataSet minibatch"):
        graph.fit_batch((a, y))


# -- 4. training, outputs, evaluation and the score ----------------------------------------------


def test_fit_on_multidatasets_lowers_the_score():
    rng = np.random.default_rng(40)
    data = _two_in_two_out_data(rng, 128)
    graph = _two_in_two_out(seed=3)
    before = graph.score(data)
    graph.fit(data, epochs=40, batch_size=32)
    assert graph.iteration == 160 and graph.epoch == 40
    after = graph.score(data)
    assert after < before / 3
    assert graph.evaluate(data, 0).accuracy() > 0.85
    # fit also takes an iterable of minibatches
    graph.fit(list(data.split(50)), epochs=2)
    assert graph.iteration == 166
    assert graph.score(data) < before / 3


def test_output_is_a_list_in_the_order_of_outputs_and_follows_sequences():
    rng = np.random.default_rng(41)
    graph = Graph(
        ["a", "b"],
        {
            "ha": (Dense(3, 4, "tanh"), "a"),
            "hb": (Dense(2, 4, "tanh"), "b"),
            "wide": (Output(4, 5, "softmax", "cross_entropy"), "ha"),
            "s": (ElementWise("average"), "ha", "hb"),
            "narrow": (Output(4, 1, "identity", "mse"), "s"),
        },
        ["narrow", "wide"],
        seed=4,
        dtype="float64",
    )
    assert graph.output_widths == [1, 5]
    n, t = 6, 4
    a, b = rng.normal(size=(n, 3, t)), rng.normal(size=(n, 2, t))
    narrow, wide = graph.output([a, b])
    assert narrow.shape == (n, 1, t) and wide.shape == (n, 5, t)
    np.testing.assert_allclose(wide.sum(axis=1), 1.0, rtol=1e-12)
    for step in range(t):  # each step is a row of its own
        rows = graph.output((a[:, :, step], b[:, :, step]))
        assert [r.shape for r in rows] == [(n, 1), (n, 5)]
        np.testing.assert_array_equal(rows[0], narrow[:, :, step])
        np.testing.assert_array_equal(rows[1], wide[:, :, step])
    # in chunks, from float32 data, the same
    chunked = graph.output([a.astype(np.float32), b], batch_size=5)
    np.testing.assert_array_equal(chunked[0], graph.output([a.astype(np.float32), b])[0])
    # against numpy
    ha = _dense(graph, "ha", _rows(a), np.tanh)
    hb = _dense(graph, "hb", _rows(b), np.tanh)
    expected_wide = _dense(graph, "wide", ha, _softmax)
    expected_narrow = _dense(graph, "narrow", (ha + hb) / 2, lambda z: z)
    np.testing.assert_allclose(_rows(wide), expected_wide, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(_rows(narrow), expected_narrow, rtol=1e-12, atol=1e-15)


def test_the_score_is_the_sum_of_the_outputs_mean_losses_plus_l2():
    rng = np.random.default_rng(42)
    graph = Graph(
        ["a", "b"],
        {
            "ha": (Dense(3, 4, "tanh", l2=0.03), "a"),
            "hb": (Dense(2, 4, "sigmoid"), "b"),
            "s": (ElementWise("product"), "ha", "hb"),
            "m": (Merge(), "ha", "s"),
            "c": (Output(8, 3, "softmax", "cross_entropy"), "m"),
            "r": (Output(4, 2, "identity", "mse", l2=0.05), "s"),
            "f": (Output(4, 2, "sigmoid", "binary_cross_entropy"), "hb"),
        },
        ["r", "c", "f"],
        seed=5,
        dtype="float64",
    )
    n, t = 5, 3
    a, b = rng.normal(size=(n, 3, t)), rng.normal(size=(n, 2, t))
    yc = _one_hot_sequences(rng, n, 3, t)
    yr = rng.normal(size=(n, 2, t))
    yf = rng.integers(0, 2, (n, 2, t)).astype(np.float64)
    mask_c, mask_r = _masks(n, t)
    data = MultiDataSet([a, b], [yr, yc, yf], labels_masks=[mask_r, mask_c, None])

    ha = _dense(graph, "ha", _rows(a), np.tanh)
    hb = _dense(graph, "hb", _rows(b), _sigmoid)
    s = ha * hb
    pc = _dense(graph, "c", np.concatenate([ha, s], axis=1), _softmax)
    pr = _dense(graph, "r", s, lambda z: z)
    pf = _dense(graph, "f", hb, _sigmoid)
    ce = -(_rows(yc) * np.log(pc)).sum(axis=1)
    mse = ((pr - _rows(yr)) ** 2).mean(axis=1)
    bce = -(_rows(yf) * np.log(pf) + (1 - _rows(yf)) * np.log(1 - pf)).sum(axis=1)
    wc, wr = mask_c.reshape(-1), mask_r.reshape(-1)
    l2 = 0.5 * 0.03 * (graph.layer_params("ha")["W"] ** 2).sum()
    l2 += 0.5 * 0.05 * (graph.layer_params("r")["W"] ** 2).sum()
    expected = (wr @ mse) / wr.sum() + (wc @ ce) / wc.sum() + bce.mean() + l2

    assert graph.score(data) == pytest.approx(expected, rel=1e-12)
    assert graph.score(data, batch_size=2) == pytest.approx(expected, rel=1e-12)
    assert graph.compute_gradients(data) == pytest.approx(expected, rel=1e-12)
    outputs = graph.output([a, b])
    np.testing.assert_allclose(_rows(outputs[0]), pr, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(_rows(outputs[1]), pc, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(_rows(outputs[2]), pf, rtol=1e-12, atol=1e-15)
    # a masked step's labels change nothing
    scrambled = yc.copy()
    scrambled[1] = 1 - scrambled[1]
    other = MultiDataSet([a, b], [yr, scrambled, yf], labels_masks=[mask_r, mask_c, None])
    assert graph.score(other) == pytest.approx(expected, rel=1e-12)


def test_evaluate_and_evaluate_regression_read_the_output_asked_for():
    rng = np.random.default_rng(43)
    data = _two_in_two_out_data(rng, 60)
    graph = _two_in_two_out(seed=6, dtype="float64")
    graph.fit(data, epochs=10, batch_size=20)
    predicted_class, predicted_value = graph.output(list(data.features))

    evaluation = graph.evaluate(data, 0, batch_size=25)
    assert evaluation.num_examples == 60
    correct = predicted_class.argmax(axis=1) == data.labels[0].argmax(axis=1)
    assert evaluation.accuracy() == pytest.approx(correct.mean())
    assert graph.evaluate(data).accuracy() == evaluation.accuracy()  # output 0 by default

    regression = graph.evaluate_regression(data, 1, column_names=["diff", "half"])
    assert regression.num_examples == 60
    for column in range(2):
        errors = predicted_value[:, column] - data.labels[1][:, column]
        assert regression.mean_squared_error(column) == pytest.approx((errors**2).mean())
        assert regression.mean_absolute_error(column) == pytest.approx(np.abs(errors).mean())

    for bad in (2, -1, True, 0.0):
        with pytest.raises(ValueError, match=re.escape("output_index must be in [0, 2)")):
            graph.evaluate(data, bad)
        with pytest.raises(ValueError, match=re.escape("output_index must be in [0, 2)")):
            graph.evaluate_regression(data, bad)
    # a minibatch without the labels of every output is refused, not read out of range
    short = MultiDataSet(list(data.features), [data.labels[0]])
    for method in (graph.evaluate, graph.evaluate_regression):
        with pytest.raises(ValueError, match=re.escape("but the minibatch has 1 labels arrays")):
            method(short, 1)
        with pytest.raises(ValueError, match=re.escape("the minibatch has no labels")):
            method(MultiDataSet(list(data.features)), 0)


def test_evaluate_masked_sequences():
    rng = np.random.default_rng(44)
    graph = Graph(
        ["x"],
        {"h": (Dense(3, 5, "tanh"), "x"), "o": (Output(5, 2, "softmax", "cross_entropy"), "h")},
        ["o"],
        seed=7,
        dtype="float64",
    )
    n, t = 6, 3
    x = rng.normal(size=(n, 3, t))
    y = _one_hot_sequences(rng, n, 2, t)
    mask = np.ones((n, t))
    mask[2] = 0
    mask[4, 1:] = 0
    evaluation = graph.evaluate(MultiDataSet([x], [y], labels_masks=[mask]))
    assert evaluation.num_examples == n * t - 5
    [predicted] = graph.output([x])
    kept = mask.reshape(-1) > 0
    correct = _rows(predicted).argmax(axis=1) == _rows(y).argmax(axis=1)
    assert evaluation.accuracy() == pytest.approx(correct[kept].mean())


# -- 5. configurations, files, pickles, clones and the parameter layout ---------------------------


def _trained(graph: Graph, data: MultiDataSet, steps: int = 3) -> Graph:
    for batch in list(data.split(10))[:steps]:
        graph.fit_batch(batch)
    return graph


def _dropout_graph(seed: int = 8) -> Graph:
    return Graph(
        ["a", "b"],
        {
            "ha": (Dense(3, 6, "relu", dropout=0.2, l2=1e-3), "a"),
            "hb": (Dense(2, 6, "tanh"), "b"),
            "top": (ElementWise("max"), "ha", "hb"),
            "m": (Merge(), "top", "hb"),
            "class": (Output(12, 3, "softmax", "cross_entropy", dropout=0.1), "m"),
            "value": (Output(6, 2, "identity", "mse"), "top"),
        },
        ["class", "value"],
        Adam(0.01),
        seed=seed,
        dtype="float32",
    )


def test_config_round_trips_through_json():
    graph = _dropout_graph()
    config = graph.to_config()
    text = json.dumps(config)
    again = Graph.from_config(json.loads(text))
    assert again.to_config() == config
    assert Graph.from_config(graph.to_json()).to_config() == config
    assert again.vertices == graph.vertices
    assert (again.inputs, again.outputs, again.seed) == (graph.inputs, graph.outputs, 8)
    assert again.updater == graph.updater and again.dtype == graph.dtype
    np.testing.assert_array_equal(again.params(), graph.params())  # same seed, same layout
    assert repr(again) == repr(graph)
    with pytest.raises(ValueError, match="not a sparkbatch.nn.Graph configuration"):
        Graph.from_config({**config, "format": "sparkbatch.nn.Network"})
    with pytest.raises(ValueError, match="graph configuration version 2"):
        Graph.from_config({**config, "version": 2})
    vertices = [list(entry) for entry in config["vertices"]]
    vertices[2][1] = {"type": "Pool"}
    with pytest.raises(ValueError, match="unknown vertex type 'Pool'"):
        Graph.from_config({**config, "vertices": vertices})


def test_save_and_load_keep_parameters_updater_state_and_counters(tmp_path):
    rng = np.random.default_rng(50)
    data = _two_in_two_out_data(rng, 40)
    graph = _trained(_dropout_graph(), data)
    graph.epoch = 1
    path = str(tmp_path / "graph.safetensors")
    graph.save(path)
    loaded = Graph.load(path)
    assert isinstance(loaded, Graph)
    assert loaded.to_config() == graph.to_config()
    np.testing.assert_array_equal(loaded.params(), graph.params())
    np.testing.assert_array_equal(loaded.updater_state(), graph.updater_state())
    assert (loaded.iteration, loaded.epoch, loaded.updater_steps) == (3, 1, 3)
    # training goes on as it would have: dropout masks and Adam's bias correction included
    batch = list(data.split(10))[3]
    assert loaded.fit_batch(batch) == graph.fit_batch(batch)
    np.testing.assert_array_equal(loaded.params(), graph.params())
    np.testing.assert_array_equal(loaded.updater_state(), graph.updater_state())
    # kinds are not mixed up
    with pytest.raises(FormatError, match="not a sparkbatch network file"):
        Network.load(path)
    net_path = str(tmp_path / "net.safetensors")
    Network([Dense(3, 4), Output(4, 2)]).save(net_path)
    with pytest.raises(FormatError, match="not a sparkbatch graph file"):
        Graph.load(net_path)


def test_pickling_keeps_everything_and_goes_on_identically():
    rng = np.random.default_rng(51)
    data = _two_in_two_out_data(rng, 40)
    graph = _trained(_dropout_graph(), data)
    graph.dropout_stream = 3
    twin = pickle.loads(pickle.dumps(graph))
    assert isinstance(twin, Graph)
    np.testing.assert_array_equal(twin.params(), graph.params())
    np.testing.assert_array_equal(twin.updater_state(), graph.updater_state())
    assert (twin.iteration, twin.epoch, twin.updater_steps) == (3, 0, 3)
    assert (twin.dropout_stream, twin.last_score) == (3, graph.last_score)
    assert not np.shares_memory(twin.params(), graph.params())
    batch = list(data.split(10))[3]
    assert twin.fit_batch(batch) == graph.fit_batch(batch)
    np.testing.assert_array_equal(twin.params(), graph.params())


def test_clone_is_independent():
    rng = np.random.default_rng(52)
    data = _two_in_two_out_data(rng, 40)
    graph = _trained(_dropout_graph(), data)
    clone = graph.clone()
    assert isinstance(clone, Graph) and clone.device == "cpu"
    np.testing.assert_array_equal(clone.params(), graph.params())
    np.testing.assert_array_equal(clone.updater_state(), graph.updater_state())
    assert (clone.iteration, clone.updater_steps, clone.last_score) == (
        3,
        3,
        graph.last_score,
    )
    before = graph.params().copy()
    state = graph.updater_state().copy()
    clone.fit(data, batch_size=10)
    assert clone.iteration == 7 and graph.iteration == 3
    np.testing.assert_array_equal(graph.params(), before)
    np.testing.assert_array_equal(graph.updater_state(), state)
    assert not np.array_equal(clone.params(), before)
    graph.params()[:] = 0
    assert np.abs(clone.params()).sum() > 0
    clone.layer_params("hb")["b"][:] = 5
    assert not (graph.layer_params("hb")["b"] == 5).any()


def _layout(graph: Graph) -> list[tuple[str, str, slice]]:
    """(vertex, parameter, its place in the flat buffer), in flat-buffer order, found from
    where ``layer_params``' views lie in ``params()``."""
    flat = graph.params()
    start = flat.__array_interface__["data"][0]
    spots = []
    for name, entry in graph.vertices.items():
        if isinstance(entry[0], (Dense, Output)):
            for key, view in graph.layer_params(name).items():
                assert np.shares_memory(view, flat)
                offset = (view.__array_interface__["data"][0] - start) // flat.itemsize
                spots.append((name, key, slice(offset, offset + view.size)))
    return sorted(spots, key=lambda spot: spot[2].start)


def test_vertices_in_any_order_with_the_layout_in_the_dicts_order_of_layers():
    entries = {
        "ha": (Dense(3, 4, "tanh"), "a"),
        "hb": (Dense(2, 4, "sigmoid"), "b"),
        "m": (Merge(), "ha", "hb"),
        "class": (Output(8, 2, "softmax", "cross_entropy"), "m"),
        "value": (Output(8, 1, "identity", "mse"), "m"),
    }
    scrambled_order = ["class", "m", "value", "hb", "ha"]  # readers before what they read
    scrambled = Graph(
        ["a", "b"],
        {k: entries[k] for k in scrambled_order},
        ["class", "value"],
        seed=9,
        dtype="float64",
    )
    ordered = Graph(["a", "b"], entries, ["class", "value"], seed=9, dtype="float64")
    # the layout follows the dict: class (W, b), value, hb, ha — as graph.py documents
    assert [(name, key) for name, key, _ in _layout(scrambled)] == [
        ("class", "W"),
        ("class", "b"),
        ("value", "W"),
        ("value", "b"),
        ("hb", "W"),
        ("hb", "b"),
        ("ha", "W"),
        ("ha", "b"),
    ]
    assert [place.start for _, _, place in _layout(scrambled)] == [0, 16, 18, 26, 27, 35, 39, 51]
    assert [(name, key) for name, key, _ in _layout(ordered)] == [
        ("ha", "W"),
        ("ha", "b"),
        ("hb", "W"),
        ("hb", "b"),
        ("class", "W"),
        ("class", "b"),
        ("value", "W"),
        ("value", "b"),
    ]
    assert "in the order the ``vertices`` mapping lists the layers" in " ".join(
        graph_module.__doc__.split()
    )
    # the same weights, laid out differently, compute the same
    for name in ("ha", "hb", "class", "value"):
        for key, view in scrambled.layer_params(name).items():
            ordered.layer_params(name)[key][...] = view
    rng = np.random.default_rng(53)
    n = 12
    a, b = rng.normal(size=(n, 3)), rng.normal(size=(n, 2))
    for mine, theirs in zip(scrambled.output([a, b]), ordered.output([a, b]), strict=True):
        np.testing.assert_array_equal(mine, theirs)
    data = MultiDataSet([a, b], [np.eye(2)[rng.integers(0, 2, n)], rng.normal(size=(n, 1))])
    assert scrambled.compute_gradients(data) == ordered.compute_gradients(data)
    places = {(name, key): place for name, key, place in _layout(ordered)}
    for name, key, place in _layout(scrambled):
        np.testing.assert_array_equal(
            scrambled.gradients()[place], ordered.gradients()[places[name, key]]
        )
    # and the order survives the configuration, files included
    again = Graph.from_config(scrambled.to_json())
    assert list(again.vertices) == scrambled_order
    np.testing.assert_array_equal(again.params(), scrambled.params())
    scrambled.fit(data, epochs=3)
    clone = scrambled.clone()
    np.testing.assert_array_equal(clone.params(), scrambled.params())
    for mine, theirs in zip(clone.output([a, b]), scrambled.output([a, b]), strict=True):
        np.testing.assert_array_equal(mine, theirs)


# -- 6. the engine on a backend that stages and carves, as a GPU's does -------------------------


class StagingBackend(CpuBackend):
    """The CPU's kernels with a device's memory discipline: the minibatch is copied into
    buffers of the workspace (``stage``), the parameters are copied in (``adopt``), work arrays
    are views into one allocation per batch size (``carve``, aligned as CudaBackend aligns
    them), and new memory holds NaN where a device's would hold garbage. Primitives refuse the
    aliasing that the CUDA kernels refuse."""

    stages = True
    ALIGN = 32  # values: 256 bytes of float64

    def __init__(self, dtype) -> None:
        super().__init__(dtype)
        self.staged = 0
        self.allocations: list[np.ndarray] = []

    def empty(self, shape):
        return np.full(shape, np.nan, self.dtype)

    def adopt(self, host):
        return self.from_host(host)

    def stage(self, host, buffer):
        if host is buffer:
            return buffer
        assert isinstance(host, np.ndarray) and host.dtype == self.dtype
        assert host.shape == buffer.shape, (host.shape, buffer.shape)
        np.copyto(buffer, host)
        self.staged += 1
        return buffer

    def carve(self, shapes):
        sizes = [math.prod(shape) for shape in shapes]
        offsets, total = [], 0
        for size in sizes:
            offsets.append(total)
            total += -(-size // self.ALIGN) * self.ALIGN
        flat = self.empty((max(total, 1),))
        self.allocations.append(flat)
        return [
            flat[offset : offset + size].reshape(shape)
            for offset, size, shape in zip(offsets, sizes, shapes, strict=True)
        ]

    # the CUDA kernels' aliasing rules

    @staticmethod
    def _apart(*arrays) -> None:
        for i, first in enumerate(arrays):
            for second in arrays[i + 1 :]:
                assert not np.shares_memory(first, second), "aliased buffers"

    def copy(self, dst, src) -> None:
        if dst is not src:
            self._apart(dst, src)
        super().copy(dst, src)

    def copy_columns(self, src, dst, column) -> None:
        self._apart(src, dst)
        super().copy_columns(src, dst, column)

    def take_columns(self, src, column, dst) -> None:
        self._apart(src, dst)
        super().take_columns(src, column, dst)

    def matmul(self, a, b, out, *, trans_a=False, trans_b=False) -> None:
        self._apart(a, out)
        self._apart(b, out)
        super().matmul(a, b, out, trans_a=trans_a, trans_b=trans_b)

    def scale(self, dst, src, alpha) -> None:
        self._apart(dst, src)  # CudaBackend zeroes dst first
        super().scale(dst, src, alpha)

    def add_into(self, acc, x) -> None:
        self._apart(acc, x)
        super().add_into(acc, x)

    def multiply(self, a, b, out) -> None:
        for x in (a, b):
            if x is not out:
                self._apart(x, out)
        super().multiply(a, b, out)

    def maximum(self, a, b, out) -> None:
        for x in (a, b):
            if x is not out:
                self._apart(x, out)
        super().maximum(a, b, out)

    def max_backward(self, d_out, x, remaining, dx) -> None:
        self._apart(remaining, dx, d_out)
        self._apart(x, dx)
        super().max_backward(d_out, x, remaining, dx)


def _staged(model):
    backend = StagingBackend(model.dtype)
    _copy_model_state(model, backend)
    return model, backend


def _assert_carved_from_one_allocation(model, backend: StagingBackend) -> None:
    for ws in model._engine._workspaces.values():
        arrays = [a for work in ws.works for a in work.values() if isinstance(a, np.ndarray)]
        arrays += [a for a in ws.x + ws.y + ws.w if a is not None]
        assert arrays
        owners = {
            id(flat) for a in arrays for flat in backend.allocations if np.shares_memory(a, flat)
        }
        assert len(owners) == 1


def _every_kind_of_graph(seed: int) -> Graph:
    return Graph(
        ["a", "b"],
        {
            "ha": (Dense(3, 5, "relu", l2=0.01, dropout=0.3), "a"),
            "hb": (Dense(4, 5, "sigmoid"), "b"),
            "v": (Merge(), "ha", "hb"),
            "e": (ElementWise("max"), "ha", "hb", "ha"),
            "p": (ElementWise("product"), "e", "e"),
            "av": (ElementWise("average"), "p", "hb"),
            "sum": (ElementWise("add"), "av", "hb", "e"),
            "class": (Output(10, 3, "softmax", "cross_entropy", dropout=0.1), "v"),
            "value": (Output(5, 2, "identity", "mse", l2=0.02), "sum"),
        },
        ["class", "value"],
        Adam(0.01),
        seed=seed,
    )


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_graph_on_a_staging_backend_computes_exactly_as_on_the_cpu(dtype):
    rng = np.random.default_rng(60)
    n, t = 13, 3
    a = rng.normal(size=(n, 3, t)).astype(dtype)
    b = rng.normal(size=(n, 4, t)).astype(dtype)
    y = _one_hot_sequences(rng, n, 3, t).astype(dtype)
    v = rng.normal(size=(n, 2, t)).astype(dtype)
    mask = (rng.uniform(size=(n, t)) > 0.3).astype(dtype)
    data = MultiDataSet([a, b], [y, v], labels_masks=[mask, None])

    def make():
        graph = _every_kind_of_graph(10)
        return Graph.from_config({**graph.to_config(), "dtype": dtype})

    cpu = make()
    staged, backend = _staged(make())
    assert staged._engine.backend is backend and staged.device == "cpu"
    np.testing.assert_array_equal(staged.params(), cpu.params())
    assert not np.shares_memory(staged.params(), cpu.params())
    for epoch in range(3):  # minibatches of 5, 5 and 3 examples: three workspaces
        cpu.fit(data, batch_size=5)
        staged.fit(data, batch_size=5)
        assert staged.last_score == cpu.last_score, f"epoch {epoch}"
        np.testing.assert_array_equal(staged.params(), cpu.params())
        np.testing.assert_array_equal(staged.updater_state(), cpu.updater_state())
    assert staged.compute_gradients(data) == cpu.compute_gradients(data)
    np.testing.assert_array_equal(staged.gradients(), cpu.gradients())
    for mine, theirs in zip(
        staged.output([a, b], batch_size=4), cpu.output([a, b], batch_size=4), strict=True
    ):
        np.testing.assert_array_equal(mine, theirs)
    assert staged.score(data, batch_size=4) == cpu.score(data, batch_size=4)
    assert staged.evaluate(data).accuracy() == cpu.evaluate(data).accuracy()
    assert backend.staged > 0
    _assert_carved_from_one_allocation(staged, backend)
    # fit_arrays, from the rows of a minibatch
    xs, ys, ws = staged._arrays(data)
    assert staged.fit_arrays(xs, ys, ws) == cpu.fit_arrays(xs, ys, ws)
    np.testing.assert_array_equal(staged.params(), cpu.params())


def test_a_network_on_a_staging_backend_computes_exactly_as_on_the_cpu():
    rng = np.random.default_rng(61)
    n, t = 13, 3
    x = rng.normal(size=(n, 4, t)).astype(np.float32)
    y = _one_hot_sequences(rng, n, 3, t).astype(np.float32)
    mask = (rng.uniform(size=(n, t)) > 0.3).astype(np.float32)
    data = DataSet(x, y, labels_mask=mask)

    def make():
        return Network(
            [
                Dense(4, 6, "gelu", dropout=0.25, l2=1e-3),
                Dense(6, 5, "elu"),
                Output(5, 3, "softmax", "cross_entropy", l2=1e-3),
            ],
            Nesterov(0.05),
            seed=9,
        )

    cpu = make()
    staged, backend = _staged(make())
    for _ in range(3):
        cpu.fit(data, batch_size=5)
        staged.fit(data, batch_size=5)
        assert staged.last_score == cpu.last_score
        np.testing.assert_array_equal(staged.params(), cpu.params())
        np.testing.assert_array_equal(staged.updater_state(), cpu.updater_state())
    np.testing.assert_array_equal(staged.output(x, batch_size=7), cpu.output(x, batch_size=7))
    assert staged.score(data, batch_size=4) == cpu.score(data, batch_size=4)
    assert backend.staged > 0
    _assert_carved_from_one_allocation(staged, backend)


def test_the_staging_backend_catches_what_it_is_meant_to_catch():
    # the test double itself: uninitialised memory is NaN, carving shares one allocation, and
    # aliasing the CUDA kernels refuse fails
    backend = StagingBackend("float64")
    assert np.isnan(backend.empty((2, 3))).all()
    first, second = backend.carve([(2, 3), (4,)])
    assert np.shares_memory(first, backend.allocations[0])
    assert np.shares_memory(second, backend.allocations[0])
    assert not np.shares_memory(first, second)
    host = np.ones((2, 3))
    assert backend.stage(host, first) is first and backend.staged == 1
    assert backend.stage(first, first) is first and backend.staged == 1
    with pytest.raises(AssertionError, match="aliased"):
        backend.scale(first, first, 2.0)
    with pytest.raises(AssertionError, match="aliased"):
        backend.max_backward(first, host, np.zeros((2, 3)), first)


# -- 7. one input and one output take a DataSet ------------------------------------------------


def test_a_graph_with_one_input_and_one_output_trains_on_datasets():
    rng = np.random.default_rng(70)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    y = np.eye(2, dtype=np.float32)[(x[:, 0] - x[:, 2] > 0).astype(int)]
    data = DataSet(x, y)
    graph = Graph(
        ["x"],
        {
            "h": (Dense(4, 12, "relu"), "x"),
            "k": (Dense(4, 12, "tanh"), "x"),
            "s": (ElementWise("add"), "h", "k"),
            "out": (Output(12, 2, "softmax", "cross_entropy"), "s"),
        },
        ["out"],
        Adam(0.02),
        seed=11,
    )
    before = graph.score(data)
    assert graph.score(MultiDataSet.from_dataset(data)) == before
    graph.fit(data, epochs=15, batch_size=32)
    assert graph.score(data) < before / 3
    assert graph.evaluate(data).accuracy() > 0.95
    [out] = graph.output(x)  # one array for one input
    assert out.shape == (200, 2)
    np.testing.assert_array_equal(out, graph.output([x])[0])
    # masked sequences in a DataSet, too
    xs = rng.normal(size=(10, 4, 5)).astype(np.float32)
    ys = _one_hot_sequences(rng, 10, 2, 5).astype(np.float32)
    mask = np.ones((10, 5), np.float32)
    mask[3, 2:] = 0
    sequences = DataSet(xs, ys, labels_mask=mask)
    score = graph.compute_gradients(sequences)
    gradients = graph.gradients().copy()
    as_multi = MultiDataSet([xs], [ys], labels_masks=[mask])
    assert graph.compute_gradients(as_multi) == score
    np.testing.assert_array_equal(graph.gradients(), gradients)
    assert graph.fit_batch(sequences) == score
    # a DataSet cannot feed a graph with two outputs
    two = Graph(
        ["x"],
        {
            "h": (Dense(4, 3), "x"),
            "o": (Output(3, 2), "h"),
            "r": (Output(3, 1, "identity", "mse"), "h"),
        },
        ["o", "r"],
    )
    with pytest.raises(ValueError, match=re.escape("this graph has 2 outputs ('o', 'r')")):
        two.fit(data)
    with pytest.raises(ValueError, match=re.escape("this graph has 2 outputs ('o', 'r')")):
        two.evaluate(data, 1)
