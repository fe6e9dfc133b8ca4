"""Every plan with both exchanges: one worker at averaging frequency 1 trains exactly as one
machine does, and a task that fails is retried without losing or doubling an example.

The plans: the files under a directory (``fit(url)``), a list of paths with a loader
(``fit_paths``), an RDD by export (``fit(rdd)``) and an RDD directly
(``approach="direct"``)."""

from __future__ import annotations

import numpy as np
import pytest
from tests.train_models import FailsOnceNetwork

from sparkbatch.data import DataSet, SerializedDataSetLoader
from sparkbatch.data.manifest import minibatch_files
from sparkbatch.nn import Adam, Dense, Network, Output
from sparkbatch.spark import batch_and_export
from sparkbatch.train import ParameterAveraging, SparkNetwork

pytestmark = pytest.mark.spark

PLANS = ["files", "paths", "rdd by export", "rdd directly"]
EXCHANGES = ["spark", "socket"]
EXAMPLES, BATCH = 60, 10


def _data() -> DataSet:
    rng = np.random.default_rng(11)
    x = rng.normal(size=(EXAMPLES, 5))
    y = np.eye(3)[(x[:, 0] + x[:, 1] > 0).astype(int) + (x[:, 2] > 1).astype(int)]
    return DataSet(x, y)


def _layers() -> list:
    return [Dense(5, 8, "tanh"), Output(8, 3, "softmax", "cross_entropy")]


def _fit(sc, tmp_path, net, plan: str, exchange: str, **settings) -> SparkNetwork:
    data = _data()
    rdd = sc.parallelize(data.split(BATCH), 2)
    master = ParameterAveraging(
        batch_size_per_worker=BATCH,
        shuffle=False,
        exchange=exchange,
        approach="direct" if plan == "rdd directly" else "export",
        export_dir=str(tmp_path / "export"),
        **settings,
    )
    spark_net = SparkNetwork(sc, net, master)
    if plan in ("files", "paths"):
        directory = str(tmp_path / "files")
        batch_and_export(rdd, directory, BATCH)
        if plan == "files":
            spark_net.fit(directory)
        else:
            spark_net.fit_paths(minibatch_files(directory), SerializedDataSetLoader())
    else:
        spark_net.fit(rdd)
    return spark_net


@pytest.mark.parametrize("exchange", EXCHANGES)
@pytest.mark.parametrize("plan", PLANS)
def test_one_worker_at_frequency_one_trains_as_one_machine(sc, tmp_path, plan, exchange):
    spark_net = _fit(
        sc,
        tmp_path,
        Network(_layers(), Adam(0.05), seed=2, dtype="float64"),
        plan,
        exchange,
        workers=1,
        averaging_frequency=1,
        save_updater=True,
    )
    local = Network(_layers(), Adam(0.05), seed=2, dtype="float64")
    local.fit(_data().split(BATCH))  # the same minibatches in the same order
    model = spark_net.model
    np.testing.assert_allclose(model.params(), local.params(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(model.updater_state(), local.updater_state(), rtol=0, atol=1e-6)
    assert (model.iteration, model.epoch) == (local.iteration, local.epoch) == (6, 1)


KILL_TIMEOUT = "spark.python.task.killTimeout"


@pytest.fixture
def prompt_kills(sc):
    """Spark kills an interrupted task's Python worker at once, not after 2 s, for one test.

    When a task of the socket exchange's barrier job fails, Spark cancels the job; the other
    task waits in its round for an average that will not come, so its Python worker is killed
    after ``spark.python.task.killTimeout`` (2 s a retry, before the retried job gets its
    slot). Executors read the setting per task; it is put back after the test.
    """
    conf = sc._conf  # the context's live SparkConf (getConf() is a copy)
    before = conf.get(KILL_TIMEOUT, None)
    conf.set(KILL_TIMEOUT, "0s")
    try:
        yield
    finally:
        if before is None:
            conf._jconf.remove(KILL_TIMEOUT)
        else:
            conf.set(KILL_TIMEOUT, before)


@pytest.mark.parametrize("exchange", EXCHANGES)
@pytest.mark.parametrize("plan", PLANS)
def test_a_failed_task_is_retried_and_loses_or_doubles_no_example(
    sc, tmp_path, plan, exchange, prompt_kills
):
    settings = {"workers": 2, "averaging_frequency": 3, "save_updater": True}
    failing = FailsOnceNetwork(_layers(), Adam(0.05), seed=2, dtype="float64")
    failing.marker = str(tmp_path / "failed-once")
    retried = _fit(sc, tmp_path / "retried", failing, plan, exchange, **settings)
    assert (tmp_path / "failed-once").exists()  # a task did fail, and the fit went on
    assert sum(r.examples for r in retried.stats.rounds) == EXAMPLES
    clean = _fit(
        sc,
        tmp_path / "clean",
        Network(_layers(), Adam(0.05), seed=2, dtype="float64"),
        plan,
        exchange,
        **settings,
    )
    np.testing.assert_allclose(retried.model.params(), clean.model.params(), rtol=0, atol=1e-6)
    assert retried.model.iteration == clean.model.iteration
