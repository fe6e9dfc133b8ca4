"""The built-in network learns real data, saves and loads exactly, and refuses bad input."""

from __future__ import annotations

import io
import json
import pickle

import numpy as np
import pytest
from sklearn.datasets import load_digits, load_wine
from sklearn.model_selection import train_test_split

from sparkbatch import FormatError
from sparkbatch.data import DataSet, MultiDataSet, save
from sparkbatch.nn import (
    SGD,
    Adam,
    Dense,
    ExponentialSchedule,
    Momentum,
    Nesterov,
    Network,
    Output,
    RMSProp,
    StepSchedule,
)


def _split(x: np.ndarray, classes: np.ndarray, k: int, seed: int) -> tuple[DataSet, DataSet]:
    x_train, x_test, c_train, c_test = train_test_split(
        x, classes, test_size=0.25, random_state=seed, stratify=classes
    )
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-6
    eye = np.eye(k, dtype=np.float32)
    return (
        DataSet(((x_train - mean) / std).astype(np.float32), eye[c_train]),
        DataSet(((x_test - mean) / std).astype(np.float32), eye[c_test]),
    )


def test_digits_reach_95_percent_test_accuracy():
    digits = load_digits()
    train, test = _split(digits.data, digits.target, 10, seed=0)
    net = Network(
        [Dense(64, 64, "relu"), Dense(64, 32, "relu"), Output(32, 10, "softmax", "cross_entropy")],
        Adam(3e-3),
        seed=0,
    )
    net.fit(train.shuffle(1), epochs=30, batch_size=32)
    evaluation = net.evaluate(test)
    assert evaluation.accuracy() >= 0.95, evaluation.stats()
    assert evaluation.num_examples == test.num_examples


def test_wine_reaches_95_percent_test_accuracy_with_momentum_and_l2():
    wine = load_wine()
    train, test = _split(wine.data, wine.target, 3, seed=1)
    net = Network(
        [Dense(13, 16, "tanh", l2=1e-4), Output(16, 3, "softmax", "cross_entropy")],
        Nesterov(0.05, momentum=0.9),
        seed=2,
    )
    net.fit(train, epochs=60, batch_size=16)
    assert net.evaluate(test).accuracy() >= 0.95


def test_linear_regression_reaches_r2_above_099():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2000, 5)).astype(np.float32)
    true_w = np.array([[1.5, -2.0], [0.5, 0.0], [-1.0, 1.0], [2.0, 0.3], [0.0, -0.7]], np.float32)
    y = (
        x @ true_w
        + np.array([0.5, -1.0], np.float32)
        + rng.normal(0, 0.05, (2000, 2)).astype(np.float32)
    )
    net = Network([Output(5, 2, "identity", "mse")], SGD(0.05), seed=4)
    net.fit(DataSet(x[:1500], y[:1500]), epochs=20, batch_size=50)
    regression = net.evaluate_regression(DataSet(x[1500:], y[1500:]))
    assert regression.r2() > 0.99
    w, b = net.weights(0)
    np.testing.assert_allclose(w, true_w, atol=0.02)
    np.testing.assert_allclose(b, [0.5, -1.0], atol=0.02)


@pytest.mark.parametrize(
    "updater",
    [
        SGD(0.1),
        Momentum(0.05),
        Nesterov(0.05),
        Adam(0.01, schedule=StepSchedule(decay_rate=0.5, step=50)),
        RMSProp(0.01, schedule=ExponentialSchedule(gamma=0.999)),
    ],
    ids=lambda u: type(u).__name__,
)
def test_every_updater_lowers_the_score(updater):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(256, 6)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[(x[:, :3].argmax(axis=1))]
    ds = DataSet(x, y)
    net = Network([Dense(6, 12, "elu"), Output(12, 3)], updater, seed=6)
    before = net.score(ds)
    net.fit(ds, epochs=20, batch_size=32)
    assert net.score(ds) < 0.6 * before
    assert net.iteration == 20 * 8 and net.epoch == 20


def test_binary_cross_entropy_with_sigmoid_learns_multi_label_targets():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(512, 4)).astype(np.float32)
    y = np.stack([x[:, 0] > 0, x[:, 1] + x[:, 2] > 0], axis=1).astype(np.float32)
    net = Network(
        [Dense(4, 16, "gelu"), Output(16, 2, "sigmoid", "binary_cross_entropy")], Adam(0.01)
    )
    net.fit(DataSet(x, y), epochs=40, batch_size=64)
    predicted = net.output(x) > 0.5
    assert (predicted == y.astype(bool)).mean() > 0.95


def test_save_then_load_gives_identical_outputs_and_state(tmp_path):
    rng = np.random.default_rng(7)
    ds = DataSet(
        rng.normal(size=(64, 8)).astype(np.float32),
        np.eye(4, dtype=np.float32)[rng.integers(0, 4, 64)],
    )
    net = Network([Dense(8, 10, "leaky_relu", dropout=0.1), Output(10, 4)], Adam(0.01), seed=8)
    net.fit(ds, epochs=3, batch_size=16)
    path = tmp_path / "net.safetensors"
    net.save(path)
    back = Network.load(path)
    np.testing.assert_array_equal(back.output(ds.features), net.output(ds.features))
    np.testing.assert_array_equal(back.updater_state(), net.updater_state())
    assert (back.iteration, back.epoch) == (net.iteration, net.epoch) == (12, 3)
    # and training goes on identically from there (dropout masks included)
    batch = ds[:16]
    assert back.fit_batch(batch) == net.fit_batch(batch)
    np.testing.assert_array_equal(back.params(), net.params())
    # pickling (how Spark ships a model) keeps everything too
    twin = pickle.loads(pickle.dumps(net))
    np.testing.assert_array_equal(twin.params(), net.params())
    assert twin.fit_batch(batch) == net.fit_batch(batch)


def test_save_to_memory_url_and_file_object():
    net = Network([Output(3, 2)], SGD(0.1), seed=9)
    net.save("memory://nets/a.safetensors")
    np.testing.assert_array_equal(
        Network.load("memory://nets/a.safetensors").params(), net.params()
    )
    buffer = io.BytesIO()
    net.save(buffer)
    buffer.seek(0)
    np.testing.assert_array_equal(Network.load(buffer).params(), net.params())


def test_config_round_trips_through_json():
    net = Network(
        [
            Dense(5, 7, "elu", weight_init="he", l2=0.01, dropout=0.2, alpha=0.5),
            Output(7, 3, "sigmoid", "xent", weight_init="uniform"),
        ],
        Adam(0.002, beta1=0.8, schedule=StepSchedule(decay_rate=0.5, step=10, unit="epoch")),
        seed=11,
        dtype="float64",
    )
    config = json.loads(net.to_json())
    again = Network.from_config(config)
    assert again.to_config() == net.to_config()
    np.testing.assert_array_equal(again.params(), net.params())  # same seed, same weights
    assert again.dtype == np.float64 and again.updater == net.updater


def test_numpy_integer_sizes_are_stored_as_ints():
    """Sizes computed with numpy (``x.shape[1]``, ``np.prod``) give numpy integers: a layer keeps
    Python ints, so the configuration still writes as JSON; bad sizes name the field."""
    net = Network([Dense(np.int64(3), np.int32(4)), Output(np.int64(4), 2)])
    assert json.loads(net.to_json())["layers"][0]["n_in"] == 3
    assert type(net.layers[0].n_out) is int
    with pytest.raises(ValueError, match=r"Dense.n_out must be an int >= 1, got 0"):
        Dense(3, 0)
    with pytest.raises(ValueError, match=r"Output.n_in must be an int >= 1, got 2.5"):
        Output(2.5, 2)


def test_parameters_are_views_of_one_flat_buffer():
    net = Network([Dense(3, 4), Output(4, 2)], Momentum(0.1), seed=1)
    flat = net.params()
    assert flat.size == net.num_params == 3 * 4 + 4 + 4 * 2 + 2
    w, b = net.weights(1)
    assert np.shares_memory(w, flat) and np.shares_memory(b, flat)
    net.set_params(np.arange(net.num_params))
    assert w[0, 0] == 16 and b[-1] == net.num_params - 1
    assert net.updater_state().size == net.num_params  # one velocity per parameter
    with pytest.raises(ValueError, match="must hold 26 values"):
        net.set_params(np.zeros(29))


def test_multidataset_with_one_input_and_output_fits_and_more_is_refused():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(8, 3)).astype(np.float32)
    y = np.eye(2, dtype=np.float32)[rng.integers(0, 2, 8)]
    net = Network([Output(3, 2)], SGD(0.1))
    assert np.isfinite(net.fit_batch(MultiDataSet([x], [y])))
    with pytest.raises(ValueError, match="has 2 inputs and 1 outputs"):
        net.fit_batch(MultiDataSet([x, x], [y]))


def test_bad_configurations_and_shapes_are_refused_with_clear_messages():
    with pytest.raises(ValueError, match="layer 0 has n_out=4 but layer 1 has n_in=5"):
        Network([Dense(3, 4), Output(5, 2)])
    with pytest.raises(ValueError, match="Output layer"):
        Network([Dense(3, 4)])
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        Dense(3, 4, "swish")
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        Output(3, 4, "softmax", "hinge")
    with pytest.raises(ValueError, match="dropout must be in"):
        Dense(3, 4, dropout=1.0)
    net = Network([Output(3, 2)])
    with pytest.raises(ValueError, match=r"features must have shape \[n, 3\]"):
        net.output(np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match="no labels"):
        net.fit_batch(DataSet(np.zeros((4, 3), np.float32)))
    with pytest.raises(ValueError, match="iterator can be read only once"):
        net.fit(iter([DataSet(np.zeros((4, 3)), np.zeros((4, 2)))]), epochs=2)


def test_loading_a_minibatch_file_as_a_network_is_refused(tmp_path):
    path = tmp_path / "batch.safetensors"
    save(DataSet(np.zeros((2, 3), np.float32), np.zeros((2, 2), np.float32)), path)
    with pytest.raises(FormatError, match="not a sparkbatch network file"):
        Network.load(path)


def test_sequences_are_fitted_and_output_step_by_step():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(16, 3, 6)).astype(np.float32)
    y = np.eye(2, dtype=np.float32)[(x[:, 0, :] > 0).astype(int)].transpose(0, 2, 1)
    mask = np.ones((16, 6), np.float32)
    mask[::2, 4:] = 0
    ds = DataSet(x, y, mask, mask)
    net = Network([Dense(3, 8, "tanh"), Output(8, 2)], Adam(0.02), seed=1)
    net.fit(ds, epochs=100)
    out = net.output(x)
    assert out.shape == (16, 2, 6)
    evaluation = net.evaluate(ds)
    assert evaluation.num_examples == int(mask.sum())
    assert evaluation.accuracy() > 0.95


def test_dropout_streams_give_different_masks_and_stream_zero_is_the_default():
    rng = np.random.default_rng(8)
    batch = DataSet(
        rng.normal(size=(32, 6)).astype(np.float32),
        np.eye(2, dtype=np.float32)[rng.integers(0, 2, 32)],
    )
    net = Network([Dense(6, 8, "relu", dropout=0.5), Output(8, 2)], SGD(0.1), seed=3)
    default = net.compute_gradients(batch), net.gradients().copy()
    other = net.clone()
    other.dropout_stream = 1  # what a parameter-averaging worker with index 1 sets
    assert other.compute_gradients(batch) != default[0]
    same = net.clone()
    assert same.compute_gradients(batch) == default[0]
    np.testing.assert_array_equal(same.gradients(), default[1])


def test_reset_updater_zeroes_the_state_and_restarts_adams_bias_correction():
    rng = np.random.default_rng(9)
    batch = DataSet(
        rng.normal(size=(16, 3)).astype(np.float32), rng.normal(size=(16, 1)).astype(np.float32)
    )
    net = Network([Output(3, 1, "identity", "mse")], Adam(0.1), seed=1)
    net.fit(batch, epochs=5)
    fresh = net.clone()
    fresh.iteration = 0
    fresh.reset_updater()
    net.reset_updater()
    assert not net.updater_state().any() and net.updater_steps == 0 and net.iteration == 5
    net.fit_batch(batch)  # the first step of a fresh Adam, whatever the iteration count
    fresh.fit_batch(batch)
    np.testing.assert_array_equal(net.params(), fresh.params())
