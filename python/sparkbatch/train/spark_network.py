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
import functools
import os
import tempfile
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .._arguments import check_int
from .._jobs import JobDescription
from ..data import (
    SerializedDataSetLoader,
    SerializedMinibatchLoader,
    SerializedMultiDataSetLoader,
)
from ..data.loaders import PreprocessingLoader, check_preprocessor, preprocess
from ..data.manifest import check_suffix, minibatch_files
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

Suffix = str | tuple[str, ...] | None


def _checked_batch(preprocessor: Any, item: Any) -> Any:
    """An RDD element for fit or evaluation, through ``preprocessor`` where one is given; a
    TypeError where it is a path (given without ``loader=``) or another object."""
    if isinstance(item, (str, os.PathLike)):
        raise TypeError(
            f"the RDD holds paths ({os.fspath(item)!r:.100}), not DataSets or MultiDataSets: "
            "pass loader= (e.g. SerializedMinibatchLoader()) to read the files they name"
        )
    if preprocessor is None:
        return item
    return preprocess(preprocessor, item, "an element of the RDD")


def _with_preprocessor(loader: Any, preprocessor: Any) -> Any:
    """``loader``, or a PreprocessingLoader of it where a preprocessor is given."""
    return loader if preprocessor is None else PreprocessingLoader(loader, preprocessor)


def _check_loader(loader: Any, preprocessor: Any) -> None:
    """TypeErrors, on the driver before any job, for a ``loader`` without ``load`` or a
    ``preprocessor`` that is not callable, and for either that cannot be pickled: the executors
    get them by pickle, and a failure there is retried as if it were a lost task first."""
    if loader is not None and not callable(getattr(loader, "load", None)):
        raise TypeError(
            f"loader must have a load(source) method (a data.Loader), got {type(loader).__name__}"
        )
    check_preprocessor(preprocessor)
    from pyspark import cloudpickle  # as Spark pickles functions for its tasks

    for name, value in (("loader", loader), ("preprocessor", preprocessor)):
        try:
            cloudpickle.dumps(value)
        except Exception as e:  # pickle raises TypeError, PicklingError, AttributeError...
            raise TypeError(
                f"{name} {type(value).__name__} cannot be pickled for the executors: {e} "
                "(keep open files, locks and compiled structs out of its attributes)"
            ) from e


def _path_list(paths: Sequence[Any], what: str) -> list[str]:
    """A list or tuple of paths as strings; a TypeError naming the first that is not one."""
    urls = []
    for i, p in enumerate(paths):
        if not isinstance(p, (str, os.PathLike)):
            raise TypeError(
                f"{what}[{i}] must be a path (str or os.PathLike) of a file to load, got "
                f"{type(p).__name__}"
            )
        urls.append(os.fspath(p))
    return urls


def _partition_paths(items: list[Any]) -> list[str]:
    """One partition of an RDD given with ``loader=``: its paths; a TypeError where an element
    is not one (an RDD of minibatches is evaluated without ``loader=``)."""
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(
                f"the RDD given with loader= holds a {type(item).__name__}, not paths of files to "
                "load: evaluate an RDD of DataSets or MultiDataSets without loader="
            )
    return [os.fspath(item) for item in items]


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
    def fit(
        self,
        data: RDD | str | os.PathLike[str] | Sequence[str],
        epochs: int = 1,
        *,
        loader: Any = None,
        suffix: Suffix = None,
        preprocessor: Any = None,
    ) -> Model:
        """Fit an RDD of DataSets, or the files under a directory URL or at a list of paths.

        Minibatches holding NaN or infinity and non-finite results are handled as the
        averaging settings' ``non_finite`` says (see :class:`ParameterAveraging`).

        Parameters
        ----------
        data : RDD or str or os.PathLike
            An RDD of DataSets (re-batched to ``batch_size_per_worker``); or a directory
            (local path or fsspec URL): the files its manifest lists, else every visible file
            under it (see :func:`~sparkbatch.spark.list_paths`), each read by ``loader``; or a
            list of paths, or with ``loader`` an RDD of paths (as :meth:`fit_paths`).
        epochs : int, default 1
        loader : Loader, optional
            Reads one file (any object with ``load(source)``, e.g. a custom format's); default
            :class:`~sparkbatch.data.SerializedDataSetLoader`. ``fit(dir, loader=L)`` is
            ``fit_paths(list_paths(sc, dir), L)``.
        suffix : str or tuple of str, optional
            Of a directory, read only the files whose names end with (one of) these.
        preprocessor : callable, optional
            Applied on the executors to every minibatch before it is fitted (DL4J's
            ``DataSetPreProcessor``): after each file is loaded, or to each element of an RDD
            before re-batching. Any picklable callable returning a DataSet or MultiDataSet.
        """
        epochs = check_int("epochs", epochs)
        _check_loader(loader, preprocessor)
        if isinstance(data, (str, os.PathLike)):
            files = self._files(data, suffix)
            loader = _with_preprocessor(loader or SerializedDataSetLoader(), preprocessor)
            return self._run(self._plan_files(files, loader, epochs))
        if isinstance(data, (list, tuple)):  # paths, as evaluate and score take them
            self._no_suffix(suffix, "a list of paths")
            return self.fit_paths(data, loader, epochs, preprocessor=preprocessor)
        self._rdd_only(data, suffix)
        if loader is not None:
            return self.fit_paths(data, loader, epochs, preprocessor=preprocessor)
        if preprocessor is not None:
            data = data.map(functools.partial(_checked_batch, preprocessor))
        if self.averaging.approach == "direct":
            m = self.averaging
            first = self.model.epoch
            plan = plan_direct(
                self.sc, data, m, workers=self.workers, epochs=epochs, first_epoch=first
            )
        else:
            plan = self._plan_exported(data, epochs)
        plan.preprocessor = preprocessor  # for the report: the plan sees preprocessed elements
        return self._run(plan)

    @executor_errors()
    def fit_paths(
        self,
        paths: RDD | Sequence[str],
        loader: Any = None,
        epochs: int = 1,
        *,
        preprocessor: Any = None,
    ) -> Model:
        """Fit the files at ``paths`` (an RDD or list of URLs, e.g. from
        :func:`~sparkbatch.spark.list_paths`) read by ``loader`` (DL4J's ``fitPaths``).

        ``loader`` is any :class:`~sparkbatch.data.Loader` (an object with ``load(source)``
        returning a DataSet or MultiDataSet, picklable); default
        :class:`~sparkbatch.data.SerializedDataSetLoader`. ``preprocessor`` is applied on the
        executors to each loaded minibatch (a
        :class:`~sparkbatch.data.loaders.PreprocessingLoader` wraps the loader). The URLs of an
        RDD are collected to the driver (the files are not).
        """
        epochs = check_int("epochs", epochs)
        _check_loader(loader, preprocessor)
        if isinstance(paths, (str, os.PathLike)):
            raise TypeError(
                "paths must be an RDD or a list of file paths; for a directory use "
                "fit(directory, loader=...) or list_paths(sc, directory)"
            )
        if hasattr(paths, "collect"):
            with JobDescription(self.sc, "sparkbatch fit_paths: collecting the paths"):
                urls = _path_list(paths.collect(), "paths")
        elif isinstance(paths, Sequence):
            urls = _path_list(paths, "paths")
        else:
            raise TypeError(f"paths must be an RDD or a list of paths, got {type(paths).__name__}")
        if not urls:
            raise ValueError("fit_paths: no paths to fit")
        loader = _with_preprocessor(loader or SerializedDataSetLoader(), preprocessor)
        return self._run(self._plan_files(urls, loader, epochs))

    @executor_errors()
    def fit_multi(
        self,
        data: RDD | str | os.PathLike[str],
        epochs: int = 1,
        *,
        loader: Any = None,
        suffix: Suffix = None,
        preprocessor: Any = None,
    ) -> Model:
        """Fit MultiDataSets: the files under a directory URL (as ``export_datasets`` or
        ``batch_and_export`` write them), or an RDD of MultiDataSets (re-batched to
        ``batch_size_per_worker`` as :meth:`fit` does).

        A :class:`~sparkbatch.nn.Graph` takes a MultiDataSet's features in the order of its
        inputs and its labels (and labels masks) in the order of its outputs; a
        :class:`~sparkbatch.nn.Network` has one input and one output, so it fits MultiDataSets
        of one input and one output and refuses others with a clear error. Both exchanges
        apply, as for :meth:`fit`. ``loader`` (default
        :class:`~sparkbatch.data.SerializedMultiDataSetLoader`), ``suffix`` and
        ``preprocessor`` are as for :meth:`fit`.
        """
        epochs = check_int("epochs", epochs)
        _check_loader(loader, preprocessor)
        if isinstance(data, (str, os.PathLike)):
            files = self._files(data, suffix)
            loader = _with_preprocessor(loader or SerializedMultiDataSetLoader(), preprocessor)
            return self._run(self._plan_files(files, loader, epochs))
        if isinstance(data, (list, tuple)):
            loader = loader or SerializedMultiDataSetLoader()
        return self.fit(data, epochs, loader=loader, suffix=suffix, preprocessor=preprocessor)

    def _files(self, url: str | os.PathLike[str], suffix: Suffix = None) -> list[str]:
        """The files of a directory URL (its manifest's, else every visible file): a
        FileNotFoundError saying what it holds where it yields none."""
        return minibatch_files(
            os.fspath(url), suffix=suffix, storage_options=self.averaging.storage_options
        )

    @staticmethod
    def _rdd_only(data: Any, suffix: Suffix) -> None:
        """A TypeError where ``data`` is not an RDD; a ValueError for ``suffix`` with one."""
        if not hasattr(data, "mapPartitions"):
            raise TypeError(
                "data must be an RDD of DataSets or MultiDataSets, an RDD of paths with "
                f"loader=, a list of paths or a directory URL, got {type(data).__name__}"
            )
        SparkNetwork._no_suffix(suffix, "an RDD")

    @staticmethod
    def _no_suffix(suffix: Suffix, what: str) -> None:
        """A ValueError where ``suffix`` is given for data that is not a directory."""
        if suffix is not None:
            check_suffix(suffix)
            raise ValueError(f"suffix= filters the listing of a directory; data is {what}")

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

        jobs = JobDescription(self.sc)
        try:
            jobs.set("sparkbatch fit: exporting minibatches")
            size = self.averaging.batch_size_per_worker
            urls = batch_and_export(rdd, directory, size, storage_options=options)
        except BaseException:
            remove()
            raise
        finally:
            jobs.restore()
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
        data: RDD | str | os.PathLike[str] | Sequence[str],
        output_index: int = 0,
        *,
        top_n: int = 1,
        labels: Sequence[str] | None = None,
        loader: Any = None,
        suffix: Suffix = None,
        preprocessor: Any = None,
    ) -> Evaluation:
        """Classification figures of output ``output_index`` (a Graph's outputs in order; a
        Network has one), merged exactly from per-partition counts.

        ``data`` is one of (NOTE [evaluation data]):

        - an RDD of DataSets or MultiDataSets (without ``loader``);
        - a directory URL: its manifest's files, else every visible file under it (only those
          ending in ``suffix`` where given), read by ``loader``;
        - a list or tuple of file paths, read by ``loader``;
        - with ``loader``, an RDD of file paths (as ``list_paths`` gives).

        ``loader`` defaults to :class:`~sparkbatch.data.SerializedMinibatchLoader` for files.
        ``preprocessor`` (a picklable callable returning a DataSet or MultiDataSet) is applied
        on the executors to each loaded file or RDD element before it is evaluated; evaluate
        with the preprocessor the model was fitted with.
        """
        num_classes = self._output_width(output_index)
        args = {"num_classes": num_classes, "labels": labels, "top_n": top_n}
        result = self._evaluate(
            data, "classification", loader, args, output_index, suffix, preprocessor
        )
        evaluation = result.evaluation if result else Evaluation(**args)
        self._keep_evaluation(evaluation, output_index)
        return evaluation

    def evaluate_regression(
        self,
        data: RDD | str | os.PathLike[str] | Sequence[str],
        output_index: int = 0,
        *,
        column_names: Sequence[str] | None = None,
        loader: Any = None,
        suffix: Suffix = None,
        preprocessor: Any = None,
    ) -> RegressionEvaluation:
        """Regression figures per column of output ``output_index`` over an RDD, a directory
        URL, or paths read by ``loader``, as for :meth:`evaluate`."""
        args = {
            "num_columns": self._output_width(output_index),
            "column_names": column_names,
        }
        result = self._evaluate(
            data, "regression", loader, args, output_index, suffix, preprocessor
        )
        evaluation = result.evaluation if result else RegressionEvaluation(**args)
        self._keep_evaluation(evaluation, output_index)
        return evaluation

    def score(
        self,
        data: RDD | str | os.PathLike[str] | Sequence[str],
        *,
        loader: Any = None,
        suffix: Suffix = None,
        preprocessor: Any = None,
    ) -> float:
        """The model's mean score per example (per unmasked step) over all of ``data`` (as for
        :meth:`evaluate`: an RDD, a directory URL, or paths read by ``loader``); for a Graph,
        as its own ``score``: the sum of every output's mean loss, plus the L2 penalty."""
        result = self._evaluate(data, "score", loader, {}, 0, suffix, preprocessor)
        if result is None or np.any(np.asarray(result.examples) == 0):
            raise ValueError("no examples to score")
        if not self._access.several_outputs:
            return result.loss_sum / result.examples
        _, _, penalty = self.model.score_parts([])  # the driver's model has the same params
        means = [float(t) / float(w) for t, w in zip(result.loss_sum, result.examples, strict=True)]
        return sum(means) + penalty

    def _keep_evaluation(self, evaluation: Any, output_index: int) -> None:
        """Keep ``evaluation``'s figures for the HTML report (the latest evaluation), with the
        name (else the index) of the output they are of where the model has several."""
        self.stats.set_evaluation(evaluation)
        if self._access.several_outputs and self.stats.evaluation is not None:
            names = self._access.output_names
            output = names[int(output_index)] if names else int(output_index)
            self.stats.evaluation["output"] = output

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

    def _evaluation_input(
        self, data: Any, loader: Any, suffix: Suffix, preprocessor: Any
    ) -> tuple[RDD, Any]:
        """The RDD to evaluate and the loader of its items (None: they are minibatches).

        NOTE [evaluation data]: what ``data`` is follows from its type and ``loader`` alone,
        without a Spark job: a str or os.PathLike is a directory (or file) URL; a list or tuple
        holds paths; an RDD holds paths where ``loader`` is given and minibatches otherwise (an
        element that is a path then fails on the executor with a TypeError saying to pass
        ``loader=``). File URLs go to the executors in one list per partition.
        """
        _check_loader(loader, preprocessor)
        if isinstance(data, (str, os.PathLike, list, tuple)):
            if isinstance(data, (str, os.PathLike)):
                urls = self._files(data, suffix)
            else:
                if suffix is not None:
                    raise ValueError("suffix= filters the listing of a directory; data is a list")
                urls = _path_list(data, "data")
                if not urls:
                    raise ValueError("no paths to evaluate: data is an empty list")
            slices = min(len(urls), self.workers)
            chunks = [urls[i::slices] for i in range(slices)]
            loader = loader or SerializedMinibatchLoader()
            return self.sc.parallelize(chunks, slices), _with_preprocessor(loader, preprocessor)
        if not hasattr(data, "mapPartitions"):
            raise TypeError(
                "expected an RDD of DataSets or MultiDataSets, an RDD or list of paths with "
                f"loader=, or a directory URL, got {type(data).__name__}"
            )
        self._rdd_only(data, suffix)
        if loader is not None:  # an RDD of paths: one list of them per partition
            return data.glom().map(_partition_paths), _with_preprocessor(loader, preprocessor)
        return data.map(functools.partial(_checked_batch, preprocessor)), None

    @executor_errors()
    def _evaluate(
        self,
        data: Any,
        kind: str,
        loader: Any,
        args: dict[str, Any],
        output_index: int = 0,
        suffix: Suffix = None,
        preprocessor: Any = None,
    ) -> Any:
        m = self.averaging
        rdd, loader = self._evaluation_input(data, loader, suffix, preprocessor)
        weights = self.sc.broadcast({"params": self.model.params()})
        jobs = JobDescription(self.sc)
        try:
            setup = dataclasses.replace(
                worker_setup(self._access, m, loader), batch_size=m.eval_batch_size
            )
            evaluate = EvaluatePartition(
                setup, weights, kind=kind, evaluation_args=args, output_index=int(output_index)
            )
            jobs.set(f"sparkbatch evaluate: {kind}")
            return self._sum(rdd.mapPartitions(evaluate), merge_evaluations)
        finally:
            weights.destroy()
            jobs.restore()
