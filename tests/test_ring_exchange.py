"""``exchange="ring"``: the ring all-reduce among tasks (threads standing for barrier tasks) and
fits on a real local Spark that must train exactly as the Spark exchange does, resume a
retried job at its first round not averaged, and keep workers without data out of the
average."""

from __future__ import annotations

import json
import os
import socket
import threading

import numpy as np
import pytest
from tests.test_train_spark import _export, _FailsOnceLoader, _network

from sparkbatch.data.manifest import minibatch_files
from sparkbatch.nn import Adam
from sparkbatch.train import ParameterAveraging, RingExchange, SparkNetwork
from sparkbatch.train.ring import connect_ring


def _ring_tasks(
    size: int, task, piece_bytes: int = 4096, transport: str | None = None, grid: bool = True
) -> list:
    """Run ``task(ring)`` on ``size`` threads joined in one ring over loopback (a barrier
    standing for ``BarrierTaskContext.allGather``); their results in rank order."""
    messages: list = [None] * size
    barrier = threading.Barrier(size, timeout=30)
    results: list = [None] * size

    def run(rank: int) -> None:
        def gather(message: str) -> list[str]:
            messages[rank] = message
            barrier.wait()
            out = list(messages)
            barrier.wait()
            return out

        try:
            with connect_ring(
                rank,
                size,
                gather,
                "token",
                host="127.0.0.1",
                piece_bytes=piece_bytes,
                transport=transport,
                grid=grid,
            ) as ring:
                results[rank] = task(ring)
        except BaseException as e:  # noqa: BLE001  (the test looks at it)
            results[rank] = e

    # Daemons: a task that hangs fails the test below instead of keeping pytest from exiting.
    threads = [threading.Thread(target=run, args=(r,), daemon=True) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    return results


@pytest.mark.parametrize("size", [1, 2, 3, 5, 4, 6])  # 4 and 6: grids of 2 x 2 and 2 x 3
@pytest.mark.parametrize("length", [0, 1, 4, 1001, 30_011])
def test_all_reduce_gives_every_task_the_same_sum(size, length):
    rng = np.random.default_rng(length)
    dtype = np.float64 if length == 1001 else np.float32
    data = [rng.standard_normal(length).astype(dtype) for _ in range(size)]

    def task(ring):
        buffer = data[ring.rank].copy()
        steps = ring.all_reduce(buffer)
        return buffer, steps, ring.all_gather({"rank": ring.rank})

    results = _ring_tasks(size, task)
    expected = np.sum(np.stack(data).astype(np.float64), axis=0) if length else np.zeros(0)
    for buffer, steps, gathered in results:
        assert buffer.dtype == dtype
        np.testing.assert_array_equal(buffer, results[0][0])  # the same bits everywhere
        np.testing.assert_allclose(buffer, expected, rtol=1e-5, atol=1e-5)
        assert gathered == [{"rank": r} for r in range(size)]
        sent = sum(step.bytes for step in steps)
        # Each task sends its share twice: 2 (size - 1) / size of the buffer.
        share = data[0].nbytes * 2 * (size - 1) / size
        assert abs(sent - share) <= 2 * data[0].itemsize * size


@pytest.mark.parametrize("transport", ["bfloat16", "float16"])
@pytest.mark.parametrize("size", [2, 3, 4])
def test_half_precision_transport_halves_the_bytes_and_every_task_keeps_the_same_bits(
    size, transport
):
    rng = np.random.default_rng(size)
    data = [rng.standard_normal(20_003).astype(np.float32) for _ in range(size)]
    float_state = np.arange(10, dtype=np.float64)  # other dtypes travel as they are

    def task(ring):
        buffer, state = data[ring.rank].copy(), float_state.copy()
        steps = ring.all_reduce(buffer)
        ring.all_reduce(state)
        return buffer, sum(step.bytes for step in steps), state

    results = _ring_tasks(size, task, transport=transport)
    full = _ring_tasks(size, lambda ring: sum(s.bytes for s in ring.all_reduce(data[0].copy())))
    expected = np.sum(np.stack(data), axis=0)
    mantissa = {"bfloat16": 8, "float16": 11}[transport]
    for (buffer, sent, state), sent_in_full in zip(results, full, strict=True):
        np.testing.assert_array_equal(buffer, results[0][0])
        # Each value is rounded once per hop at most: size roundings of 2^-mantissa.
        tolerance = size * 2.0**-mantissa * np.max(np.abs(np.stack(data)), axis=0) * 2
        assert np.all(np.abs(buffer - expected) <= tolerance)
        assert sent * 2 == sent_in_full
        np.testing.assert_array_equal(state, float_state * size)
    with pytest.raises(ValueError, match="transport must be one of"):
        connect_ring(0, 1, lambda m: [m], "token", host="127.0.0.1", transport="int8")


def test_bfloat16_transport_rounds_to_nearest_ties_to_even():
    from sparkbatch.train.ring import _Codec

    codec = _Codec("bfloat16")
    ones = np.array([1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-9, -(1 + 2**-7 + 2**-9), 3e38], np.float32)
    codec.round(ones)
    np.testing.assert_array_equal(
        ones, np.array([1, 1 + 2**-6, 1, -(1 + 2**-7), 3.00405527e38], np.float32)
    )
    # NaNs whose rounding would carry into the exponent or the sign stay NaNs, not 0 or inf.
    nans = np.array([0x7FFFFFFF, 0xFFFFFFFF, 0x7F800001, 0x7FC00000], np.uint32).view(np.float32)
    codec.round(nans)
    assert np.isnan(nans).all(), nans.view(np.uint32)


def test_all_reduce_refuses_a_buffer_it_could_only_sum_a_copy_of():
    from sparkbatch.train.ring import Ring

    with Ring(0, 1, None, None) as ring, pytest.raises(ValueError, match="contiguous"):
        ring.all_reduce(np.ones((3, 4), np.float32).T)


def test_tasks_form_a_grid_of_rings_where_their_number_splits():
    from sparkbatch.train.ring import Grid, Ring, grid_width

    assert [grid_width(n) for n in (1, 2, 3, 4, 5, 6, 12, 16, 97, 256)] == [
        1, 1, 1, 2, 1, 2, 3, 4, 1, 16
    ]  # fmt: skip
    kinds = _ring_tasks(6, lambda ring: (type(ring), ring.rows.size, ring.columns.size))
    assert kinds == [(Grid, 2, 3)] * 6
    plain = _ring_tasks(4, lambda ring: type(ring), grid=False)
    assert plain == [Ring] * 4


@pytest.mark.parametrize("size", [3, 4])
def test_a_task_that_leaves_the_ring_is_a_connection_error_for_the_others(size):
    def task(ring):
        if ring.rank == 1:
            ring.close()
            return "left"
        return ring.all_reduce(np.ones(100_000, np.float32))

    results = _ring_tasks(size, task)
    assert results[1] == "left"
    others = [r for rank, r in enumerate(results) if rank != 1]
    assert all(isinstance(r, ConnectionError) for r in others), results


def test_a_stranger_connecting_to_a_task_is_refused(monkeypatch):
    ports: list = []

    def task(ring):
        return ring.all_gather(ring.rank)

    # A listener whose first caller is not a ring member: connect_ring accepts the right one.
    real = socket.create_server

    def intruding_server(*args, **kwargs):
        server = real(*args, **kwargs)
        ports.append(server.getsockname()[1])
        socket.create_connection(("127.0.0.1", ports[-1])).close()
        return server

    monkeypatch.setattr(socket, "create_server", intruding_server)
    results = _ring_tasks(2, task)
    assert results == [[0, 1], [0, 1]]


def test_a_neighbour_that_never_connects_is_named_once_the_wait_is_over(monkeypatch):
    from sparkbatch.train import ring

    monkeypatch.setattr(ring, "_CONNECT_S", 0.2)
    silent = socket.create_server(("127.0.0.1", 0))  # task 1: accepts, never connects back
    task_1 = json.dumps({"host": "127.0.0.1", "port": silent.getsockname()[1]})
    try:
        with pytest.raises(ConnectionError, match=r"task 1 \(ring\) of the ring did not connect"):
            ring.connect_ring(0, 2, lambda m: [m, task_1], "token", host="127.0.0.1")
    finally:
        silent.close()


# --- fits on local Spark ------------------------------------------------------------------------


@pytest.mark.spark
def test_ring_exchange_trains_exactly_as_spark_exchange(sc, tmp_path):
    updater = Adam(0.01)  # with its state: both buffers go round the ring
    directory = _export(sc, tmp_path, 230, 10)
    results = {}
    for exchange in ("spark", "ring"):
        master = ParameterAveraging(
            batch_size_per_worker=10,
            averaging_frequency=4,
            workers=2,
            collect_stats=True,
            exchange=exchange,
        )
        spark_net = SparkNetwork(sc, _network(updater), master)
        spark_net.fit(directory, epochs=2)
        results[exchange] = spark_net
    spark, ring = results["spark"].model, results["ring"].model
    np.testing.assert_allclose(ring.params(), spark.params(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(ring.updater_state(), spark.updater_state(), rtol=0, atol=1e-6)
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
