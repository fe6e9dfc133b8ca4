"""``SparkNetwork``: fit, evaluate and score a model across Spark executors by parameter averaging.

The successor of DL4J's ``SparkDl4jMultiLayer`` / ``SparkComputationGraph``. Every way of
fitting (a directory of minibatch files, paths and a loader, an RDD by the export or the direct
approach, MultiDataSets) builds a :class:`~sparkbatch.train.plan.FitPlan` (the rounds, and who
fits what in each) and runs it through the settings' :class:`~sparkbatch.train.Exchange` with a
:class:`~sparkbatch.train.runner.FitRunner`, which averages every round into the model.

Minibatch files never travel through the driver; only their URLs do. Evaluation merges
per-partition counts (never averages per-partition figures), so partitions of different sizes
weigh what their examples weigh.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .._arguments import check_int
from ..data import (
    SerializedDataSetLoader,
    SerializedMinibatchLoader,
    SerializedMultiDataSetLoader,
)
from ..data.manifest import minibatch_files
from ..evaluation import Evaluation, RegressionEvaluation
from ..spark import executor_errors
from ..spark.export import batch_and_export
from ..storage import join, resolve
from .master import ParameterAveraging
from .model import Model, ModelAccess
from .plan import FitPlan, plan_direct, plan_files
from .runner import FitRunner, worker_setup
from .stats import TrainingStats
from .worker import EvaluatePartition, merge_evaluations

if TYPE_CHECKING:
    from pyspark import RDD, SparkContext

__all__ = ["SparkNetwork"]


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
            return self._run(self._plan_files(self._files(data), SerializedDataSetLoader(), epochs))
        if self.averaging.approach == "direct":
            m = self.averaging
            first = self.model.epoch
            plan = plan_direct(
                self.sc, data, m, workers=self.workers, epochs=epochs, first_epoch=first
            )
            return self._run(plan)
        return self._run(self._plan_exported(data, epochs))

    @executor_errors()
    def fit_paths(self, paths: RDD | Sequence[str], loader: Any = None, epochs: int = 1) -> Model:
        """Fit the minibatch files at ``paths`` (an RDD or list of URLs) read by ``loader``.

        ``loader`` is any :class:`~sparkbatch.data.Loader`; default
        :class:`~sparkbatch.data.SerializedDataSetLoader`.
        """
        epochs = check_int("epochs", epochs)
        urls = paths.collect() if hasattr(paths, "collect") else list(paths)
        return self._run(self._plan_files(urls, loader or SerializedDataSetLoader(), epochs))

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
            loader = SerializedMultiDataSetLoader()
            return self._run(self._plan_files(self._files(data), loader, epochs))
        return self.fit(data, epochs)

    def _files(self, url: str | os.PathLike[str]) -> list[str]:
        urls = minibatch_files(os.fspath(url), storage_options=self.averaging.storage_options)
        if not urls:
            raise FileNotFoundError(f"no minibatch files under {os.fspath(url)}")
        return urls

    def _plan_files(
        self,
        urls: list[str],
        loader: Any,
        epochs: int,
        *,
        exported: bool = False,
        cleanup: Any = None,
    ) -> FitPlan:
        return plan_files(
            self.sc,
            urls,
            loader,
            self.averaging,
            workers=self.workers,
            epochs=epochs,
            first_epoch=self.model.epoch,
            exported=exported,
            cleanup=cleanup,
        )

    def _plan_exported(self, rdd: RDD, epochs: int) -> FitPlan:
        """The export approach: ``rdd`` written as minibatch files in a temporary directory,
        which the plan removes when it is closed; errors name the RDD partition a file came
        from instead of the file."""
        base = self.averaging.export_dir or tempfile.gettempdir()
        directory = join(base, f"sparkbatch-export-{uuid.uuid4().hex[:12]}")
        options = self.averaging.storage_options

        def remove() -> None:
            fs, path = resolve(directory, options)
            if fs.exists(path):
                fs.rm(path, recursive=True)

        try:
            self.sc.setJobDescription("sparkbatch fit: exporting minibatches")
            size = self.averaging.batch_size_per_worker
            urls = batch_and_export(rdd, directory, size, storage_options=options)
        except BaseException:
            remove()
            raise
        finally:
            self.sc.setJobDescription(None)
        return self._plan_files(
            urls, SerializedMinibatchLoader(), epochs, exported=True, cleanup=remove
        )

    def _run(self, plan: FitPlan) -> Model:
        """Run ``plan`` through the settings' exchange; the model, trained."""
        with plan:
            runner = FitRunner(
                self.sc, self.averaging, self._access, self.stats, first_round=self._round
            )
            try:
                self.averaging.exchanger.run(runner, plan)
            finally:
                self._round = runner.round
        return self.model

    def _sum(self, rdd: RDD, merge: Any) -> Any:
        """``treeAggregate`` of ``rdd``'s results with ``merge`` (None when it has none)."""
        return rdd.treeAggregate(None, merge, merge, self.averaging.aggregation_depth)

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
        evaluation = result.evaluation if result else Evaluation(**args)
        self.stats.set_evaluation(evaluation)  # the HTML report shows the latest evaluation
        return evaluation

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
        evaluation = result.evaluation if result else RegressionEvaluation(**args)
        self.stats.set_evaluation(evaluation)  # the HTML report shows the latest evaluation
        return evaluation

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
                loader = loader or SerializedMinibatchLoader()
                slices = min(len(urls), self.workers)
                chunks = [urls[i::slices] for i in range(slices)]
                rdd = self.sc.parallelize(chunks, slices)
            elif hasattr(data, "mapPartitions"):
                rdd, loader = data, None
            else:
                raise TypeError(f"expected an RDD or a directory URL, got {type(data).__name__}")
            setup = dataclasses.replace(
                worker_setup(self._access, m, loader), batch_size=m.eval_batch_size
            )
            evaluate = EvaluatePartition(
                setup, weights, kind=kind, evaluation_args=args, output_index=int(output_index)
            )
            self.sc.setJobDescription(f"sparkbatch {kind}")
            return self._sum(rdd.mapPartitions(evaluate), merge_evaluations)
        finally:
            weights.destroy()
            self.sc.setJobDescription(None)
