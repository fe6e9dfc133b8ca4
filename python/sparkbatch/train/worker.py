"""What runs on the executors: one averaging round of one worker, and distributed evaluation.

The functions here are small picklable classes holding configuration and broadcast handles
only; the model is built on the executor from its configuration and kept per Python worker
process (:func:`_model`), so a round costs one broadcast read and no model construction.
Results travel back as :class:`RoundResult` objects that ``treeAggregate`` sums in place with
the native kernel (:func:`combine`).
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import _native
from ..data import DataSet, MultiDataSet, Source
from ..data._prefetch import prefetched
from ..data.loaders import _load_minibatch
from ..evaluation import Evaluation, RegressionEvaluation
from .stats import PhaseTiming

__all__ = [
    "RoundResult",
    "WorkerSetup",
    "FitRound",
    "FitRounds",
    "EvaluatePartition",
    "MinibatchLoader",
    "combine",
    "merge_evaluations",
]

_MODELS: OrderedDict[tuple[type, str, str], Any] = OrderedDict()  # per Python worker process
_MODELS_KEPT = 2


def _limit_native_threads() -> None:
    """Size this Python worker's native thread pool to its task's cores (set before first use).

    Otherwise every concurrent task of an executor starts a thread per core of the machine.
    """
    if "SPARKBATCH_NUM_THREADS" not in os.environ:
        from pyspark import TaskContext

        context = TaskContext.get()
        if context is not None:
            os.environ["SPARKBATCH_NUM_THREADS"] = str(max(1, context.cpus()))


def _model(model_class: type, config_json: str, device: str = "cpu") -> Any:
    """This process's model for ``config_json``, built once and reused by later rounds.

    ``device`` "cuda" or "auto" (a GPU where one is visible) moves it to the GPU; CUDA is
    touched only here, in the executor's Python worker, never before a fork.
    """
    key = (model_class, config_json, device)
    model = _MODELS.get(key)
    if model is None:
        _limit_native_threads()
        model = model_class.from_config(json.loads(config_json))
        if device == "cuda" or (device == "auto" and _gpu_visible()):
            model.to("cuda")
        _MODELS[key] = model
        while len(_MODELS) > _MODELS_KEPT:
            _MODELS.popitem(last=False)
    return model


def _gpu_visible() -> bool:
    from ..nn.gpu import cuda_available

    return cuda_available()


@dataclass
class RoundResult:
    """Sums over the workers of one round (one worker's own values before aggregation)."""

    params: np.ndarray
    state: np.ndarray | None
    score_sum: float  # of every minibatch's score
    batches: int
    examples: int
    workers: int
    max_batches: int  # the most minibatches one worker fitted: the iteration advance
    phases: list[PhaseTiming] = field(default_factory=list)


def combine(a: RoundResult | None, b: RoundResult | None) -> RoundResult | None:
    """Sum two partial results in place (``a`` is reused); a worker without data is None."""
    if a is None:
        return b
    if b is None:
        return a
    _native.nn_add_into(a.params, b.params)
    if a.state is not None and b.state is not None:
        _native.nn_add_into(a.state, b.state)
    a.score_sum += b.score_sum
    a.batches += b.batches
    a.examples += b.examples
    a.workers += b.workers
    a.max_batches = max(a.max_batches, b.max_batches)
    a.phases.extend(b.phases)
    return a


class MinibatchLoader:
    """Loads a sparkbatch minibatch file, whichever it holds (DataSet or MultiDataSet)."""

    def __init__(self, *, verify: bool = True) -> None:
        self.verify = verify

    def load(self, source: Source) -> DataSet | MultiDataSet:
        return _load_minibatch(source, self.verify)


def _minibatches(
    items: Iterable[Any], loader: Any, storage_options: Any, prefetch: int, batch_size: int
) -> Iterator[DataSet | MultiDataSet]:
    """The minibatches of one worker: files (loaded ``prefetch`` ahead) or in-memory batches,
    split to ``batch_size`` examples where larger."""
    if loader is None:
        batches: Iterable[Any] = items
    else:
        sources = [Source(url, storage_options) for url in items]
        batches = prefetched(loader.load, sources, prefetch)
    for batch in batches:
        if batch.num_examples > batch_size:
            yield from batch.split(batch_size)
        elif batch.num_examples:
            yield batch


@dataclass(frozen=True)
class WorkerSetup:
    """What every worker task of a fit needs: how to build the model, read its minibatches
    (``loader`` None: the partition holds the minibatches themselves) and what to report."""

    model_class: type
    config_json: str
    batch_size: int
    save_updater: bool
    loader: Any = None
    storage_options: Any = None
    prefetch: int = 2
    collect_stats: bool = False
    device: str = "cpu"

    def model(self) -> Any:
        """This Python worker's model for the fit (built once per process, see :func:`_model`)."""
        return _model(self.model_class, self.config_json, self.device)

    def minibatches(self, items: Iterable[Any]) -> Iterator[DataSet | MultiDataSet]:
        """The minibatches of ``items`` (file URLs or minibatches), ``batch_size`` at most."""
        return _minibatches(
            items, self.loader, self.storage_options, self.prefetch, self.batch_size
        )


class FitRound:
    """One worker's part of a round: set the broadcast parameters, fit, return the result.

    Used with ``mapPartitionsWithIndex``; a partition holds either one list of file URLs
    (``setup.loader`` given) or the worker's minibatches themselves.
    """

    def __init__(self, setup: WorkerSetup, weights: Any, *, round_index: int) -> None:
        self.setup = setup
        self.weights = weights  # Broadcast of {"params", "state", "iteration", "epoch"}
        self.round_index = round_index

    #: With files: the partition holds one list per round of this worker's files; this
    #: round's index into it.
    round_in_plan: int = 0

    def __call__(self, index: int, partition: Iterator[Any]) -> Iterator[RoundResult]:
        items = list(partition)
        setup = self.setup
        if setup.loader is not None:  # this worker's file lists, one per round of the epoch
            items = [url for rounds in items for url in rounds[self.round_in_plan]]
        if not items:
            return iter(())
        worker = f"worker {index}"
        start = time.time()
        weights = self.weights.value
        model = setup.model()
        _start_round(model, weights, weights["params"], weights["state"], setup.save_updater, index)
        fit_start = time.time()
        score_sum, batches, examples = _fit_all(model, setup.minibatches(items))
        end = time.time()
        if batches == 0:
            return iter(())
        phases = []
        if setup.collect_stats:
            phases = [
                PhaseTiming(self.round_index, worker, "broadcast", start, fit_start),
                PhaseTiming(self.round_index, worker, "fit", fit_start, end),
            ]
        result = RoundResult(
            params=np.array(model.params(), copy=True),
            state=np.array(model.updater_state(), copy=True) if setup.save_updater else None,
            score_sum=score_sum,
            batches=batches,
            examples=examples,
            workers=1,
            max_batches=batches,
            phases=phases,
        )
        return iter([result])


def _start_round(
    model: Any,
    counters: dict[str, Any],
    params: np.ndarray,
    state: np.ndarray | None,
    save_updater: bool,
    index: int,
    *,
    in_place: bool = False,
) -> None:
    """Set a worker's model to the round's starting point (``counters``: iteration,
    updater_steps, epoch); without ``save_updater`` the updater starts fresh, as DL4J's does.
    ``in_place``: ``params`` and ``state`` already are the model's own buffers."""
    if not in_place:
        model.set_params(params)
    model.iteration, model.epoch = counters["iteration"], counters["epoch"]
    if save_updater and state is not None:
        if not in_place:
            model.set_updater_state(state)
        if hasattr(model, "updater_steps"):
            model.updater_steps = counters["updater_steps"]
    elif hasattr(model, "reset_updater"):
        model.reset_updater()
    else:
        model.set_updater_state(np.zeros_like(model.updater_state()))
    if hasattr(model, "dropout_stream"):
        model.dropout_stream = index  # workers of a round drop different inputs


def _own_buffers(model: Any, save_updater: bool) -> list[np.ndarray]:
    """The model's parameter (and updater state) buffers where they are host memory the model
    fits from, so that averages can be received straight into them; else an empty list."""
    if getattr(model, "device", None) != "cpu":
        return []
    buffers = [model.params()] + ([model.updater_state()] if save_updater else [])
    if not all(isinstance(b, np.ndarray) and b.flags.writeable for b in buffers):
        return []
    return buffers


def _fit_all(model: Any, batches: Iterable[Any]) -> tuple[float, int, int]:
    """Fit every minibatch; the sum of their scores, their count and their examples."""
    score_sum, count, examples = 0.0, 0, 0
    for batch in batches:
        score_sum += float(model.fit_batch(batch))
        count += 1
        examples += batch.num_examples
    return score_sum, count, examples


class FitRounds:
    """One worker's part of a whole fit for ``exchange="socket"``: a barrier task that fits
    round after round (of every epoch), sending its parameters to the driver's
    :class:`~sparkbatch.train.exchange.AveragingServer` after each and going on from the
    average it sends back.

    The partition holds one element: this worker's file lists, one per round.
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
        from .shared_slots import SharedSlots

        items = list(partition)  # read to the end, or the Python worker is not reused
        plan = items[0] if items else []  # this worker's files, one list per round
        model = self.setup.model()
        slots = SharedSlots.attach(*self.shared) if self.shared else None  # None: not here
        try:
            self._fit(index, plan, model, slots)
        finally:
            if slots is not None:
                if any(
                    np.shares_memory(a, b)
                    for a in _own_buffers(model, True)
                    for b in slots.slot(index)
                ):
                    # back to private memory: the cached model outlives the shared file
                    model._use_buffers(*(np.empty_like(a) for a in _own_buffers(model, True)))
                slots.close()
        return iter(())

    def _fit(self, index: int, plan: list[list[str]], model: Any, slots: Any) -> None:
        from .exchange import recv_message, send_message

        worker = f"worker {index}"
        # A CPU network's own buffers receive the averages (no copy); others a spare.
        spare = _own_buffers(model, self.setup.save_updater)
        try:
            sock = socket.create_connection(self.address, timeout=30)
        except OSError as e:
            host, port = self.address
            raise ConnectionError(
                f"this executor cannot reach the driver's averaging server at {host}:{port} "
                f"({e}): set ParameterAveraging(exchange_host=...) to an address executors "
                "reach and open its port (exchange_port=...), or use exchange='spark'"
            ) from e
        with sock:
            sock.settimeout(None)  # a round waits for the slowest worker, however long
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            hello = {"token": self.token, "worker": index, "shared": slots is not None}
            send_message(sock, hello)
            header, arrays, received = recv_message(sock, spare)
            r = int(header["round"])  # where the fit stands: a retried task resumes there
            bound = False
            if (
                header.get("shared")
                and slots is not None
                and spare
                and hasattr(model, "_use_buffers")
            ):
                # Granted to this task alone: its network keeps its parameters (and state) in
                # its slot, so a round's result is there without a copy.
                state = arrays[1] if len(arrays) > 1 else None
                _start_round(model, header, arrays[0], state, self.setup.save_updater, index)
                model._use_buffers(*slots.slot(index))
                spare = arrays = _own_buffers(model, self.setup.save_updater)
                bound = True
            while r < len(plan):
                # The driver says where the average is: in the message, or the last slot.
                shared = bool(header.get("shared")) and slots is not None
                if shared and not arrays:
                    arrays = slots.slot(slots.count - 1)
                in_place = len(arrays) == len(spare) > 0 and all(
                    a is b for a, b in zip(arrays, spare, strict=True)
                )
                state = arrays[1] if len(arrays) > 1 else None
                _start_round(
                    model,
                    header,
                    arrays[0],
                    state,
                    self.setup.save_updater,
                    index,
                    in_place=in_place,
                )
                fit_start = time.time()
                score_sum, batches, examples = _fit_all(model, self.setup.minibatches(plan[r]))
                end = time.time()
                phases = []
                if self.setup.collect_stats:
                    g = self.first_round + r
                    phases = [
                        [g, worker, "broadcast", received, fit_start],
                        [g, worker, "fit", fit_start, end],
                    ]
                result = []
                if batches:
                    result = [model.params()]
                    if self.setup.save_updater:
                        result.append(model.updater_state())
                    if shared:  # in this worker's slot; the message then carries none
                        if not bound:
                            for slot, array in zip(slots.slot(index), result, strict=True):
                                np.copyto(slot, array.reshape(-1))
                        result = []
                message = {
                    "round": r,
                    "score_sum": score_sum,
                    "batches": batches,
                    "examples": examples,
                    "fit_s": end - fit_start,
                    "broadcast_s": fit_start - received,
                    "phases": phases,
                    "shared": shared,
                }
                send_message(sock, message, result)
                if not spare and not shared:
                    spare = arrays  # reuse the last arrays received (never shared views)
                header, arrays, received = recv_message(sock, spare)
                r = int(header["round"])


@dataclass
class EvaluationResult:
    """Per-partition evaluation counts (merged exactly) and loss sums (for the score)."""

    evaluation: Evaluation | RegressionEvaluation | None
    loss_sum: float
    examples: float


def merge_evaluations(
    a: EvaluationResult | None, b: EvaluationResult | None
) -> EvaluationResult | None:
    if a is None:
        return b
    if b is None:
        return a
    if a.evaluation is not None and b.evaluation is not None:
        a.evaluation.merge(b.evaluation)
    a.loss_sum += b.loss_sum
    a.examples += b.examples
    return a


class EvaluatePartition:
    """Evaluate (``kind`` "classification" or "regression") or score one partition with the
    broadcast parameters, on the workers' model (``setup``: its ``batch_size`` is the evaluation
    batch size; ``save_updater`` and ``collect_stats`` do not apply)."""

    def __init__(
        self,
        setup: WorkerSetup,
        weights: Any,
        *,
        kind: str,
        evaluation_args: dict[str, Any] | None = None,
    ) -> None:
        self.setup = setup
        self.weights = weights  # Broadcast of {"params"}
        self.kind = kind
        self.evaluation_args = evaluation_args or {}

    def __call__(self, partition: Iterator[Any]) -> Iterator[EvaluationResult]:
        first = next(partition, None)  # the partition is read lazily: DataSets can be many
        if first is None:
            return iter(())
        items: Iterable[Any] = itertools.chain([first], partition)
        if self.setup.loader is not None:
            items = [url for urls in items for url in urls]
        model = self.setup.model()
        model.set_params(self.weights.value["params"])
        if self.kind == "classification":
            evaluation: Any = Evaluation(**self.evaluation_args)
        elif self.kind == "regression":
            evaluation = RegressionEvaluation(**self.evaluation_args)
        else:
            evaluation = None
        loss_sum, examples = 0.0, 0.0
        for batch in self.setup.minibatches(items):
            ds = _single(batch)
            if evaluation is not None:
                evaluation.eval(ds.labels, model.output(ds.features), ds.labels_mask)
                continue
            mask = ds.labels_mask
            weight = float(np.sum(mask)) if mask is not None else float(ds.num_examples)
            if weight > 0:  # a fully masked batch adds nothing (and has no mean to take)
                loss_sum += model.score(ds) * weight
                examples += weight
        return iter([EvaluationResult(evaluation, loss_sum, examples)])


def _single(batch: DataSet | MultiDataSet) -> DataSet:
    return batch.to_dataset() if isinstance(batch, MultiDataSet) else batch
