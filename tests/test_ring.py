"""The ring all-reduce of ``exchange="ring"`` (``sparkbatch.train.ring``) among threads standing
for barrier tasks over loopback TCP: sums, transports, grids, and the failures a task sees. No
Spark: these also run against the sanitizer build (.ci/sanitize)."""

from __future__ import annotations

import json
import socket
import threading

import numpy as np
import pytest

from sparkbatch.train.ring import connect_ring


def _ring_tasks(
    size: int,
    task,
    piece_bytes: int = 4096,
    transport: str | None = None,
    grid: bool = True,
    channels: int = 1,
    host: str = "127.0.0.1",
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
                host=host,
                piece_bytes=piece_bytes,
                transport=transport,
                grid=grid,
                channels=channels,
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


# 4, 6 and 12: grids of 2 x 2, 2 x 3 and 2 x 2 x 3
@pytest.mark.parametrize("size", [1, 2, 3, 5, 4, 6, 12])
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


@pytest.mark.parametrize("size, channels", [(2, 2), (3, 3), (4, 2)])  # 4: grids of 2 x 2
def test_channels_split_the_buffer_and_sum_as_one_ring_does(size, channels):
    from sparkbatch.train.ring import Channels

    rng = np.random.default_rng(size)
    data = [rng.standard_normal(30_011).astype(np.float32) for _ in range(size)]

    def task(ring):
        buffer = data[ring.rank].copy()
        steps = ring.all_reduce(buffer)
        return type(ring), buffer, steps, ring.all_gather(ring.rank)

    results = _ring_tasks(size, task, channels=channels)
    expected = np.sum(np.stack(data).astype(np.float64), axis=0)
    for kind, buffer, steps, gathered in results:
        assert kind is Channels
        np.testing.assert_array_equal(buffer, results[0][1])
        np.testing.assert_allclose(buffer, expected, rtol=1e-5, atol=1e-5)
        assert gathered == list(range(size))
        share = data[0].nbytes * 2 * (size - 1) / size
        assert abs(sum(step.bytes for step in steps) - share) <= 2 * 4 * size * channels
    with pytest.raises(ValueError, match="channels must be 1 or more"):
        connect_ring(0, 2, lambda m: [m, m], "token", host="127.0.0.1", channels=0)


def test_a_task_that_leaves_is_a_connection_error_on_every_channel():
    def task(ring):
        if ring.rank == 1:
            ring.close()
            return "left"
        return ring.all_reduce(np.ones(200_000, np.float32))

    results = _ring_tasks(3, task, channels=3)
    assert results[1] == "left"
    assert all(isinstance(r, ConnectionError) for r in (results[0], results[2])), results


@pytest.mark.parametrize("size, channels", [(1, 1), (2, 1), (3, 1), (6, 1), (4, 2)])
def test_gather_values_gives_every_task_every_row_in_rank_order(size, channels):
    def task(ring):
        return ring.gather_values(np.array([ring.rank, 0.5, -ring.rank * 1e300]))

    expected = np.array([[r, 0.5, -r * 1e300] for r in range(size)])
    for table in _ring_tasks(size, task, transport="bfloat16", channels=channels):
        np.testing.assert_array_equal(table, expected)  # float64: never rounded for the wire


def test_bfloat16_ring_of_two_sums_exactly_as_specified():
    """Two tasks: the owner of each chunk adds its own float32 values to the other's rounded
    to bfloat16, rounds the sum once, and both keep that: bit for bit."""
    from sparkbatch import _native

    rng = np.random.default_rng(11)
    data = [rng.standard_normal(5_001).astype(np.float32) for _ in range(2)]

    def bf16(x):
        return _round_through(_native.bfloat16_encode, _native.bfloat16_decode, x)

    results = _ring_tasks(2, lambda ring: _reduced(ring, data), transport="bfloat16")
    half = 2_500  # np.linspace(0, 5001, 3).round(): chunk 0 is [0, 2500), summed on task 1
    expected = np.concatenate(
        [bf16(data[1][:half] + bf16(data[0][:half])), bf16(data[0][half:] + bf16(data[1][half:]))]
    )
    for buffer in results:
        np.testing.assert_array_equal(buffer, expected)


def _reduced(ring, data):
    buffer = data[ring.rank].copy()
    ring.all_reduce(buffer)
    return buffer


def test_a_pass_refuses_bounds_that_do_not_fit_its_buffer():
    from sparkbatch import _native

    left, right = socket.socketpair()
    try:
        passes = _native.RingPasses(right.fileno(), left.fileno(), 0, 2, 4096)
        buffer = np.zeros(10, np.float32)
        with pytest.raises(ValueError, match="past the buffer"):
            passes.reduce_scatter(buffer, np.array([0, 5, 11], np.int64), 2)
        with pytest.raises(ValueError, match="must not decrease"):
            passes.all_gather(buffer, np.array([0, 6, 5], np.int64), 2)
        with pytest.raises(ValueError, match="3 chunk boundaries"):
            passes.all_gather(buffer, np.array([0, 10], np.int64), 2)
        with pytest.raises(TypeError, match="float32 or float64"):
            passes.all_gather(np.zeros(10, np.int32), np.array([0, 5, 10], np.int64), 2)
        with pytest.raises(ValueError, match="2 or more tasks"):
            _native.RingPasses(right.fileno(), left.fileno(), 0, 1, 4096)
    finally:
        left.close()
        right.close()


def _round_through(encode, decode, values: np.ndarray) -> np.ndarray:
    wire = np.empty(values.size, np.uint16)
    encode(values, wire)
    out = np.empty_like(values)
    decode(wire, out)
    return out


def test_bfloat16_transport_rounds_to_nearest_ties_to_even():
    from sparkbatch import _native

    def rounded(values):
        return _round_through(_native.bfloat16_encode, _native.bfloat16_decode, values)

    ones = np.array([1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-9, -(1 + 2**-7 + 2**-9), 3e38], np.float32)
    np.testing.assert_array_equal(
        rounded(ones), np.array([1, 1 + 2**-6, 1, -(1 + 2**-7), 3.00405527e38], np.float32)
    )
    # NaNs whose rounding would carry into the exponent or the sign stay NaNs, not 0 or inf.
    nans = np.array([0x7FFFFFFF, 0xFFFFFFFF, 0x7F800001, 0x7FC00000], np.uint32).view(np.float32)
    assert np.isnan(rounded(nans)).all()


def test_float16_transport_rounds_as_ieee_float16_does():
    """The float16 transport's conversions give numpy's float16 bits for every float32 class:
    random bit patterns (normals, subnormals, overflow), ties and the edges of the range."""
    from sparkbatch import _native

    bits = np.random.default_rng(3).integers(0, 2**32, 200_000, dtype=np.uint64)
    edges = [0.0, -0.0, 65504, 65519.996, 65520, 65536, 2**-24, 2**-25, 3 * 2**-26, 2**-14,
             1 + 2**-11, 1 + 3 * 2**-11, np.inf, -np.inf, 1e-30, -1e30]  # fmt: skip
    values = np.concatenate([bits.astype(np.uint32).view(np.float32), np.float32(edges)])
    finite = ~np.isnan(values)
    wire = np.empty(values.size, np.uint16)
    _native.float16_encode(values, wire)
    with np.errstate(over="ignore"):
        expected = values.astype(np.float16)
    np.testing.assert_array_equal(wire[finite], expected.view(np.uint16)[finite])
    assert np.isnan(wire[~finite].view(np.float16)).all()
    every_half = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    widened = np.empty(every_half.size, np.float32)
    _native.float16_decode(every_half, widened)
    np.testing.assert_array_equal(widened, every_half.view(np.float16).astype(np.float32))


def test_all_reduce_refuses_a_buffer_it_could_only_sum_a_copy_of():
    from sparkbatch.train.ring import Ring

    with Ring(0, 1, None, None) as ring, pytest.raises(ValueError, match="contiguous"):
        ring.all_reduce(np.ones((3, 4), np.float32).T)


def test_tasks_form_a_grid_of_rings_where_their_number_splits():
    from sparkbatch.train.ring import Grid, Ring, grid_hops, grid_shape

    assert [grid_shape(n) for n in (1, 2, 3, 4, 5, 6, 12, 16, 97, 100)] == [
        (1,), (2,), (3,), (2, 2), (5,), (2, 3), (2, 2, 3), (2, 2, 2, 2), (97,), (2, 2, 5, 5)
    ]  # fmt: skip
    assert [grid_hops(n) for n in (2, 4, 12, 97, 256)] == [2, 4, 8, 192, 16]
    kinds = _ring_tasks(6, lambda ring: (type(ring), ring.rows.size, ring.columns.size))
    assert kinds == [(Grid, 2, 3)] * 6

    def axes(ring):  # each axis's ring: its length and the ranks of this task's neighbours
        shape = []
        while isinstance(ring, Grid):
            shape.append(ring.rows.size)
            ring = ring.columns
        return [*shape, ring.size]

    assert _ring_tasks(12, axes) == [[2, 2, 3]] * 12
    # Task 5 = digits (1, 0, 1) on axes of (2, 2, 3), strides (1, 2, 4): along axis 2 its ring is
    # tasks 1, 5, 9, so its neighbours there are 1 and 9 (named in its errors).
    labels = _ring_tasks(12, lambda ring: ring.columns.columns.label)
    assert "ring 'axis 2' of 3: after task 1 at" in labels[5] and "before task 9 at" in labels[5]
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
    for rank, r in enumerate(results):  # each names its task, its ring and its neighbours
        if rank != 1:
            assert str(r).startswith(f"task {rank} of {size} (ring "), r
            assert "at 127.0.0.1:" in str(r), r


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


def _ipv6_loopback() -> bool:
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback")
def test_tasks_that_publish_ipv6_addresses_form_a_ring_and_name_them_in_brackets():
    from sparkbatch.train.ring import address_host

    assert address_host("[::1]:7078") == "::1"  # as BarrierTaskInfo.address writes IPv6
    data = np.arange(40_000, dtype=np.float32)

    def summed(ring):
        buffer = data.copy()
        ring.all_reduce(buffer)
        return buffer

    for buffer in _ring_tasks(4, summed, host="::1"):  # a grid of two rings of 2
        np.testing.assert_array_equal(buffer, data * 4)

    def task(ring):
        if ring.rank == 1:
            ring.close()
            return "left"
        return ring.all_reduce(np.ones(100_000, np.float32))

    results = _ring_tasks(3, task, host="::1")
    assert results[1] == "left"
    for r in (results[0], results[2]):
        assert isinstance(r, ConnectionError) and "at [::1]:" in str(r), r


def test_a_silent_stranger_does_not_hold_up_the_neighbours_behind_it(monkeypatch):
    from sparkbatch.train import ring

    monkeypatch.setattr(ring, "_HELLO_S", 0.2)
    strangers: list = []
    real = socket.create_server

    def server_with_a_silent_caller(*args, **kwargs):  # connects first, then says nothing
        server = real(*args, **kwargs)
        strangers.append(socket.create_connection(("127.0.0.1", server.getsockname()[1])))
        return server

    monkeypatch.setattr(socket, "create_server", server_with_a_silent_caller)
    try:  # with the whole wait (60 s) per stranger, the threads would outlast _ring_tasks' join
        assert _ring_tasks(2, lambda r: r.all_gather(r.rank)) == [[0, 1], [0, 1]]
    finally:
        for sock in strangers:
            sock.close()


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
