"""The socket exchange's protocol and server, driven by plain sockets (no Spark)."""

from __future__ import annotations

import os
import socket
import threading
import time

import numpy as np
import pytest

from sparkbatch.errors import DivergenceError, NonFiniteError
from sparkbatch.train.shared_slots import SharedSlots
from sparkbatch.train.socket_exchange import AveragingServer, recv_message, send_message

_OPEN: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_sockets():
    yield
    while _OPEN:
        _OPEN.pop().close()


def _server(workers: int, rounds: int, fail_in_round: int | None = None):
    params = np.zeros(4, np.float32)
    applied = []

    def state(r):
        return {"iteration": len(applied), "updater_steps": 0, "epoch": 0}, [params]

    def apply(result, r, start, fit_s, broadcast_s):
        if r == fail_in_round:
            raise DivergenceError(f"round {r}: training diverged")
        np.copyto(params, result.params / result.workers)
        applied.append((r, result.workers, result.examples, fit_s))

    server = AveragingServer(
        workers=workers,
        rounds=rounds,
        state=state,
        apply=apply,
        host="127.0.0.1",
        bind_host="127.0.0.1",
    )
    return server, params, applied


def _connect(server, worker: int, token: str | None = None) -> tuple[socket.socket, dict, list]:
    sock = socket.create_connection(server.address, timeout=10)
    _OPEN.append(sock)
    send_message(sock, {"token": token or server.token, "worker": worker})
    header, arrays, _ = recv_message(sock)
    return sock, header, arrays


def _result(sock, r: int, values, batches: int = 1, fit_s: float = 0.1) -> None:
    arrays = [np.asarray(values, np.float32)] if batches else []
    message = {
        "round": r,
        "score_sum": 1.0 * batches,
        "batches": batches,
        "examples": 10 * batches,
        "fit_s": fit_s,
        "broadcast_s": 0.0,
        "phases": [],
    }
    send_message(sock, message, arrays)


def test_messages_round_trip_headers_and_arrays_into_reused_buffers():
    a, b = socket.socketpair()
    with a, b:
        arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([], np.float64)]
        send_message(a, {"x": 1}, arrays)
        spare = [np.empty((2, 3), np.float32)]
        header, got, _ = recv_message(b, spare)
        assert header == {"x": 1}
        assert got[0] is spare[0]  # received in place
        np.testing.assert_array_equal(got[0], arrays[0])
        assert got[1].dtype == np.float64 and got[1].size == 0
        a.sendall(b"\xff" * 8)  # a header length no peer sends
        with pytest.raises(ConnectionError, match="not a sparkbatch peer"):
            recv_message(b)
        a.close()
        with pytest.raises(ConnectionError, match="closed"):
            recv_message(b)


def test_two_workers_are_averaged_round_by_round():
    server, params, applied = _server(workers=2, rounds=2)
    try:
        w0, start0, _ = _connect(server, 0)
        w1, start1, _ = _connect(server, 1)
        assert start0["round"] == start1["round"] == 0
        _result(w0, 0, [2, 2, 2, 2], fit_s=0.3)
        _result(w1, 0, [4, 4, 4, 4], fit_s=0.5)
        for sock in (w0, w1):
            header, arrays, _ = recv_message(sock)
            assert header["round"] == 1 and header["iteration"] == 1
            np.testing.assert_array_equal(arrays[0], [3, 3, 3, 3])
        assert applied == [(0, 2, 20, 0.5)]
        # In the last round worker 1 has no data: it does not count in the average.
        _result(w0, 1, [5, 5, 5, 5])
        _result(w1, 1, None, batches=0)
        for sock in (w0, w1):
            header, arrays, _ = recv_message(sock)
            assert header["round"] == 2 and arrays == []
        np.testing.assert_array_equal(params, [5, 5, 5, 5])
        assert server.next_round == 2 and server.error is None
    finally:
        server.close()


def test_strangers_are_ignored_and_a_retried_worker_resumes_without_double_counting():
    server, params, applied = _server(workers=2, rounds=3)
    try:
        stranger = socket.create_connection(server.address, timeout=10)
        _OPEN.append(stranger)
        send_message(stranger, {"token": "guess", "worker": 0})
        assert stranger.recv(1) == b""  # closed without an answer
        w0, _, _ = _connect(server, 0)
        w1, _, _ = _connect(server, 1)
        _result(w0, 0, [1, 1, 1, 1])
        _result(w1, 0, [3, 3, 3, 3])
        recv_message(w0)
        recv_message(w1)
        # Worker 1's task dies in round 1 after worker 0 sent its result; Spark retries both.
        _result(w0, 1, [7, 7, 7, 7])
        w1.close()
        again1, header, arrays = _connect(server, 1)
        assert header["round"] == 1  # round 0 is kept, round 1 is fitted again
        np.testing.assert_array_equal(arrays[0], [2, 2, 2, 2])
        again0, header, _ = _connect(server, 0)
        assert header["round"] == 1
        _result(again0, 1, [7, 7, 7, 7])  # worker 0's round 1 again: counted once
        _result(again1, 1, [9, 9, 9, 9])
        for sock in (again0, again1, w0):
            header, arrays, _ = recv_message(sock)
            assert header["round"] == 2
            np.testing.assert_array_equal(arrays[0], [8, 8, 8, 8])
        assert [a[:3] for a in applied] == [(0, 2, 20), (1, 2, 20)]
    finally:
        server.close()


def test_closing_the_server_releases_waiting_workers():
    server, _, _ = _server(workers=2, rounds=2)
    w0, _, _ = _connect(server, 0)
    _result(w0, 0, [1, 1, 1, 1])  # waits for worker 1, who never comes
    server.close()
    w0.settimeout(10)
    with pytest.raises(ConnectionError):
        recv_message(w0)


def _exchange_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("sparkbatch-exchange")]


def test_closing_the_server_ends_its_threads_and_closes_its_sockets():
    assert _exchange_threads() == []
    server, _, _ = _server(workers=2, rounds=2)
    w0, _, _ = _connect(server, 0)
    _result(w0, 0, [1, 1, 1, 1])  # its thread waits for worker 1
    idle = socket.create_connection(server.address, timeout=10)  # sends nothing at all
    _OPEN.append(idle)
    deadline = time.monotonic() + 10
    while len(_exchange_threads()) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)  # until the server has accepted it
    assert len(_exchange_threads()) == 3  # accepting, and one per connection
    server.close()
    assert _exchange_threads() == []
    assert idle.recv(1) == b""  # shut down, not left hanging
    with pytest.raises(OSError):
        socket.create_connection(server.address, timeout=5)  # nothing listens any more
    server.close()  # twice is harmless


def test_a_server_whose_sockets_are_past_descriptor_1024_still_accepts():
    # select.select refuses descriptors of 1024 and more: the accepting thread died on them.
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1100:
        pytest.skip(f"at most {hard} open files")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1100), hard))
    filler = []
    try:
        while not filler or filler[-1] < 1024:
            filler.append(os.open(os.devnull, os.O_RDONLY))
        server, params, _ = _server(workers=1, rounds=1)
        try:
            assert server._connections.sockets()[0].fileno() >= 1024
            w0, start, _ = _connect(server, 0)
            assert start["round"] == 0
            _result(w0, 0, [2, 2, 2, 2])
            header, _, _ = recv_message(w0)
            assert header["round"] == 1
            np.testing.assert_array_equal(params, [2, 2, 2, 2])
        finally:
            server.close()
        assert _exchange_threads() == []
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_workers_error_stops_every_worker_and_is_kept_for_the_driver():
    server, _, applied = _server(workers=2, rounds=3)
    try:
        w0, _, _ = _connect(server, 0)
        w1, _, _ = _connect(server, 1)
        _result(w0, 0, [1, 1, 1, 1])  # waits for worker 1, who meets a NaN
        text = "round 0 (epoch 0), worker 1, f.safetensors: features hold nan at example 3"
        send_message(w1, {"error": "NonFiniteError", "message": text})
        header, arrays, _ = recv_message(w0)
        assert (header["round"], header["stop"], arrays) == (3, True, [])  # past the last round
        _, header, _ = _connect(server, 1)  # a late connection is told to stop as well
        assert header["round"] == 3
        assert type(server.error) is NonFiniteError and str(server.error) == text
        assert applied == []
    finally:
        server.close()


def test_an_averaging_error_on_the_driver_stops_the_workers():
    server, _, applied = _server(workers=2, rounds=3, fail_in_round=1)
    try:
        w0, _, _ = _connect(server, 0)
        w1, _, _ = _connect(server, 1)
        for r in (0, 1):
            _result(w0, r, [1, 1, 1, 1])
            _result(w1, r, [3, 3, 3, 3])
            headers = [recv_message(sock)[0] for sock in (w0, w1)]
        assert [h["round"] for h in headers] == [3, 3] and all(h["stop"] for h in headers)
        assert isinstance(server.error, DivergenceError) and len(applied) == 1
    finally:
        server.close()


# --- shared-memory slots (workers on the driver's machine) --------------------------------------

shm = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm on this system")


@shm
def test_shared_slots_are_seen_by_an_attached_mapping_and_removed_on_close():
    specs = [("<f4", 5), ("<f4", 10)]
    slots = SharedSlots.create(specs, 3)
    assert slots is not None and os.path.getsize(slots.path) == SharedSlots.nbytes(specs, 3)
    other = SharedSlots.attach(slots.path, specs, 3)
    try:
        slots.slot(1)[1][:] = np.arange(10)
        np.testing.assert_array_equal(other.slot(1)[1], np.arange(10))
        assert all(a.ctypes.data % 64 == 0 for i in range(3) for a in other.slot(i))
        assert SharedSlots.attach(slots.path, specs, 4) is None  # not the expected size
    finally:
        other.close()
        slots.close(unlink=True)
    assert not os.path.exists(slots.path)
    assert SharedSlots.attach(slots.path, specs, 3) is None  # gone (or another machine)


@shm
def test_workers_on_the_drivers_machine_exchange_through_shared_slots_until_one_reconnects():
    params = np.zeros(4, np.float32)
    slots = SharedSlots.create([("<f4", 4)], 3)  # workers 0 and 1, then the average

    def apply(result, r, start, fit_s, broadcast_s):
        np.copyto(params, result.params / result.workers)

    server = AveragingServer(
        workers=2,
        rounds=3,
        state=lambda r: ({"iteration": 0, "updater_steps": 0, "epoch": 0}, [params]),
        apply=apply,
        host="127.0.0.1",
        bind_host="127.0.0.1",
        shared=slots,
    )
    mine = SharedSlots.attach(slots.path, slots.specs, slots.count)
    try:
        socks = []
        for w in (0, 1):
            sock = socket.create_connection(server.address, timeout=10)
            _OPEN.append(sock)
            send_message(sock, {"token": server.token, "worker": w, "shared": True})
            header, arrays, _ = recv_message(sock)
            assert header["shared"] is True and len(arrays) == 1  # the start comes by TCP
            socks.append(sock)
        for w, value in ((0, 2.0), (1, 6.0)):
            mine.slot(w)[0][:] = value
            message = {
                "round": 0,
                "score_sum": 1.0,
                "batches": 1,
                "examples": 10,
                "fit_s": 0.1,
                "broadcast_s": 0.0,
                "phases": [],
                "shared": True,
            }
            send_message(socks[w], message)
        for sock in socks:
            header, arrays, _ = recv_message(sock)
            assert (
                header
                == {"iteration": 0, "updater_steps": 0, "epoch": 0, "round": 1, "shared": True}
                and arrays == []
            )
        np.testing.assert_array_equal(mine.slot(2)[0], [4, 4, 4, 4])  # the average
        # Worker 1 connects again (a retried task): from now on everything goes by TCP.
        again, header, arrays = _connect(server, 1)
        assert header["round"] == 1 and header["shared"] is False
        np.testing.assert_array_equal(arrays[0], [4, 4, 4, 4])
        _result(socks[0], 1, [0, 0, 0, 0])
        _result(again, 1, [2, 2, 2, 2])
        header, arrays, _ = recv_message(socks[0])
        assert header["shared"] is False
        np.testing.assert_array_equal(arrays[0], [1, 1, 1, 1])
    finally:
        mine.close()
        server.close()
    assert not os.path.exists(slots.path)


def test_a_worker_that_cannot_reach_the_driver_says_what_to_set():
    from sparkbatch.train.socket_exchange import FitRounds
    from sparkbatch.train.worker import WorkerSetup

    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        address = unused.getsockname()
    setup = WorkerSetup(object, "{}", batch_size=1, save_updater=False)
    fit = FitRounds(setup, address, "token", first_round=0)
    with pytest.raises(ConnectionError, match="exchange_host=") as info:
        fit(0, iter([[["a"]]]))
    assert f"{address[0]}:{address[1]}" in str(info.value)
