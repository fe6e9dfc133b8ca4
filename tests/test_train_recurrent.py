"""An LSTM sequence classifier trained by parameter averaging on a real local Spark.

The task needs memory: the sign of the sum of a sequence of 5 to 30 values in [-1, 1], padded to
30 steps at the end (DL4J's align_start) or at the start (align_end) with a features mask, read
through ``LastTimeStep``. Held-out accuracy must reach 0.95; distributed evaluation and scoring
must equal the local ones on the trained model.
"""

from __future__ import annotations

import numpy as np
import pytest

from sparkbatch.data import DataSet
from sparkbatch.nn import LSTM, Adam, LastTimeStep, Network, Output
from sparkbatch.train import ParameterAveraging, SparkNetwork

pytestmark = pytest.mark.spark

T = 30


def running_sum_task(n: int, seed: int) -> DataSet:
    """``n`` sequences of 5..30 values, half padded at the end and half at the start; the label
    is whether their sum is positive (one-hot [n, 2])."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, T + 1, n)
    padded_at_start = rng.integers(0, 2, n).astype(bool)
    values = rng.uniform(-1, 1, (n, T)).astype(np.float32)
    steps = np.arange(T)
    first = np.where(padded_at_start, T - lengths, 0)
    mask = ((steps >= first[:, None]) & (steps < (first + lengths)[:, None])).astype(np.float32)
    x = (values * mask)[:, None, :]
    y = np.eye(2, dtype=np.float32)[(x[:, 0].sum(axis=1) > 0).astype(int)]
    return DataSet(x, y, mask, None)


def test_an_lstm_learns_the_sign_of_a_running_sum_by_parameter_averaging(sc):
    train, held_out = running_sum_task(4096, seed=0), running_sum_task(1000, seed=1)
    rdd = sc.parallelize(train.split(256), 2)
    master = ParameterAveraging(batch_size_per_worker=64, averaging_frequency=8, workers=2)
    net = Network([LastTimeStep(LSTM(1, 16)), Output(16, 2)], Adam(0.03), seed=0)
    spark_net = SparkNetwork(sc, net, master)
    trained = spark_net.fit(rdd, epochs=3)
    accuracy = trained.evaluate(held_out).accuracy()
    assert accuracy >= 0.95, accuracy
    test_rdd = sc.parallelize(held_out.split(250), 2)
    distributed = spark_net.evaluate(test_rdd)
    np.testing.assert_array_equal(
        distributed.confusion_matrix(), trained.evaluate(held_out).confusion_matrix()
    )
    assert spark_net.score(test_rdd) == pytest.approx(trained.score(held_out), rel=1e-5)
