"""The built-in network on bad input: NaN and infinity in minibatches, diverging training, bad
arguments. Every error is checked by its text, since the text is what a user gets."""

from __future__ import annotations

import re

import numpy as np
import pytest

from sparkbatch import DivergenceError, NonFiniteError
from sparkbatch.data import DataSet
from sparkbatch.nn import SGD, Adam, Dense, Network, Output

SKIP_HINT = "fix the data, or skip such minibatches with fit(..., non_finite='skip')"


def _data(n: int = 96, seed: int = 0) -> DataSet:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[np.argmax(x[:, :3], axis=1)]
    return DataSet(x, y)


def _network(updater=None) -> Network:
    return Network(
        [Dense(4, 8, "relu"), Output(8, 3, "softmax", "cross_entropy")],
        updater or Adam(0.01),
        seed=1,
    )


def _regression(lr: float) -> tuple[Network, DataSet]:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = x @ np.ones((4, 1), np.float32) * 10
    net = Network([Dense(4, 8, "identity"), Output(8, 1, "identity", "mse")], SGD(lr), seed=1)
    return net, DataSet(x, y)


def _spoiled(array: str, value: float) -> list[DataSet]:
    """Four minibatches of 24; the third holds ``value`` at example 5, column 1 of ``array``."""
    batches = _data().split(24)
    spoiled = batches[2]
    target = {"features": spoiled.features, "labels": spoiled.labels}[array].copy()
    target[5, 1] = value
    batches[2] = (
        DataSet(target, spoiled.labels)
        if array == "features"
        else DataSet(spoiled.features, target)
    )
    return batches


@pytest.mark.parametrize(
    ("array", "value", "shown"),
    [("features", np.nan, "nan"), ("features", np.inf, "inf"), ("labels", np.nan, "nan")],
    ids=["nan-feature", "inf-feature", "nan-label"],
)
def test_a_non_finite_value_is_an_error_naming_the_minibatch_and_the_value(array, value, shown):
    batches = _spoiled(array, value)
    net = _network()
    expected = f"epoch 0, minibatch 2: {array} hold {shown} at example 5, column 1; {SKIP_HINT}"
    with pytest.raises(NonFiniteError, match=f"^{re.escape(expected)}$"):
        net.fit(batches)
    assert net.iteration == 2 and np.isfinite(net.params()).all()  # stopped before it
    # one DataSet split by fit: the same position in the minibatches it cuts
    whole = DataSet.merge(batches)
    with pytest.raises(NonFiniteError, match=f"^{re.escape(expected)}$"):
        _network().fit(whole, batch_size=24)
    assert isinstance(NonFiniteError("x"), ValueError)  # generic handlers keep working


def test_a_nan_in_a_labels_mask_is_named_too():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 4, 5)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, (6, 5))].transpose(0, 2, 1)
    mask = np.ones((6, 5), np.float32)
    mask[4, 3] = np.nan
    with pytest.raises(NonFiniteError, match="minibatch 0: labels mask holds nan at example 4, "):
        _network().fit(DataSet(x, y, labels_mask=mask))


def test_multidatasets_name_the_array_by_its_index():
    from sparkbatch.data import MultiDataSet

    data = _data(8)
    labels = data.labels.copy()
    labels[6, 2] = -np.inf
    batch = MultiDataSet([data.features], [labels])
    with pytest.raises(NonFiniteError, match=r"minibatch 0: labels\[0\] hold -inf at example 6, "):
        _network().fit([batch])


def test_skip_mode_skips_and_counts_and_equals_fitting_without_them():
    batches = _spoiled("features", np.nan)
    net = _network()
    net.fit(batches, epochs=3, non_finite="skip")
    assert net.skipped_minibatches == 3 and net.iteration == 9
    assert np.isfinite(net.params()).all()
    clean = _network().fit([b for i, b in enumerate(batches) if i != 2], epochs=3)
    np.testing.assert_array_equal(net.params(), clean.params())
    with pytest.raises(NonFiniteError, match="epoch 0: all 1 minibatches hold NaN or infinity"):
        _network().fit(batches[2:3], non_finite="skip")


def test_values_beyond_the_networks_dtype_are_named_after_conversion():
    data = _data(8)
    wide = DataSet(data.features.astype(np.float64), data.labels)
    wide.features[3, 2] = 1e300  # finite in float64, inf in the float32 network
    expected = (
        "epoch 0, minibatch 0, iteration 0: features hold values beyond float32's range: inf "
        f"after conversion at row 3, column 2; {SKIP_HINT}"
    )
    with pytest.raises(NonFiniteError, match=f"^{re.escape(expected)}$"):
        _network().fit(wide)
    net = _network()
    net.fit([wide, data], non_finite="skip")
    assert (net.skipped_minibatches, net.iteration) == (1, 1)


def test_a_diverging_network_stops_at_the_first_non_finite_step_with_finite_parameters():
    net, data = _regression(lr=5.0)
    with pytest.raises(DivergenceError) as info:
        net.fit(data, epochs=20, batch_size=16)
    message = str(info.value)
    assert re.fullmatch(
        r"epoch (\d+), minibatch (\d+), iteration (\d+): training diverged: the score is nan and "
        r"the gradient holds nan at parameter 0 \(layer 0's weights, row 0, column 0\); the "
        r"model keeps its parameters of before this step: lower the learning rate \(or check "
        r"the data\)",
        message,
    ), message
    iteration = int(re.search(r"iteration (\d+)", message).group(1))
    assert net.iteration == iteration  # the step that diverged was not taken
    assert np.isfinite(net.params()).all()
    assert isinstance(info.value, ArithmeticError)
    with pytest.raises(DivergenceError, match=rf"^iteration {iteration}: training diverged"):
        net.fit_batch(data.split(16)[0])  # and again, called directly


def test_an_update_that_overflows_the_parameters_is_caught_at_the_end_of_the_epoch():
    x = np.ones((4, 2), np.float32)
    y = np.full((4, 1), 1000, np.float32)
    net = Network([Output(2, 1, "identity", "mse")], SGD(1e38), seed=0)
    with pytest.raises(
        DivergenceError,
        match=re.escape(
            "epoch 0, after its last minibatch (iteration 1): training diverged: the parameters "
            "hold inf at parameter 0 (layer 0's weights, row 0, column 0); the model's "
            "parameters are as that update left them"
        ),
    ):
        net.fit(DataSet(x, y))


def test_empty_data_is_an_error_not_a_silent_epoch():
    net = _network()
    for empty in ([], iter([]), ()):
        with pytest.raises(ValueError, match="fit\\(\\) got no minibatches: the data is empty"):
            net.fit(empty)
    assert (net.epoch, net.iteration) == (0, 0)


@pytest.mark.parametrize(
    ("value", "error", "text"),
    [
        (2.5, TypeError, "must be an int, got float 2.5"),
        (0, ValueError, "must be >= 1, got 0"),
        (-1, ValueError, "must be >= 1, got -1"),
        (True, TypeError, "must be an int, got bool True"),
        ("8", TypeError, "must be an int, got str '8'"),
    ],
)
def test_bad_batch_sizes_and_epochs_are_refused_at_the_call(value, error, text):
    net, data = _network(), _data(8)
    calls = {
        "fit": lambda: net.fit(data, batch_size=value),
        "output": lambda: net.output(data.features, batch_size=value),
        "score": lambda: net.score(data, batch_size=value),
        "evaluate": lambda: net.evaluate(data, batch_size=value),
        "evaluate_regression": lambda: net.evaluate_regression(data, batch_size=value),
    }
    for name, call in calls.items():
        with pytest.raises(error, match=f"^batch_size {re.escape(text)}$"):
            call()
        assert net.iteration == 0, name
    with pytest.raises(error, match=f"^epochs {re.escape(text)}$"):
        net.fit(data, value)
    assert net.fit(data, np.int64(2), batch_size=np.int32(4)).epoch == 2  # numpy ints are ints


def test_an_unknown_non_finite_mode_is_refused():
    with pytest.raises(ValueError, match="non_finite must be 'raise' or 'skip', got 'ignore'"):
        _network().fit(_data(8), non_finite="ignore")
