"""``SparkNetwork``: fit, evaluate and score a model across Spark executors by parameter averaging.

The successor of DL4J's ``SparkDl4jMultiLayer`` / ``SparkComputationGraph``. One averaging round:

1. the driver broadcasts the parameters (and, with ``save_updater``, the updater state) once;
2. every worker sets them on its model (built once per Python worker from the model's
   configuration), fits its minibatches (reading its own files, ``prefetch`` ahead), and
   returns its parameters;
3. ``treeAggregate`` sums the workers' results with the native in-place add, and the driver
   divides the sum by the number of workers that had data with the native averaging kernel,
   straight into the model's parameter buffer; then the broadcast is destroyed.

Minibatch files never travel through the driver; only their URLs do. Evaluation merges
per-partition counts (never averages per-partition figures), so partitions of different sizes
weigh what their examples weigh.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import re
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _native
from .._arguments import check_int
from .._finite import check_params
from ..data import SerializedDataSetLoader, SerializedMultiDataSetLoader
from ..data.manifest import minibatch_files
from ..evaluation import Evaluation, RegressionEvaluation
from ..spark import executor_errors
from ..spark.export import batch_and_export, rebatch_partition
from ..storage import join, resolve
from .master import ParameterAveraging, plan_rounds
from .model import Model, ModelAccess
from .stats import PhaseTiming, RoundStats, TrainingStats
from .worker import (
    EvaluatePartition,
    FitRound,
    FitRounds,
    MinibatchLoader,
    RoundResult,
    WorkerSetup,
    combine,
    merge_evaluations,
)

if TYPE_CHECKING:
    from pyspark import RDD, SparkContext

__all__ = ["SparkNetwork"]

log = logging.getLogger("sparkbatch.train")


class SparkNetwork:
    """Train ``model`` on Spark by parameter averaging, as ``master`` configures.

    Parameters
    ----------
    sc : SparkContext or SparkSession
    model : Model
        E.g. a :class:`sparkbatch.nn.Network`, or a :class:`sparkbatch.nn.Graph` of several
        inputs and outputs (fitted with :meth:`fit_multi`), or any model with the members
        :class:`~sparkbatch.train.Model` requires (a TypeError names those it lacks); trained
        in place (its buffers are updated after every round) and returned by :meth:`fit`.
    master : ParameterAveraging, optional
        The averaging settings, kept as :attr:`averaging`. Default ``ParameterAveraging()``.

    Examples
    --------
    >>> import numpy as np
    >>> from sparkbatch.data import DataSet
    >>> from sparkbatch.nn import Dense, Network, Output, SGD
    >>> from sparkbatch.train import ParameterAveraging, SparkNetwork
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(400, 4)).astype(np.float32)
    >>> y = np.eye(2, dtype=np.float32)[(x[:, 0] > 0).astype(int)]
    >>> rdd = sc.parallelize(DataSet(x, y).split(50), 2)
    >>> net = Network([Dense(4, 8, "tanh"), Output(8, 2)], SGD(0.5), seed=0)
    >>> master = ParameterAveraging(batch_size_per_worker=25, averaging_frequency=2)
    >>> spark_net = SparkNetwork(sc, net, master)
    >>> _ = spark_net.fit(rdd, epochs=5)
    >>> spark_net.evaluate(rdd).accuracy() > 0.9
    True
    """

    def __init__(self, sc: Any, model: Model, master: ParameterAveraging | None = None) -> None:
        self.sc: SparkContext = getattr(sc, "sparkContext", sc)
        #: The averaging settings (``sc.master`` is Spark's URL).
        self.averaging = master if master is not None else ParameterAveraging()
        self._access = self._checked(model)
        #: Round totals of every fit (and per-worker timings with ``collect_stats=True``).
        self.stats = TrainingStats()
        self._round = 0

    @property
    def model(self) -> Model:
        """The model trained (in place); setting another checks it as the constructor does."""
        return self._access.model

    @model.setter
    def model(self, model: Model) -> None:
        self._access = self._checked(model)

    def _checked(self, model: Model) -> ModelAccess:
        """``model``'s access: a TypeError naming every member the Model protocol requires and
        it lacks, or that the settings need (``to(device)`` for ``worker_device="cuda"``)."""
        access = ModelAccess(model)
        if self.averaging.worker_device == "cuda" and not access.can_move:
            raise TypeError(
                f"worker_device='cuda' moves the model to the GPU, but {type(model).__name__} "
                "has no to(device)"
            )
        return access

    # -- fitting -----------------------------------------------------------------------------

    @property
    def workers(self) -> int:
        """Workers per round: the settings' ``workers`` or the context's default parallelism."""
        return self.averaging.workers or self.sc.defaultParallelism

    @executor_errors()  # an executor's NonFiniteError, FormatError... as itself
    def fit(self, data: RDD | str | os.PathLike[str], epochs: int = 1) -> Model:
        """Fit an RDD of DataSets, or the minibatch files under a directory URL.

        Minibatches holding NaN or infinity and non-finite results are handled as the
        averaging settings' ``non_finite`` says (see :class:`ParameterAveraging`).
        """
        epochs = check_int("epochs", epochs)
        if isinstance(data, (str, os.PathLike)):
            return self._fit_files(self._files(data), SerializedDataSetLoader(), epochs)
        if self.averaging.approach == "direct":
            return self._fit_direct(data, epochs)
        return self._fit_exported(data, epochs)

    @executor_errors()
    def fit_paths(self, paths: RDD | Sequence[str], loader: Any = None, epochs: int = 1) -> Model:
        """Fit the minibatch files at ``paths`` (an RDD or list of URLs) read by ``loader``.

        ``loader`` is any :class:`~sparkbatch.data.Loader`; default
        :class:`~sparkbatch.data.SerializedDataSetLoader`.
        """
        epochs = check_int("epochs", epochs)
        urls = paths.collect() if hasattr(paths, "collect") else list(paths)
        return self._fit_files(urls, loader or SerializedDataSetLoader(), epochs)

    @executor_errors()
    def fit_multi(self, data: RDD | str | os.PathLike[str], epochs: int = 1) -> Model:
        """Fit MultiDataSets: the files under a directory URL (as ``export_datasets`` or
        ``batch_and_export`` write them), or an RDD of MultiDataSets (re-batched to
        ``batch_size_per_worker`` as :meth:`fit` does).

        A :class:`~sparkbatch.nn.Graph` takes a MultiDataSet's features in the order of its
        inputs and its labels (and labels masks) in the order of its outputs; a
        :class:`~sparkbatch.nn.Network` has one input and one output, so it fits MultiDataSets
        of one input and one output and refuses others with a clear error. Both exchanges
        apply, as for :meth:`fit`.
        """
        epochs = check_int("epochs", epochs)
        if isinstance(data, (str, os.PathLike)):
            return self._fit_files(self._files(data), SerializedMultiDataSetLoader(), epochs)
        return self.fit(data, epochs)

    def _files(self, url: str | os.PathLike[str]) -> list[str]:
        urls = minibatch_files(os.fspath(url), storage_options=self.averaging.storage_options)
        if not urls:
            raise FileNotFoundError(f"no minibatch files under {os.fspath(url)}")
        return urls

    def _fit_files(
        self, urls: list[str], loader: Any, epochs: int, *, exported: bool = False
    ) -> Model:
        """Fit minibatch files; ``exported``: they are the export approach's temporary files,
        and errors name the RDD partition a file came from instead."""
        if not urls:
            raise ValueError("no minibatch files to fit")
        m = self.averaging
        if m.exchange == "socket":
            first = self.model.epoch
            schedule = [
                plan_rounds(
                    urls,
                    self.workers,
                    m.averaging_frequency,
                    shuffle=m.shuffle,
                    seed=m.seed,
                    epoch=first + e,
                )
                for e in range(epochs)
            ]
            per_worker, workers = _per_worker([r for rounds in schedule for r in rounds])
            plan = self.sc.parallelize(per_worker, workers)  # one element per partition
            self._fit_by_socket(
                [len(rounds) for rounds in schedule], plan, workers, loader, exported=exported
            )
            return self.model
        for e in range(epochs):
            epoch = self.model.epoch
            rounds = plan_rounds(
                urls,
                self.workers,
                m.averaging_frequency,
                shuffle=m.shuffle,
                seed=m.seed,
                epoch=epoch,
            )
            # One RDD per epoch, a partition per worker holding its files of every round: a
            # round's job then only picks its entry (cheaper than a new RDD per round).
            plan = self.sc.parallelize(*_per_worker(rounds))  # one element per partition
            for r in range(len(rounds)):
                label = f"epoch {e + 1}/{epochs}, round {r + 1}/{len(rounds)}"

                def job(fit: FitRound, r: int = r, plan: Any = plan) -> RoundResult | None:
                    fit.round_in_plan = r
                    return self._sum(plan.mapPartitionsWithIndex(fit))

                self._round_of(job, label, epoch, len(rounds), loader=loader, exported=exported)
            self._end_epoch()
        return self.model

    def _fit_exported(self, rdd: RDD, epochs: int) -> Model:
        base = self.averaging.export_dir or tempfile.gettempdir()
        directory = join(base, f"sparkbatch-export-{uuid.uuid4().hex[:12]}")
        options = self.averaging.storage_options
        try:
            self.sc.setJobDescription("sparkbatch fit: exporting minibatches")
            urls = batch_and_export(
                rdd, directory, self.averaging.batch_size_per_worker, storage_options=options
            )
            return self._fit_files(urls, MinibatchLoader(), epochs, exported=True)
        finally:
            fs, path = resolve(directory, options)
            if fs.exists(path):
                fs.rm(path, recursive=True)
            self.sc.setJobDescription(None)

    def _fit_direct(self, rdd: RDD, epochs: int) -> Model:
        from pyspark import StorageLevel

        m = self.averaging
        size = m.batch_size_per_worker
        # ((partition, index), minibatch): where each came from, for errors that name it
        batched = rdd.mapPartitionsWithIndex(
            lambda p, items: (((p, i), b) for i, b in enumerate(rebatch_partition(p, items, size)))
        )
        batched.persist(StorageLevel.MEMORY_AND_DISK)  # zipWithIndex's job, then keyed's
        if m.repartition == "never":
            workers = rdd.getNumPartitions()
            keyed = batched.map(lambda origin_batch: (origin_batch[0], origin_batch))
        else:
            workers = self.workers
            keyed = batched.zipWithIndex().map(lambda t: ((t[1] % workers, t[1] // workers), t[0]))
        keyed.persist(StorageLevel.MEMORY_AND_DISK)  # read by the count below and the shuffle
        try:
            self.sc.setJobDescription("sparkbatch fit: batching the RDD")
            steps = keyed.map(lambda kv: kv[0][1]).fold(-1, max) + 1
            if steps == 0:
                raise ValueError("the RDD holds no examples to fit")
            freq = m.averaging_frequency
            rounds = -(-steps // freq)
            if m.exchange == "socket":
                # A partition per worker holding its minibatches of every round, in order.
                def plan_of(items: Any) -> Iterator[list[list[Any]]]:
                    batches = [b for _, b in items]
                    mine = [batches[r * freq : (r + 1) * freq] for r in range(rounds)]
                    yield mine * epochs

                plan = keyed.repartitionAndSortWithinPartitions(
                    workers, lambda key: key[0]
                ).mapPartitions(plan_of)
                self._fit_by_socket([rounds] * epochs, plan, workers, loader=None)
                return self.model
            # One shuffle for the whole fit: partition r * workers + w holds worker w's
            # ((partition, index), minibatch) pairs of round r in step order, and a round's
            # job computes only its own partitions (reading the shuffle's files), so an epoch
            # reads the data once.
            planned = keyed.repartitionAndSortWithinPartitions(
                rounds * workers, lambda key: (key[1] // freq) * workers + key[0]
            ).values()
            for e in range(epochs):
                epoch = self.model.epoch
                for r in range(rounds):
                    label = f"epoch {e + 1}/{epochs}, round {r + 1}/{rounds}"
                    parts = list(range(r * workers, (r + 1) * workers))

                    def job(fit: FitRound, parts: list[int] = parts) -> RoundResult | None:
                        fitted = planned.mapPartitionsWithIndex(
                            lambda index, items: fit(index % workers, items)
                        )
                        results = self.sc.runJob(fitted, lambda results: results, parts)
                        return functools.reduce(combine, results, None)

                    self._round_of(job, label, epoch, rounds, loader=None)
                    if e == 0 and r == 0:  # the shuffle has run: its files hold the data now
                        keyed.unpersist()
                        batched.unpersist()
                self._end_epoch()
        finally:
            keyed.unpersist()
            batched.unpersist()
            self.sc.setJobDescription(None)
        return self.model

    def _sum(self, rdd: RDD, merge: Any = combine) -> Any:
        """``treeAggregate`` of ``rdd``'s results with ``merge`` (None when it has none)."""
        return rdd.treeAggregate(None, merge, merge, self.averaging.aggregation_depth)

    def _round_of(
        self,
        job: Any,
        label: str,
        epoch: int,
        rounds_in_epoch: int,
        *,
        loader: Any,
        exported: bool = False,
    ) -> None:
        """Run one averaging round: broadcast, fit on the workers, sum, average. ``job(fit)`` runs
        ``fit`` on the round's workers and returns the sum of their results."""
        m = self.averaging
        access = self._access
        model = access.model
        start = time.time()
        self.sc.setJobDescription(f"sparkbatch fit: {label}")
        weights = self.sc.broadcast(
            {
                "params": model.params(),
                "state": model.updater_state() if m.save_updater else None,
                "iteration": model.iteration,
                "updater_steps": access.updater_steps,
                "epoch": epoch,
            }
        )
        broadcast_end = time.time()
        fit = FitRound(self._worker_setup(loader, exported), weights, round_index=self._round)
        try:
            result: RoundResult | None = job(fit)
        finally:
            weights.destroy()
        job_end = time.time()
        if result is None:  # no worker had data: nothing to average
            return
        if result.error is not None:  # a worker's NonFiniteError or DivergenceError
            raise result.error
        fit_s = max(
            (p.seconds for p in result.phases if p.phase == "fit"), default=job_end - broadcast_end
        )
        self._apply_round(
            result,
            epoch=epoch,
            rounds_in_epoch=rounds_in_epoch,
            label=label,
            start=start,
            broadcast_s=broadcast_end - start,
            fit_s=fit_s,
            aggregate_start=job_end,
        )

    def _worker_setup(self, loader: Any, exported: bool = False) -> WorkerSetup:
        m = self.averaging
        return WorkerSetup(
            type(self.model),
            _config_json(self.model),
            batch_size=m.batch_size_per_worker,
            save_updater=m.save_updater,
            loader=loader,
            storage_options=m.storage_options,
            prefetch=m.prefetch,
            collect_stats=m.collect_stats,
            device=m.worker_device,
            non_finite=m.non_finite,
            exported=exported,
        )

    def _apply_round(
        self,
        result: RoundResult,
        *,
        epoch: int,
        rounds_in_epoch: int,
        label: str,
        start: float,
        broadcast_s: float,
        fit_s: float,
        aggregate_start: float,
    ) -> None:
        """Average the round's summed ``result`` into the model and record the round."""
        m = self.averaging
        access = self._access
        model = access.model
        self.stats.skipped += result.skipped
        if result.params is None:  # every worker skipped all its minibatches: no average
            log.warning("%s: nothing fitted, %d minibatches skipped", label, result.skipped)
            return
        check_params(
            result.params,
            f"round {self._round} (epoch {epoch}; {label} of this fit)",
            f"the sum of the {result.workers} workers' parameters holds",
            "the model keeps its parameters of before this round",
        )
        # A CPU network's buffers take the average directly; any other Model (a GPU network's
        # params() is a host copy) gets it averaged in place into the sum, then set.
        own = access.own_buffers(m.save_updater)
        if own:
            _native.nn_average([result.params], own[0], result.workers)
        else:
            _native.nn_average([result.params], result.params, result.workers)
            model.set_params(result.params)
        if m.save_updater and result.state is not None:
            if own:
                _native.nn_average([result.state], own[1], result.workers)
            else:
                _native.nn_average([result.state], result.state, result.workers)
                model.set_updater_state(result.state)
        if m.save_updater:
            access.updater_steps += result.max_batches  # before iteration: its default
        model.iteration += result.max_batches
        score = result.score_sum / result.batches
        access.record_score(score)
        end = time.time()
        self.stats.add_round(
            RoundStats(
                epoch=epoch,
                round=self._round,
                rounds_in_epoch=rounds_in_epoch,
                score=score,
                examples=result.examples,
                workers=result.workers,
                start=start,
                end=end,
                broadcast_s=broadcast_s,
                fit_s=min(fit_s, end - start),
                aggregate_s=max(0.0, (end - start) - broadcast_s - fit_s),
                skipped=result.skipped,
            )
        )
        if m.collect_stats:
            self.stats.add_phases(result.phases)
            phases = [PhaseTiming(self._round, "driver", "aggregate", aggregate_start, end)]
            if m.exchange == "spark":
                phases.insert(
                    0, PhaseTiming(self._round, "driver", "broadcast", start, start + broadcast_s)
                )
            self.stats.add_phases(phases)
        log.info("%s: score %.6f over %d examples", label, score, result.examples)
        if result.skipped:
            log.warning("%s: %d minibatches skipped (NaN or infinity)", label, result.skipped)
        self._round += 1

    def _fit_by_socket(
        self,
        epoch_rounds: list[int],
        plan: RDD,
        workers: int,
        loader: Any,
        *,
        exported: bool = False,
    ) -> None:
        """Fit every epoch (``epoch_rounds``: how many rounds each has) as one barrier job
        whose workers average through the driver after every round. ``plan`` has a partition
        per worker holding one element: its items (file URLs, or minibatches when ``loader`` is
        None) for every round of the fit, one list per round."""
        from .exchange import AveragingServer
        from .shared_slots import SharedSlots

        m = self.averaging
        access = self._access
        model = access.model
        epochs = len(epoch_rounds)
        first = model.epoch
        # Every round of the fit: (epoch index, its epoch number, round in the epoch, rounds)
        rounds = [
            (e, first + e, r, count) for e, count in enumerate(epoch_rounds) for r in range(count)
        ]

        def state(r: int) -> tuple[dict[str, Any], list[Any]]:
            counters = {
                "iteration": model.iteration,
                "updater_steps": access.updater_steps,
                "epoch": rounds[min(r, len(rounds) - 1)][1],
            }
            arrays = [model.params()]
            if m.save_updater:
                arrays.append(model.updater_state())
            return counters, arrays

        def apply(result: RoundResult, r: int, start: float, fit_s: float, bcast: float) -> None:
            e, epoch, in_epoch, count = rounds[r]
            self._apply_round(
                result,
                epoch=epoch,
                rounds_in_epoch=count,
                label=f"epoch {e + 1}/{epochs}, round {in_epoch + 1}/{count}",
                start=start,
                broadcast_s=bcast,
                fit_s=fit_s,
                aggregate_start=time.time(),
            )
            if in_epoch + 1 == count:
                self._end_epoch()

        host, bind = self._exchange_address()
        slots = _task_slots(self.sc)
        if 0 < slots < workers:  # Spark would wait (10 minutes by default) for slots to appear
            raise ValueError(
                f"exchange='socket' runs all {workers} workers at once, but the cluster has "
                f"{slots} task slots: set ParameterAveraging(workers=...) to {slots} or fewer, "
                "or use exchange='spark'"
            )
        shared = None
        if self.sc.master.startswith("local"):  # the workers share this machine's memory
            specs = [(a.dtype.str, a.size) for a in state(0)[1]]
            shared = SharedSlots.create(specs, workers + 1)  # None: TCP carries it all
        try:
            server = AveragingServer(
                workers=workers,
                rounds=len(rounds),
                state=state,
                apply=apply,
                host=host,
                bind_host=bind,
                port=m.exchange_port,
                shared=shared,
            )
        except BaseException:
            if shared is not None:
                shared.close(unlink=True)
            raise
        fit = FitRounds(
            self._worker_setup(loader, exported),
            server.address,
            server.token,
            first_round=self._round,
            shared=(shared.path, shared.specs, shared.count) if shared else None,
        )
        self.sc.setJobDescription(
            f"sparkbatch fit: {epochs} epoch(s), {len(rounds)} rounds, socket exchange"
        )
        try:
            # Spark aborts a job whose barrier result stage fails; it is submitted again here,
            # as often as Spark would retry a task, and resumes at the first round not averaged.
            tries = _task_tries(self.sc)
            for attempt in range(1, tries + 1):
                try:
                    plan.barrier().mapPartitionsWithIndex(fit).collect()
                    break
                except Exception as e:
                    if server.error is not None:  # the driver failed averaging: that is the news
                        raise server.error from e
                    if attempt == tries:
                        raise
                    log.warning(
                        "the workers' job failed in round %d of %d (try %d of %d), "
                        "resuming there: %s",
                        server.next_round + 1,
                        len(rounds),
                        attempt,
                        tries,
                        str(e).splitlines()[0] if str(e) else type(e).__name__,
                    )
        finally:
            server.close()
            self.sc.setJobDescription(None)
        if server.error is not None:
            raise server.error
        if server.next_round != len(rounds):
            raise RuntimeError(
                f"the workers' job ended after {server.next_round} of {len(rounds)} rounds"
            )

    def _exchange_address(self) -> tuple[str, str]:
        """Where workers reach the driver's averaging server, and the address it listens on."""
        m = self.averaging
        if m.exchange_host:
            return m.exchange_host, ""
        conf = self.sc.getConf()
        if self.sc.master.startswith("local"):
            return "127.0.0.1", "127.0.0.1"
        host = conf.get("spark.driver.host") or socket.gethostname()
        return host, conf.get("spark.driver.bindAddress") or ""

    def _end_epoch(self) -> None:
        self.model.epoch += 1

    # -- evaluation --------------------------------------------------------------------------

    def evaluate(
        self,
        data: RDD | str | os.PathLike[str],
        output_index: int = 0,
        *,
        top_n: int = 1,
        labels: Sequence[str] | None = None,
        loader: Any = None,
    ) -> Evaluation:
        """Classification figures of output ``output_index`` (a Graph's outputs in order; a
        Network has one) over an RDD of DataSets or MultiDataSets or the files under a URL,
        merged exactly from per-partition counts."""
        num_classes = self._output_width(output_index)
        args = {"num_classes": num_classes, "labels": labels, "top_n": top_n}
        result = self._evaluate(data, "classification", loader, args, output_index)
        return result.evaluation if result else Evaluation(**args)

    def evaluate_regression(
        self,
        data: RDD | str | os.PathLike[str],
        output_index: int = 0,
        *,
        column_names: Sequence[str] | None = None,
        loader: Any = None,
    ) -> RegressionEvaluation:
        """Regression figures per column of output ``output_index`` over an RDD or the files
        under a URL."""
        args = {
            "num_columns": self._output_width(output_index),
            "column_names": column_names,
        }
        result = self._evaluate(data, "regression", loader, args, output_index)
        return result.evaluation if result else RegressionEvaluation(**args)

    def score(self, data: RDD | str | os.PathLike[str], *, loader: Any = None) -> float:
        """The model's mean score per example (per unmasked step) over all of ``data``; for a
        Graph, as its own ``score``: the sum of every output's mean loss, plus the L2 penalty."""
        result = self._evaluate(data, "score", loader, {})
        if result is None or np.any(np.asarray(result.examples) == 0):
            raise ValueError("no examples to score")
        if not self._access.several_outputs:
            return result.loss_sum / result.examples
        _, _, penalty = self.model.score_parts([])  # the driver's model has the same params
        means = [float(t) / float(w) for t, w in zip(result.loss_sum, result.examples, strict=True)]
        return sum(means) + penalty

    def _output_width(self, output_index: int) -> int | None:
        """The width of the model's output ``output_index`` (None: unknown); a ValueError
        naming the outputs where it has no such output."""
        widths = self._access.output_widths
        count = len(widths)
        valid = isinstance(output_index, (int, np.integer)) and not isinstance(output_index, bool)
        if not valid or not 0 <= output_index < count:
            names = self._access.output_names
            which = f" for outputs {', '.join(map(repr, names))}" if names else ""
            raise ValueError(
                f"output_index must be in [0, {count}){which} "
                f"(the model has {count} output{'s' if count > 1 else ''}), got {output_index!r}"
            )
        return widths[int(output_index)]

    @executor_errors()
    def _evaluate(
        self, data: Any, kind: str, loader: Any, args: dict[str, Any], output_index: int = 0
    ) -> Any:
        m = self.averaging
        weights = self.sc.broadcast({"params": self.model.params()})
        try:
            if isinstance(data, (str, os.PathLike)):
                urls = self._files(data)
                loader = loader or MinibatchLoader()
                slices = min(len(urls), self.workers)
                chunks = [urls[i::slices] for i in range(slices)]
                rdd = self.sc.parallelize(chunks, slices)
            elif hasattr(data, "mapPartitions"):
                rdd, loader = data, None
            else:
                raise TypeError(f"expected an RDD or a directory URL, got {type(data).__name__}")
            setup = dataclasses.replace(self._worker_setup(loader), batch_size=m.eval_batch_size)
            evaluate = EvaluatePartition(
                setup, weights, kind=kind, evaluation_args=args, output_index=int(output_index)
            )
            self.sc.setJobDescription(f"sparkbatch {kind}")
            return self._sum(rdd.mapPartitions(evaluate), merge_evaluations)
        finally:
            weights.destroy()
            self.sc.setJobDescription(None)


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


def _per_worker(rounds: list[list[list[str]]]) -> tuple[list[list[list[str]]], int]:
    """Turn rounds of per-worker file lists into per-worker lists of every round's files (a
    worker without files in a round gets an empty list), and the number of workers."""
    workers = max(len(files) for files in rounds)
    per_worker = [[files[w] if w < len(files) else [] for files in rounds] for w in range(workers)]
    return per_worker, workers


def _config_json(model: Model) -> str:
    return json.dumps(model.to_config(), sort_keys=True)
