"""``exchange="ring"``: fits on a real local Spark that must train exactly as the Spark exchange
does, resume a retried job at its first round not averaged, and keep workers without data out of
the average (the ring itself: tests/test_ring.py)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from tests.test_train_spark import _export, _FailsOnceLoader, _network

from sparkbatch.data.manifest import minibatch_files
from sparkbatch.nn import Adam
from sparkbatch.train import ParameterAveraging, RingExchange, SparkNetwork


@pytest.mark.spark
def test_ring_exchange_trains_exactly_as_spark_exchange(sc, tmp_path):
    updater = Adam(0.01)  # with its state: both buffers go round the ring
    directory = _export(sc, tmp_path, 230, 10)
    results = {}
    exchanges = {"spark": "spark", "ring": "ring", "two channels": RingExchange(channels=2)}
    for name, exchange in exchanges.items():
        master = ParameterAveraging(
            batch_size_per_worker=10,
            averaging_frequency=4,
            workers=2,
            collect_stats=True,
            exchange=exchange,
        )
        spark_net = SparkNetwork(sc, _network(updater), master)
        spark_net.fit(directory, epochs=2)
        results[name] = spark_net
    spark, ring = results["spark"].model, results["ring"].model
    for model in (ring, results["two channels"].model):
        np.testing.assert_allclose(model.params(), spark.params(), rtol=0, atol=1e-6)
        np.testing.assert_allclose(model.updater_state(), spark.updater_state(), rtol=0, atol=1e-6)
    assert (ring.iteration, ring.epoch) == (spark.iteration, spark.epoch)
    ours, theirs = results["ring"].stats.rounds, results["spark"].stats.rounds
    assert [(r.epoch, r.examples, r.workers) for r in ours] == [
        (r.epoch, r.examples, r.workers) for r in theirs
    ]
    np.testing.assert_allclose([r.score for r in ours], [r.score for r in theirs], rtol=1e-5)
    nbytes = ring.params().nbytes + ring.updater_state().nbytes
    for r in ours:
        assert r.exchange == "ring" and r.distribute_bytes == 0
        steps = {s.name: s for s in r.steps}
        assert set(steps) == {"metadata", "reduce-scatter", "all-gather", "upload"}
        assert steps["upload"].bytes == nbytes
        # Two workers: each sends half of every buffer in each pass.
        assert steps["reduce-scatter"].bytes + steps["all-gather"].bytes == nbytes
        assert r.aggregate_bytes == 2 * nbytes + nbytes
    phases = results["ring"].stats.phases
    assert {p.worker for p in phases} == {"worker 0", "worker 1", "driver"}
    assert {"broadcast", "fit"} <= {p.phase for p in phases}


@pytest.mark.spark
def test_ring_with_one_worker_at_frequency_one_equals_single_machine_fitting(sc, tmp_path):
    from sparkbatch.data import FileDataSetIterator

    directory = _export(sc, tmp_path, 100, 10)
    files = minibatch_files(directory)
    master = ParameterAveraging(
        batch_size_per_worker=10, averaging_frequency=1, workers=1, shuffle=False, exchange="ring"
    )
    distributed = SparkNetwork(sc, _network(Adam(0.01)), master).fit(directory)
    local = _network(Adam(0.01))
    for batch in FileDataSetIterator(files):
        local.fit_batch(batch)
    np.testing.assert_array_equal(distributed.params(), local.params())
    assert distributed.iteration == local.iteration == len(files)


@pytest.mark.spark
def test_ring_resumes_a_retried_job_at_its_first_round_not_averaged(sc, tmp_path):
    directory = _export(sc, tmp_path, 120, 10)
    files = minibatch_files(directory)
    master = ParameterAveraging(
        batch_size_per_worker=10, averaging_frequency=3, workers=2, shuffle=False, exchange="ring"
    )
    # Round 0 fits files 0-5; the failure comes in round 1, after round 0 was averaged.
    marker = str(tmp_path / "failed-once")
    retried = SparkNetwork(sc, _network(Adam(0.01)), master)
    retried.fit_paths(files, _FailsOnceLoader(files[8], marker))
    assert os.path.exists(marker)
    assert [r.examples for r in retried.stats.rounds] == [60, 60]
    clean = SparkNetwork(sc, _network(Adam(0.01)), master).fit_paths(files)
    np.testing.assert_array_equal(retried.model.params(), clean.params())
    assert retried.model.iteration == clean.iteration == 6


@pytest.mark.spark
def test_a_worker_without_files_in_a_round_stays_out_of_the_ring_average(sc, tmp_path):
    directory = _export(sc, tmp_path, 120, 10)
    files = minibatch_files(directory)[:9]  # rounds of 8 files, then one: worker 1 sits out
    fitted = {}
    for exchange in ("spark", "ring"):
        master = ParameterAveraging(
            batch_size_per_worker=10,
            averaging_frequency=4,
            workers=2,
            shuffle=False,
            exchange=exchange,
        )
        spark_net = SparkNetwork(sc, _network(Adam(0.01)), master)
        spark_net.fit_paths(files, epochs=2)
        assert [r.workers for r in spark_net.stats.rounds] == [2, 1, 2, 1]
        fitted[exchange] = spark_net.model
    np.testing.assert_allclose(fitted["ring"].params(), fitted["spark"].params(), atol=1e-6)
    assert fitted["ring"].iteration == fitted["spark"].iteration


def test_a_workers_error_is_kept_by_the_driver_before_worker_0_goes_on():
    from sparkbatch import NonFiniteError
    from sparkbatch.train.ring_exchange import RoundCollector, _Uplink

    collector = RoundCollector(rounds=2, apply=lambda *args: None, bind_host="127.0.0.1")
    collector.attempt = 2
    try:
        stale = _Uplink(("127.0.0.1", collector.port), collector.token, attempt=1)
        with pytest.raises(ConnectionError, match="worker's error to the driver"):
            stale.send_now({"error": "NonFiniteError", "message": "from an earlier try"})
        stale.close()
        assert collector.error is None  # a stale worker 0 is not heard
        uplink = _Uplink(("127.0.0.1", collector.port), collector.token, attempt=2)
        uplink.send_now({"error": "NonFiniteError", "message": "NaN in minibatch 3"})
        error = collector.error  # kept already: the job may end as soon as worker 0 returns
        uplink.close()
    finally:
        collector.close()
    assert isinstance(error, NonFiniteError) and "minibatch 3" in str(error)


def test_ring_is_a_named_exchange():
    master = ParameterAveraging(exchange="ring", exchange_host="10.0.0.1", exchange_port=1234)
    ring = master.exchanger
    assert isinstance(ring, RingExchange) and (ring.host, ring.port) == ("10.0.0.1", 1234)
    assert repr(ring).startswith("RingExchange(host='10.0.0.1', port=1234")
    with pytest.raises(ValueError, match="channels must be an int of 1 or more"):
        RingExchange(channels=0)


@pytest.mark.spark
def test_ring_with_bfloat16_transport_trains_close_to_the_spark_exchange(sc, tmp_path):
    directory = _export(sc, tmp_path, 160, 10)
    models = {}
    for exchange in ("spark", RingExchange(transport="bfloat16")):
        master = ParameterAveraging(
            batch_size_per_worker=10, averaging_frequency=2, workers=2, exchange=exchange
        )
        spark_net = SparkNetwork(sc, _network(Adam(0.01)), master)
        spark_net.fit(directory)
        models[str(exchange)] = spark_net
    ring = models[str(RingExchange(transport="bfloat16"))]
    spark = models["spark"]
    difference = np.abs(ring.model.params() - spark.model.params())
    assert 0 < difference.max() < 0.02  # rounded for the wire: close, not equal
    nbytes = ring.model.params().nbytes + ring.model.updater_state().nbytes
    for r in ring.stats.rounds:
        steps = {s.name: s.bytes for s in r.steps}
        assert steps["reduce-scatter"] + steps["all-gather"] == nbytes // 2
