"""``SocketExchange`` (``exchange="socket"``): one barrier Spark job per fit, averaging over TCP.

Both sides of the protocol live here: the driver's :class:`AveragingServer` and the workers'
:class:`FitRounds`, with :class:`WorkerMemory` (where a worker's parameters live meanwhile).

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
each minibatch still counts exactly once per epoch (see :meth:`AveragingServer._serve`). Errors
that a retry would meet again (a worker's NonFiniteError or DivergenceError, sent as an
``{"error", "message"}`` message; the driver's averaging error) instead stop the fit: every
worker is told to stop (a header whose ``round`` is past the last) and the driver raises the
error once the job has ended.

Measured per round (:class:`~sparkbatch.train.stats.RoundStats`): ``distribute_bytes``, the
arrays of the answers that started the round (each worker's, through TCP or its shared-memory
slot); ``aggregate_bytes``, the arrays the workers sent back (TCP or shared memory); and the
steps ``"receive"`` (the TCP bytes) or ``"shared memory"`` (the bytes that passed through the
slots), timed from the first byte of the round's first result to the end of its last, and
``"sum"``, the time spent summing the results as they arrived (within that span; it moves
nothing). Only arrays count: the JSON headers (a few hundred bytes a message) do not.

Resources: :meth:`AveragingServer.close` stops the accepting thread (woken through a socket
pair), shuts down every connection, joins every thread and closes the listening socket, so a
fit leaves no socket or thread behind, whether it succeeded or failed.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .._jobs import JobDescription
from ..errors import DivergenceError, NonFiniteError
from .exchange import Exchange
from .model import ModelAccess
from .runner import RoundTiming
from .shared_slots import SharedSlots
from .stats import AggregationStep, PhaseTiming
from .tcp_server import ConnectionServer
from .worker import RoundResult, WorkerSetup, combine, start_round

if TYPE_CHECKING:
    from pyspark import SparkContext

    from .plan import FitPlan
    from .runner import FitRunner

__all__ = [
    "SocketExchange",
    "AveragingServer",
    "FitRounds",
    "WorkerMemory",
    "send_message",
    "recv_message",
]

log = logging.getLogger("sparkbatch.train")

_LENGTH = struct.Struct("<Q")
_MAX_HEADER = 1 << 26  # a header is a few hundred bytes; more means a stray client
#: The errors a worker reports by name instead of failing its task (NOTE [deterministic
#: errors] in worker.py): a retry would meet them again.
WORKER_ERRORS: dict[str, type[Exception]] = {
    "NonFiniteError": NonFiniteError,
    "DivergenceError": DivergenceError,
}


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
    state). While ``apply`` runs, :attr:`measured` holds what the round moved (the module's
    docstring says what is measured).
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
        self._connections = ConnectionServer(
            self._serve,
            name="sparkbatch-exchange",
            bind_host=bind_host,
            port=port,
            backlog=max(16, workers),
        )
        self.address = (host, self._connections.port)
        self._cond = threading.Condition()
        self._arrived: set[int] = set()  # the workers whose result for this round is in
        self._total: RoundResult | None = None  # their sum (None: none with data yet)
        self._fit_s = self._broadcast_s = 0.0  # the slowest worker's, this round
        # What moved: the answers' arrays by the round they start (TCP, shared memory), and
        # this round's results: bytes by way, first byte in, last message in, summing time.
        self._sent: dict[int, int] = {}
        self._sent_shared: dict[int, int] = {}
        self._in_tcp = self._in_shared = 0
        self._first_in: float | None = None
        self._last_in = 0.0
        self._sum_s = 0.0
        #: What the round being applied moved (RoundTiming's ``distribute_bytes``,
        #: ``aggregate_bytes`` and ``steps``), set before ``apply`` is called.
        self.measured: dict[str, Any] = {}
        #: The first round not yet averaged (all rounds before it are in the model).
        self.next_round = 0
        self._round_start = time.time()
        self._closed = False
        self._stopping = False  # an error stops the fit: every worker is told to stop
        # Shared-memory slots (workers 0..W-1, then the average) while every worker has
        # connected once; a second connection for a worker (a retry) turns them off for good,
        # so that no slot ever has two writers or a reader that lags a round behind.
        self._shared = shared
        self._shared_ok = shared is not None
        self._connected: set[int] = set()
        #: The first error of the fit: raised while averaging, or reported by a worker.
        self.error: BaseException | None = None

    def close(self) -> None:
        """End the fit's server: wake every waiting connection, shut every connection down,
        join every thread, close every socket and remove the shared memory. Idempotent."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            if self._shared is not None:
                self._shared.close(unlink=True)
        self._connections.close()

    # -- connections -------------------------------------------------------------------------

    def _stop(self, error: BaseException) -> None:
        """Keep ``error`` for the driver and tell every worker to stop (lock held)."""
        if self.error is None:
            self.error = error
        self._stopping = True
        self._cond.notify_all()

    def _serve(self, conn: socket.socket) -> None:
        """One worker task's connection: where to start, then one exchange per round.

        Rounds need no notion of task attempts: whichever task sends worker ``w``'s result
        for round ``r`` (a retried one, or one Spark has not killed yet) started from the same
        committed parameters and fitted the same files, so the first result for ``(w, r)``
        counts and later ones are answered without counting. Every answer tells the worker
        which round to fit next.
        """
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stop = {"round": self.rounds, "shared": False, "stop": True}  # past the last round
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
            stopping = self._stopping
            if not stopping:
                self._count_answer(r, arrays, shared=False)
        if stopping:
            send_message(conn, stop)
            return
        send_message(conn, dict(header, round=r, shared=granted), arrays)
        spare: list[np.ndarray] = []  # this connection's receive buffers
        while r < self.rounds:
            message, spare, first_byte = recv_message(conn, spare)
            message_in = time.time()
            if "error" in message:  # the worker met an error a retry would meet again
                with self._cond:
                    self._stop(_worker_error(message))
                return
            sent = int(message["round"])
            with self._cond:
                if self._closed or sent > self.next_round:
                    return
                if sent == self.next_round and worker not in self._arrived and not self._stopping:
                    received = spare
                    moved = sum(a.nbytes for a in spare)
                    if granted and message.get("shared") and self._shared is not None:
                        received = self._shared.slot(worker)  # written by this task only
                        if int(message["batches"]):  # else it wrote nothing there
                            self._in_shared += sum(a.nbytes for a in received)
                    self._in_tcp += moved
                    if self._first_in is None or first_byte < self._first_in:
                        self._first_in = first_byte
                    self._last_in = max(self._last_in, message_in)
                    # Summed on arrival (in place into the first result's buffers, which
                    # their connection reuses only after this round's end).
                    self._arrived.add(worker)
                    summing = time.perf_counter()
                    self._total = combine(self._total, _result_of(message, received))
                    self._sum_s += time.perf_counter() - summing
                    self._fit_s = max(self._fit_s, float(message["fit_s"]))
                    self._broadcast_s = max(self._broadcast_s, float(message["broadcast_s"]))
                    if len(self._arrived) == self.workers:
                        self._commit(sent)
                while self.next_round <= sent and not self._closed and not self._stopping:
                    self._cond.wait()
                if self._closed:
                    return
                stopping = self._stopping
                if not stopping:
                    r = self.next_round
                    header, arrays = self._state(r)
                    shared = granted and self._shared_ok  # the average is in its slot
                    self._count_answer(r, arrays, shared=shared)
            if stopping:
                send_message(conn, stop)
                return
            if shared or r >= self.rounds:
                arrays = []
            send_message(conn, dict(header, round=r, shared=shared), arrays)

    def _count_answer(self, r: int, arrays: list[np.ndarray], *, shared: bool) -> None:
        """Count the arrays of an answer that starts round ``r`` (lock held)."""
        if r < self.rounds:
            sent = self._sent_shared if shared else self._sent
            sent[r] = sent.get(r, 0) + sum(int(a.nbytes) for a in arrays)

    def _measure(self, r: int) -> dict[str, Any]:
        """What round ``r`` moved (lock held; its last result is in)."""
        distributed = self._sent.pop(r, 0) + self._sent_shared.pop(r, 0)
        for done in [g for g in (*self._sent, *self._sent_shared) if g < r]:
            self._sent.pop(done, None)  # a retried task's answers for a round long gone
            self._sent_shared.pop(done, None)
        seconds = max(0.0, self._last_in - (self._first_in or self._last_in))
        steps = []
        if self._in_tcp or not self._in_shared:
            steps.append(AggregationStep("receive", seconds, self._in_tcp))
        if self._in_shared:
            steps.append(AggregationStep("shared memory", seconds, self._in_shared))
        steps.append(AggregationStep("sum", self._sum_s, 0))
        return {
            "distribute_bytes": distributed,
            "aggregate_bytes": self._in_tcp + self._in_shared,
            "steps": tuple(steps),
        }

    def _commit(self, r: int) -> None:
        """Hand the round's sum to ``apply`` and open the next round (lock held)."""
        self.measured = self._measure(r)
        try:
            if self._total is not None:
                self._apply(self._total, r, self._round_start, self._fit_s, self._broadcast_s)
            if self._shared_ok and self._shared is not None and r + 1 < self.rounds:
                _, arrays = self._state(r + 1)
                for slot, array in zip(self._shared.slot(self.workers), arrays, strict=True):
                    np.copyto(slot, array.reshape(-1))
        except BaseException as e:  # noqa: BLE001  (kept for the driver, which re-raises it)
            self._stop(e)
        self._arrived.clear()
        self._total = None
        self._fit_s = self._broadcast_s = 0.0
        self._in_tcp = self._in_shared = 0
        self._first_in = None
        self._last_in = self._sum_s = 0.0
        self.next_round = r + 1
        self._round_start = time.time()
        self._cond.notify_all()


def _worker_error(message: dict[str, Any]) -> Exception:
    """The exception a worker reported (``{"error": type name, "message": text}``)."""
    kind = WORKER_ERRORS.get(str(message.get("error")), RuntimeError)
    return kind(str(message.get("message", "a worker failed")))


def _result_of(message: dict[str, Any], arrays: list[np.ndarray]) -> RoundResult | None:
    skipped = int(message.get("skipped", 0))
    if int(message["batches"]) == 0:  # a worker without data does not count in the average
        return RoundResult.nothing_fitted(skipped=skipped) if skipped else None
    return RoundResult(
        params=arrays[0],
        state=arrays[1] if len(arrays) > 1 else None,
        score_sum=float(message["score_sum"]),
        batches=int(message["batches"]),
        examples=int(message["examples"]),
        workers=1,
        max_batches=int(message["batches"]),
        phases=[PhaseTiming(*p) for p in message.get("phases", [])],
        skipped=skipped,
    )


# -- the driver's side of a fit ------------------------------------------------------------------


class SocketExchange(Exchange):
    """One barrier Spark job per fit whose tasks run all of its rounds, averaging through an
    :class:`AveragingServer` on the driver after every round (through shared memory where
    the workers share the driver's machine).

    ``host``: the address executors connect to (default 127.0.0.1 on a local master, else
    ``spark.driver.host``); ``port``: the driver's port (0: any free port). Needs every worker
    scheduled at once and the executors able to reach the driver.
    """

    name = "socket"

    def __init__(self, host: str | None = None, port: int = 0) -> None:
        self.host = host
        self.port = port

    def __repr__(self) -> str:
        return f"SocketExchange(host={self.host!r}, port={self.port})"

    def run(self, runner: FitRunner, plan: FitPlan) -> None:
        sc = runner.sc
        workers, rounds = plan.workers, len(plan.rounds)
        slots = _task_slots(sc)
        if 0 < slots < workers:  # Spark would wait (10 minutes by default) for slots to appear
            raise ValueError(
                f"exchange='socket' runs all {workers} workers at once, but the cluster has "
                f"{slots} task slots: set ParameterAveraging(workers=...) to {slots} or fewer, "
                "or use exchange='spark'"
            )

        def state(g: int) -> tuple[dict[str, Any], list[np.ndarray]]:
            return runner.state(plan, g)

        def apply(result: RoundResult, g: int, start: float, fit_s: float, bcast: float) -> None:
            timing = RoundTiming(
                start, bcast, fit_s, time.time(), exchange=self.name, **server.measured
            )
            runner.finish(plan, g, result, timing)

        host, bind = self._address(sc)
        shared = None
        if sc.master.startswith("local"):  # the workers share this machine's memory
            specs = [(a.dtype.str, a.size) for a in state(0)[1]]
            shared = SharedSlots.create(specs, workers + 1)  # None: TCP carries it all
        try:
            server = AveragingServer(
                workers=workers,
                rounds=rounds,
                state=state,
                apply=apply,
                host=host,
                bind_host=bind,
                port=self.port,
                shared=shared,
            )
        except BaseException:
            if shared is not None:
                shared.close(unlink=True)
            raise
        fit = FitRounds(
            runner.worker_setup(plan),
            server.address,
            server.token,
            first_round=runner.round,
            shared=(shared.path, shared.specs, shared.count) if shared else None,
        )
        jobs = JobDescription(sc)
        jobs.set(f"sparkbatch fit: {plan.epochs} epoch(s), {rounds} rounds, socket exchange")
        try:
            _run_until_done(sc, plan.worker_view().barrier().mapPartitionsWithIndex(fit), server)
        finally:
            server.close()
            jobs.restore()
        if server.error is not None:
            raise server.error
        if server.next_round != rounds:
            raise RuntimeError(
                f"the workers' job ended after {server.next_round} of {rounds} rounds"
            )

    def _address(self, sc: SparkContext) -> tuple[str, str]:
        """Where workers reach the driver's averaging server, and the address it listens on."""
        if self.host:
            return self.host, ""
        if sc.master.startswith("local"):
            return "127.0.0.1", "127.0.0.1"
        conf = sc.getConf()
        host = conf.get("spark.driver.host") or socket.gethostname()
        return host, conf.get("spark.driver.bindAddress") or ""


def _run_until_done(sc: SparkContext, job: Any, server: AveragingServer) -> None:
    """Run the workers' barrier ``job``. Spark aborts a job whose barrier result stage fails;
    it is submitted again here, as often as Spark would retry a task, and resumes at the
    first round not averaged."""
    tries = _task_tries(sc)
    for attempt in range(1, tries + 1):
        try:
            job.collect()
            return
        except Exception as e:
            if server.error is not None:  # the driver failed averaging: that is the news
                raise server.error from e
            if attempt == tries:
                raise
            log.warning(
                "the workers' job failed in round %d of %d (try %d of %d), resuming there: %s",
                server.next_round + 1,
                server.rounds,
                attempt,
                tries,
                str(e).splitlines()[0] if str(e) else type(e).__name__,
            )


def _task_tries(sc: SparkContext) -> int:
    """How many times Spark runs a task before failing its job: ``local[N, F]`` gives F,
    other local masters 1, clusters ``spark.task.maxFailures`` (default 4)."""
    master = sc.master
    if master == "local" or master.startswith("local["):  # not local-cluster[...]
        match = re.fullmatch(r"local\[[^,\]]+,\s*(\d+)\]", master)
        return max(1, int(match.group(1))) if match else 1
    return max(1, int(sc.getConf().get("spark.task.maxFailures", "4")))


def _task_slots(sc: SparkContext) -> int:
    """How many tasks the cluster runs at once now (0: unknown, e.g. no executor yet)."""
    try:
        jsc = sc._jsc.sc()  # type: ignore[attr-defined]
        profile = jsc.resourceProfileManager().defaultResourceProfile()
        return int(jsc.maxNumConcurrentTasks(profile))
    except Exception:  # noqa: BLE001  (an internal API: fall back to the public figure)
        return int(sc.defaultParallelism)


# -- a worker's side of a fit --------------------------------------------------------------------


class WorkerMemory:
    """Where one socket worker's parameters (and updater state) live through its rounds.

    * :attr:`receive`: the arrays the driver's next answer is received into: the model's own
      buffers where they are writable host memory (:attr:`receive_is_model`: the average then
      lands in the model without a copy), else a spare set, kept from the first answer that
      came by TCP;
    * :attr:`in_slot`: the model keeps its buffers in this worker's shared-memory slot
      (granted by the driver to this task alone), so its results are there without a copy;
    * per round the driver says whether the arrays pass through the slots (``shared``): the
      average is then in the last slot, and the worker's results go into its own.
    """

    def __init__(
        self, access: ModelAccess, save_updater: bool, index: int, slots: SharedSlots | None
    ) -> None:
        self.access = access
        self.save_updater = save_updater
        self.index = index
        self.slots = slots  # None: not on the driver's machine (or no shared memory)
        self.receive: list[np.ndarray] = access.own_buffers(save_updater)
        self.receive_is_model = bool(self.receive)
        self.in_slot = False

    def move_into_slot(self, header: dict[str, Any], arrays: list[np.ndarray]) -> list[np.ndarray]:
        """On the driver's first answer: where it grants this task its slot and the model can
        keep its buffers there, start the round from ``arrays`` and move the model's buffers
        into the slot. The arrays the round starts from."""
        granted = header.get("shared") and self.slots is not None
        if not (granted and self.receive_is_model and self.access.can_use_buffers):
            return arrays
        self._start(header, arrays)
        self.access.use_buffers(*self.slots.slot(self.index))
        self.receive = self.access.own_buffers(self.save_updater)
        self.in_slot = True
        return self.receive

    def start(self, header: dict[str, Any], arrays: list[np.ndarray]) -> bool:
        """Set the model to the start of the round the driver's answer (``header`` and the
        ``arrays`` it carried) opens; whether the round's arrays pass through the slots."""
        shared = bool(header.get("shared")) and self.slots is not None
        if shared and not arrays:  # the average is in the last slot
            arrays = self.slots.slot(self.slots.count - 1)
        self._start(header, arrays)
        if not self.receive and not shared:
            self.receive = arrays  # reused for the next answers (never shared views)
        return shared

    def _start(self, header: dict[str, Any], arrays: list[np.ndarray]) -> None:
        in_place = (
            self.receive_is_model
            and len(arrays) == len(self.receive)
            and all(a is b for a, b in zip(arrays, self.receive, strict=True))
        )
        state = arrays[1] if len(arrays) > 1 else None
        start_round(
            self.access, header, arrays[0], state, self.save_updater, self.index, in_place=in_place
        )

    def outgoing(self, params: np.ndarray | None, shared: bool) -> list[np.ndarray]:
        """The arrays to send with this round's result (``params`` None: nothing fitted); none
        where they pass through the slots (copied into this worker's, unless already there)."""
        if params is None:
            return []
        result = [params]
        if self.save_updater:
            result.append(self.access.model.updater_state())
        if not shared:
            return result
        if not self.in_slot:
            for slot, array in zip(self.slots.slot(self.index), result, strict=True):
                np.copyto(slot, array.reshape(-1))
        return []

    def release(self) -> None:
        """Back to private memory (the cached model outlives the shared file), and unmap."""
        if self.slots is None:
            return
        own = self.access.own_buffers(True)
        if any(np.shares_memory(a, b) for a in own for b in self.slots.slot(self.index)):
            self.access.use_buffers(*(np.empty_like(a) for a in own))
        self.in_slot = False
        self.slots.close()


class FitRounds:
    """One worker's part of a whole fit: a barrier task that fits round after round (of every
    epoch), sending its parameters to the driver's :class:`AveragingServer` after each and
    going on from the average it sends back.

    The partition holds one element: this worker's items, one list per round.
    """

    def __init__(
        self,
        setup: WorkerSetup,
        address: tuple[str, int],
        token: str,
        *,
        first_round: int,
        shared: tuple[str, list[tuple[str, int]], int] | None = None,
    ) -> None:
        self.setup = setup
        self.address = address  # of the driver's AveragingServer, and its token
        self.token = token
        self.first_round = first_round  # the fit's first round in the training's numbering
        self.shared = shared  # the driver's shared-memory slots: (path, specs, count)

    def __call__(self, index: int, partition: Iterator[Any]) -> Iterator[Any]:
        items = list(partition)  # read to the end, or the Python worker is not reused
        plan = items[0] if items else []  # this worker's items, one list per round
        with self._connect() as sock:
            access = self.setup.model()
            slots = SharedSlots.attach(*self.shared) if self.shared else None  # None: not here
            memory = WorkerMemory(access, self.setup.save_updater, index, slots)
            try:
                self._fit(sock, index, plan, memory)
            finally:
                memory.release()
        return iter(())

    def _connect(self) -> socket.socket:
        try:
            sock = socket.create_connection(self.address, timeout=30)
        except OSError as e:
            host, port = self.address
            raise ConnectionError(
                f"this executor cannot reach the driver's averaging server at {host}:{port} "
                f"({e}): set ParameterAveraging(exchange_host=...) to an address executors "
                "reach and open its port (exchange_port=...), or use exchange='spark'"
            ) from e
        sock.settimeout(None)  # a round waits for the slowest worker, however long
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _fit(self, sock: socket.socket, index: int, plan: list[Any], memory: WorkerMemory) -> None:
        worker = f"worker {index}"
        model = memory.access.model
        hello = {"token": self.token, "worker": index, "shared": memory.slots is not None}
        send_message(sock, hello)
        header, arrays, received = recv_message(sock, memory.receive)
        arrays = memory.move_into_slot(header, arrays)
        r = int(header["round"])  # where the fit stands: a retried task resumes there
        while r < len(plan):
            shared = memory.start(header, arrays)
            fit_start = time.time()
            g = self.first_round + r
            context = f"round {g} (epoch {header['epoch']}), {worker}"
            # A GPU network's params() is a copy already.
            fitted = self.setup.fit_round(model, plan[r], context, copy=False)
            if fitted.error is not None:
                # NOTE [deterministic errors] (worker.py): the driver stops the fit, raises it.
                e = fitted.error
                send_message(sock, {"error": type(e).__name__, "message": str(e)})
                return
            end = time.time()
            phases = []
            if self.setup.collect_stats:
                phases = [
                    [g, worker, "broadcast", received, fit_start],
                    [g, worker, "fit", fit_start, end],
                ]
            message = {
                "round": r,
                "score_sum": fitted.score_sum,
                "batches": fitted.batches,
                "examples": fitted.examples,
                "skipped": fitted.skipped,
                "fit_s": end - fit_start,
                "broadcast_s": fit_start - received,
                "phases": phases,
                "shared": shared,
            }
            send_message(sock, message, memory.outgoing(fitted.params, shared))
            header, arrays, received = recv_message(sock, memory.receive)
            r = int(header["round"])
