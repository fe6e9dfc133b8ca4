"""``Ring``: an all-reduce among Spark's barrier tasks over TCP, without a server in the middle.

The tasks of a barrier stage form a ring: task ``i`` sends to task ``i + 1`` and receives from
task ``i - 1`` (mod ``size``), one TCP connection each way, found through
``BarrierTaskContext.allGather`` (every task's listening address). :meth:`Ring.all_reduce`
sums buffers in place on every task by the classic two passes (Patarasuki and Yuan's
bandwidth-optimal ring, as Horovod and NCCL run it):

1. reduce-scatter: the buffer is cut into ``size`` chunks; in ``size - 1`` steps each task adds
   the chunk arriving from its left into its own and passes the sum on, so that task ``i`` ends
   with chunk ``i + 1`` summed over every task;
2. all-gather: in ``size - 1`` more steps the summed chunks travel once around the ring, each
   received straight into place.

Every task sends and receives ``2 (size - 1) / size`` times the buffer per all-reduce, whatever
``size`` is: the traffic per task does not grow with the number of tasks, unlike a star (every
task to one server) whose centre receives ``size`` buffers.

Chunks travel in pieces of ``piece_bytes``: a receiving thread takes piece ``k + 1`` off the
socket while the task's own thread adds piece ``k``, and a sending thread passes each summed
piece on as soon as it is summed, so that the steps overlap (a pipeline around the ring).

Every task ends with the same bits: each chunk is summed once, by one chain of additions, and
then copied. The order of the additions differs from chunk to chunk (chunk ``c`` is summed in
ring order starting at task ``c``), so the sum may differ from a sum in task order in the last
bits.

``transport="bfloat16"`` or ``"float16"`` sends float32 buffers at half the bytes: each piece is
rounded to the transport type (to nearest, ties to even) for the wire and summed in float32 on
arrival; each summed chunk is rounded once more before the all-gather, on the task that owns it,
so that every task still ends with the same bits. bfloat16 keeps float32's range with 8 bits of
mantissa; float16 keeps 11 bits but overflows past 65504. Other dtypes travel as they are.

Any failure (a peer that died, a connection cut) raises ``ConnectionError`` on the tasks next
to it, which fail their tasks; Spark then ends the barrier stage's other tasks.
"""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _native
from .socket_exchange import recv_message, send_message

__all__ = ["Ring", "RingStep", "connect_ring", "TRANSPORTS"]

#: The default size of the pieces chunks travel in (1 MiB: large enough that per-piece costs
#: vanish, small enough that summing and sending overlap).
PIECE_BYTES = 1 << 20
_SOCKET_BUFFER = 4 << 20  # per direction: a few pieces in flight
_CONNECT_S = 60.0  # how long the ring waits for its neighbours to connect
_SPARE_PIECES = 3  # receive buffers: one being filled, one being summed, one queued
#: What ``transport`` takes: None (every buffer as it is), "bfloat16" or "float16".
TRANSPORTS = (None, "bfloat16", "float16")


@dataclass(frozen=True)
class RingStep:
    """One pass of a collective as one task saw it: its name, the seconds it took there and
    the bytes that task sent."""

    name: str
    seconds: float
    bytes: int


class _Codec:
    """How a float32 piece travels: as itself (``wire`` None), or rounded to bfloat16 or
    float16 (to nearest, ties to even), carried as uint16 / float16 and widened on arrival."""

    def __init__(self, transport: str | None) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
        self.transport = transport
        self.wire = {None: None, "bfloat16": np.dtype(np.uint16), "float16": np.dtype(np.float16)}[
            transport
        ]

    def applies(self, dtype: np.dtype) -> bool:
        return self.wire is not None and dtype == np.float32

    def encode(self, piece: np.ndarray) -> np.ndarray:
        """``piece`` (float32) as the wire carries it: a new array."""
        if self.transport == "float16":
            return piece.astype(np.float16)
        bits = piece.view(np.uint32)
        rounding = np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
        return ((bits + rounding) >> np.uint32(16)).astype(np.uint16)

    def decode(self, wire: np.ndarray, out: np.ndarray) -> None:
        """Widen ``wire`` into the float32 array ``out``."""
        if self.transport == "float16":
            np.copyto(out, wire, casting="unsafe")
        else:
            np.left_shift(wire, np.uint32(16), out=out.view(np.uint32), dtype=np.uint32)

    def round(self, piece: np.ndarray) -> None:
        """Round ``piece`` in place to what the wire carries (the summed chunk's owner does,
        so that its copy and everyone else's agree)."""
        self.decode(self.encode(piece), piece)


class _Sender:
    """The thread that sends, in order, what the ring's task queues for its right neighbour.

    After a send fails it drops the rest (the receiving side sees the connection end); the
    error is raised by :meth:`flush`.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._queue: queue.Queue[Any] = queue.Queue()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="sparkbatch-ring-send", daemon=True)
        self._thread.start()

    def send(self, data: Any) -> None:
        self._queue.put(data)

    def flush(self) -> None:
        """Wait until everything queued is sent; raise the send's error, if one failed."""
        self._queue.join()
        if self.error is not None:
            raise ConnectionError(f"sending to the next task of the ring failed: {self.error}")

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(10.0)

    def _run(self) -> None:
        while True:
            data = self._queue.get()
            try:
                if data is None:
                    return
                if self.error is None:
                    self._sock.sendall(data)
            except OSError as e:
                self.error = e
            finally:
                self._queue.task_done()


class Ring:
    """One task's place in a ring of ``size`` tasks: ``right`` is the connection to task
    ``rank + 1``, ``left`` the one from task ``rank - 1`` (both None when ``size`` is 1).

    Build it with :func:`connect_ring`; use it as a context manager (or :meth:`close` it).
    """

    def __init__(
        self,
        rank: int,
        size: int,
        right: socket.socket | None,
        left: socket.socket | None,
        *,
        piece_bytes: int = PIECE_BYTES,
        transport: str | None = None,
    ) -> None:
        if size > 1 and (right is None or left is None):
            raise ValueError("a ring of more than one task needs both neighbours' connections")
        self.rank = rank
        self.size = size
        self.piece_bytes = max(64, int(piece_bytes))
        self._codec = _Codec(transport)
        self._right = right
        self._left = left
        self._sender = _Sender(right) if right is not None else None
        self._spares: dict[np.dtype, list[np.ndarray]] = {}

    @property
    def transport(self) -> str | None:
        """What float32 buffers travel as: None (float32), "bfloat16" or "float16"."""
        return self._codec.transport

    def __enter__(self) -> Ring:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the sending thread and close both connections. Idempotent."""
        if self._sender is not None:
            self._sender.close()
            self._sender = None
        for sock in (self._right, self._left):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()

    # -- collectives -------------------------------------------------------------------------

    def all_gather(self, item: Any) -> list[Any]:
        """Every task's ``item`` (JSON-able), in rank order, on every task."""
        if self.size == 1:
            return [item]
        assert self._sender is not None and self._left is not None
        items: list[Any] = [None] * self.size
        items[self.rank] = item
        payload = json.dumps(item)
        for s in range(self.size - 1):
            send_message(_Queued(self._sender), {"item": payload})
            header, _, _ = recv_message(self._left)
            payload = header["item"]
            items[(self.rank - s - 1) % self.size] = json.loads(payload)
        self._sender.flush()
        return items

    def all_reduce(self, buffer: np.ndarray) -> list[RingStep]:
        """Sum the contiguous ``buffer`` over every task, in place: afterwards every task's
        ``buffer`` holds the same sum. The tasks' buffers must agree in dtype and size.
        Returns the two passes' times and bytes sent by this task."""
        flat = buffer.reshape(-1)
        if not flat.flags.c_contiguous or not flat.flags.writeable:
            raise ValueError("all_reduce needs a writable contiguous buffer")
        if self.size == 1 or flat.size == 0:
            return [RingStep("reduce-scatter", 0.0, 0), RingStep("all-gather", 0.0, 0)]
        bounds = np.linspace(0, flat.size, self.size + 1).round().astype(np.int64)
        start = time.perf_counter()
        sent = self._reduce_scatter(flat, bounds)
        middle = time.perf_counter()
        sent_gather = self._all_gather_chunks(flat, bounds)
        end = time.perf_counter()
        return [
            RingStep("reduce-scatter", middle - start, sent),
            RingStep("all-gather", end - middle, sent_gather),
        ]

    # -- the two passes ----------------------------------------------------------------------

    def _pieces(self, flat: np.ndarray, bounds: np.ndarray, chunk: int) -> list[np.ndarray]:
        lo, hi = int(bounds[chunk]), int(bounds[chunk + 1])
        step = max(1, self.piece_bytes // flat.itemsize)
        return [flat[a : min(hi, a + step)] for a in range(lo, hi, step)]

    def _reduce_scatter(self, flat: np.ndarray, bounds: np.ndarray) -> int:
        assert self._sender is not None and self._left is not None
        n, i, sender = self.size, self.rank, self._sender
        codec = self._codec if self._codec.applies(flat.dtype) else None
        wire = codec.wire if codec is not None else flat.dtype
        sent = 0

        def send(piece: np.ndarray) -> int:
            out = codec.encode(piece) if codec is not None else piece
            sender.send(memoryview(out).cast("B"))
            return out.nbytes

        for piece in self._pieces(flat, bounds, i):  # step 0: this task's own chunk i
            sent += send(piece)
        # What arrives, in order: chunk i-1-s of step s, piece by piece.
        per_step = [self._pieces(flat, bounds, (i - s - 1) % n) for s in range(n - 1)]
        arriving = [piece for pieces in per_step for piece in pieces]
        forwarded = len(arriving) - len(per_step[-1])  # the last step's pieces stay here
        largest = max((p.size for p in arriving), default=0)
        spares = self._spare_pieces(wire, largest)
        widened = np.empty(largest if codec is not None else 0, np.float32)
        free: queue.Queue[np.ndarray] = queue.Queue()
        for spare in spares:
            free.put(spare)
        ready: queue.Queue[Any] = queue.Queue()
        receiver = threading.Thread(
            target=_receive_pieces,
            args=(self._left, [p.size for p in arriving], free, ready),
            name="sparkbatch-ring-receive",
            daemon=True,
        )
        receiver.start()
        done = False
        try:
            for k, piece in enumerate(arriving):
                got = ready.get()
                if isinstance(got, BaseException):
                    raise ConnectionError(
                        f"receiving from the previous task of the ring failed: {got}"
                    ) from got
                incoming = got[: piece.size]
                if codec is not None:
                    codec.decode(incoming, widened[: piece.size])
                    incoming = widened[: piece.size]
                _native.nn_add_into(piece, incoming)
                free.put(got)
                if k < forwarded:  # summed here, passed on in the next step
                    sent += send(piece)
            done = True
        finally:
            if not done:  # unblock the receiver wherever it waits: the ring is broken anyway
                with contextlib.suppress(OSError):
                    self._left.shutdown(socket.SHUT_RDWR)
                for spare in spares:
                    free.put(spare)
            receiver.join()  # ends once every piece is in, or on the connection's error
        if codec is not None:  # the chunk summed here, as everyone else will receive it
            for piece in self._pieces(flat, bounds, (i + 1) % n):
                codec.round(piece)
        sender.flush()
        return sent

    def _all_gather_chunks(self, flat: np.ndarray, bounds: np.ndarray) -> int:
        assert self._sender is not None and self._left is not None
        n, i, sender = self.size, self.rank, self._sender
        codec = self._codec if self._codec.applies(flat.dtype) else None
        sent = 0
        for piece in self._pieces(flat, bounds, (i + 1) % n):  # step 0: the chunk summed here
            out = codec.encode(piece) if codec is not None else piece
            sender.send(memoryview(out).cast("B"))
            sent += out.nbytes
        for s in range(n - 1):
            for piece in self._pieces(flat, bounds, (i - s) % n):
                if codec is None:
                    _recv_into(self._left, memoryview(piece).cast("B"))
                    out = piece
                else:  # a new array: the sender may still hold the previous one
                    out = np.empty(piece.size, codec.wire)
                    _recv_into(self._left, memoryview(out).cast("B"))
                    codec.decode(out, piece)
                if s < n - 2:
                    sender.send(memoryview(out).cast("B"))
                    sent += out.nbytes
        sender.flush()
        return sent

    def _spare_pieces(self, dtype: np.dtype, size: int) -> list[np.ndarray]:
        spares = self._spares.get(dtype)
        if spares is None or spares[0].size < size:
            spares = [np.empty(size, dtype) for _ in range(_SPARE_PIECES)]
            self._spares[dtype] = spares
        return spares


class _Queued:
    """A socket-like object whose ``sendall`` queues on a :class:`_Sender` (for
    :func:`send_message`)."""

    def __init__(self, sender: _Sender) -> None:
        self._sender = sender

    def sendall(self, data: Any) -> None:
        self._sender.send(bytes(data))


def _receive_pieces(
    sock: socket.socket, sizes: list[int], free: queue.Queue, ready: queue.Queue
) -> None:
    """The receiving thread of a reduce-scatter: each piece into a free spare, then handed on
    (an exception instead, if the connection fails)."""
    try:
        for size in sizes:
            spare = free.get()
            _recv_into(sock, memoryview(spare[:size]).cast("B"))
            ready.put(spare)
    except BaseException as e:  # noqa: BLE001  (handed to the summing thread, which raises it)
        ready.put(e)


def _recv_into(sock: socket.socket, view: memoryview) -> None:
    while len(view):
        n = sock.recv_into(view)
        if n == 0:
            raise ConnectionError("the previous task of the ring closed its connection")
        view = view[n:]


# -- building the ring ---------------------------------------------------------------------------


def connect_ring(
    rank: int,
    size: int,
    gather: Callable[[str], Sequence[str]],
    token: str,
    *,
    host: str,
    bind_host: str = "",
    piece_bytes: int = PIECE_BYTES,
    transport: str | None = None,
) -> Ring:
    """Join the ring of ``size`` tasks as task ``rank``: listen on ``bind_host``, publish
    ``host`` and the port through ``gather`` (``BarrierTaskContext.allGather``: every task's
    message, in rank order), connect to the next task and accept the previous one, each
    connection opened with the fit's ``token`` and the sender's rank. ``transport``: what
    float32 buffers travel as (see the module's docstring)."""
    _Codec(transport)  # refused before any connection
    if size == 1:
        gather(json.dumps({}))  # every barrier task calls allGather as often as the others
        return Ring(rank, size, None, None, piece_bytes=piece_bytes, transport=transport)
    listener = socket.create_server((bind_host, 0), backlog=4)
    right = left = None
    try:
        listener.settimeout(_CONNECT_S)
        port = listener.getsockname()[1]
        addresses = [json.loads(m) for m in gather(json.dumps({"host": host, "port": port}))]
        target = addresses[(rank + 1) % size]
        try:
            right = socket.create_connection((target["host"], int(target["port"])), _CONNECT_S)
        except OSError as e:
            raise ConnectionError(
                f"task {rank} of the ring cannot reach task {(rank + 1) % size} at "
                f"{target['host']}:{target['port']} ({e}): exchange='ring' needs the executors "
                "to reach each other on any port; where they cannot, use exchange='socket' or "
                "'spark'"
            ) from e
        _tune(right)
        send_message(right, {"token": token, "rank": rank})
        left = _accept_left(listener, token, (rank - 1) % size)
        return Ring(rank, size, right, left, piece_bytes=piece_bytes, transport=transport)
    except BaseException:
        for sock in (right, left):
            if sock is not None:
                sock.close()
        raise
    finally:
        listener.close()


def _accept_left(listener: socket.socket, token: str, expected: int) -> socket.socket:
    """The previous task's connection: the first one that opens with the token and its rank."""
    deadline = time.monotonic() + _CONNECT_S
    while True:
        if time.monotonic() > deadline:
            raise ConnectionError(
                f"task {expected} of the ring did not connect within {_CONNECT_S:.0f} s"
            )
        conn, _ = listener.accept()  # raises socket.timeout past the listener's timeout
        try:
            conn.settimeout(_CONNECT_S)
            hello, _, _ = recv_message(conn)
        except (ConnectionError, OSError):
            conn.close()
            continue
        if hello.get("token") == token and hello.get("rank") == expected:
            _tune(conn)
            return conn
        conn.close()  # not ours


def _tune(sock: socket.socket) -> None:
    sock.settimeout(None)  # a step waits for the slowest task, however long
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)
