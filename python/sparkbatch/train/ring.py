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

Each pass takes ``size - 1`` steps, and each step a hop's latency: with hundreds of tasks the
hops cost more than the bytes. :func:`connect_ring` therefore arranges the tasks in a
:class:`Grid` of as many axes as their number has prime factors (:func:`grid_shape`: eight
axes of 2 for 256), one ring along each axis: a reduce-scatter along the first axis, an
all-reduce of each task's summed chunk over the other axes (the same again, one axis fewer),
an all-gather along the first axis. The bytes each task sends stay those of one ring,
``2 (size - 1) / size`` of the buffer; the hops fall from ``2 (size - 1)`` to twice the sum of
the axes' lengths less one each (16 for 256 tasks, against 510 on one ring and 60 on a 16 x 16
grid). With axes of 2 this is Rabenseifner's recursive halving and doubling.

Chunks travel in pieces of ``piece_bytes``. Both passes run in native code
(``_native.RingPasses``) in the calling thread, without the GIL: it receives piece after piece
from the previous task and sums or places it, and in between hands the next task whatever its
socket takes, without blocking on either side; so receiving, summing and sending overlap (a
pipeline around the ring), and a hop costs a piece's time rather than Python's.

Every task ends with the same bits: each chunk is summed once, by one chain of additions, and
then copied. The order of the additions differs from chunk to chunk (chunk ``c`` is summed in
ring order starting at task ``c``), so the sum may differ from a sum in task order in the last
bits.

``transport="bfloat16"`` or ``"float16"`` sends float32 buffers at half the bytes: each piece is
rounded to the transport type (to nearest, ties to even) for the wire and summed in float32 on
arrival (widened and added in one pass); each summed chunk is rounded once more as the
all-gather sends it, and its owner keeps the rounded values, so that every task still ends with
the same bits. In a grid only the last rounding of a chunk's values counts: a row's summed chunk
goes through the column's all-reduce in float32, as summed.
bfloat16 keeps float32's range with 8 bits of mantissa; float16 keeps 11 bits but overflows past
65504. Other dtypes travel as they are.

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
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _native
from .socket_exchange import recv_message, send_message
from .tcp_server import listen

__all__ = [
    "Channels",
    "Grid",
    "Ring",
    "RingStep",
    "address_host",
    "connect_ring",
    "grid_hops",
    "grid_shape",
    "TRANSPORTS",
]

#: The default size of the pieces chunks travel in (256 KiB: large enough that per-piece costs
#: vanish, small enough that a piece and the values it is added to stay in a core's L2 cache,
#: and that a hop of the pipeline costs little: 0.2 ms at 10 Gbit/s).
PIECE_BYTES = 256 << 10
_SOCKET_BUFFER = 4 << 20  # per direction: a few pieces in flight
_CONNECT_S = 60.0  # how long the ring waits for its neighbours to connect
# How long an accepted connection has to say who it is: a neighbour sends its hello as soon as it
# has connected, so a connection silent this long is a stranger (a port scanner, a health check)
# and must not hold up the neighbours queued behind it until the whole wait is over.
_HELLO_S = 5.0
#: What ``transport`` takes: None (every buffer as it is), "bfloat16" or "float16".
TRANSPORTS = (None, "bfloat16", "float16")


@dataclass(frozen=True)
class RingStep:
    """One pass of a collective as one task saw it: its name, the seconds it took there and
    the bytes that task sent."""

    name: str
    seconds: float
    bytes: int


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
            except Exception as e:  # noqa: BLE001  (raised by flush; a dead thread would hang it)
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
        label: str | None = None,
    ) -> None:
        if size > 1 and (right is None or left is None):
            raise ValueError("a ring of more than one task needs both neighbours' connections")
        self.rank = rank
        self.size = size
        # what a ConnectionError of this ring starts with: which task, which ring, its neighbours
        self.label = label or f"task {rank} of a ring of {size}"
        self.piece_bytes = max(64, int(piece_bytes))
        _check_transport(transport)
        self._transport = transport
        self._right = right
        self._left = left
        self._sender = _Sender(right) if right is not None else None
        self._passes = (
            _native.RingPasses(
                right.fileno(), left.fileno(), rank, size, self.piece_bytes, transport
            )
            if right is not None and left is not None
            else None
        )

    @property
    def transport(self) -> str | None:
        """What float32 buffers travel as: None (float32), "bfloat16" or "float16"."""
        return self._transport

    def __enter__(self) -> Ring:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def abort(self) -> None:
        """Shut both connections down, so that a pass running on another thread fails at once
        (closing a socket would not wake it)."""
        for sock in (self._right, self._left):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

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
        with self._naming_errors():
            for s in range(self.size - 1):
                send_message(_Queued(self._sender), {"item": payload})
                header, _, _ = recv_message(self._left)
                payload = header["item"]
                items[(self.rank - s - 1) % self.size] = json.loads(payload)
            self._sender.flush()
        return items

    def gather_values(self, values: np.ndarray) -> np.ndarray:
        """Every task's ``values`` (float64, as many on every task), one row per task in rank
        order: a native all-gather, without JSON or Python between hops, for what every round
        exchanges."""
        values = np.ascontiguousarray(values, np.float64).reshape(-1)
        table = np.zeros((self.size, values.size), np.float64)
        if self.size == 1:
            table[0] = values
            return table
        # all_gather_chunks passes on the chunk after each task's rank first (what
        # reduce_scatter left summed there): task r's row travels as chunk r + 1.
        table[(self.rank + 1) % self.size] = values
        self.all_gather_chunks(table.reshape(-1), np.arange(self.size + 1) * values.size)
        return np.roll(table, -1, axis=0)

    def all_reduce(self, buffer: np.ndarray) -> list[RingStep]:
        """Sum the contiguous ``buffer`` over every task, in place: afterwards every task's
        ``buffer`` holds the same sum. The tasks' buffers must agree in dtype and size.
        Returns the two passes' times and bytes sent by this task."""
        if not buffer.flags.c_contiguous or not buffer.flags.writeable:  # else reshape copies
            raise ValueError("all_reduce needs a writable contiguous buffer")
        flat = buffer.reshape(-1)
        if self.size == 1 or flat.size == 0:
            return [RingStep("reduce-scatter", 0.0, 0), RingStep("all-gather", 0.0, 0)]
        bounds = self.bounds(flat.size)
        start = time.perf_counter()
        sent = self.reduce_scatter(flat, bounds)
        middle = time.perf_counter()
        sent_gather = self.all_gather_chunks(flat, bounds)
        end = time.perf_counter()
        return [
            RingStep("reduce-scatter", middle - start, sent),
            RingStep("all-gather", end - middle, sent_gather),
        ]

    # -- the two passes ----------------------------------------------------------------------

    def bounds(self, length: int) -> np.ndarray:
        """Where the ``size`` chunks of a buffer of ``length`` values begin and end."""
        return np.linspace(0, length, self.size + 1).round().astype(np.int64)

    def owned(self, bounds: np.ndarray) -> slice:
        """The chunk this task holds summed after :meth:`reduce_scatter`."""
        c = (self.rank + 1) % self.size
        return slice(int(bounds[c]), int(bounds[c + 1]))

    def reduce_scatter(self, flat: np.ndarray, bounds: np.ndarray) -> int:
        """The first pass: afterwards chunk :meth:`owned` of ``flat`` holds the sum over the
        ring's tasks. The bytes this task sent."""
        assert self._passes is not None and self._sender is not None
        with self._naming_errors():
            self._sender.flush()  # nothing of all_gather's may be left to interleave
            return self._passes.reduce_scatter(flat, bounds, self.size)

    def all_gather_chunks(self, flat: np.ndarray, bounds: np.ndarray) -> int:
        """The second pass: every task's owned chunk copied into every other task's ``flat``.
        The bytes this task sent."""
        assert self._passes is not None and self._sender is not None
        with self._naming_errors():
            self._sender.flush()
            return self._passes.all_gather(flat, bounds, self.size)

    @contextlib.contextmanager
    def _naming_errors(self) -> Iterator[None]:
        """A ConnectionError inside says which task and ring it happened on (:attr:`label`)."""
        try:
            yield
        except ConnectionError as e:
            raise ConnectionError(f"{self.label}: {e}") from e


class Grid:
    """Tasks in rows of ``rows.size`` (a :class:`Ring`) and columns of ``columns.size`` (a
    :class:`Ring`, or itself a :class:`Grid` over the remaining axes): an all-reduce is a
    reduce-scatter along the row, an all-reduce of each task's summed chunk along its column,
    and an all-gather along the row. The bytes each task sends are those of one ring over all
    the tasks, but a value crosses ``2 (rows.size - 1)`` connections plus the column's instead
    of ``2 (size - 1)``: for 256 tasks 16 hops on :func:`grid_shape`'s eight axes of 2, not 510.
    """

    def __init__(self, rank: int, size: int, rows: Ring, columns: Ring | Grid) -> None:
        self.rank = rank
        self.size = size
        self.rows = rows
        self.columns = columns

    @property
    def transport(self) -> str | None:
        return self.rows.transport

    def __enter__(self) -> Grid:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def abort(self) -> None:
        self.rows.abort()
        self.columns.abort()

    def close(self) -> None:
        self.rows.close()
        self.columns.close()

    def all_gather(self, item: Any) -> list[Any]:
        """Every task's ``item`` (JSON-able), in rank order, on every task."""
        by_row = self.columns.all_gather(self.rows.all_gather(item))
        return [x for row in by_row for x in row]

    def gather_values(self, values: np.ndarray) -> np.ndarray:
        """As :meth:`Ring.gather_values`, over the whole grid (along the row, then the rows
        along the column)."""
        row = self.rows.gather_values(values)
        return self.columns.gather_values(row.reshape(-1)).reshape(self.size, -1)

    def all_reduce(self, buffer: np.ndarray) -> list[RingStep]:
        """As :meth:`Ring.all_reduce`, over the whole grid."""
        if not buffer.flags.c_contiguous or not buffer.flags.writeable:  # else reshape copies
            raise ValueError("all_reduce needs a writable contiguous buffer")
        flat = buffer.reshape(-1)
        if flat.size == 0:
            return [RingStep("reduce-scatter", 0.0, 0), RingStep("all-gather", 0.0, 0)]
        bounds = self.rows.bounds(flat.size)
        start = time.perf_counter()
        sent = self.rows.reduce_scatter(flat, bounds)
        middle = time.perf_counter()
        scatter, gather = self.columns.all_reduce(flat[self.rows.owned(bounds)])
        after_columns = time.perf_counter()
        sent_gather = self.rows.all_gather_chunks(flat, bounds)
        end = time.perf_counter()
        return [
            RingStep("reduce-scatter", middle - start + scatter.seconds, sent + scatter.bytes),
            RingStep(
                "all-gather", end - after_columns + gather.seconds, sent_gather + gather.bytes
            ),
        ]


class Channels:
    """Several rings (or grids) among the same tasks, each over connections of its own: an
    all-reduce cuts the buffer into as many contiguous parts and sums each on its own channel
    and thread, so that the all-reduce's CPU work (copies into and out of the kernel, sums)
    spreads over that many cores and that many TCP streams share each link, as NCCL's channels
    do. Worth it where each task has cores to spare while it averages (they sit idle then
    anyway, its fitting done).
    """

    def __init__(self, members: Sequence[Ring | Grid]) -> None:
        if len(members) < 2:
            raise ValueError("Channels needs two or more rings")
        self.members = list(members)
        self.rank = members[0].rank
        self.size = members[0].size
        self._pool = ThreadPoolExecutor(len(members) - 1, "sparkbatch-ring-channel")

    @property
    def transport(self) -> str | None:
        return self.members[0].transport

    def __enter__(self) -> Channels:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def abort(self) -> None:
        for member in self.members:
            member.abort()

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        for member in self.members:
            member.close()

    def all_gather(self, item: Any) -> list[Any]:
        """Every task's ``item`` (JSON-able), in rank order, on every task (on channel 0)."""
        return self.members[0].all_gather(item)

    def gather_values(self, values: np.ndarray) -> np.ndarray:
        """As :meth:`Ring.gather_values` (on channel 0)."""
        return self.members[0].gather_values(values)

    def all_reduce(self, buffer: np.ndarray) -> list[RingStep]:
        """As :meth:`Ring.all_reduce`; each step's seconds are the slowest channel's, its bytes
        all channels' together."""
        if not buffer.flags.c_contiguous or not buffer.flags.writeable:  # else reshape copies
            raise ValueError("all_reduce needs a writable contiguous buffer")
        flat = buffer.reshape(-1)
        edges = np.linspace(0, flat.size, len(self.members) + 1).round().astype(np.int64)
        parts = [flat[a:b] for a, b in zip(edges[:-1], edges[1:], strict=True)]
        others = [
            self._pool.submit(member.all_reduce, part)
            for member, part in zip(self.members[1:], parts[1:], strict=True)
        ]
        results: list[list[RingStep]] = []
        try:
            results.append(self.members[0].all_reduce(parts[0]))
        except BaseException:
            self.abort()  # the other channels' passes must not wait for peers that gave up
            raise
        finally:
            errors = []
            for future in others:
                try:
                    results.append(future.result())
                except BaseException as e:  # noqa: BLE001  (raised below, after every channel)
                    errors.append(e)
                    self.abort()
        if errors:
            raise errors[0]
        return [
            RingStep(
                steps[0].name, max(s.seconds for s in steps), sum(s.bytes for s in steps)
            )
            for steps in zip(*results, strict=True)
        ]


class _Queued:
    """A socket-like object whose ``sendall`` queues on a :class:`_Sender` (for
    :func:`send_message`)."""

    def __init__(self, sender: _Sender) -> None:
        self._sender = sender

    def sendall(self, data: Any) -> None:
        self._sender.send(bytes(data))


def _check_transport(transport: str | None) -> None:
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {TRANSPORTS}, got {transport!r}")


# -- building the ring ---------------------------------------------------------------------------


def grid_shape(size: int) -> tuple[int, ...]:
    """The axes :func:`connect_ring` arranges ``size`` tasks on: ``size``'s prime factors,
    smallest first (one axis, a plain ring, for 1, 2, 3 and other primes). A grid's all-reduce
    takes ``2 (length - 1)`` hops along each axis, so the most axes take the fewest hops: 16 for
    256 tasks on eight axes of 2, where a 16 x 16 grid takes 60.

    >>> grid_shape(256), grid_shape(12), grid_shape(7)
    ((2, 2, 2, 2, 2, 2, 2, 2), (2, 2, 3), (7,))
    """
    factors: list[int] = []
    rest, divisor = max(1, int(size)), 2
    while divisor * divisor <= rest:
        while rest % divisor == 0:
            factors.append(divisor)
            rest //= divisor
        divisor += 1
    if rest > 1 or not factors:
        factors.append(rest)
    return tuple(factors)


def grid_hops(size: int) -> int:
    """The hops a value takes in one all-reduce among ``size`` tasks as :func:`connect_ring`
    arranges them: ``2 (length - 1)`` along each axis of :func:`grid_shape`.

    >>> grid_hops(3), grid_hops(4), grid_hops(256)
    (4, 4, 16)
    """
    return sum(2 * (length - 1) for length in grid_shape(size))


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
    grid: bool = True,
    channels: int = 1,
) -> Ring | Grid | Channels:
    """Join the ``size`` tasks' collective as task ``rank``: listen on ``bind_host``, publish
    ``host`` and the port through ``gather`` (``BarrierTaskContext.allGather``: every task's
    message, in rank order), connect to the next task of each ring this task belongs to and
    accept the previous one, each connection opened with the fit's ``token``, the sender's rank
    and the ring's name.

    With ``grid`` (and a ``size`` that is not prime) the tasks form a :class:`Grid` on the axes
    of :func:`grid_shape`, a ring along each (named ``"axis 0"``, ``"axis 1"``, ...); else one
    :class:`Ring`. ``transport``: what
    float32 buffers travel as (see the module's docstring). ``channels`` > 1: that many such
    rings or grids, each over connections of its own, as :class:`Channels`.
    """
    _check_transport(transport)  # refused before any connection
    if int(channels) < 1:
        raise ValueError(f"channels must be 1 or more, got {channels!r}")
    channels = int(channels)
    axes = grid_shape(size) if grid else (size,)
    if len(axes) > 1:  # axis k's ring: the tasks whose ranks differ from this one in digit k
        shapes, stride = {}, 1
        for k, length in enumerate(axes):
            digit = (rank // stride) % length
            shapes[f"axis {k}"] = [rank + (m - digit) * stride for m in range(length)]
            stride *= length
    else:
        shapes = {"ring": list(range(size))}
    # Each channel's rings, by the name their connections open with.
    rings = {
        (name if c == 0 else f"{name}/{c}"): members
        for c in range(channels)
        for name, members in shapes.items()
    }
    made: dict[str, Ring] = {}
    if size == 1:
        gather(json.dumps({}))  # every barrier task calls allGather as often as the others
        return Ring(rank, size, None, None, piece_bytes=piece_bytes, transport=transport)
    listener = listen(bind_host, backlog=max(8, 2 * len(rings)))
    right: dict[str, socket.socket] = {}
    left: dict[str, socket.socket] = {}
    try:
        listener.settimeout(_CONNECT_S)
        port = listener.getsockname()[1]
        addresses = [json.loads(m) for m in gather(json.dumps({"host": host, "port": port}))]
        neighbours = {name: _neighbours(members, rank) for name, members in rings.items()}
        for name, (_, after) in neighbours.items():
            right[name] = _connect(rank, after, addresses[after])
            send_message(right[name], {"token": token, "rank": rank, "ring": name})
        expected = {(name, before) for name, (before, _) in neighbours.items()}
        left = _accept_left(listener, token, expected)
        for name, members in rings.items():
            before, after = neighbours[name]
            made[name] = Ring(
                members.index(rank),
                len(members),
                right[name],
                left[name],
                piece_bytes=piece_bytes,
                transport=transport,
                label=(
                    f"task {rank} of {size} (ring {name!r} of {len(members)}: after task "
                    f"{before} at {_where(addresses[before])}, before task {after} at "
                    f"{_where(addresses[after])})"
                ),
            )
    except BaseException:
        for sock in [*right.values(), *left.values()]:
            sock.close()
        raise
    finally:
        listener.close()
    def channel(c: int) -> Ring | Grid:
        suffix = "" if c == 0 else f"/{c}"
        if len(axes) == 1:
            return made["ring" + suffix]
        return _nested(rank, size, [made[f"axis {k}{suffix}"] for k in range(len(axes))])

    if channels == 1:
        return channel(0)
    return Channels([channel(c) for c in range(channels)])


def address_host(address: str) -> str:
    """The host of a ``host:port`` address as Spark writes it (``BarrierTaskInfo.address``),
    without the brackets of an IPv6 host, as socket calls take it.

    >>> address_host("10.0.0.5:41123"), address_host("[2001:db8::7]:41123")
    ('10.0.0.5', '2001:db8::7')
    """
    host = address.rsplit(":", 1)[0]
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _nested(rank: int, size: int, rings: list[Ring]) -> Ring | Grid:
    """The grid whose rows are ``rings[0]`` and whose columns are the grid of the other axes
    (among the tasks that share this one's place along the first: ranks ``rank // length``)."""
    if len(rings) == 1:
        return rings[0]
    length = rings[0].size
    return Grid(rank, size, rings[0], _nested(rank // length, size // length, rings[1:]))


def _neighbours(members: list[int], rank: int) -> tuple[int, int]:
    """The tasks before and after ``rank`` in the ring of ``members`` (in ring order)."""
    position = members.index(rank)
    return members[position - 1], members[(position + 1) % len(members)]


def _where(address: dict[str, Any]) -> str:
    """``host:port`` of a task's published address, ``[host]:port`` for an IPv6 host."""
    host = str(address["host"])
    return f"[{host}]:{address['port']}" if ":" in host else f"{host}:{address['port']}"


def _connect(rank: int, target: int, address: dict[str, Any]) -> socket.socket:
    try:
        sock = socket.create_connection((address["host"], int(address["port"])), _CONNECT_S)
    except OSError as e:
        raise ConnectionError(
            f"task {rank} of the ring cannot reach task {target} at "
            f"{_where(address)} ({e}): exchange='ring' needs the executors "
            "to reach each other on any port; where they cannot, use exchange='socket' or "
            "'spark'"
        ) from e
    _tune(sock)
    return sock


def _accept_left(
    listener: socket.socket, token: str, expected: set[tuple[str, int]]
) -> dict[str, socket.socket]:
    """The previous tasks' connections, one per ring (``expected``: its name and the previous
    task's rank): the first that open with the token and the right names."""
    deadline = time.monotonic() + _CONNECT_S
    found: dict[str, socket.socket] = {}
    try:
        while len(found) < len(expected):
            if time.monotonic() > deadline:
                missing = sorted(f"task {r} ({name})" for name, r in expected if name not in found)
                raise ConnectionError(
                    f"{', '.join(missing)} of the ring did not connect within {_CONNECT_S:.0f} s"
                )
            listener.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue  # past the deadline: the check above names the missing tasks
            try:
                conn.settimeout(min(_HELLO_S, max(0.01, deadline - time.monotonic())))
                hello, _, _ = recv_message(conn)
            except (ConnectionError, OSError):
                conn.close()
                continue
            name = hello.get("ring")
            if (
                hello.get("token") == token
                and (name, hello.get("rank")) in expected
                and name not in found
            ):
                _tune(conn)
                found[str(name)] = conn
            else:
                conn.close()  # not ours
    except BaseException:
        for conn in found.values():
            conn.close()
        raise
    return found


def _tune(sock: socket.socket) -> None:
    sock.settimeout(None)  # a step waits for the slowest task, however long
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)
