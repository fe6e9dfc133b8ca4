"""Recurrent layers: LSTM, RnnOutput and LastTimeStep against numpy references, gradient checks
with masks and variable lengths, masking, Graph, configuration and files.

The reference LSTM runs each example on its real steps only (no padding at all), step by step in
numpy, from DL4J's equations (gate blocks: block input, forget, output, input). The layer must
give the same outputs at the real steps and 0 at the padded ones whether the padding is at the
end (align_start) or at the start (align_end).
"""

from __future__ import annotations

import io
import pickle
import re

import numpy as np
import pytest
from tests.gradient_check import assert_gradients

from sparkbatch import _native
from sparkbatch.data import DataSet, MultiDataSet
from sparkbatch.nn import (
    LSTM,
    SGD,
    Adam,
    Dense,
    Graph,
    LastTimeStep,
    Merge,
    Network,
    Output,
    RnnOutput,
)

# Gradient checks: central differences of STEP; entries where both gradients are below
# MIN_ABSOLUTE_ERROR are compared absolutely. The LSTM's first-layer recurrent gradients are
# small (1e-7), where the difference quotient's rounding (~1e-11) is a relative 1e-4.
STEP = 1e-5
MAX_RELATIVE_ERROR = 2e-4
MIN_ABSOLUTE_ERROR = 1e-8


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


ACTIVATIONS = {"tanh": np.tanh, "sigmoid": _sigmoid, "identity": lambda x: x}


def reference_lstm(layer: LSTM, params: dict, x: np.ndarray) -> np.ndarray:
    """DL4J's LSTM over one example's real steps ``x [f, L]``: its outputs ``[m, L]``."""
    m = layer.n_out
    act, gate = ACTIVATIONS[layer.activation], ACTIVATIONS[layer.gate_activation]
    h, c = np.zeros(m), np.zeros(m)
    outs = []
    for s in range(x.shape[1]):
        z = x[:, s] @ params["W"] + h @ params["RW"] + params["b"]
        a, f, o, i = act(z[:m]), gate(z[m : 2 * m]), gate(z[2 * m : 3 * m]), gate(z[3 * m :])
        c = f * c + i * a
        h = o * act(c)
        outs.append(h)
    return np.array(outs).T.reshape(m, -1)


def _lengths_and_masks(lengths, t: int, at_start: bool | np.ndarray):
    n = len(lengths)
    mask = np.zeros((n, t))
    at_start = np.broadcast_to(at_start, (n,))
    for i, length in enumerate(lengths):
        first = t - length if at_start[i] else 0
        mask[i, first : first + length] = 1
    return mask


def _sequences(rng, lengths, t: int, f: int, at_start):
    mask = _lengths_and_masks(lengths, t, at_start)
    x = rng.normal(size=(len(lengths), f, t)) * mask[:, None, :]
    return x, mask


def _identity_head(net: Network, index: int, m: int) -> None:
    """Make layer ``index`` (an m -> m identity/MSE output) pass its input through."""
    w, b = net.weights(index)
    w[...] = np.eye(m)
    b[...] = 0


def _layer_params(net, index: int) -> dict:
    node = net._topology.nodes[index]
    flat = net.params()
    return {
        name: flat[o : o + int(np.prod(shape))].reshape(shape)
        for name, (o, shape) in node.params.items()
    }


CASES = [
    ("short", [1, 2, 3, 5, 8, 13], 13),
    ("long", [1, 40, 120, 199, 200], 200),
]


@pytest.mark.parametrize("padding", ["end", "start", "mixed"])
@pytest.mark.parametrize(("name", "lengths", "t"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize(
    ("activation", "gate"), [("tanh", "sigmoid"), ("sigmoid", "tanh"), ("identity", "sigmoid")]
)
def test_lstm_forward_matches_numpy_on_masked_sequences(
    name, lengths, t, padding, activation, gate
):
    rng = np.random.default_rng(len(lengths) * t)
    f, m = 3, 4
    at_start = {"end": False, "start": True, "mixed": np.arange(len(lengths)) % 2 == 1}[padding]
    x, mask = _sequences(rng, lengths, t, f, at_start)
    layer = LSTM(f, m, activation, gate, weight_init="uniform")
    net = Network([layer, RnnOutput(m, m, "identity", "mse")], seed=5, dtype="float64")
    _identity_head(net, 1, m)
    out = net.output(x, features_mask=mask)
    assert out.shape == (len(lengths), m, t)
    params = _layer_params(net, 0)
    for i in range(len(lengths)):
        real = mask[i] > 0
        expected = reference_lstm(layer, params, x[i][:, real])
        np.testing.assert_allclose(out[i][:, real], expected, rtol=1e-12, atol=1e-12)
        assert np.all(out[i][:, ~real] == 0)
    # float32: the branch-free float activations, to float32 accuracy
    single = Network.from_config({**net.to_config(), "dtype": "float32"})
    single.set_params(net.params())
    np.testing.assert_allclose(
        single.output(x.astype(np.float32), features_mask=mask), out, rtol=0, atol=2e-5
    )


@pytest.mark.parametrize("padding", ["end", "start"])
def test_last_time_step_is_the_output_at_each_examples_last_real_step(padding):
    rng = np.random.default_rng(7)
    lengths, t, f, m = [1, 4, 9, 17, 30, 30], 30, 2, 3
    x, mask = _sequences(rng, lengths, t, f, padding == "start")
    lstm = LSTM(f, m, weight_init="uniform")
    net = Network([LastTimeStep(lstm), Output(m, m, "identity", "mse")], seed=2, dtype="float64")
    _identity_head(net, 1, m)
    out = net.output(x, features_mask=mask)
    assert out.shape == (len(lengths), m)
    params = _layer_params(net, 0)
    for i in range(len(lengths)):
        expected = reference_lstm(lstm, params, x[i][:, mask[i] > 0])[:, -1]
        np.testing.assert_allclose(out[i], expected, rtol=1e-12, atol=1e-12)
    # without a mask: the last step, t - 1
    full = net.output(x)
    for i in range(len(lengths)):
        np.testing.assert_allclose(full[i], reference_lstm(lstm, params, x[i])[:, -1], atol=1e-12)


def test_forget_gate_bias_starts_at_one_and_config_round_trips():
    layer = LSTM(3, 4, l2=0.01, dropout=0.1, forget_gate_bias=1.0)
    net = Network([layer, RnnOutput(4, 2)], seed=0)
    b = _layer_params(net, 0)["b"]
    np.testing.assert_array_equal(b[4:8], 1.0)
    np.testing.assert_array_equal(np.r_[b[:4], b[8:]], 0.0)
    assert _layer_params(net, 0)["W"].shape == (3, 16)
    assert _layer_params(net, 0)["RW"].shape == (4, 16)
    assert net.num_params == 3 * 16 + 4 * 16 + 16 + 4 * 2 + 2
    last = Network([LastTimeStep(LSTM(3, 4, "sigmoid", "tanh")), Output(4, 2)])
    for model in (net, last):
        twin = Network.from_config(model.to_config())
        assert twin.layers == model.layers


# -- gradient checks -----------------------------------------------------------------------------


def _check(model, batch) -> None:
    assert_gradients(
        model,
        batch,
        step=STEP,
        max_relative_error=MAX_RELATIVE_ERROR,
        min_absolute_error=MIN_ABSOLUTE_ERROR,
    )


def _one_hot_steps(rng, n: int, k: int, t: int) -> np.ndarray:
    return np.eye(k)[rng.integers(0, k, (n, t))].transpose(0, 2, 1)


@pytest.mark.parametrize("padding", ["end", "start"])
def test_lstm_and_rnn_output_gradients_with_masks(padding):
    rng = np.random.default_rng(11)
    lengths, t = [1, 3, 6, 6, 4], 6
    x, mask = _sequences(rng, lengths, t, 2, padding == "start")
    y = _one_hot_steps(rng, len(lengths), 3, t)
    net = Network(
        [LSTM(2, 3, weight_init="uniform", l2=0.01), RnnOutput(3, 3, "softmax", "cross_entropy")],
        SGD(0.1),
        seed=1,
        dtype="float64",
    )
    _check(net, DataSet(x, y, mask, mask))


def test_last_time_step_gradients_with_masks_at_both_ends():
    rng = np.random.default_rng(12)
    lengths, t = [1, 2, 5, 7, 7, 3], 7
    x, mask = _sequences(rng, lengths, t, 2, np.arange(6) % 2 == 0)
    y = np.eye(2)[rng.integers(0, 2, 6)]
    net = Network(
        [LastTimeStep(LSTM(2, 3, weight_init="uniform")), Dense(3, 3, "tanh"), Output(3, 2)],
        SGD(0.1),
        seed=2,
        dtype="float64",
    )
    _check(net, DataSet(x, y, mask, None))


def test_two_layer_lstm_stack_gradients_with_sigmoid_and_identity_activations():
    rng = np.random.default_rng(13)
    lengths, t = [2, 5, 5, 1], 5
    x, mask = _sequences(rng, lengths, t, 3, False)
    y = rng.normal(size=(4, 2, t))
    net = Network(
        [
            LSTM(3, 3, weight_init="uniform"),
            LSTM(3, 2, "sigmoid", "sigmoid", weight_init="uniform"),
            RnnOutput(2, 2, "identity", "mse"),
        ],
        SGD(0.1),
        seed=3,
        dtype="float64",
    )
    _check(net, DataSet(x, y, mask, mask))


def test_lstm_dropout_gradients_with_the_masks_of_a_fixed_seed():
    rng = np.random.default_rng(14)
    x, mask = _sequences(rng, [3, 4, 2], 4, 3, True)
    y = _one_hot_steps(rng, 3, 2, 4)
    net = Network(
        [LSTM(3, 3, dropout=0.3, weight_init="uniform"), RnnOutput(3, 2)],
        SGD(0.1),
        seed=4,
        dtype="float64",
    )
    _check(net, DataSet(x, y, mask, mask))


def _sequence_graph(dtype="float64") -> Graph:
    """A sequence input through LastTimeStep(LSTM) merged with a static input, two outputs: one
    per example and one per step (an RnnOutput on the LSTM's sequence)."""
    return Graph(
        ["seq", "static"],
        {
            "lstm": (LSTM(2, 3, weight_init="uniform"), "seq"),
            "last": (LastTimeStep(LSTM(3, 2, weight_init="uniform")), "lstm"),
            "dense": (Dense(2, 2, "tanh"), "static"),
            "merge": (Merge(), "last", "dense"),
            "class": (Output(4, 2), "merge"),
            "steps": (RnnOutput(3, 1, "identity", "mse"), "lstm"),
        },
        ["class", "steps"],
        SGD(0.1),
        seed=6,
        dtype=dtype,
    )


def _graph_data(rng, n: int = 5, t: int = 5) -> MultiDataSet:
    lengths = rng.integers(1, t + 1, n)
    x, mask = _sequences(rng, lengths, t, 2, np.arange(n) % 2 == 0)
    static = rng.normal(size=(n, 2))
    y = np.eye(2)[rng.integers(0, 2, n)]
    steps = rng.normal(size=(n, 1, t))
    return MultiDataSet([x, static], [y, steps], [mask, None], [None, mask])


def test_graph_with_lstm_gradients_and_outputs():
    rng = np.random.default_rng(15)
    graph = _sequence_graph()
    data = _graph_data(rng)
    _check(graph, data)
    cls, steps = graph.output(data.features, features_masks=data.features_masks)
    assert cls.shape == (5, 2) and steps.shape == (5, 1, 5)
    np.testing.assert_allclose(cls.sum(axis=1), 1.0)


# -- masking ---------------------------------------------------------------------------------------


def test_masked_steps_contribute_nothing_to_the_score_or_the_gradients():
    rng = np.random.default_rng(16)
    lengths, t = [2, 6, 4, 1], 6
    x, mask = _sequences(rng, lengths, t, 2, np.array([True, False, True, False]))
    y = _one_hot_steps(rng, 4, 2, t)
    nets = [
        Network([LSTM(2, 3), RnnOutput(3, 2)], seed=1, dtype="float64"),
        Network([LastTimeStep(LSTM(2, 3)), Output(3, 2)], seed=1, dtype="float64"),
    ]
    labels = [y, y[:, :, 0]]
    for net, label in zip(nets, labels, strict=True):
        score = net.compute_gradients(DataSet(x, label, mask, mask if label.ndim == 3 else None))
        grads = net.gradients().copy()
        noisy = x + rng.normal(size=x.shape) * 10 * (1 - mask[:, None, :])
        noisy_labels = label
        if label.ndim == 3:
            noisy_labels = label + 5 * (1 - mask[:, None, :])
        batch = DataSet(noisy, noisy_labels, mask, mask if label.ndim == 3 else None)
        assert net.compute_gradients(batch) == score
        np.testing.assert_array_equal(net.gradients(), grads)


def test_many_to_one_labels_per_step_score_as_the_last_real_steps_labels():
    rng = np.random.default_rng(17)
    lengths, t = [3, 5, 1, 5], 5
    x, mask = _sequences(rng, lengths, t, 2, np.array([False, True, False, True]))
    net = Network([LastTimeStep(LSTM(2, 3)), Output(3, 2)], seed=1, dtype="float64")
    last = np.array([np.flatnonzero(row)[-1] for row in mask])
    y2 = np.eye(2)[rng.integers(0, 2, 4)]
    y3 = np.zeros((4, 2, t))
    y3[np.arange(4), :, last] = y2  # labels at the last real step only, as many-to-one data has
    only_last = np.zeros((4, t))
    only_last[np.arange(4), last] = 1
    expected = net.compute_gradients(DataSet(x, y2, mask, None))
    assert net.compute_gradients(DataSet(x, y3, mask, only_last)) == pytest.approx(expected)
    assert net.score(DataSet(x, y3, mask, only_last)) == pytest.approx(
        net.score(DataSet(x, y2, mask))
    )
    assert (
        net.evaluate(DataSet(x, y3, mask, only_last)).accuracy()
        == net.evaluate(DataSet(x, y2, mask)).accuracy()
    )


def test_many_to_one_labels_without_a_labels_mask_come_from_the_features_masks_last_step():
    # align_start padding: step t - 1 is padding for the short examples, whose labels there are 0
    rng = np.random.default_rng(24)
    lengths, t = [3, 1, 2, 3], 3
    x, mask = _sequences(rng, lengths, t, 2, False)
    last = np.array(lengths) - 1
    y2 = np.eye(2)[[0, 1, 1, 0]]
    y3 = np.zeros((4, 2, t))
    y3[np.arange(4), :, last] = y2
    net = Network([LastTimeStep(LSTM(2, 3)), Output(3, 2)], seed=1, dtype="float64")
    expected = net.compute_gradients(DataSet(x, y2, mask))
    grads = net.gradients().copy()
    assert net.compute_gradients(DataSet(x, y3, mask)) == pytest.approx(expected)
    np.testing.assert_allclose(net.gradients(), grads, rtol=1e-12, atol=1e-15)
    assert net.score(DataSet(x, y3, mask)) == pytest.approx(net.score(DataSet(x, y2, mask)))
    labels, _, _ = net.labelled_output(DataSet(x, y3, mask))
    np.testing.assert_array_equal(labels, y2)
    graph = Graph(
        ["seq"],
        {"last": (LastTimeStep(LSTM(2, 3)), "seq"), "class": (Output(3, 2), "last")},
        ["class"],
        seed=1,
        dtype="float64",
    )
    rows = graph.compute_gradients(MultiDataSet([x], [y2], [mask], [None]))
    steps = graph.compute_gradients(MultiDataSet([x], [y3], [mask], [None]))
    assert steps == pytest.approx(rows)
    labels, _, _ = graph.labelled_output(MultiDataSet([x], [y3], [mask], [None]))
    np.testing.assert_array_equal(labels, y2)


def test_inference_in_pieces_keeps_examples_whole():
    rng = np.random.default_rng(18)
    x, mask = _sequences(rng, rng.integers(1, 12, 23), 11, 2, True)
    net = Network([LSTM(2, 3), RnnOutput(3, 2)], seed=1)
    whole = net.output(x, features_mask=mask)
    np.testing.assert_array_equal(net.output(x, features_mask=mask, batch_size=25), whole)
    labels = _one_hot_steps(rng, 23, 2, 11)
    data = DataSet(x, labels, mask, mask)
    assert net.score(data) == pytest.approx(net.score(data, batch_size=5), rel=1e-6)


# -- errors ----------------------------------------------------------------------------------------


def test_recurrent_layers_refuse_rows_and_bad_settings():
    rng = np.random.default_rng(19)
    rows = DataSet(rng.normal(size=(4, 3)), np.eye(2)[[0, 1, 0, 1]])
    for layers in (
        [Dense(3, 3), RnnOutput(3, 2)],
        [LSTM(3, 3), RnnOutput(3, 2)],
        [LastTimeStep(LSTM(3, 3)), RnnOutput(3, 2)],
    ):
        net = Network(layers, seed=0)
        with pytest.raises(ValueError, match=r"needs sequences \[n, 3, t\]"):
            net.fit_batch(rows)
    sequences = DataSet(rng.normal(size=(4, 3, 5)), np.eye(2)[[0, 1, 0, 1]])
    message = "the labels of layer 1 have 4 rows but it gives 20, one per time step of each example"
    with pytest.raises(ValueError, match=re.escape(message)):
        Network([LSTM(3, 3), RnnOutput(3, 2)]).fit_batch(sequences)
    with pytest.raises(ValueError, match="activation must be one of tanh, sigmoid, identity"):
        LSTM(3, 3, activation="relu")
    with pytest.raises(ValueError, match="gate_activation must be one of"):
        LSTM(3, 3, gate_activation="softmax")
    with pytest.raises(TypeError, match="LastTimeStep wraps a recurrent layer"):
        LastTimeStep(Dense(3, 3))
    gates = np.zeros((2, 8), np.float32)
    state = np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError, match="activation must be identity, tanh or sigmoid"):
        _native.nn_lstm_forward_step(
            gates,
            np.zeros((6, 8), np.float32),
            np.zeros(8, np.float32),
            None,
            None,
            None,
            state,
            state.copy(),
            None,
            3,
            0,
            1,
            6,
        )
    with pytest.raises(ValueError, match=r"step 3 is outside \[0, 3\)"):
        _native.nn_lstm_forward_step(
            gates,
            np.zeros((6, 8), np.float32),
            np.zeros(8, np.float32),
            None,
            None,
            None,
            state,
            state.copy(),
            None,
            3,
            3,
            5,
            6,
        )


def _lstm_step_args(n=2, m=2, t=3):
    """Separate float32 arrays for one native LSTM forward and one backward step (s = 1)."""
    f32 = np.float32
    forward = {
        "gates": np.zeros((n, 4 * m), f32),
        "zx": np.ones((n * t, 4 * m), f32),
        "bias": np.zeros(4 * m, f32),
        "mask": np.ones((n, t), f32),
        "c_prev": np.ones((n, m), f32),
        "h_prev": np.ones((n, m), f32),
        "c": np.zeros((n, m), f32),
        "h": np.zeros((n, m), f32),
        "out": np.zeros((n * t, m), f32),
    }
    backward = {
        "gates": np.full((n, 4 * m), 0.5, f32),
        "c": np.ones((n, m), f32),
        "c_prev": np.ones((n, m), f32),
        "mask": np.ones((n, t), f32),
        "d_out": np.ones((n * t, m), f32),
        "dh_rec": np.ones((n, m), f32),
        "dh_carry": np.zeros((n, m), f32),
        "dc": np.zeros((n, m), f32),
        "dgates": np.zeros((n, 4 * m), f32),
        "dgates_seq": np.zeros((n * t, 4 * m), f32),
    }
    return forward, backward


@pytest.mark.parametrize(
    ("direction", "name", "over"),
    [
        ("forward", "out", "zx"),
        ("forward", "bias", "gates"),
        ("forward", "c", "mask"),
        ("forward", "h_prev", "out"),
        ("forward", "c", "out"),
        ("backward", "d_out", "dgates_seq"),
        ("backward", "dc", "c"),
        ("backward", "dgates", "dgates_seq"),
        ("backward", "mask", "dgates"),
    ],
)
def test_lstm_step_bindings_refuse_outputs_that_share_memory_with_other_arrays(
    direction, name, over
):
    forward, backward = _lstm_step_args()
    arrays = forward if direction == "forward" else backward
    step = _native.nn_lstm_forward_step if direction == "forward" else _native.nn_lstm_backward_step
    step(*arrays.values(), 3, 1, 5, 6)  # separate arrays: fine
    shape = arrays[name].shape
    arrays[name] = arrays[over].reshape(-1)[: int(np.prod(shape))].reshape(shape)
    with pytest.raises(ValueError, match="share memory"):
        step(*arrays.values(), 3, 1, 5, 6)


def test_float32_identity_lstm_gradients_do_not_clamp_the_cell_state():
    # identity activation, gates at sigmoid(0) = 1/2: c grows past the float clamp at 40, and
    # h = o * c unclamped; the float32 gradients must be those of float64 (which has no clamp)
    n, f, m, t = 2, 2, 3, 4
    x = np.full((n, f, t), 30.0)
    x[1] *= -1
    y = np.zeros((n, 1, t))
    layers = [LSTM(f, m, "identity", "sigmoid"), RnnOutput(m, 1, "identity", "mse")]
    double = Network(layers, seed=3, dtype="float64")
    params = double.params()
    node = double._topology.nodes[0]
    for name, (offset, shape) in node.params.items():
        values = np.zeros(shape)
        if name == "W":
            values[:, :m] = 1  # the cell input a = sum of x = +-60 per step
        params[offset : offset + int(np.prod(shape))] = values.reshape(-1)
    double.set_params(params)
    single = Network(layers, seed=3, dtype="float32")
    single.set_params(params)
    expected = double.compute_gradients(DataSet(x, y))
    assert single.compute_gradients(DataSet(x.astype(np.float32), y)) == pytest.approx(
        expected, rel=1e-5
    )
    np.testing.assert_allclose(single.gradients(), double.gradients(), rtol=1e-4, atol=1e-3)


def test_minibatches_of_fewer_time_steps_reuse_the_work_arrays_of_the_longest():
    rng = np.random.default_rng(25)
    net = Network([LSTM(2, 3), RnnOutput(3, 2)], Adam(0.01), seed=1)
    backend = net._engine.backend
    carved = []
    carve = backend.carve
    backend.carve = lambda shapes: carved.append(len(shapes)) or carve(shapes)
    for t in (5, 9, 5, 7, 3, 9, 6):
        x, mask = _sequences(rng, rng.integers(1, t + 1, 4), t, 2, False)
        batch = DataSet(x, _one_hot_steps(rng, 4, 2, t), mask, mask)
        fresh = Network.from_config(net.to_config())
        fresh.set_params(net.params())
        assert net.compute_gradients(batch) == fresh.compute_gradients(batch)
        np.testing.assert_array_equal(net.gradients(), fresh.gradients())
        np.testing.assert_array_equal(
            net.output(x, features_mask=mask), fresh.output(x, features_mask=mask)
        )
        net.fit_batch(batch)
    assert len(carved) == 2  # for t = 5, then t = 9: the others are views of its arrays


# -- files, copies, training -----------------------------------------------------------------------


def _listed(outputs):
    return outputs if isinstance(outputs, list) else [outputs]


def test_save_load_clone_and_pickle_keep_a_recurrent_network_and_graph():
    rng = np.random.default_rng(20)
    x, mask = _sequences(rng, [3, 5, 2], 5, 2, False)
    net = Network([LSTM(2, 3), LastTimeStep(LSTM(3, 2)), Output(2, 2)], Adam(0.01), seed=3)
    net.fit(DataSet(x.astype(np.float32), np.eye(2)[[0, 1, 1]], mask), epochs=2)
    graph = _sequence_graph("float32")
    data = _graph_data(rng)
    graph.fit(data)
    for model, features, masks in (
        (net, x, {"features_mask": mask}),
        (graph, data.features, {"features_masks": data.features_masks}),
    ):
        expected = model.output(features, **masks)
        buffer = io.BytesIO()
        model.save(buffer)
        buffer.seek(0)
        copies = [type(model).load(buffer), model.clone(), pickle.loads(pickle.dumps(model))]
        for copy in copies:
            np.testing.assert_array_equal(copy.params(), model.params())
            np.testing.assert_array_equal(copy.updater_state(), model.updater_state())
            got = copy.output(features, **masks)
            for mine, theirs in zip(_listed(got), _listed(expected), strict=True):
                np.testing.assert_array_equal(mine, theirs)


def test_an_lstm_learns_a_sequence_task_on_one_machine():
    rng = np.random.default_rng(21)
    n, t = 512, 12
    lengths = rng.integers(2, t + 1, n)
    x, mask = _sequences(rng, lengths, t, 1, rng.integers(0, 2, n).astype(bool))
    y = np.eye(2)[(x[:, 0].sum(axis=1) > 0).astype(int)]
    net = Network([LastTimeStep(LSTM(1, 8)), Output(8, 2)], Adam(0.03), seed=0)
    data = DataSet(x.astype(np.float32), y.astype(np.float32), mask)
    before = net.score(data)
    net.fit(data, epochs=8, batch_size=64)
    assert net.score(data) < before / 3
    assert net.evaluate(data).accuracy() > 0.9


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_on_a_staging_backend_recurrent_models_compute_exactly_as_on_the_cpu(dtype):
    """A device's memory discipline (staged minibatches and masks, carved work arrays that start
    as NaN, per-slot row counts) on the CPU's kernels: what the CUDA backend runs, step for
    step."""
    from tests.test_nn_graph import StagingBackend, _copy_model_state

    rng = np.random.default_rng(22)
    x, mask = _sequences(rng, [3, 7, 1, 5, 7], 7, 2, np.array([1, 0, 1, 0, 1], bool))
    x, mask = x.astype(dtype), mask.astype(dtype)
    y = np.eye(2, dtype=dtype)[rng.integers(0, 2, (5, 7))].transpose(0, 2, 1)
    cases = [
        ([LSTM(2, 4), LSTM(4, 3, dropout=0.2), RnnOutput(3, 2)], DataSet(x, y, mask, mask)),
        ([LSTM(2, 4), LastTimeStep(LSTM(4, 3)), Output(3, 2)], DataSet(x, y[:, :, 0], mask)),
    ]
    for layers, data in cases:
        cpu = Network(layers, Adam(0.01), seed=1, dtype=dtype)
        staged = _copy_model_state(
            Network(layers, Adam(0.01), seed=1, dtype=dtype), StagingBackend(dtype)
        )
        for _ in range(3):
            assert staged.fit_batch(data) == cpu.fit_batch(data)
        np.testing.assert_array_equal(staged.params(), cpu.params())
        np.testing.assert_array_equal(
            staged.output(x, features_mask=mask, batch_size=10),
            cpu.output(x, features_mask=mask, batch_size=10),
        )
    cpu_graph = _sequence_graph(dtype)
    staged_graph = _copy_model_state(_sequence_graph(dtype), StagingBackend(dtype))
    data = _graph_data(rng)
    data = MultiDataSet(
        [f.astype(dtype) for f in data.features],
        [label.astype(dtype) for label in data.labels],
        [None if m is None else m.astype(dtype) for m in data.features_masks],
        [None if m is None else m.astype(dtype) for m in data.labels_masks],
    )
    assert staged_graph.fit_batch(data) == cpu_graph.fit_batch(data)
    np.testing.assert_array_equal(staged_graph.params(), cpu_graph.params())


def test_rnn_output_without_a_labels_mask_weighs_the_steps_by_the_features_mask():
    rng = np.random.default_rng(23)
    x, mask = _sequences(rng, [2, 5, 3], 5, 2, np.array([True, False, True]))
    y = _one_hot_steps(rng, 3, 2, 5)
    net = Network([LSTM(2, 3), RnnOutput(3, 2)], seed=1, dtype="float64")
    expected = net.compute_gradients(DataSet(x, y, mask, mask))
    grads = net.gradients().copy()
    assert net.compute_gradients(DataSet(x, y, mask)) == expected
    np.testing.assert_array_equal(net.gradients(), grads)
    assert net.score(DataSet(x, y, mask)) == net.score(DataSet(x, y, mask, mask))
    graph = _sequence_graph()
    data = _graph_data(rng)
    unmasked = MultiDataSet(data.features, data.labels, data.features_masks, [None, None])
    assert graph.compute_gradients(unmasked) == graph.compute_gradients(data)
