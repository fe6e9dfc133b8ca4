"""The Python workers stay warm: a worker builds its model once and reuses it across rounds,
epochs and fits, because every sparkbatch task reads its partition to the end (PySpark reuses
a Python worker only then, with ``spark.python.worker.reuse``, its default)."""

from __future__ import annotations

import collections

import numpy as np
import pytest
from tests.train_models import CountedNetwork

from sparkbatch.data import DataSet
from sparkbatch.nn import Adam, Dense, Output
from sparkbatch.spark import batch_and_export
from sparkbatch.train import ParameterAveraging, SparkNetwork

pytestmark = pytest.mark.spark


def _data(n: int = 512) -> DataSet:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = np.eye(2, dtype=np.float32)[(x[:, 0] > 0).astype(int)]
    return DataSet(x, y)


@pytest.mark.parametrize("exchange", ["spark", "socket"])
@pytest.mark.parametrize("source", ["files", "rdd directly"])
def test_each_python_worker_builds_the_model_once_over_three_fits(sc, tmp_path, exchange, source):
    data = _data()
    rdd = sc.parallelize(data.split(32), 2)
    files = str(tmp_path / "files")
    batch_and_export(rdd, files, batch_size=32)
    net = CountedNetwork([Dense(4, 8, "relu"), Output(8, 2)], Adam(0.01), seed=0)
    net.log = str(tmp_path / "constructions.log")
    master = ParameterAveraging(
        batch_size_per_worker=32,
        averaging_frequency=2,
        workers=2,
        exchange=exchange,
        approach="direct" if source == "rdd directly" else "export",
        export_dir=str(tmp_path / "export"),
    )
    spark_net = SparkNetwork(sc, net, master)  # 16 minibatches: 4 rounds of 2 workers x 2
    for _ in range(3):  # three fits of four rounds each, and an evaluation
        spark_net.fit(files if source == "files" else rdd)
    assert spark_net.evaluate(files).accuracy() > 0.75
    with open(net.log) as f:
        per_worker = collections.Counter(line.strip() for line in f)
    tasks = 3 * 4 * 2  # fits x rounds x workers
    # Every Python worker built the model once and reused it; local[2] runs two tasks at a
    # time, so a few workers at most ran the 24 fitting tasks and the evaluation's.
    assert set(per_worker.values()) == {1}, per_worker
    assert 1 <= sum(per_worker.values()) <= 4 < tasks, per_worker
