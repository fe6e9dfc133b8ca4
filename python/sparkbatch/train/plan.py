"""``FitPlan``: what one fit trains, whichever way the data comes and whichever exchange runs it.

Every way of fitting builds one plan: the fit's rounds (every epoch's, in order, each with its
epoch and its place in the epoch), the number of workers and how the workers read their items
(file URLs with a loader, or minibatches kept in Spark partitions for the direct approach). An
:class:`~sparkbatch.train.Exchange` runs a plan through one of its two views:

* per round (:meth:`FitPlan.round_view`): the RDD a round's job maps and the partitions it
  computes, each worker getting its items of that round (``exchange="spark"``: a job per round);
* per worker (:meth:`FitPlan.worker_view`): an RDD with one partition per worker holding one
  element, its items of every round of the fit, one list per round (``exchange="socket"``: one
  job per fit).

:func:`plan_files` plans minibatch files (a directory, paths, or the export approach's
temporary files, which the plan removes when it is closed); :func:`plan_direct` plans an RDD's
minibatches in place (one shuffle per fit deals them to the workers and rounds). A plan is a
context manager: closing it releases what it holds (persisted RDDs, exported files).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._jobs import JobDescription
from ..spark.export import rebatch_partition
from .master import ParameterAveraging, plan_rounds

if TYPE_CHECKING:
    from pyspark import RDD, SparkContext

__all__ = ["FitPlan", "PlannedRound", "RoundView", "plan_direct", "plan_files"]

#: ``fit(worker, items)``: one worker's part of a round, its results as an iterator.
WorkerFit = Callable[[int, Any], Iterator[Any]]


@dataclass(frozen=True)
class PlannedRound:
    """One round of a fit: in which epoch (``epoch_index`` of the fit's ``epochs``; ``epoch``
    the model's epoch number) and where in it (``index`` of the epoch's ``count`` rounds)."""

    epoch_index: int
    epoch: int
    index: int
    count: int
    epochs: int

    @property
    def label(self) -> str:
        """ "epoch 1/2, round 3/4": for job descriptions, logs and errors."""
        return f"epoch {self.epoch_index + 1}/{self.epochs}, round {self.index + 1}/{self.count}"

    @property
    def ends_epoch(self) -> bool:
        return self.index + 1 == self.count


@dataclass(frozen=True)
class RoundView:
    """A round's job: ``rdd`` (mapped by :meth:`map`) and the ``partitions`` it computes (None:
    all of them, one per worker)."""

    rdd: RDD
    partitions: list[int] | None
    _worker_items: Callable[[WorkerFit], Callable[[int, Any], Iterator[Any]]]

    def map(self, fit: WorkerFit) -> RDD:
        """``rdd`` with ``fit(worker, items)`` run on every worker's items of the round."""
        return self.rdd.mapPartitionsWithIndex(self._worker_items(fit))


class FitPlan(abc.ABC):
    """The rounds of one fit and who fits what in each (see the module's docstring).

    ``loader`` reads the files named by the items (None: the items are minibatches, as
    ``((partition, index), minibatch)`` pairs); ``exported``: the files are the export
    approach's, and errors name the RDD partition a file came from instead.
    """

    def __init__(
        self,
        sc: SparkContext,
        rounds: list[PlannedRound],
        workers: int,
        *,
        loader: Any,
        exported: bool = False,
    ) -> None:
        self.sc = sc
        #: Every round of the fit, every epoch's, in order.
        self.rounds = rounds
        #: Workers per round (some may have nothing in a round: they sit it out).
        self.workers = workers
        self.loader = loader
        self.exported = exported
        #: The preprocessor an RDD's elements went through before this plan (``fit(rdd,
        #: preprocessor=)``), named in the report; a files' loader carries its own.
        self.preprocessor: Any = None

    @property
    def epochs(self) -> int:
        return self.rounds[-1].epochs if self.rounds else 0

    @abc.abstractmethod
    def round_view(self, g: int) -> RoundView:
        """The job of round ``g`` (of :attr:`rounds`)."""

    @abc.abstractmethod
    def worker_view(self) -> RDD:
        """A partition per worker holding one element: its items of every round, one list per
        round."""

    def round_done(self, g: int) -> None:
        """Round ``g``'s job has run (an exchange running a job per round says so)."""
        return None

    def close(self) -> None:
        """Release what the plan holds (idempotent)."""
        return None

    def __enter__(self) -> FitPlan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _rounds(counts: list[int], first_epoch: int) -> list[PlannedRound]:
    """Every round of a fit whose epochs have ``counts`` rounds, from epoch ``first_epoch``."""
    epochs = len(counts)
    return [
        PlannedRound(e, first_epoch + e, r, count, epochs)
        for e, count in enumerate(counts)
        for r in range(count)
    ]


class _FilePlan(FitPlan):
    """Minibatch files: every round's per-worker URL lists are known on the driver."""

    def __init__(
        self,
        sc: SparkContext,
        schedule: list[list[list[list[str]]]],
        first_epoch: int,
        loader: Any,
        exported: bool,
        cleanup: Callable[[], None] | None,
    ) -> None:
        flat = [files for rounds in schedule for files in rounds]
        workers = max(len(files) for files in flat)
        super().__init__(
            sc,
            _rounds([len(rounds) for rounds in schedule], first_epoch),
            workers,
            loader=loader,
            exported=exported,
        )
        self._schedule = schedule  # per epoch, per round, per worker: URLs
        self._epoch_rdd: tuple[int, RDD] | None = None
        self._cleanup = cleanup

    def _per_worker(self, rounds: list[list[list[str]]]) -> RDD:
        """A partition per worker holding one element: its URLs of every round of ``rounds``
        (an empty list where it has none)."""
        workers = self.workers
        per_worker = [[f[w] if w < len(f) else [] for f in rounds] for w in range(workers)]
        return self.sc.parallelize(per_worker, workers)

    def round_view(self, g: int) -> RoundView:
        planned = self.rounds[g]
        # One RDD per epoch, a partition per worker holding its files of every round of the
        # epoch: a round's job then only picks its entry (cheaper than a new RDD per round).
        if self._epoch_rdd is None or self._epoch_rdd[0] != planned.epoch_index:
            rdd = self._per_worker(self._schedule[planned.epoch_index])
            self._epoch_rdd = (planned.epoch_index, rdd)
        r = planned.index

        def worker_items(fit: WorkerFit) -> Callable[[int, Any], Iterator[Any]]:
            return lambda w, part: fit(w, [url for rounds in part for url in rounds[r]])

        return RoundView(self._epoch_rdd[1], None, worker_items)

    def worker_view(self) -> RDD:
        return self._per_worker([files for rounds in self._schedule for files in rounds])

    def close(self) -> None:
        cleanup, self._cleanup = self._cleanup, None
        if cleanup is not None:
            cleanup()


def plan_files(
    sc: SparkContext,
    urls: list[str],
    loader: Any,
    settings: ParameterAveraging,
    *,
    workers: int,
    epochs: int,
    first_epoch: int,
    exported: bool = False,
    cleanup: Callable[[], None] | None = None,
) -> FitPlan:
    """Plan ``epochs`` epochs of the files at ``urls`` (read by ``loader``) over ``workers``
    workers, cut into rounds by :func:`~sparkbatch.train.plan_rounds`; ``cleanup`` runs when
    the plan is closed (also when planning fails)."""
    try:
        if not urls:
            raise ValueError("no minibatch files to fit")
        schedule = [
            plan_rounds(
                urls,
                workers,
                settings.averaging_frequency,
                shuffle=settings.shuffle,
                seed=settings.seed,
                epoch=first_epoch + e,
            )
            for e in range(epochs)
        ]
        return _FilePlan(sc, schedule, first_epoch, loader, exported, cleanup)
    except BaseException:
        if cleanup is not None:
            cleanup()
        raise


class _DirectPlan(FitPlan):
    """An RDD's minibatches, dealt to the workers and kept in Spark: ``keyed`` holds
    ``((worker, step), ((partition, index), minibatch))`` pairs."""

    def __init__(
        self,
        sc: SparkContext,
        rounds: list[PlannedRound],
        workers: int,
        frequency: int,
        keyed: RDD,
        persisted: list[RDD],
    ) -> None:
        super().__init__(sc, rounds, workers, loader=None)
        self._frequency = frequency
        self._keyed = keyed
        self._persisted = persisted
        self._planned: RDD | None = None

    @property
    def _rounds_per_epoch(self) -> int:
        return self.rounds[0].count

    def round_view(self, g: int) -> RoundView:
        workers, freq = self.workers, self._frequency
        if self._planned is None:
            # One shuffle for the whole fit: partition r * workers + w holds worker w's
            # ((partition, index), minibatch) pairs of round r in step order, and a round's
            # job computes only its own partitions (reading the shuffle's files), so an epoch
            # reads the data once.
            self._planned = self._keyed.repartitionAndSortWithinPartitions(
                self._rounds_per_epoch * workers,
                lambda key: (key[1] // freq) * workers + key[0],
            ).values()
        r = self.rounds[g].index

        def worker_items(fit: WorkerFit) -> Callable[[int, Any], Iterator[Any]]:
            return lambda index, items: fit(index % workers, items)

        return RoundView(self._planned, list(range(r * workers, (r + 1) * workers)), worker_items)

    def worker_view(self) -> RDD:
        freq, rounds, epochs = self._frequency, self._rounds_per_epoch, self.epochs

        # A partition per worker holding its minibatches of every round, in order.
        def plan_of(items: Any) -> Iterator[list[list[Any]]]:
            batches = [b for _, b in items]
            mine = [batches[r * freq : (r + 1) * freq] for r in range(rounds)]
            yield mine * epochs

        return self._keyed.repartitionAndSortWithinPartitions(
            self.workers, lambda key: key[0]
        ).mapPartitions(plan_of)

    def round_done(self, g: int) -> None:
        if g == 0:  # the shuffle has run: its files hold the data now
            self.close()

    def close(self) -> None:
        persisted, self._persisted = self._persisted, []
        for rdd in persisted:
            rdd.unpersist()


def plan_direct(
    sc: SparkContext,
    rdd: RDD,
    settings: ParameterAveraging,
    *,
    workers: int,
    epochs: int,
    first_epoch: int,
) -> FitPlan:
    """Plan ``epochs`` epochs of ``rdd``'s DataSets, re-batched to ``batch_size_per_worker``
    in their partitions and dealt round-robin over ``workers`` workers (``repartition=
    "never"``: a worker per partition of ``rdd``); runs one Spark job, to count the steps."""
    from pyspark import StorageLevel

    size = settings.batch_size_per_worker
    # ((partition, index), minibatch): where each came from, for errors that name it
    batched = rdd.mapPartitionsWithIndex(
        lambda p, items: (((p, i), b) for i, b in enumerate(rebatch_partition(p, items, size)))
    )
    batched.persist(StorageLevel.MEMORY_AND_DISK)  # zipWithIndex's job, then keyed's
    if settings.repartition == "never":
        workers = rdd.getNumPartitions()
        keyed = batched.map(lambda origin_batch: (origin_batch[0], origin_batch))
    else:
        keyed = batched.zipWithIndex().map(lambda t: ((t[1] % workers, t[1] // workers), t[0]))
    keyed.persist(StorageLevel.MEMORY_AND_DISK)  # read by the count below and the shuffle
    jobs = JobDescription(sc)
    try:
        jobs.set("sparkbatch fit: batching the RDD")
        steps = keyed.map(lambda kv: kv[0][1]).fold(-1, max) + 1
        if steps == 0:
            raise ValueError("the RDD holds no examples to fit")
        rounds = -(-steps // settings.averaging_frequency)
        planned = _rounds([rounds] * epochs, first_epoch)
        return _DirectPlan(
            sc, planned, workers, settings.averaging_frequency, keyed, [keyed, batched]
        )
    except BaseException:
        keyed.unpersist()
        batched.unpersist()
        raise
    finally:
        jobs.restore()
