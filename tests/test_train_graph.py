"""Parameter averaging of a two-input, two-output Graph on a real local Spark: equivalence
with single-machine fitting, learning through ``fit_multi``, evaluation per output."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sparkbatch.data import MultiDataSet, export_datasets
from sparkbatch.data.manifest import minibatch_files
from sparkbatch.nn import Adam, Dense, Graph, Merge, Network, Output
from sparkbatch.spark import batch_and_export
from sparkbatch.train import ParameterAveraging, SparkNetwork

pytestmark = pytest.mark.spark


def _data(n: int, seed: int = 0, steps: int | None = None) -> MultiDataSet:
    """Inputs ``a`` [n, 3] and ``b`` [n, 2]; output 0 the class of ``a0 + b0 > 0``, output 1
    the value ``0.8 a1 - 0.6 b1``. With ``steps``: sequences of that many steps whose labels
    masks differ per output (output 0 keeps the last step, output 1 a random half)."""
    rng = np.random.default_rng(seed)
    shape = (n,) if steps is None else (n, steps)
    a = rng.normal(size=(*shape, 3))
    b = rng.normal(size=(*shape, 2))
    cls = np.eye(2)[(a[..., 0] + b[..., 0] > 0).astype(int)]
    value = (0.8 * a[..., 1] - 0.6 * b[..., 1])[..., None]
    if steps is None:
        return MultiDataSet([a, b], [cls, value])
    last = np.zeros((n, steps))
    last[:, -1] = 1
    half = (rng.random((n, steps)) < 0.5).astype(float)
    half[:, 0] = 1  # no example without a step
    arrays = [np.ascontiguousarray(x.transpose(0, 2, 1)) for x in (a, b, cls, value)]
    return MultiDataSet(arrays[:2], arrays[2:], labels_masks=[last, half])


def _graph(updater=None, seed: int = 1) -> Graph:
    return Graph(
        ["a", "b"],
        {
            "da": (Dense(3, 8, "tanh"), "a"),
            "db": (Dense(2, 8, "tanh"), "b"),
            "m": (Merge(), "da", "db"),
            "class": (Output(16, 2, "softmax", "cross_entropy"), "m"),
            "value": (Output(16, 1, "identity", "mse"), "m"),
        },
        ["class", "value"],
        updater or Adam(0.02),
        seed=seed,
        dtype="float64",
    )


@pytest.mark.parametrize("exchange", ["spark", "socket"])
def test_one_worker_frequency_one_equals_single_machine_fitting(sc, tmp_path, exchange):
    minibatches = _data(150).split(16)  # 10 minibatches, the last of 6 examples
    directory = str(tmp_path / "files")
    export_datasets(minibatches, directory)
    master = ParameterAveraging(
        batch_size_per_worker=16,
        averaging_frequency=1,
        workers=1,
        shuffle=False,
        exchange=exchange,
    )
    distributed = SparkNetwork(sc, _graph(), master).fit_multi(directory, epochs=2)
    local = _graph().fit(minibatches, epochs=2)
    np.testing.assert_allclose(distributed.params(), local.params(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        distributed.updater_state(), local.updater_state(), rtol=0, atol=1e-6
    )
    assert distributed.iteration == local.iteration == 2 * len(minibatches)
    assert distributed.epoch == local.epoch == 2


def test_two_workers_learn_both_outputs_through_fit_multi_on_exported_files(sc, tmp_path):
    directory = str(tmp_path / "train")
    export_datasets(_data(600).split(25), directory)  # 24 files: 3 rounds an epoch
    master = ParameterAveraging(batch_size_per_worker=25, averaging_frequency=4, workers=2)
    spark_net = SparkNetwork(sc, _graph(), master)
    graph = spark_net.fit_multi(directory, epochs=5)
    assert graph.iteration == 5 * 12 and graph.epoch == 5
    held_out = _data(400, seed=1)
    test_dir = str(tmp_path / "test")
    export_datasets(held_out.split(50), test_dir)
    classes = spark_net.evaluate(test_dir, output_index=0)
    values = spark_net.evaluate_regression(test_dir, output_index=1)
    assert classes.accuracy() >= 0.9  # 0.97 here
    assert values.r2(0) >= 0.9  # 0.98 here
    assert values.mean_squared_error() <= 0.05  # 0.02 here (the values' variance is 1)
    np.testing.assert_array_equal(
        classes.confusion_matrix(), graph.evaluate(held_out, 0).confusion_matrix()
    )
    assert values.mean_squared_error() == pytest.approx(
        graph.evaluate_regression(held_out, 1).mean_squared_error(), rel=1e-9
    )
    assert spark_net.score(test_dir) == pytest.approx(graph.score(held_out), rel=1e-9)


def test_fit_multi_on_an_rdd_trains_as_on_its_exported_files_with_both_exchanges(sc, tmp_path):
    rdd = sc.parallelize(_data(300, seed=2).split(50), 2)
    master = ParameterAveraging(
        batch_size_per_worker=20,
        averaging_frequency=2,
        workers=2,
        shuffle=False,
        export_dir=str(tmp_path / "scratch"),
    )
    directory = str(tmp_path / "exported")
    batch_and_export(rdd, directory, 20)  # 16 files: 4 rounds of 2 workers, 2 files each
    assert len(minibatch_files(directory)) == 16
    from_files = SparkNetwork(sc, _graph(), master).fit_multi(directory).params()
    for exchange in ("spark", "socket"):
        by = dataclasses.replace(master, exchange=exchange)
        from_rdd = SparkNetwork(sc, _graph(), by).fit_multi(rdd)
        np.testing.assert_allclose(from_rdd.params(), from_files, rtol=0, atol=1e-6)
        assert from_rdd.iteration == 8
    direct = dataclasses.replace(master, approach="direct", exchange="socket")
    by_socket = SparkNetwork(sc, _graph(), direct).fit_multi(rdd).params()
    by_spark = dataclasses.replace(direct, exchange="spark")
    np.testing.assert_allclose(
        SparkNetwork(sc, _graph(), by_spark).fit_multi(rdd).params(), by_socket, rtol=0, atol=1e-6
    )


def test_evaluation_and_score_per_output_merge_exactly_over_masked_sequences(sc, tmp_path):
    data = _data(90, seed=4, steps=5)
    graph = _graph()
    graph.fit(data.split(30), epochs=3)
    rdd = sc.parallelize(data.split(15), 3)  # partitions of 30 examples, evaluated by 16
    directory = str(tmp_path / "eval")
    export_datasets(data.split(40), directory)  # files of 40, 40 and 10 examples
    spark_net = SparkNetwork(sc, graph, ParameterAveraging(eval_batch_size=16))
    for source in (rdd, directory):
        for k in (0, 1):
            np.testing.assert_array_equal(
                spark_net.evaluate(source, k).confusion_matrix(),
                graph.evaluate(data, k).confusion_matrix(),
            )
        assert spark_net.evaluate(source).accuracy() == graph.evaluate(data).accuracy()
        regression = spark_net.evaluate_regression(source, output_index=1)
        local = graph.evaluate_regression(data, 1)
        assert regression.mean_squared_error() == pytest.approx(local.mean_squared_error())
        assert regression.r2(0) == pytest.approx(local.r2(0))
        # the sum of the outputs' mean losses over their unmasked steps, not a mean of means
        assert spark_net.score(source) == pytest.approx(graph.score(data), rel=1e-12)


def test_an_output_index_out_of_range_is_a_clear_error(sc):
    rdd = sc.parallelize(_data(20).split(10), 2)
    spark_net = SparkNetwork(sc, _graph())
    message = r"output_index must be in \[0, 2\) for outputs 'class', 'value' .*got 2"
    with pytest.raises(ValueError, match=message):
        spark_net.evaluate(rdd, output_index=2)
    with pytest.raises(ValueError, match=r"output_index must be in \[0, 2\).*got -1"):
        spark_net.evaluate_regression(rdd, output_index=-1)
    with pytest.raises(ValueError, match="got True"):
        spark_net.evaluate(rdd, True)
    network = Network([Dense(3, 4, "tanh"), Output(4, 2)])
    with pytest.raises(ValueError, match=r"in \[0, 1\) \(the model has 1 output\), got 1"):
        SparkNetwork(sc, network).evaluate(rdd, output_index=1)
