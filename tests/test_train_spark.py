"""Parameter averaging on a real local Spark: equivalences with single-machine fitting,
distributed evaluation, retries, the HTML report."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from sparkbatch.data import DataSet, FileDataSetIterator, MultiDataSet, Source, load
from sparkbatch.data.manifest import minibatch_files
from sparkbatch.nn import SGD, Adam, Dense, Network, Output
from sparkbatch.spark import batch_and_export, list_paths
from sparkbatch.train import ParameterAveraging, SparkNetwork

pytestmark = pytest.mark.spark


def _data(n: int, seed: int = 0) -> DataSet:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[np.argmax(x[:, :3] + 0.3 * x[:, 3:], axis=1)]
    return DataSet(x, y)


def _network(updater=None, seed: int = 1) -> Network:
    return Network(
        [Dense(4, 8, "tanh"), Output(8, 3, "softmax", "cross_entropy")],
        updater or SGD(0.2),
        seed=seed,
    )


def _export(sc, tmp_path, n: int, batch: int, name: str = "files") -> str:
    out = str(tmp_path / name)
    batch_and_export(sc.parallelize(_data(n).split(50), 2), out, batch)
    return out


@pytest.mark.parametrize("updater", [SGD(0.2), Adam(0.01)], ids=["sgd", "adam"])
def test_one_worker_frequency_one_equals_single_machine_fitting(sc, tmp_path, updater):
    directory = _export(sc, tmp_path, 200, 16)
    master = ParameterAveraging(
        batch_size_per_worker=16, averaging_frequency=1, workers=1, shuffle=False
    )
    distributed = SparkNetwork(sc, _network(updater), master).fit(directory, epochs=2)
    local = _network(updater).fit(FileDataSetIterator(minibatch_files(directory)), epochs=2)
    np.testing.assert_allclose(distributed.params(), local.params(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(distributed.updater_state(), local.updater_state(), atol=1e-6)
    assert distributed.iteration == local.iteration == 2 * len(minibatch_files(directory))
    assert distributed.epoch == local.epoch == 2


def test_two_workers_one_round_equal_one_step_on_the_merged_batch(sc, tmp_path):
    data = _data(32)
    directory = str(tmp_path / "two")
    for i, part in enumerate(data.split(16)):
        part.save(os.path.join(directory, f"part-{i}.safetensors"))
    master = ParameterAveraging(batch_size_per_worker=16, averaging_frequency=1, workers=2)
    averaged = SparkNetwork(sc, _network(), master).fit(directory)
    merged = _network()
    merged.fit_batch(data)
    np.testing.assert_allclose(averaged.params(), merged.params(), rtol=0, atol=1e-6)
    assert averaged.iteration == 1


def test_fit_from_rdd_and_from_exported_path_agree(sc, tmp_path):
    rdd = sc.parallelize(_data(300).split(50), 2)
    master = ParameterAveraging(
        batch_size_per_worker=20,
        averaging_frequency=2,
        workers=2,
        shuffle=False,
        export_dir=str(tmp_path / "scratch"),
    )
    from_rdd = SparkNetwork(sc, _network(), master).fit(rdd, epochs=2)
    assert os.listdir(tmp_path / "scratch") == []  # the temporary export is removed
    directory = str(tmp_path / "exported")
    batch_and_export(rdd, directory, 20)
    from_path = SparkNetwork(sc, _network(), master).fit(directory, epochs=2)
    np.testing.assert_allclose(from_rdd.params(), from_path.params(), rtol=0, atol=1e-6)
    # and fit_paths over an RDD of the same paths
    via_paths = SparkNetwork(sc, _network(), master).fit_paths(list_paths(sc, directory), epochs=2)
    np.testing.assert_allclose(via_paths.params(), from_path.params(), rtol=0, atol=1e-6)


def test_training_learns_and_distributed_evaluation_equals_local(sc, tmp_path):
    data = _data(600, seed=3)
    rdd = sc.parallelize(data.split(40), 3)  # partitions of unequal sizes: 200, 200, 200 + ...
    master = ParameterAveraging(batch_size_per_worker=25, averaging_frequency=3, workers=2)
    spark_net = SparkNetwork(sc, _network(Adam(0.02)), master)
    net = spark_net.fit(rdd, epochs=4)
    evaluation = spark_net.evaluate(rdd)
    local = net.evaluate(data)
    assert evaluation.accuracy() > 0.9
    np.testing.assert_array_equal(evaluation.confusion_matrix(), local.confusion_matrix())
    assert spark_net.score(rdd) == pytest.approx(net.score(data), rel=1e-5)
    regression = spark_net.evaluate_regression(rdd)
    assert regression.mean_squared_error() == pytest.approx(
        net.evaluate_regression(data).mean_squared_error(), rel=1e-5
    )
    directory = str(tmp_path / "eval")
    batch_and_export(rdd, directory, 64)
    np.testing.assert_array_equal(
        spark_net.evaluate(directory).confusion_matrix(), local.confusion_matrix()
    )
    assert spark_net.score(directory) == pytest.approx(net.score(data), rel=1e-5)


def test_every_example_is_used_once_per_epoch_in_full_and_partial_rounds(sc, tmp_path):
    directory = _export(sc, tmp_path, 230, 10)  # 23 files + 1 ragged at the partition ends
    files = minibatch_files(directory)
    master = ParameterAveraging(batch_size_per_worker=10, averaging_frequency=4, workers=2)
    spark_net = SparkNetwork(sc, _network(), master)
    spark_net.fit(directory, epochs=2)
    rounds = spark_net.stats.rounds
    per_round = 2 * 4
    assert len(rounds) == 2 * -(-len(files) // per_round)
    for epoch in (0, 1):
        assert sum(r.examples for r in rounds if r.epoch == epoch) == 230
    assert rounds[-1].workers <= 2 and all(np.isfinite(r.score) for r in rounds)


class _FailsOnceLoader:
    """Fails the first load of ``victim`` in any process (a marker file remembers it)."""

    def __init__(self, victim: str, marker: str) -> None:
        self.victim, self.marker = victim, marker

    def load(self, source: Source) -> DataSet:
        if source.url == self.victim and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            raise RuntimeError("injected failure on the first attempt")
        return load(source.url)


def test_a_failed_worker_task_is_retried_and_no_example_is_lost_or_doubled(sc, tmp_path):
    directory = _export(sc, tmp_path, 120, 10)
    files = minibatch_files(directory)
    master = ParameterAveraging(
        batch_size_per_worker=10, averaging_frequency=3, workers=2, shuffle=False
    )
    retried = SparkNetwork(sc, _network(), master)
    marker = str(tmp_path / "failed-once")
    retried.fit_paths(files, _FailsOnceLoader(files[4], marker))
    assert os.path.exists(marker)
    assert sum(r.examples for r in retried.stats.rounds) == 120
    clean = SparkNetwork(sc, _network(), master).fit_paths(files)
    np.testing.assert_allclose(retried.model.params(), clean.params(), rtol=0, atol=1e-6)


def _direct(repartition: str) -> ParameterAveraging:
    """Two workers fitting minibatches of 20 straight from an RDD's partitions, averaging every
    two."""
    return ParameterAveraging(
        batch_size_per_worker=20,
        averaging_frequency=2,
        workers=2,
        approach="direct",
        repartition=repartition,
    )


def test_direct_approach_trains_from_partitions_without_files(sc):
    data = _data(400, seed=5)
    rdd = sc.parallelize(data.split(30), 3)
    for repartition in ("always", "never"):
        spark_net = SparkNetwork(sc, _network(Adam(0.02)), _direct(repartition))
        spark_net.fit(rdd, epochs=3)
        for epoch in (0, 1, 2):
            assert sum(r.examples for r in spark_net.stats.rounds if r.epoch == epoch) == 400
        assert spark_net.evaluate(rdd).accuracy() > 0.85


def _averaged_locally(per_worker: list[list[DataSet]], frequency: int, epochs: int) -> np.ndarray:
    """Parameter averaging on one machine (SGD, no updater state): every round, each worker
    starts from the average, fits its next ``frequency`` minibatches in order; the workers that
    had any are averaged."""
    params = _network().params().copy()
    rounds = -(-max(len(b) for b in per_worker) // frequency)
    for _ in range(epochs):
        for r in range(rounds):
            results = []
            for batches in per_worker:
                mine = batches[r * frequency : (r + 1) * frequency]
                if mine:
                    local = _network()
                    local.set_params(params)
                    for batch in mine:
                        local.fit_batch(batch)
                    results.append(local.params().copy())
            params = np.mean(results, axis=0)
    return params


@pytest.mark.parametrize("repartition", ["always", "never"])
def test_direct_approach_fits_each_workers_minibatches_in_order_round_by_round(sc, repartition):
    batches = _data(460, seed=7).split(20)  # 23 minibatches: the workers' last rounds differ
    rdd = sc.parallelize(batches, 2)  # "never": two workers of 11 and 12 minibatches
    master = _direct(repartition)
    fitted = SparkNetwork(sc, _network(), master).fit(rdd, epochs=2)
    if repartition == "always":  # dealt in turn: minibatch i to worker i % 2
        per_worker = [batches[0::2], batches[1::2]]
    else:  # a worker per partition
        per_worker = rdd.glom().collect()
    expected = _averaged_locally(per_worker, frequency=2, epochs=2)
    np.testing.assert_allclose(fitted.params(), expected, rtol=0, atol=1e-6)
    by_socket = dataclasses.replace(master, exchange="socket")
    np.testing.assert_allclose(
        SparkNetwork(sc, _network(), by_socket).fit(rdd, epochs=2).params(),
        expected,
        rtol=0,
        atol=1e-6,
    )


def test_fit_multi_takes_one_input_multidatasets_and_refuses_more(sc, tmp_path):
    data = _data(100)
    single = str(tmp_path / "multi")
    for i, part in enumerate(data.split(25)):
        MultiDataSet.from_dataset(part).save(os.path.join(single, f"m-{i}.safetensors"))
    master = ParameterAveraging(batch_size_per_worker=25, averaging_frequency=1, workers=2)
    net = SparkNetwork(sc, _network(), master).fit_multi(single)
    assert net.iteration == 2
    double = str(tmp_path / "double")
    MultiDataSet([data.features, data.features], [data.labels]).save(
        os.path.join(double, "m.safetensors")
    )
    with pytest.raises(Exception, match="has 2 inputs and 1 outputs"):
        SparkNetwork(sc, _network(), master).fit_multi(double)


def test_stats_report_holds_the_rounds_and_the_workers(sc, tmp_path):
    directory = _export(sc, tmp_path, 160, 10)
    master = ParameterAveraging(
        batch_size_per_worker=10, averaging_frequency=2, workers=2, collect_stats=True
    )
    spark_net = SparkNetwork(sc, _network(), master)
    spark_net.fit(directory, epochs=2)
    stats = spark_net.stats
    assert len(stats.rounds) == 2 * 4
    workers = {p.worker for p in stats.phases}
    assert {"worker 0", "worker 1", "driver"} <= workers
    assert {p.phase for p in stats.phases} >= {"broadcast", "fit", "aggregate"}
    report = tmp_path / "report.html"
    stats.to_html(str(report))
    html = report.read_text()
    assert "worker 0" in html and "worker 1" in html and "<svg" in html
    assert stats.summary()


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="averaging_frequency must be >= 1"):
        ParameterAveraging(averaging_frequency=0)
    with pytest.raises(ValueError, match="approach must be one of"):
        ParameterAveraging(approach="gossip")
    with pytest.raises(TypeError, match="Model protocol"):
        SparkNetwork(None, object())


def test_workers_use_a_gpu_only_where_one_is_visible(sc, tmp_path):
    from sparkbatch.nn.gpu import cuda_available

    directory = _export(sc, tmp_path, 100, 25)
    auto = ParameterAveraging(batch_size_per_worker=25, workers=2, worker_device="auto")
    assert SparkNetwork(sc, _network(), auto).fit(directory).iteration > 0
    if cuda_available():
        pytest.skip("a GPU is visible: worker_device='cuda' trains instead of failing")
    cuda = ParameterAveraging(batch_size_per_worker=25, workers=2, worker_device="cuda")
    with pytest.raises(Exception, match="needs a GPU"):
        SparkNetwork(sc, _network(), cuda).fit(directory)


@pytest.mark.parametrize(("files", "workers", "frequency"), [(23, 2, 4), (8, 3, 1), (5, 4, 3)])
def test_plan_rounds_deals_every_file_once_per_epoch(files, workers, frequency):
    from sparkbatch.train import plan_rounds

    names = [f"f{i}" for i in range(files)]
    orders = set()
    for seed, epoch in [(0, 0), (0, 1), (7, 0)]:
        rounds = plan_rounds(names, workers, frequency, shuffle=True, seed=seed, epoch=epoch)
        dealt = [f for assignment in rounds for worker in assignment for f in worker]
        assert sorted(dealt) == sorted(names)  # a multiset: nothing dropped or doubled
        assert all(len(a) <= workers and all(len(w) <= frequency for w in a) for a in rounds)
        assert len(rounds) == -(-files // (workers * frequency))
        orders.add(tuple(dealt))
    assert len(orders) > 1  # epochs and seeds shuffle differently


def test_without_save_updater_every_round_starts_a_fresh_updater(sc, tmp_path):
    # One worker, two minibatches a round: the same as resetting Adam every two steps locally
    # (Adam's bias correction restarts too, though the iteration count goes on).
    directory = _export(sc, tmp_path, 160, 16)
    files = minibatch_files(directory)
    master = ParameterAveraging(
        batch_size_per_worker=16,
        averaging_frequency=2,
        workers=1,
        shuffle=False,
        save_updater=False,
    )
    distributed = SparkNetwork(sc, _network(Adam(0.01)), master).fit(directory)
    local = _network(Adam(0.01))
    for i, batch in enumerate(FileDataSetIterator(files)):
        if i % 2 == 0:
            local.reset_updater()
        local.fit_batch(batch)
    np.testing.assert_allclose(distributed.params(), local.params(), rtol=0, atol=1e-6)
    assert distributed.iteration == local.iteration == len(files)


# --- exchange="socket": one barrier job per fit, averaging through the driver -------------------


@pytest.mark.parametrize(
    "updater, save_updater",
    [(SGD(0.2), True), (Adam(0.01), True), (Adam(0.01), False)],
    ids=["sgd", "adam", "adam-fresh-updater"],
)
def test_socket_exchange_trains_exactly_as_spark_exchange(sc, tmp_path, updater, save_updater):
    directory = _export(sc, tmp_path, 230, 10)  # 24 files: full rounds and a partial one
    results = {}
    for exchange in ("spark", "socket"):
        master = ParameterAveraging(
            batch_size_per_worker=10,
            averaging_frequency=4,
            workers=2,
            save_updater=save_updater,
            collect_stats=True,
            exchange=exchange,
        )
        spark_net = SparkNetwork(sc, _network(updater), master)
        spark_net.fit(directory, epochs=2)
        results[exchange] = spark_net
    spark, socket = results["spark"].model, results["socket"].model
    np.testing.assert_allclose(socket.params(), spark.params(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(socket.updater_state(), spark.updater_state(), rtol=0, atol=1e-6)
    assert (socket.iteration, socket.epoch) == (spark.iteration, spark.epoch)
    ours, theirs = results["socket"].stats.rounds, results["spark"].stats.rounds
    assert [(r.epoch, r.examples, r.workers) for r in ours] == [
        (r.epoch, r.examples, r.workers) for r in theirs
    ]
    np.testing.assert_allclose([r.score for r in ours], [r.score for r in theirs], rtol=1e-5)
    phases = results["socket"].stats.phases
    assert {p.worker for p in phases} == {"worker 0", "worker 1", "driver"}
    assert {p.phase for p in phases} == {"broadcast", "fit", "aggregate", "average"}
    assert {p.round for p in phases} == {r.round for r in ours}


def test_socket_exchange_resumes_a_retried_epoch_at_its_unfinished_round(sc, tmp_path):
    directory = _export(sc, tmp_path, 120, 10)
    files = minibatch_files(directory)
    master = ParameterAveraging(
        batch_size_per_worker=10, averaging_frequency=3, workers=2, shuffle=False, exchange="socket"
    )
    # Round 0 fits files 0-5; the failure comes in round 1, after round 0 was averaged.
    marker = str(tmp_path / "failed-once")
    retried = SparkNetwork(sc, _network(Adam(0.01)), master)
    retried.fit_paths(files, _FailsOnceLoader(files[8], marker))
    assert os.path.exists(marker)
    assert [r.examples for r in retried.stats.rounds] == [60, 60]
    clean = SparkNetwork(sc, _network(Adam(0.01)), master).fit_paths(files)
    np.testing.assert_allclose(retried.model.params(), clean.params(), rtol=0, atol=1e-6)
    assert retried.model.iteration == clean.iteration == 6


def test_socket_exchange_refuses_more_workers_than_task_slots_at_once(sc, tmp_path):
    directory = _export(sc, tmp_path, 60, 10)
    master = ParameterAveraging(batch_size_per_worker=10, workers=3, exchange="socket")
    with pytest.raises(ValueError, match="runs all 3 workers at once, but the cluster has 2"):
        SparkNetwork(sc, _network(), master).fit(directory)


def test_socket_exchange_refuses_unknown_exchanges_and_bad_ports():
    with pytest.raises(ValueError, match="exchange must be one of"):
        ParameterAveraging(exchange="mpi")
    with pytest.raises(ValueError, match="exchange_port"):
        ParameterAveraging(exchange="socket", exchange_port=70000)


def test_socket_exchange_reports_a_busy_port_and_leaves_no_shared_memory(sc, tmp_path):
    import socket

    directory = _export(sc, tmp_path, 60, 10)
    before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    with socket.create_server(("", 0)) as busy:
        port = busy.getsockname()[1]
        master = ParameterAveraging(
            batch_size_per_worker=10, workers=2, exchange="socket", exchange_port=port
        )
        with pytest.raises(OSError):
            SparkNetwork(sc, _network(), master).fit(directory)
    after = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    assert not {n for n in after - before if n.startswith("sparkbatch-exchange")}
