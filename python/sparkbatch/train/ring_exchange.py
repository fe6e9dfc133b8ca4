"""``RingExchange`` (``exchange="ring"``): the workers average among themselves, by ring all-reduce.

One barrier Spark job per fit, as with ``exchange="socket"``, but no parameters pass through the
driver on their way between workers: after every round the workers sum their parameters (and
updater state) with a :class:`~sparkbatch.train.ring.Ring` all-reduce over TCP among the
barrier tasks themselves, and each divides the sum by the number of workers that fitted, with
the same native kernel as the driver. Every worker sends and receives about twice the
parameters per round whatever the number of workers, where the socket exchange's driver
receives all of them.

One round, on every worker:

1. fit the round's minibatches;
2. all-gather of every worker's counts (minibatches, examples, score, skips, timings, whether
   it failed), as one row of float64 each through the native ring (an error's text follows
   only when one failed): every worker learns, identically, how many fitted and whether the
   fit stops;
3. all-reduce of the parameters (and updater state), from zeros on a worker that fitted nothing;
4. worker 0 sends the round's sum and counts to the driver (from a copy, on a thread, while
   the next round fits), where :class:`~sparkbatch.train.runner.FitRunner` averages it into the
   model, checks and records it exactly as for the other exchanges;
5. every worker averages the sum into its model and goes on, its counters (iteration, updater
   steps) advanced as the driver advances the model's.

The driver's model is therefore where a fit resumes: its round count is the first round not yet
averaged. A failed task fails the barrier job; the job is submitted again (as often as Spark
retries a task) with the driver's model broadcast to the new tasks, which resume at that round,
so each minibatch counts once per epoch. A stale worker 0 of an earlier attempt is refused by
the attempt number its connection opens with.

Errors that a retry would meet again stop the fit on every worker at the same round: a worker's
NonFiniteError or DivergenceError (seen by all in step 2, sent to the driver by worker 0), a sum
of the parameters that is not finite (seen by all after step 3; the driver's check raises it),
or the driver's own error (worker 0 learns it from the driver's answer to the previous round
and passes it on in step 2).
"""

from __future__ import annotations

import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from .._finite import first_non_finite
from .._jobs import JobDescription
from .exchange import Exchange
from .model import ModelAccess
from .ring import PIECE_BYTES, TRANSPORTS, Channels, Grid, Ring, address_host, connect_ring
from .runner import RoundTiming
from .socket_exchange import WORKER_ERRORS, recv_message, send_message
from .socket_exchange import _task_slots as task_slots
from .socket_exchange import _task_tries as task_tries
from .stats import AggregationStep, PhaseTiming
from .tcp_server import ConnectionServer
from .worker import RoundResult, WorkerSetup, start_round

if TYPE_CHECKING:
    from pyspark import SparkContext

    from .plan import FitPlan
    from .runner import FitRunner

__all__ = ["RingExchange", "RingRounds", "RoundCollector"]

log = logging.getLogger("sparkbatch.train")

_GRACE_S = 2.0  # how long a task whose own code failed keeps its ring open: see _close_later


class RingExchange(Exchange):
    """One barrier Spark job per fit whose tasks average among themselves after every round
    by ring all-reduce (see the module's docstring); the driver receives one copy of each
    round's sum, from worker 0.

    ``host``: the address executors reach the driver at (default 127.0.0.1 on a local master,
    else ``spark.driver.host``); ``port``: the driver's port (0: any free port);
    ``piece_bytes``: the size of the pieces the all-reduce pipelines; ``transport``:
    ``"bfloat16"`` or ``"float16"`` sends float32 parameters and updater state between workers
    at half the bytes, rounded for the wire and summed in float32 (the workers and the driver
    still agree bit for bit; the average differs from the other exchanges' by that rounding),
    None sends them as they are; ``channels``: how many rings each all-reduce is split over,
    each with its own connections and thread (:class:`~sparkbatch.train.ring.Channels`: more
    than 1 where each worker's executor has that many cores free while it averages, and for
    links faster than one TCP stream fills). Needs every worker scheduled at once and the
    executors able to reach each other and the driver on any port.
    """

    name = "ring"

    def __init__(
        self,
        host: str | None = None,
        port: int = 0,
        piece_bytes: int = PIECE_BYTES,
        transport: str | None = None,
        channels: int = 1,
    ) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be an int of 1 or more, got {channels!r}")
        self.host = host
        self.port = port
        self.piece_bytes = piece_bytes
        self.transport = transport
        self.channels = channels

    def __repr__(self) -> str:
        return (
            f"RingExchange(host={self.host!r}, port={self.port}, "
            f"piece_bytes={self.piece_bytes}, transport={self.transport!r}, "
            f"channels={self.channels})"
        )

    def run(self, runner: FitRunner, plan: FitPlan) -> None:
        sc = runner.sc
        workers, rounds = plan.workers, len(plan.rounds)
        slots = task_slots(sc)
        if 0 < slots < workers:  # Spark would wait (10 minutes by default) for slots to appear
            raise ValueError(
                f"exchange='ring' runs all {workers} workers at once, but the cluster has "
                f"{slots} task slots: set ParameterAveraging(workers=...) to {slots} or fewer, "
                "or use exchange='spark'"
            )
        local = sc.master.startswith("local")
        host, bind = _driver_address(sc, self.host, local)

        def apply(result: RoundResult | None, g: int, timing: RoundTiming) -> None:
            runner.finish(plan, g, result, timing)

        setup = runner.worker_setup(plan)  # before the collector: nothing to close if it fails
        collector = RoundCollector(rounds=rounds, apply=apply, bind_host=bind, port=self.port)
        epochs = [planned.epoch for planned in plan.rounds]
        first_round = runner.round  # round r of the fit is round first_round + r overall
        jobs = JobDescription(sc)
        jobs.set(f"sparkbatch fit: {plan.epochs} epoch(s), {rounds} rounds, ring exchange")
        try:
            tries = task_tries(sc)
            for attempt in range(1, tries + 1):
                with collector.lock:
                    first = collector.next_round
                    if first >= rounds or collector.error is not None:
                        break
                    collector.attempt = attempt
                    counters, arrays = runner.state(plan, first)
                    start = {
                        "round": first,
                        "counters": counters,
                        "params": arrays[0],
                        "state": arrays[1] if len(arrays) > 1 else None,
                    }
                    collector.round_start = time.time()
                weights = sc.broadcast(start)
                fit = RingRounds(
                    setup,
                    weights,
                    (host, collector.port),
                    collector.token,
                    attempt=attempt,
                    epochs=epochs,
                    first_round=first_round,
                    local=local,
                    piece_bytes=self.piece_bytes,
                    transport=self.transport,
                    channels=self.channels,
                )
                try:
                    plan.worker_view().barrier().mapPartitionsWithIndex(fit).collect()
                    break
                except Exception as e:
                    if collector.error is not None:  # the driver's averaging failed: the news
                        raise collector.error from e
                    if collector.next_round >= rounds:  # every round is in: nothing to redo
                        break
                    if attempt == tries:
                        raise
                    log.warning(
                        "the workers' job failed in round %d of %d (try %d of %d), resuming "
                        "there: %s",
                        collector.next_round + 1,
                        rounds,
                        attempt,
                        tries,
                        str(e).splitlines()[0] if str(e) else type(e).__name__,
                    )
                finally:
                    weights.destroy()
        finally:
            collector.close()
            jobs.restore()
        if collector.error is not None:
            raise collector.error
        if collector.next_round != rounds:
            raise RuntimeError(
                f"the workers' job ended after {collector.next_round} of {rounds} rounds"
            )


def _driver_address(sc: SparkContext, host: str | None, local: bool) -> tuple[str, str]:
    """Where worker 0 reaches the driver, and the address the driver listens on."""
    if host:
        return host, ""
    if local:
        return "127.0.0.1", "127.0.0.1"
    conf = sc.getConf()
    return (
        conf.get("spark.driver.host") or socket.gethostname(),
        conf.get("spark.driver.bindAddress") or "",
    )


# -- the driver's side ---------------------------------------------------------------------------


class RoundCollector:
    """The driver's side of a ring fit: receives each round's sum from worker 0 and hands it to
    ``apply(result, round_index, timing)`` (under :attr:`lock`), in round order.

    A connection opens with the fit's :attr:`token` and the job :attr:`attempt` it belongs to;
    only the current attempt's worker 0 is heard, and only for :attr:`next_round`. Every round,
    and a worker's error, is answered with whether the fit goes on (``{"stop": bool}``).
    """

    def __init__(
        self,
        *,
        rounds: int,
        apply: Callable[[RoundResult | None, int, RoundTiming], None],
        bind_host: str = "",
        port: int = 0,
    ) -> None:
        self.rounds = rounds
        self._apply = apply
        self.token = secrets.token_hex(16)
        self.lock = threading.Lock()
        #: The first round not yet averaged into the model.
        self.next_round = 0
        #: The job attempt whose worker 0 is heard (set by the driver before each submission).
        self.attempt = 0
        #: When the round being fitted began (the previous round's end, or the job's start).
        self.round_start = time.time()
        #: The first error of the fit: a worker's, or the driver's while averaging.
        self.error: BaseException | None = None
        self._closed = False
        self._connections = ConnectionServer(
            self._serve, name="sparkbatch-ring-collector", bind_host=bind_host, port=port
        )
        self.port = self._connections.port

    def close(self) -> None:
        """Stop accepting, shut every connection down, join every thread. Idempotent."""
        with self.lock:
            self._closed = True
        self._connections.close()

    def _serve(self, conn: socket.socket) -> None:
        """Worker 0's connection (of any attempt): its rounds in order, each answered."""
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        hello, _, _ = recv_message(conn)
        if hello.get("token") != self.token:
            return
        attempt = int(hello.get("attempt", -1))
        spare: list[np.ndarray] = []
        while True:
            try:
                message, spare, arrived = recv_message(conn, spare)
            except (ValueError, KeyError):  # not a message of ours
                return
            received = time.time()
            with self.lock:
                if self._closed or attempt != self.attempt:
                    return  # a stale worker 0 of an earlier attempt
                if "error" in message:  # a worker's: the fit ends
                    if self.error is None:
                        kind = WORKER_ERRORS.get(str(message["error"]), RuntimeError)
                        self.error = kind(str(message.get("message", "a worker failed")))
                else:
                    self._take(message, spare, arrived, received)
                stop = self.error is not None
            send_message(conn, {"stop": stop})
            if stop or self.next_round >= self.rounds:
                return

    def _take(
        self, message: dict[str, Any], arrays: list[np.ndarray], arrived: float, received: float
    ) -> None:
        """Round ``next_round`` from worker 0 (lock held), its first byte ``arrived`` and its
        last ``received`` (:func:`time.time`)."""
        r = int(message["round"])
        if r != self.next_round or self.error is not None:
            return
        result = _round_result(message, arrays)
        timing = RoundTiming(
            self.round_start,
            0.0,  # the parameters stay on the workers
            float(message["fit_s"]),
            arrived,
            exchange="ring",
            distribute_bytes=0,
            aggregate_bytes=int(message["aggregate_bytes"]),
            steps=tuple(AggregationStep(*step) for step in message["steps"])
            + (AggregationStep("upload", received - arrived, int(message["upload_bytes"])),),
        )
        try:
            self._apply(result, r, timing)
        except BaseException as e:  # noqa: BLE001  (kept for the driver, which raises it)
            self.error = e
            return
        self.next_round = r + 1
        self.round_start = time.time()


def _round_result(message: dict[str, Any], arrays: list[np.ndarray]) -> RoundResult | None:
    """The round's summed result as worker 0 sent it (None: no worker had data)."""
    skipped = int(message["skipped"])
    phases = [PhaseTiming(*p) for p in message["phases"]]
    if int(message["workers"]) == 0:
        return RoundResult.nothing_fitted(skipped=skipped) if skipped else None
    return RoundResult(
        params=arrays[0],
        state=arrays[1] if len(arrays) > 1 else None,
        score_sum=float(message["score_sum"]),
        batches=int(message["batches"]),
        examples=int(message["examples"]),
        workers=int(message["workers"]),
        max_batches=int(message["max_batches"]),
        phases=phases,
        skipped=skipped,
    )


# -- a worker's side -----------------------------------------------------------------------------


class RingRounds:
    """One worker's part of a ring fit: a barrier task that fits round after round, averaging
    with the other tasks by :class:`~sparkbatch.train.ring.Ring` all-reduce after each; worker
    0 also sends each round's sum to the driver's :class:`RoundCollector`.

    The partition holds one element: this worker's items, one list per round.
    """

    def __init__(
        self,
        setup: WorkerSetup,
        weights: Any,
        driver: tuple[str, int],
        token: str,
        *,
        attempt: int,
        epochs: list[int],
        first_round: int,
        local: bool,
        piece_bytes: int = PIECE_BYTES,
        transport: str | None = None,
        channels: int = 1,
    ) -> None:
        self.setup = setup
        self.weights = weights  # Broadcast of {"round", "counters", "params", "state"}
        self.driver = driver
        self.token = token
        self.attempt = attempt
        self.epochs = epochs  # the model's epoch number in each round of the fit
        self.first_round = first_round  # round r of the fit is round first_round + r overall
        self.local = local
        self.piece_bytes = piece_bytes
        self.transport = transport
        self.channels = channels

    def __call__(self, index: int, partition: Iterator[Any]) -> Iterator[Any]:
        from pyspark import BarrierTaskContext

        items = list(partition)  # read to the end, or the Python worker is not reused
        plan = items[0] if items else []
        context = BarrierTaskContext.get()
        infos = context.getTaskInfos()
        host = "127.0.0.1" if self.local else address_host(infos[index].address)
        ring = connect_ring(
            index,
            len(infos),
            context.allGather,
            self.token,
            host=host,
            bind_host="127.0.0.1" if self.local else "",
            piece_bytes=self.piece_bytes,
            transport=self.transport,
            channels=self.channels,
        )
        try:
            uplink = _Uplink(self.driver, self.token, self.attempt) if index == 0 else None
            try:
                _RingWorker(self, ring, uplink, index, plan).run()
            finally:
                if uplink is not None:
                    uplink.close()
        except Exception as e:
            if isinstance(e, ConnectionError):  # the ring or the driver broke: pass it on
                ring.close()
            else:  # this task's own error (a loader's): Spark must hear it, not the neighbours'
                _close_later(ring)  # ConnectionErrors, which the closed ring would raise at once
            raise
        except BaseException:
            ring.close()
            raise
        ring.close()
        return iter(())


def _close_later(ring: Ring | Grid | Channels) -> None:
    """Close ``ring`` after :data:`_GRACE_S` on a thread (Spark ends the other barrier tasks
    once it has this task's error; the closed ring ends them where it does not)."""
    closer = threading.Timer(_GRACE_S, ring.close)
    closer.name = "sparkbatch-ring-close"
    closer.daemon = True
    closer.start()


class _Uplink:
    """Worker 0's connection to the driver: each round's sum and counts, sent on a thread from
    a copy while the next round fits; the driver's answer says whether the fit goes on."""

    def __init__(self, address: tuple[str, int], token: str, attempt: int) -> None:
        try:
            self._sock = socket.create_connection(address, timeout=30)
        except OSError as e:
            host, port = address
            raise ConnectionError(
                f"worker 0 cannot reach the driver at {host}:{port} ({e}): set "
                "ParameterAveraging(exchange_host=...) to an address executors reach and open "
                "its port (exchange_port=...), or use exchange='spark'"
            ) from e
        try:
            self._sock.settimeout(None)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            send_message(self._sock, {"token": token, "attempt": attempt})
        except BaseException:
            self._sock.close()
            raise
        self._copies: list[np.ndarray] = []
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.stop = False  # the driver's answer to the last round sent

    def send(self, header: dict[str, Any], arrays: list[np.ndarray]) -> None:
        """Send one round (after the previous one's answer); ``arrays`` are copied first."""
        self.wait()
        if len(self._copies) != len(arrays):
            self._copies = [np.empty_like(a) for a in arrays]
        for copy, array in zip(self._copies, arrays, strict=True):
            np.copyto(copy, array)
        self._thread = threading.Thread(
            target=self._send, args=(header,), name="sparkbatch-ring-uplink", daemon=True
        )
        self._thread.start()

    def send_now(self, header: dict[str, Any]) -> None:
        """Send a message without arrays (a worker's error) and wait for the driver's answer:
        the workers' job must not end before the driver has kept the error."""
        self.wait()
        try:
            send_message(self._sock, header)
            recv_message(self._sock)
        except (ConnectionError, OSError) as e:
            raise ConnectionError(f"sending a worker's error to the driver failed: {e}") from e

    def wait(self) -> None:
        """Wait for the last round's answer; raise if sending it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            raise ConnectionError(f"sending the round to the driver failed: {self._error}")

    def _send(self, header: dict[str, Any]) -> None:
        try:
            send_message(self._sock, header, self._copies)
            answer, _, _ = recv_message(self._sock)
            self.stop = bool(answer.get("stop"))
        except (ConnectionError, OSError) as e:
            self._error = e

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._sock.close()


class _RingWorker:
    """The rounds of one ring worker (see the module's docstring for one round's steps)."""

    def __init__(
        self,
        rounds: RingRounds,
        ring: Ring | Grid | Channels,
        uplink: _Uplink | None,
        index: int,
        plan: list[Any],
    ) -> None:
        self.rounds = rounds
        self.setup = rounds.setup
        self.ring = ring
        self.uplink = uplink
        self.index = index
        self.plan = plan
        self.access: ModelAccess = self.setup.model()

    def run(self) -> None:
        setup, access, rounds = self.setup, self.access, self.rounds
        start = rounds.weights.value
        counters = dict(start["counters"])
        start_round(
            access, counters, start["params"], start["state"], setup.save_updater, self.index
        )
        received = time.time()
        worker = f"worker {self.index}"
        for r in range(int(start["round"]), len(rounds.epochs)):
            g = rounds.first_round + r
            counters["epoch"] = rounds.epochs[r]
            fit_start = time.time()
            items = self.plan[r] if r < len(self.plan) else []
            fitted = setup.fit_round(
                access.model, items, f"round {g} (epoch {counters['epoch']}), {worker}", copy=False
            )
            end = time.time()
            stop = bool(self.uplink is not None and self._driver_stops())
            mine = [fitted.batches, fitted.examples, fitted.score_sum, fitted.skipped]
            mine += [end - fit_start, received, fit_start, end, fitted.error is not None, stop]
            gather_start = time.perf_counter()
            everyone = _Counts(self.ring.gather_values(np.array(mine, np.float64)))
            if everyone.errors:  # NOTE [deterministic errors] (worker.py): the driver raises it
                errors = self.ring.all_gather(_error_of(fitted.error))
                error = next(e for e in errors if e is not None)
                if self.uplink is not None:
                    self.uplink.send_now({"error": error[0], "message": error[1]})
                return
            gather_s = time.perf_counter() - gather_start
            if everyone.stop:
                return  # the driver failed averaging the previous round; it raises that
            fitters = int(np.count_nonzero(everyone.batches))
            buffers, own = self._buffers(fitters > 0, fitted.batches > 0)
            steps: dict[str, list[Any]] = {"metadata": [gather_s, 0]}
            for b in buffers:  # the parameters, then the updater state: each pass summed up
                for step in self.ring.all_reduce(b):
                    seconds, sent = steps.setdefault(step.name, [0.0, 0])
                    steps[step.name] = [seconds + step.seconds, sent + step.bytes]
            summary = {
                "round": r,
                "workers": fitters,
                "batches": int(everyone.batches.sum()),
                "examples": int(everyone.table[:, 1].sum()),
                "score_sum": float(everyone.table[:, 2].sum()),
                "skipped": int(everyone.table[:, 3].sum()),
                "max_batches": int(everyone.batches.max()),
                "fit_s": float(everyone.table[:, 4].max()),
                "phases": everyone.phases(g) if setup.collect_stats else [],
            }
            if self.uplink is not None:
                total = sum(b.nbytes for b in buffers)
                n = self.ring.size
                # Every task sends what this one sent; worker 0 sends the sum once more.
                summary["aggregate_bytes"] = sum(sent for _, sent in steps.values()) * n + total
                summary["upload_bytes"] = total
                summary["steps"] = [[name, *step] for name, step in steps.items()]
                self.uplink.send(summary, buffers)
            if fitters:  # else the model keeps its parameters and the counters stand
                if first_non_finite(buffers[0]) >= 0:  # the parameters, as the driver checks
                    return  # the sum overflowed: the driver's check raises the DivergenceError
                self._average(buffers, own, fitters)
                if setup.save_updater:
                    counters["updater_steps"] += summary["max_batches"]
                counters["iteration"] += summary["max_batches"]
            counters["epoch"] = rounds.epochs[min(r + 1, len(rounds.epochs) - 1)]
            start_round(
                access,
                counters,
                access.model.params(),
                access.model.updater_state() if setup.save_updater else None,
                setup.save_updater,
                self.index,
                in_place=True,
            )
            received = time.time()

    def _driver_stops(self) -> bool:
        assert self.uplink is not None
        self.uplink.wait()  # the previous round's answer: the driver had its fit to average it
        return self.uplink.stop

    def _buffers(self, anyone: bool, mine: bool) -> tuple[list[np.ndarray], bool]:
        """The arrays to all-reduce (the model's own where it can, else copies; zeros where
        this worker fitted nothing) and whether they are the model's own."""
        if not anyone:
            return [], False
        save_updater = self.setup.save_updater
        own = self.access.own_buffers(save_updater)
        if own:
            buffers = own
        else:
            model = self.access.model
            buffers = [np.array(model.params(), copy=True)]
            if save_updater:
                buffers.append(np.array(model.updater_state(), copy=True))
        if not mine:
            for b in buffers:
                b.fill(0)
        return buffers, bool(own)

    def _average(self, buffers: list[np.ndarray], own: bool, workers: int) -> None:
        from .. import _native

        for b in buffers:
            _native.nn_average([b], b, workers)
        if not own:
            model = self.access.model
            model.set_params(buffers[0])
            if len(buffers) > 1:
                model.set_updater_state(buffers[1])


class _Counts:
    """Every worker's figures of a round, as :meth:`Ring.gather_values` brings them: one row
    per worker of minibatches, examples, score sum, skips, fitting seconds, the times the round
    was received, its fitting began and ended, and whether it failed or the driver stops."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = table
        self.batches = table[:, 0]
        self.errors = bool(table[:, 8].any())
        self.stop = bool(table[:, 9].any())

    def phases(self, g: int) -> list[list[Any]]:
        """The workers' phase timings of round ``g``, as ``RoundStats`` keeps them."""
        out: list[list[Any]] = []
        for rank, (received, fit_start, end) in enumerate(self.table[:, 5:8].tolist()):
            out.append([g, f"worker {rank}", "broadcast", received, fit_start])
            out.append([g, f"worker {rank}", "fit", fit_start, end])
        return out


def _error_of(error: Exception | None) -> list[str] | None:
    """A worker's error as the other workers and the driver receive it: [type name, text]."""
    return None if error is None else [type(error).__name__, str(error)]
