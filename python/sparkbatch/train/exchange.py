"""The ``exchange="socket"`` transport: one barrier Spark job per fit, averaging over TCP.

With ``exchange="spark"`` every averaging round is a Spark job: broadcast, fit, ``treeAggregate``.
On small rounds Spark's own cost dominates (job scheduling and task start, moving the results
through the JVM). Here the workers of a whole fit run as one barrier stage instead (all started
together), and after every ``averaging_frequency`` minibatches each sends its parameters (and
updater state) straight to a small server on the driver, which sums them with the native
in-place add, averages them with the native kernel into the model and sends the average back.

Messages are length-prefixed: 8 bytes (little-endian) of JSON header length, the JSON header
(which lists the dtype and shape of the arrays that follow), then the arrays' raw bytes. Every
connection must open with the run's random token, so nothing else on the network can feed the
average.

Where the workers share the driver's machine, the arrays go through
:class:`~sparkbatch.train.shared_slots.SharedSlots` instead and the messages carry only headers.

Failures: a failed barrier task fails the job, which the driver submits again; the new tasks
connect again and resume at the first round not yet averaged, from the driver's parameters, so
each minibatch still counts exactly once per epoch (see :meth:`AveragingServer._serve`).
"""

from __future__ import annotations

import json
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .shared_slots import SharedSlots
from .stats import PhaseTiming
from .worker import RoundResult, combine

__all__ = ["AveragingServer", "send_message", "recv_message"]

_LENGTH = struct.Struct("<Q")
_MAX_HEADER = 1 << 26  # a header is a few hundred bytes; more means a stray client


def send_message(sock: socket.socket, header: dict[str, Any], arrays: Sequence[Any] = ()) -> None:
    """Send ``header`` (JSON) and ``arrays`` (raw bytes) as one message."""
    contiguous = [np.ascontiguousarray(a) for a in arrays]
    header = dict(header, arrays=[[a.dtype.str, list(a.shape)] for a in contiguous])
    head = json.dumps(header).encode()
    sock.sendall(_LENGTH.pack(len(head)) + head)
    for a in contiguous:
        if a.nbytes:
            sock.sendall(a.reshape(-1).view(np.uint8))


def recv_message(
    sock: socket.socket, into: list[np.ndarray] | None = None
) -> tuple[dict[str, Any], list[np.ndarray], float]:
    """Receive one message: its header, its arrays and when its first byte arrived.

    Arrays are received into the matching arrays of ``into`` (reused from message to
    message: no allocation, no page faults) where dtype and shape agree, else into new ones.
    Raises ``ConnectionError`` if the peer closed the connection or sent something else.
    """
    raw = _recv_exactly(sock, _LENGTH.size)
    first_byte = time.time()
    (length,) = _LENGTH.unpack(raw)
    if length > _MAX_HEADER:
        raise ConnectionError(f"message header of {length} bytes: not a sparkbatch peer")
    try:
        header = json.loads(_recv_exactly(sock, length))
        specs = [(np.dtype(dtype), tuple(shape)) for dtype, shape in header.pop("arrays")]
    except (ValueError, TypeError, KeyError) as e:
        raise ConnectionError(f"malformed message header: {e}") from None
    arrays = []
    for i, (dtype, shape) in enumerate(specs):
        spare = into[i] if into is not None and i < len(into) else None
        if spare is None or spare.dtype != dtype or spare.shape != shape:
            spare = np.empty(shape, dtype)
        if spare.nbytes:
            _recv_into(sock, spare.reshape(-1).view(np.uint8))
        arrays.append(spare)
    return header, arrays, first_byte


def _recv_exactly(sock: socket.socket, size: int) -> bytearray:
    buffer = bytearray(size)
    _recv_into(sock, memoryview(buffer))
    return buffer


def _recv_into(sock: socket.socket, view: Any) -> None:
    view = memoryview(view)
    while len(view):
        n = sock.recv_into(view)
        if n == 0:
            raise ConnectionError("the peer closed the connection mid-message")
        view = view[n:]


class AveragingServer:
    """The driver's side of one fit: collects every worker's round, averages, answers.

    ``apply(result, round_index, start, fit_s, broadcast_s)`` is called (under the server's
    lock) when all ``workers`` have sent round ``round_index``: it must average ``result`` into
    the model and record the round. ``state(r)`` returns what a worker about to fit round ``r``
    needs: a header dict (iteration, updater_steps, epoch) and the arrays (parameters, updater
    state).
    """

    def __init__(
        self,
        *,
        workers: int,
        rounds: int,
        state: Callable[[int], tuple[dict[str, Any], list[np.ndarray]]],
        apply: Callable[[RoundResult, int, float, float, float], None],
        host: str,
        bind_host: str = "",
        port: int = 0,
        shared: SharedSlots | None = None,
    ) -> None:
        self.workers = workers
        self.rounds = rounds
        self._state = state
        self._apply = apply
        self.token = secrets.token_hex(16)
        self._listener = socket.create_server((bind_host, port), backlog=max(16, workers))
        self.address = (host, self._listener.getsockname()[1])
        self._cond = threading.Condition()
        self._arrived: set[int] = set()  # the workers whose result for this round is in
        self._total: RoundResult | None = None  # their sum (None: none with data yet)
        self._fit_s = self._broadcast_s = 0.0  # the slowest worker's, this round
        #: The first round not yet averaged (all rounds before it are in the model).
        self.next_round = 0
        self._round_start = time.time()
        self._closed = False
        # Shared-memory slots (workers 0..W-1, then the average) while every worker has
        # connected once; a second connection for a worker (a retry) turns them off for good,
        # so that no slot ever has two writers or a reader that lags a round behind.
        self._shared = shared
        self._shared_ok = shared is not None
        self._connected: set[int] = set()
        #: The first error raised while averaging (the job then fails on its own).
        self.error: BaseException | None = None
        accept = threading.Thread(target=self._accept, name="sparkbatch-exchange", daemon=True)
        accept.start()

    def close(self) -> None:
        """Stop listening and wake every waiting connection (the fit is over or failed)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            if self._shared is not None:
                self._shared.close(unlink=True)
        self._listener.close()

    # -- connections -------------------------------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # closed
                return
            thread = threading.Thread(
                target=self._serve, args=(conn,), name="sparkbatch-exchange-worker", daemon=True
            )
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        """One worker task's connection: where to start, then one exchange per round.

        Rounds need no notion of task attempts: whichever task sends worker ``w``'s result
        for round ``r`` (a retried one, or one Spark has not killed yet) started from the same
        committed parameters and fitted the same files, so the first result for ``(w, r)``
        counts and later ones are answered without counting. Every answer tells the worker
        which round to fit next.
        """
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                hello, _, _ = recv_message(conn)
                if hello.get("token") != self.token:
                    return  # not one of ours
                worker = int(hello["worker"])
                if not 0 <= worker < self.workers:
                    return
                with self._cond:
                    if self._closed:
                        return
                    if worker in self._connected:
                        self._shared_ok = False
                    self._connected.add(worker)
                    granted = self._shared_ok and bool(hello.get("shared"))
                    r = self.next_round
                    header, arrays = self._state(r)
                send_message(conn, dict(header, round=r, shared=granted), arrays)
                spare: list[np.ndarray] = []  # this connection's receive buffers
                while r < self.rounds:
                    message, spare, _ = recv_message(conn, spare)
                    sent = int(message["round"])
                    with self._cond:
                        if self._closed or sent > self.next_round:
                            return
                        if sent == self.next_round and worker not in self._arrived:
                            received = spare
                            if granted and message.get("shared") and self._shared is not None:
                                received = self._shared.slot(worker)  # written by this task only
                            # Summed on arrival (in place into the first result's buffers,
                            # which their connection reuses only after this round's end).
                            self._arrived.add(worker)
                            self._total = combine(self._total, _result_of(message, received))
                            self._fit_s = max(self._fit_s, float(message["fit_s"]))
                            self._broadcast_s = max(
                                self._broadcast_s, float(message["broadcast_s"])
                            )
                            if len(self._arrived) == self.workers:
                                self._commit(sent)
                        while self.next_round <= sent and not self._closed:
                            self._cond.wait()
                        if self._closed:
                            return
                        r = self.next_round
                        header, arrays = self._state(r)
                        shared = granted and self._shared_ok  # the average is in its slot
                    if shared or r >= self.rounds:
                        arrays = []
                    send_message(conn, dict(header, round=r, shared=shared), arrays)
            except (ConnectionError, OSError):
                return  # the task died or was killed: Spark fails or retries the stage

    def _commit(self, r: int) -> None:
        """Hand the round's sum to ``apply`` and open the next round (lock held)."""
        try:
            if self._total is not None:
                self._apply(self._total, r, self._round_start, self._fit_s, self._broadcast_s)
            if self._shared_ok and self._shared is not None and r + 1 < self.rounds:
                _, arrays = self._state(r + 1)
                for slot, array in zip(self._shared.slot(self.workers), arrays, strict=True):
                    np.copyto(slot, array.reshape(-1))
        except BaseException as e:  # noqa: BLE001  (kept for the driver, which re-raises it)
            if self.error is None:
                self.error = e
            self._closed = True
        self._arrived.clear()
        self._total = None
        self._fit_s = self._broadcast_s = 0.0
        self.next_round = r + 1
        self._round_start = time.time()
        self._cond.notify_all()


def _result_of(message: dict[str, Any], arrays: list[np.ndarray]) -> RoundResult | None:
    if int(message["batches"]) == 0:
        return None  # a worker without data this round does not count in its average
    return RoundResult(
        params=arrays[0],
        state=arrays[1] if len(arrays) > 1 else None,
        score_sum=float(message["score_sum"]),
        batches=int(message["batches"]),
        examples=int(message["examples"]),
        workers=1,
        max_batches=int(message["batches"]),
        phases=[PhaseTiming(*p) for p in message.get("phases", [])],
    )
