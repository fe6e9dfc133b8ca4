"""What every worker runs on the executors, whichever exchange: its model, its minibatches,
fitting them, and distributed evaluation.

The model is built on the executor from its configuration and kept per Python worker process
(:func:`_model`) and used through its :class:`~sparkbatch.train.model.ModelAccess`, so a round
costs no model construction. :class:`WorkerSetup` reads a worker's items (files, or minibatches
from the RDD) and fits them; :func:`start_round` sets a model to a round's starting point. The
exchanges' own worker sides are :class:`~sparkbatch.train.spark_exchange.FitRound` and
:class:`~sparkbatch.train.socket_exchange.FitRounds`. Results travel back as
:class:`RoundResult` objects that are summed in place with the native kernel (:func:`combine`).

Every minibatch is checked for NaN and infinity before it is fitted, and every worker's
parameters after its round (NOTE [non-finite checks] in ``sparkbatch._finite``).

NOTE [deterministic errors]: a NonFiniteError or DivergenceError would come back in a retried
task (the same minibatches from the same parameters), so a worker does not fail its task with
it. With ``exchange="spark"`` it travels back as the round's result (:attr:`RoundResult.error`)
and the driver raises it; with ``exchange="socket"`` the worker sends it to the driver's server,
which tells every worker to stop and raises it once the job has ended. Spark retries neither,
and no task has to be killed. Other errors (a loader's, a lost executor) fail the task, which
Spark retries as usual.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import re
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import _native
from .._finite import check_params, diverged, non_finite_data, non_finite_in, with_context
from .._prefetch import prefetched
from ..data import DataSet, MultiDataSet, Source
from ..data.loaders import load_named
from ..errors import DivergenceError, NonFiniteError
from ..evaluation import Evaluation, RegressionEvaluation
from .model import ModelAccess
from .stats import PhaseTiming

__all__ = [
    "RoundResult",
    "WorkerSetup",
    "Fitted",
    "start_round",
    "EvaluatePartition",
    "combine",
    "merge_evaluations",
]

_MODELS: OrderedDict[tuple[type, str, str], ModelAccess] = OrderedDict()  # per worker process
_MODELS_KEPT = 2
_SKIP_OPTION = "ParameterAveraging(non_finite='skip')"
# The files the export approach writes: spark.export.file_name(partition, batch).
_EXPORTED_NAME = re.compile(r"part-(\d+)-(\d+)\.[^/]*$")


def _limit_native_threads() -> None:
    """Size this Python worker's native thread pool to its task's cores (set before first use).

    Otherwise every concurrent task of an executor starts a thread per core of the machine.
    """
    if "SPARKBATCH_NUM_THREADS" not in os.environ:
        from pyspark import TaskContext

        context = TaskContext.get()
        if context is not None:
            os.environ["SPARKBATCH_NUM_THREADS"] = str(max(1, context.cpus()))


def _model(model_class: type, config_json: str, device: str = "cpu") -> ModelAccess:
    """This process's model for ``config_json`` (with its access), built once and reused by
    later rounds.

    ``device`` "cuda", or "auto" where the model moves and a GPU is visible, moves it to the
    GPU; CUDA is touched only here, in the executor's Python worker, never before a fork.
    """
    key = (model_class, config_json, device)
    access = _MODELS.get(key)
    if access is None:
        _limit_native_threads()
        access = ModelAccess(model_class.from_config(json.loads(config_json)))
        if device == "cuda" or (device == "auto" and access.can_move and _gpu_visible()):
            access.to("cuda")
        _MODELS[key] = access
        while len(_MODELS) > _MODELS_KEPT:
            _MODELS.popitem(last=False)
    return access


def _gpu_visible() -> bool:
    from ..nn.gpu import cuda_available

    return cuda_available()


@dataclass
class RoundResult:
    """Sums over the workers of one round (one worker's own values before aggregation).

    A worker that fitted nothing but skipped minibatches reports them with ``workers=0`` and no
    parameters (``params`` None), so that the skips are counted without weighing in the average.
    """

    params: np.ndarray | None
    state: np.ndarray | None
    score_sum: float  # of every minibatch's score
    batches: int
    examples: int
    workers: int
    max_batches: int  # the most minibatches one worker fitted: the iteration advance
    phases: list[PhaseTiming] = field(default_factory=list)
    skipped: int = 0  # minibatches skipped for non-finite values (non_finite="skip")
    #: A worker's NonFiniteError or DivergenceError (NOTE [deterministic errors]); the driver
    #: raises the first one that reaches it.
    error: Exception | None = None

    @classmethod
    def nothing_fitted(cls, *, skipped: int = 0, error: Exception | None = None) -> RoundResult:
        """A worker's result without parameters: the minibatches it ``skipped`` only, or its
        ``error``."""
        return cls(None, None, 0.0, 0, 0, 0, 0, skipped=skipped, error=error)


def combine(a: RoundResult | None, b: RoundResult | None) -> RoundResult | None:
    """Sum two partial results in place (``a`` is reused); a worker without data is None."""
    if a is None:
        return b
    if b is None:
        return a
    if a.error is not None or b.error is not None:
        return a if a.error is not None else b
    if b.params is None or a.params is None:  # skips only: nothing to add but the counts
        if a.params is None:
            a, b = b, a
        a.skipped += b.skipped
        a.phases.extend(b.phases)
        return a
    _native.nn_add_into(a.params, b.params)
    if a.state is not None and b.state is not None:
        _native.nn_add_into(a.state, b.state)
    a.score_sum += b.score_sum
    a.batches += b.batches
    a.examples += b.examples
    a.workers += b.workers
    a.max_batches = max(a.max_batches, b.max_batches)
    a.skipped += b.skipped
    a.phases.extend(b.phases)
    return a


def _minibatches(
    items: Iterable[Any],
    loader: Any,
    storage_options: Any,
    prefetch: int,
    batch_size: int,
    exported: bool = False,
) -> Iterator[tuple[DataSet | MultiDataSet, str]]:
    """The minibatches of one worker, each with where it came from in words: files (loaded
    ``prefetch`` ahead) or in-memory batches (alone, or ``((partition, index), batch)`` pairs
    from the direct approach), split to ``batch_size`` examples where larger."""
    if loader is None:
        for item in items:
            if isinstance(item, tuple):
                (partition, index), batch = item
                where = _rdd_origin(partition, index, batch_size, batch.num_examples)
            else:
                batch, where = item, "a minibatch of the RDD"
            yield from _pieces(batch, batch_size, where)
        return
    sources = [Source(url, storage_options) for url in items]
    loaded = prefetched(functools.partial(load_named, loader), sources, prefetch)
    for i, batch in enumerate(loaded):  # read to the end: the prefetch thread then stops
        url = sources[i].url
        match = _EXPORTED_NAME.search(url) if exported else None
        where = url
        if match:  # the export approach's temporary file: name what the user gave instead
            partition, index = int(match.group(1)), int(match.group(2))
            where = _rdd_origin(partition, index, batch_size, batch.num_examples)
        yield from _pieces(batch, batch_size, where)


def _rdd_origin(partition: int, index: int, batch_size: int, examples: int) -> str:
    first = index * batch_size
    return (
        f"RDD partition {partition}, minibatch {index} (examples {first}-{first + examples - 1} "
        "of the partition)"
    )


def _pieces(
    batch: DataSet | MultiDataSet, batch_size: int, where: str
) -> Iterator[tuple[DataSet | MultiDataSet, str]]:
    n = batch.num_examples
    if n > batch_size:
        for k, piece in enumerate(batch.split(batch_size)):
            first = k * batch_size
            yield piece, f"{where}, examples {first}-{first + piece.num_examples - 1}"
    elif n:
        yield batch, where


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
    non_finite: str = "raise"  # or "skip": minibatches holding NaN or infinity
    exported: bool = False  # the files are the export approach's: name RDD partitions

    def model(self) -> ModelAccess:
        """This Python worker's model for the fit, with its access (built once per process,
        see :func:`_model`)."""
        return _model(self.model_class, self.config_json, self.device)

    def minibatches(self, items: Iterable[Any]) -> Iterator[tuple[DataSet | MultiDataSet, str]]:
        """The minibatches of ``items`` (file URLs or minibatches), ``batch_size`` at most,
        each with where it came from in words."""
        return _minibatches(
            items,
            self.loader,
            self.storage_options,
            self.prefetch,
            self.batch_size,
            self.exported,
        )

    def fit(self, model: Any, items: Iterable[Any], context: str) -> tuple[float, int, int, int]:
        """Fit the minibatches of ``items`` with ``model.fit_batch``; the sum of their scores,
        their count, their examples and the minibatches skipped. ``context`` ("round 3 (epoch
        0), worker 1") begins the message of a NonFiniteError or DivergenceError (NOTE
        [non-finite checks] in ``sparkbatch._finite``)."""
        step = model.fit_batch
        score_sum, count, examples, skipped = 0.0, 0, 0, 0
        for batch, origin in self.minibatches(items):
            detail = non_finite_in(batch)
            if detail is not None:
                if self.non_finite == "skip":
                    skipped += 1
                    continue
                raise non_finite_data(f"{context}, {origin}", detail, _SKIP_OPTION)
            iteration = model.iteration  # before the step; named on errors
            try:
                score = float(step(batch))  # raises before its update, if at all
            except NonFiniteError as e:  # the Network's: values beyond its dtype
                if self.non_finite == "skip":
                    skipped += 1
                    continue
                where = f"{context}, {origin}, iteration {iteration}"
                raise with_context(e, where, option=_SKIP_OPTION) from None
            except DivergenceError as e:
                where = f"{context}, {origin}, iteration {iteration}"
                raise with_context(e, where, kept=_KEPT) from None
            if not math.isfinite(score):  # any Model's score; the Network checks its gradient
                where = f"{context}, {origin}, iteration {iteration}"
                raise diverged(where, f"the score is {score!r}", _KEPT)
            score_sum += score
            count += 1
            examples += batch.num_examples
        return score_sum, count, examples, skipped

    def fit_round(self, model: Any, items: Iterable[Any], context: str, *, copy: bool) -> Fitted:
        """:meth:`fit`, then the worker's parameters checked (a copy of them with ``copy``);
        a NonFiniteError or DivergenceError comes back in :attr:`Fitted.error` (NOTE
        [deterministic errors]), not raised."""
        try:
            score_sum, batches, examples, skipped = self.fit(model, items, context)
            params = None
            if batches:
                params = np.array(model.params(), copy=True) if copy else model.params()
                check_params(
                    params,
                    f"{context}, after its {batches} minibatches",
                    "its parameters hold",
                    _KEPT,
                )
        except (NonFiniteError, DivergenceError) as e:
            return Fitted(0.0, 0, 0, 0, None, error=e)
        return Fitted(score_sum, batches, examples, skipped, params)


_KEPT = "the driver's model keeps its parameters of before this round"


@dataclass
class Fitted:
    """One worker's round (:meth:`WorkerSetup.fit_round`): the sum of its minibatches' scores,
    their count, their examples, the minibatches skipped, and its parameters (None: nothing
    fitted), or the error that ended it."""

    score_sum: float
    batches: int
    examples: int
    skipped: int
    params: np.ndarray | None
    #: A NonFiniteError or DivergenceError (NOTE [deterministic errors]); the rest is then empty.
    error: Exception | None = None


def start_round(
    access: ModelAccess,
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
    model = access.model
    if not in_place:
        model.set_params(params)
    model.iteration, model.epoch = counters["iteration"], counters["epoch"]
    if save_updater and state is not None:
        if not in_place:
            model.set_updater_state(state)
        access.updater_steps = counters["updater_steps"]
    else:
        access.reset_updater()
    access.set_dropout_stream(index)  # workers of a round drop different inputs


@dataclass
class EvaluationResult:
    """Per-partition evaluation counts (merged exactly) and loss sums (for the score): one
    figure each, or for a model with several outputs
    (:attr:`~sparkbatch.train.model.ModelAccess.several_outputs`) an array of one per output."""

    evaluation: Evaluation | RegressionEvaluation | None
    loss_sum: float | np.ndarray
    examples: float | np.ndarray


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
    """Evaluate (``kind`` "classification" or "regression") output ``output_index`` of the
    model, or score it, on one partition with the broadcast parameters, on the workers' model
    (``setup``: its ``batch_size`` is the evaluation batch size; ``save_updater`` and
    ``collect_stats`` do not apply)."""

    def __init__(
        self,
        setup: WorkerSetup,
        weights: Any,
        *,
        kind: str,
        evaluation_args: dict[str, Any] | None = None,
        output_index: int = 0,
    ) -> None:
        self.setup = setup
        self.weights = weights  # Broadcast of {"params"}
        self.kind = kind
        self.evaluation_args = evaluation_args or {}
        self.output_index = output_index

    def __call__(self, partition: Iterator[Any]) -> Iterator[EvaluationResult]:
        first = next(partition, None)  # the partition is read lazily: DataSets can be many
        if first is None:
            return iter(())
        items: Iterable[Any] = itertools.chain([first], partition)
        if self.setup.loader is not None:
            items = [url for urls in items for url in urls]
        access = self.setup.model()
        model = access.model
        model.set_params(self.weights.value["params"])
        if self.kind == "classification":
            evaluation: Any = Evaluation(**self.evaluation_args)
        elif self.kind == "regression":
            evaluation = RegressionEvaluation(**self.evaluation_args)
        else:
            evaluation = None
        if access.several_outputs:
            return iter([self._several(access, evaluation, items)])
        loss_sum, examples = 0.0, 0.0
        for batch, _ in self.setup.minibatches(items):
            ds = _single(batch)
            if evaluation is not None:
                evaluation.eval(ds.labels, _output(model, ds), ds.labels_mask)
                continue
            mask = ds.labels_mask
            weight = float(np.sum(mask)) if mask is not None else float(ds.num_examples)
            if weight > 0:  # a fully masked batch adds nothing (and has no mean to take)
                loss_sum += model.score(ds) * weight
                examples += weight
        return iter([EvaluationResult(evaluation, loss_sum, examples)])

    def _several(
        self, access: ModelAccess, evaluation: Any, items: Iterable[Any]
    ) -> EvaluationResult:
        """The partition's result for a model with several inputs and outputs: its figures of
        output ``output_index``, or per output its loss sum and the weight that sums over."""
        k = self.output_index
        model = access.model
        outputs = len(access.output_widths)
        loss_sum, examples = np.zeros(outputs), np.zeros(outputs)
        for batch, _ in self.setup.minibatches(items):
            mds = batch if isinstance(batch, MultiDataSet) else MultiDataSet.from_dataset(batch)
            if evaluation is not None:
                predicted = _outputs(model, mds)[k]
                evaluation.eval(mds.labels[k], predicted, mds.labels_masks[k])
                continue
            losses, weights, _ = model.score_parts(mds)
            loss_sum += losses
            examples += weights
        return EvaluationResult(evaluation, loss_sum, examples)


def _output(model: Any, ds: DataSet) -> Any:
    """``model.output`` of a minibatch, with its features mask where it has one (recurrent
    layers read it; see ``output()`` in :mod:`sparkbatch.train.model`)."""
    if ds.features_mask is None:
        return model.output(ds.features)
    return model.output(ds.features, features_mask=ds.features_mask)


def _outputs(model: Any, mds: MultiDataSet) -> Any:
    """``model.output`` of a minibatch of a model of several inputs, with the features masks
    where there are any."""
    if all(mask is None for mask in mds.features_masks):
        return model.output(list(mds.features))
    return model.output(list(mds.features), features_masks=list(mds.features_masks))


def _single(batch: DataSet | MultiDataSet) -> DataSet:
    return batch.to_dataset() if isinstance(batch, MultiDataSet) else batch
